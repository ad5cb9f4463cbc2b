"""First side-by-side measurement: jaxckpt vs Orbax async vs raw write+fsync.

    python benchmarks/first_measure.py [--reps 3]

W1: 512 MiB in 16 float32 leaves. W2: 256 MiB in 2000 leaves (mixed shapes).
Medians after one warm-up. Reads may come from the page cache for all three.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def w1():
    return {f"w{i}": jnp.full((8 << 20) // 1, i, jnp.float32)[: 8 << 20] for i in range(16)}


def w2():
    # 2000 leaves, 256 MiB: mostly small vectors and mid-size matrices.
    rng = np.random.default_rng(0)
    sizes = rng.lognormal(mean=9.0, sigma=1.6, size=2000)
    sizes = np.maximum(1, (sizes / sizes.sum() * (64 << 20)).astype(np.int64))
    return {f"p{i:04d}": jnp.ones((int(n),), jnp.float32) for i, n in enumerate(sizes)}


def raw_write(tree, d):
    t = time.perf_counter()
    for k, v in tree.items():
        with open(os.path.join(d, k), "wb") as f:
            f.write(np.asarray(v).data)
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - t


def bench_jaxckpt(tree, d, reps):
    import jaxckpt

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    block, commit, restore = [], [], []
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        for _ in range(reps + 1):
            t = time.perf_counter()
            m.save(tree)
            block.append(time.perf_counter() - t)
            m.wait_until_finished()
            commit.append(time.perf_counter() - t)
        for _ in range(reps + 1):
            t = time.perf_counter()
            jax.block_until_ready(m.restore(None, abstract))
            restore.append(time.perf_counter() - t)
        files = sum(len(f) for _, _, f in os.walk(m.latest_checkpoint))
    return block[1:], commit[1:], restore[1:], files


def bench_orbax(tree, d, reps):
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    block, commit, restore = [], [], []
    opts = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
    with ocp.CheckpointManager(d, options=opts) as m:
        for step in range(reps + 1):
            t = time.perf_counter()
            m.save(step, args=ocp.args.StandardSave(tree))
            block.append(time.perf_counter() - t)
            m.wait_until_finished()
            commit.append(time.perf_counter() - t)
        last = m.latest_step()
        for _ in range(reps + 1):
            t = time.perf_counter()
            jax.block_until_ready(m.restore(last, args=ocp.args.StandardRestore(abstract)))
            restore.append(time.perf_counter() - t)
        files = sum(len(f) for _, _, f in os.walk(os.path.join(d, str(last))))
    return block[1:], commit[1:], restore[1:], files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workloads", default="W1,W2")
    args = ap.parse_args()
    med = statistics.median
    for name in args.workloads.split(","):
        tree = {"W1": w1, "W2": w2}[name]()
        jax.block_until_ready(tree)
        mib = sum(x.nbytes for x in jax.tree.leaves(tree)) / 2**20
        root = tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR"))
        raws = []
        for r in range(args.reps + 1):
            d = os.path.join(root, f"raw{r}")
            os.makedirs(d)
            raws.append(raw_write(tree, d))
            shutil.rmtree(d)
        raw = med(raws[1:])
        jb, jc, jr, jf = bench_jaxckpt(tree, os.path.join(root, "j"), args.reps)
        ob, oc, orr, of = bench_orbax(tree, os.path.join(root, "o"), args.reps)
        shutil.rmtree(root, ignore_errors=True)
        print(f"\n{name}: {mib:.0f} MiB in {len(jax.tree.leaves(tree))} leaves; raw write+fsync "
              f"(file per leaf) {raw:.3f} s")
        print(f"{'':10}{'save() blocks':>15}{'save->commit':>15}{'restore':>10}{'files':>7}")
        print(f"{'jaxckpt':10}{med(jb)*1e3:>13.1f}ms{med(jc):>14.3f}s{med(jr):>9.3f}s{jf:>7}")
        print(f"{'orbax':10}{med(ob)*1e3:>13.1f}ms{med(oc):>14.3f}s{med(orr):>9.3f}s{of:>7}")
        print(f"{'ratio j/o':10}{med(jb)/med(ob):>15.2f}{med(jc)/med(oc):>15.2f}"
              f"{med(jr)/med(orr):>10.2f}")
        print(f"{'ratio j/raw':10}{'':>15}{med(jc)/raw:>15.2f}")


if __name__ == "__main__":
    main()
