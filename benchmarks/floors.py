"""Where W2's floors are: the raw disk, then each step a checked checkpoint must add.

    python benchmarks/floors.py [--workload W2] [--scale 1] [--reps 5]

Save -> commit: the bench compares jaxckpt with one O_DIRECT file (its
limit). Measured here, interleaved, fresh directories: that O_DIRECT write
(``bench_savers.RawDirect``), tensorstore alone writing the same bytes in
jaxckpt's layout (the packed array's shard files and each large leaf's
array, each file fsync'd by tensorstore as jaxckpt's context asks) plus an
XXH3 pass, and jaxckpt's manager save until committed.

Restore:
The bench compares jaxckpt's restore with a raw read of one file per leaf
into NumPy (no checks, no device arrays). A restore that returns
``jax.Array``s and proves every byte is the one saved must also hash every
byte and hand every buffer to JAX. This measures, interleaved in one run on
the same warm page cache, the raw read alone, the raw read plus an XXH3
pass, plus ``jax.device_put`` of the leaves, and jaxckpt's restore as NumPy
(``target=None``) and onto devices (a target), so each step's cost shows;
and tensorstore alone reading the checkpoint's own files whole (jaxckpt's
storage layer: its floor for how the bytes are stored).
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
from jaxckpt._format import manifest as _format  # noqa: E402
from jaxckpt._read import reader as _reader  # noqa: E402
from jaxckpt._storage import arrays as _arrays, context as _context  # noqa: E402
from jaxckpt._storage import durable as _durable  # noqa: E402
import bench_savers  # noqa: E402
import tensorstore as ts  # noqa: E402


def _ts_layout_write(ckpt: str, leaves: list[np.ndarray], out: str) -> None:
    """tensorstore writes ``leaves``' bytes into ``out`` laid out as in ``ckpt``
    (same arrays, shapes and chunks), every file fsync'd; hashes every leaf."""
    r = _reader.Reader(ckpt)
    ctx = _context.context()
    futs, packed = [], []
    for rec, x in zip(r.leaves, leaves):
        kind = _format.where_kind(rec)
        xxhash.xxh3_128_hexdigest(np.ascontiguousarray(x).reshape(-1).view(np.uint8))
        if kind == _format.WHERE_ARRAY:
            chunk, inner = _format.array_chunks(rec)
            data = _arrays.byte_view(x)
            spec = _arrays.array_spec({"driver": "file", "path": os.path.join(out, f"a{len(futs)}")},
                                      list(data.shape), chunk, inner, create=True)
            store = ts.open(spec, context=ctx).result()
            futs.append(_arrays.write(store, (), data))
        elif kind == _format.WHERE_PACKED:
            packed.append((_format.packed_span(rec), x))
    total = r.manifest.get("packed_nbytes") or 0
    if total and r.manifest.get("packed_inline") is None:
        buf = np.empty(total, np.uint8)
        for (off, n), x in packed:
            buf[off:off + n] = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
        spec = _arrays.array_spec({"driver": "file", "path": os.path.join(out, "packed")},
                                  [total], [r.manifest["packed_shard"]],
                                  [r.manifest["packed_chunk"]], create=True)
        futs.append(_arrays.write(ts.open(spec, context=ctx).result(), (), buf))
    for f in futs:
        f.result()
    _durable.fsync_tree(out)


def _table(title: str, samples: dict[str, list[float]], base: str, unit: str) -> None:
    print(title)
    ref = statistics.median(samples[base])
    for name, ts in samples.items():
        m = statistics.median(ts)
        print(f"  {name:32s} {m * 1e3:8.1f} ms   {m / ref:5.2f}{unit}")


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

        def tensorstore_read() -> list[np.ndarray]:
            # The checkpoint's own stores, read whole by tensorstore: no checks, no tree.
            r = _reader.Reader(ckpt)
            futs = []
            if r.manifest.get("packed_nbytes"):
                futs.append(_arrays.read(r._open(None, [r.manifest["packed_nbytes"]]).result(), ()))
            for leaf in r.leaves:
                if _format.where_kind(leaf) == _format.WHERE_ARRAY:
                    shape = list(_reader._stored_shape(leaf)) + [
                        _reader._stored_dtype(leaf).itemsize]
                    futs.append(_arrays.read(r._open(leaf, shape).result(), ()))
            return [f.result() for f in futs]

        steps = {
            "tensorstore read, same files": tensorstore_read,
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
        # Save -> commit, interleaved, each save into a fresh directory.
        direct = bench_savers.SAVERS["raw_direct"](os.path.join(base, "direct"), tree, target)
        mngr = bench_savers.SAVERS["jaxckpt_full"](os.path.join(base, "mngr"), tree, target)
        writes: dict[str, list[float]] = {"raw O_DIRECT, one file": [],
                                          "tensorstore, same layout + xxh3": [],
                                          "jaxckpt save -> commit": []}
        for n in range(args.reps + 1):
            got = {"raw O_DIRECT, one file": lambda: direct.save(n)[1],
                   "jaxckpt save -> commit": lambda: mngr.save(n)[1]}
            for name in writes:
                if name in got:
                    seconds = got[name]()
                else:
                    t = time.perf_counter()
                    _ts_layout_write(ckpt, leaves, os.path.join(base, f"ts{n}"))
                    seconds = time.perf_counter() - t
                if n:  # the first round warms up
                    writes[name].append(seconds)
        mngr.close(), direct.close()
        head = f"{args.workload} x{args.scale}: {len(leaves)} leaves, {nbytes / 2**20:.0f} MiB"
        _table(f"{head}, median of {args.reps}, interleaved, fresh directories "
               "(incremental=False)", writes, "raw O_DIRECT, one file", "x O_DIRECT")
        _table(f"{head}, median of {args.reps}, interleaved, warm page cache", times,
               "+ device_put (the floor)", "x the floor")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
