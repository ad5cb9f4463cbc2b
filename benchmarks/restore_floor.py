"""Where W2's restore floor is: the raw read, then each step a checked restore must add.

    python benchmarks/restore_floor.py [--workload W2] [--scale 1] [--reps 5]

The bench compares jaxckpt's restore with a raw read of one file per leaf
into NumPy (no checks, no device arrays). A restore that returns
``jax.Array``s and proves every byte is the one saved must also hash every
byte and hand every buffer to JAX. This measures, interleaved in one run on
the same warm page cache, the raw read alone, the raw read plus an XXH3
pass, plus ``jax.device_put`` of the leaves, and jaxckpt's restore as NumPy
(``target=None``) and onto devices (a target), so each step's cost shows.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import xxhash  # noqa: E402

import bench_trees  # noqa: E402
import jaxckpt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="W2", choices=sorted(bench_trees.BUILDERS))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    tree = bench_trees.BUILDERS[args.workload](args.scale)
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          tree)
    base = tempfile.mkdtemp(dir=args.dir)
    try:
        raw = os.path.join(base, "raw")
        os.mkdir(raw)
        for i, x in enumerate(leaves):
            with open(os.path.join(raw, str(i)), "wb") as f:
                f.write(x.tobytes())
        ckpt = jaxckpt.save(os.path.join(base, "ckpt"), tree)
        dev = jax.devices()[0]

        def read() -> list[np.ndarray]:
            out = []
            for i, x in enumerate(leaves):
                buf = np.empty(x.shape, x.dtype)
                with open(os.path.join(raw, str(i)), "rb", buffering=0) as f:
                    f.readinto(memoryview(buf).cast("B"))
                out.append(buf)
            return out

        def read_hash() -> list[np.ndarray]:
            out = read()
            for x in out:
                xxhash.xxh3_128_hexdigest(x.reshape(-1).view(np.uint8))
            return out

        def read_hash_put() -> list:
            out = read_hash()
            return jax.block_until_ready(jax.device_put(out, [dev] * len(out)))

        steps = {
            "raw read (file per leaf)": read,
            "+ xxh3 of every byte": read_hash,
            "+ device_put (the floor)": read_hash_put,
            "jaxckpt restore, NumPy": lambda: jaxckpt.restore(ckpt),
            "jaxckpt restore, jax.Array": lambda: jax.block_until_ready(
                jaxckpt.restore(ckpt, target)),
        }
        times: dict[str, list[float]] = {k: [] for k in steps}
        for fn in steps.values():  # warm-up: page cache, compiled transfers, plans
            fn()
        for _ in range(args.reps):
            for name, fn in steps.items():
                gc.collect()
                jax.device_put(np.zeros(1)).block_until_ready()
                t = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - t)
                del out
        nbytes = sum(x.nbytes for x in leaves)
        print(f"{args.workload} x{args.scale}: {len(leaves)} leaves, {nbytes / 2**20:.0f} MiB, "
              f"median of {args.reps}, interleaved, warm page cache")
        floor = statistics.median(times["+ device_put (the floor)"])
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"  {name:28s} {m * 1e3:8.1f} ms   {m / floor:5.2f}x the floor")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
