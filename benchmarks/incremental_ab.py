"""Incremental on vs off on a tree where every byte changes, A/B interleaved.

    python benchmarks/incremental_ab.py W2 11     # workload, timed saves per side

Two managers (max_to_keep=2), one incremental (the default), one
incremental=False, save alternately (the order flips each round), each save a
fresh tree with every byte changed; two warm-up rounds. Prints the medians of
save-to-commit and of save()'s blocking time, and the ratio on/off, plus the
bytes each side shared (must be 0: nothing is unchanged).
"""

import os
import shutil
import statistics as st
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench_trees  # noqa: E402
import jaxckpt  # noqa: E402

name = sys.argv[1]; reps = int(sys.argv[2])
tree = bench_trees.build(name, 1.0)
leaves, treedef = jax.tree_util.tree_flatten(tree)
def fresh(i):  # every byte changes
    return jax.tree_util.tree_unflatten(treedef, [np.asarray(l) + np.asarray(i + 1).astype(np.asarray(l).dtype) if hasattr(l, "dtype") else l for l in leaves])
ROOT = tempfile.mkdtemp(prefix="jaxckpt-ab-")
res = {True: [], False: []}; blk = {True: [], False: []}
mgrs = {}
for inc in (True, False):
    mgrs[inc] = jaxckpt.CheckpointManager(os.path.join(ROOT, f"incremental-{inc}"),
                                          max_to_keep=2, incremental=inc)

n = 0; SH = []
for r in range(reps + 2):
    for inc in ((True, False) if r % 2 else (False, True)):
        s = fresh(n); n += 1
        t = time.perf_counter(); mgrs[inc].save(s, n); mgrs[inc].wait_until_finished()
        if r >= 2:
            res[inc].append(time.perf_counter() - t); blk[inc].append(mgrs[inc].last_save_stats.blocked_s); SH.append((inc, mgrs[inc].last_save_stats.bytes_shared))
for inc in (True, False):
    print(name, "incremental" if inc else "full", "commit median %.1f ms" % (st.median(res[inc]) * 1e3),
          "mean %.1f" % (st.mean(res[inc]) * 1e3), "blocked median %.2f ms" % (st.median(blk[inc]) * 1e3))
print("on/off commit median ratio %.3f" % (st.median(res[True]) / st.median(res[False])))
for m in mgrs.values():
    m.close()
shutil.rmtree(ROOT, ignore_errors=True)
print("shared", sorted(set(SH)))
