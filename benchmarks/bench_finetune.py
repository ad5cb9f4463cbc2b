"""W5: a LoRA fine-tune, where a checkpoint should cost what changed (issue 16).

A 1 GiB frozen bfloat16 base plus 8 MiB of adapters and their Adam moments
(``bench_trees.w5``). Each contender makes ``SAVES`` saves into its own
directory, keeping all of them; between saves the adapters, moments and
counters are fresh arrays while the base leaves are the same ``jax.Array``
objects. The contenders: jaxckpt (incremental, its default), jaxckpt with
``incremental=False``, Orbax, and raw write+fsync of only the changed leaves
(one packed file, or a file per leaf). Measured per save after the first:
bytes newly allocated on disk (``du``-style: each inode once, so a hard link
costs nothing), ``save()`` blocking and save-to-commit time; after the last
save the directory's disk use and the restore time of the newest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

import jax

import bench_memory
import bench_savers
import bench_trees
from bench_report import stat

SAVES = 10

# key -> (factory(directory, tree, target), saves only the changing part)
CONTENDERS = {
    "jaxckpt": (bench_savers.JaxckptSaver, False),
    "jaxckpt_full": (bench_savers.SAVERS["jaxckpt_full"], False),
    "orbax": (bench_savers.OrbaxSaver, False),
    "raw_changed_packed": (lambda d, t, a: bench_savers.RawFiles(d, t, a, packed=True), True),
    "raw_changed_per_leaf": (lambda d, t, a: bench_savers.RawFiles(d, t, a, packed=False),
                             True),
}


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def workload(args: argparse.Namespace, root: str) -> dict:
    name = "W5"
    tree = bench_trees.build(name, args.scale)
    target = bench_trees.abstract(tree)
    changed = bench_trees.nbytes(bench_trees.changing(name, tree))
    out: dict[str, Any] = {"tree": bench_trees.describe(tree), "bytes": bench_trees.nbytes(tree),
                           "changed_bytes": changed,
                           "leaves": len(jax.tree.leaves(tree)),
                           "changed_leaves": len(jax.tree.leaves(bench_trees.changing(name, tree))),
                           "saves": SAVES, "contenders": {}}
    savers: dict[str, Any] = {}
    part: dict[str, bool] = {}
    res: dict[str, dict] = {}
    for key, (factory, only_changed) in CONTENDERS.items():
        res[key] = {"block": [], "commit": [], "written": [], "stats_written": [],
                    "stats_shared": [], "restore": [], "first_commit": None,
                    "first_written": None, "error": None}
        part[key] = only_changed
        try:
            t = bench_trees.changing(name, tree) if only_changed else tree
            a = bench_trees.changing(name, target) if only_changed else target
            savers[key] = factory(os.path.join(root, name, key), t, a)
        except Exception as e:
            res[key]["error"] = f"setup: {_error(e)}"
            traceback.print_exc(file=sys.stderr)

    def each(fn: Any, what: str) -> None:
        for key in list(savers):
            try:
                fn(key, savers[key])
            except Exception as e:
                res[key]["error"] = f"{what}: {_error(e)}"
                traceback.print_exc(file=sys.stderr)
                try:
                    savers.pop(key).close()
                except Exception:
                    pass

    try:
        for i in range(SAVES):
            if i:
                tree = bench_trees.vary(name, tree)

            def one(key: str, saver: Any, i: int = i, tree: Any = tree) -> None:
                if i and args.settle:
                    bench_memory.settled_rss()
                    time.sleep(args.settle)
                before = saver.du()
                block, commit = saver.save(i, bench_trees.changing(name, tree)
                                           if part[key] else tree)
                written = saver.du() - before
                r = res[key]
                if i == 0:  # the first save writes everything: reported apart
                    r["first_commit"], r["first_written"] = commit, written
                    return
                r["block"].append(block)
                r["commit"].append(commit)
                r["written"].append(written)
                st = getattr(saver, "stats", None)
                if st is not None:
                    r["stats_written"].append(st.bytes_written)
                    r["stats_shared"].append(st.bytes_shared)
            each(one, f"save {i}")
        for key, saver in savers.items():
            res[key]["du_after"] = saver.du()
            res[key]["du_checkpoint"] = bench_savers.du(saver.latest)
            res[key]["files"] = saver.files()
            if hasattr(saver, "manifest_bytes"):
                res[key]["manifest_bytes"] = saver.manifest_bytes()
        each(lambda k, s: s.restore(), "warm-up restore")
        for i in range(args.reps):
            def one_restore(key: str, saver: Any) -> None:
                if args.cold:
                    saver.evict_latest()
                res[key]["restore"].append(saver.restore())
            each(one_restore, f"restore {i + 1}")
    finally:
        bench_savers.close_all(savers, os.path.join(root, name), args.quiet)
    for key, r in res.items():
        out["contenders"][key] = dict(
            r, block=stat(r["block"]), commit=stat(r["commit"]), written=stat(r["written"]),
            stats_written=stat(r["stats_written"]), stats_shared=stat(r["stats_shared"]),
            restore=stat(r["restore"]), only_changed=part[key])
    return out
