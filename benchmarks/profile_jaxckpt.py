"""Where jaxckpt's time goes: inclusive timers on its internal functions.

    python benchmarks/profile_jaxckpt.py --workload W2 [--scale 1] [--reps 3]
        [--pyinstrument DIR]   # also a pyinstrument profile of each phase's caller thread

Runs the bench's save -> commit -> restore cycle through a CheckpointManager
and reports, per phase (``save()`` blocking, the writer's write + commit,
restore with a target), the inclusive seconds and call counts of the
internal functions it wraps. The wrappers only time: they call the original.
Run it under ``py-spy record --threads --native`` or ``perf record -g`` for
the native picture (tensorstore's threads, the kernel).
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench_trees  # noqa: E402
import jaxckpt  # noqa: E402
from jaxckpt import _tree  # noqa: E402
from jaxckpt._commit import atomic as _commit  # noqa: E402
from jaxckpt._commit import state_file as _state_file
from jaxckpt._read import reader as _reader, restore as _restore  # noqa: E402
from jaxckpt._save import snapshot as _snapshot, write as _write  # noqa: E402
from jaxckpt._storage import arrays as _arrays, durable as _durable  # noqa: E402

_totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
_lock = threading.Lock()
_depth = threading.local()


def _wrap(owner: Any, name: str, label: str | None = None) -> None:
    original = getattr(owner, name)
    label = label or f"{getattr(owner, '__name__', owner)}.{name}"

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t
            with _lock:
                entry = _totals[label]
                entry[0] += dt
                entry[1] += 1

    setattr(owner, name, timed)


def instrument() -> None:
    for owner, names in (
        (_snapshot, ["take", "_pieces", "check_metadata", "_paths_of"]),
        (_tree, ["flatten", "check_leaf", "is_prng_key"]),
        (_write, ["write", "_layout", "_write_part", "_write_packed", "_fill"]),
        (_reader, ["read_manifest"]),
        (_arrays, ["open_array", "write", "read", "from_bytes", "byte_view"]),
        (_durable, ["fsync_tree"]),
        (_commit, ["stage", "seal_part", "commit", "publish"]),
        (_state_file, ["prepare"]),
        (_state_file.Replacement, ["install"]),
        (_restore, ["restore_target"]),
        (_reader.Reader, ["__init__", "read_arrays", "_read_packed"]),
        (_restore._Plan, ["__init__", "problem", "requests", "build", "transfers", "assemble"]),
    ):
        for name in names:
            label = f"{getattr(owner, '__name__', owner)}.{name}"
            _wrap(owner, name, label)
    # Called from _restore through the jax module object.
    _wrap(jax, "device_put", "jax.device_put")
    _wrap(jax, "make_array_from_single_device_arrays", "jax.make_array_from_single_device_arrays")


def take_totals() -> dict[str, list]:
    with _lock:
        out = {k: list(v) for k, v in _totals.items()}
        _totals.clear()
    return out


def report(phase: str, seconds: list[float], totals: dict[str, list], reps: int) -> None:
    per = sorted(seconds)[len(seconds) // 2]
    if not seconds:
        return
    print(f"\n== {phase}: median {per * 1e3:.1f} ms over {len(seconds)} "
          f"(min {min(seconds) * 1e3:.1f}, max {max(seconds) * 1e3:.1f})")
    total = sum(seconds)
    print(f"   {'function (inclusive, per rep)':58}{'ms/rep':>10}{'% phase':>9}{'calls/rep':>11}"
          f"{'us/call':>10}")
    for label, (secs, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        print(f"   {label:58}{secs / reps * 1e3:>10.2f}{secs / total * 100:>8.1f}%"
              f"{calls / reps:>11.0f}{secs / calls * 1e6:>10.1f}")


def _best(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """(median, min) seconds of ``fn()`` over ``reps`` calls."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
        del out
    return sorted(times)[len(times) // 2], min(times)


def parts(tree: Any, path: str, reps: int) -> None:
    """The building blocks of a save and a restore, timed one by one."""
    leaves = jax.tree.leaves(tree)
    n = len(leaves)
    host = [np.asarray(x) for x in leaves]
    total = sum(x.nbytes for x in host)
    rows: list[tuple[str, tuple[float, float], int]] = []

    def add(label: str, fn: Callable[[], Any], per: int = n) -> None:
        rows.append((label, _best(fn, reps), per))

    add("jax.tree_util.tree_flatten_with_path", lambda: jax.tree_util.tree_flatten_with_path(tree))
    add("_tree.flatten (key-path tokens)", lambda: _tree.flatten(tree))
    add("np.asarray(leaf) per leaf (CPU: zero-copy view)", lambda: [np.asarray(x) for x in leaves])
    add("leaf.addressable_shards per leaf", lambda: [x.addressable_shards for x in leaves])
    add("np.dtype(leaf.dtype).name per leaf", lambda: [np.dtype(x.dtype).name for x in leaves])
    add("_snapshot.take (whole blocking phase)", lambda: _snapshot.take(tree))

    def pack(buf: np.ndarray | None) -> np.ndarray:
        out = np.empty(total, np.uint8) if buf is None else buf
        off = 0
        for x in host:
            out[off:off + x.nbytes] = x.reshape(-1).view(np.uint8)
            off += x.nbytes
        return out

    reused = np.empty(total, np.uint8)
    reused.fill(0)
    add("pack all leaves into a fresh np.empty buffer", lambda: pack(None))
    add("pack all leaves into a reused buffer", lambda: pack(reused))

    reader = _reader.Reader(path)
    arrays = [leaf for leaf in reader.leaves if leaf["kind"] != "py"]
    add("Reader(path) (manifest read + msgpack)", lambda: _reader.Reader(path), 1)
    add("Reader.read_arrays, every leaf whole (tensorstore)",
        lambda: reader.read_arrays([(leaf, [()]) for leaf in arrays]))
    dev = jax.devices()[0]
    add("jax.device_put per leaf, 16-byte-aligned host arrays (copies)",
        lambda: [jax.device_put(x, dev) for x in _misaligned(host)])
    add("jax.device_put per leaf, 64-byte-aligned host arrays (aliases)",
        lambda: [jax.device_put(x, dev) for x in _aligned_copies(host)])
    add("jax.device_put(list) in one call, 64-byte-aligned",
        lambda: jax.device_put(_aligned_copies(host), dev))
    print(f"\n== building blocks ({n} leaves, {total / 2**20:.1f} MiB); median [min] of {reps}")
    print(f"   {'':66}{'ms':>9}{'min ms':>9}{'us/leaf':>9}")
    for label, (m, lo), per in rows:
        print(f"   {label:66}{m * 1e3:>9.2f}{lo * 1e3:>9.2f}{m / per * 1e6:>9.1f}")
    print("   (device_put inputs are built once before the timings; the copy's destination"
          " is fresh XLA memory each time)")


_input_cache: dict[str, list] = {}


def _misaligned(host: list[np.ndarray]) -> list[np.ndarray]:
    """Copies of ``host`` whose data start 16 bytes past a 64-byte boundary,
    like tensorstore's read buffers; built once, outside the timings."""
    key = "mis"
    if key not in _input_cache:
        out = []
        for x in host:
            raw = np.empty(x.nbytes + 128, np.uint8)
            off = (-raw.ctypes.data) % 64 + 16
            view = raw[off:off + x.nbytes].view(x.dtype).reshape(x.shape)
            view[...] = x
            out.append(view)
        _input_cache[key] = out
    return _input_cache[key]


def _aligned_copies(host: list[np.ndarray]) -> list[np.ndarray]:
    key = "al"
    if key not in _input_cache:
        out = []
        for x in host:
            raw = np.empty(x.nbytes + 128, np.uint8)
            off = (-raw.ctypes.data) % 64
            view = raw[off:off + x.nbytes].view(x.dtype).reshape(x.shape)
            view[...] = x
            out.append(view)
        _input_cache[key] = out
    return _input_cache[key]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="W2", choices=["W1", "W2", "W3"])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--pyinstrument", metavar="DIR", default=None,
                    help="write a pyinstrument text profile per phase into DIR")
    ap.add_argument("--phases", default="save,restore",
                    help="comma-separated: save (blocking + writer), restore, parts "
                         "(building blocks timed one by one); default save,restore")
    ap.add_argument("--no-timers", action="store_true",
                    help="do not wrap internal functions (for an unbiased external profiler)")
    args = ap.parse_args(argv)
    phases_wanted = set(args.phases.split(","))

    tree = bench_trees.build(args.workload, args.scale)
    target = bench_trees.abstract(tree)
    print(f"{args.workload}: {bench_trees.describe(tree)}")
    base = args.dir or os.environ.get("BENCH_DIR") or os.path.join(HERE, "results")
    os.makedirs(base, exist_ok=True)
    root = tempfile.mkdtemp(prefix="profile-tmp-", dir=base)
    profiler = None
    if args.pyinstrument:
        import pyinstrument

        os.makedirs(args.pyinstrument, exist_ok=True)
    try:
        mngr = jaxckpt.CheckpointManager(os.path.join(root, "run"), max_to_keep=None)
        mngr.save(tree, checkpoint_number=0)  # warm-up, untimed
        mngr.wait_until_finished()
        mngr.restore(None, target)
        if not args.no_timers:
            instrument()
        phases: dict[str, list[float]] = {"save() blocking": [], "write + commit (writer)": []}
        totals_block: dict[str, list] = {}
        totals_write: dict[str, list] = {}

        def merge(into: dict, new: dict) -> None:
            for k, (s, c) in new.items():
                e = into.setdefault(k, [0.0, 0])
                e[0] += s
                e[1] += c

        for i in range(1, args.reps + 1 if "save" in phases_wanted else 1):
            if args.pyinstrument:
                profiler = pyinstrument.Profiler(interval=0.0005)
                profiler.start()
            t = time.perf_counter()
            path = mngr.save(tree, checkpoint_number=i)
            t1 = time.perf_counter()
            if profiler:
                profiler.stop()
                with open(os.path.join(args.pyinstrument, f"{args.workload}-save-block-{i}.txt"),
                          "w") as f:
                    f.write(profiler.output_text(unicode=False, color=False, show_all=False))
            merge(totals_block, take_totals())
            mngr.wait_until_finished()
            t2 = time.perf_counter()
            phases["save() blocking"].append(t1 - t)
            phases["write + commit (writer)"].append(t2 - t1)
            merge(totals_write, take_totals())
        path = mngr.latest_checkpoint
        if "save" in phases_wanted:
            report("save() blocking", phases["save() blocking"], totals_block, args.reps)
            report("write + commit on the writer thread (from save() return to committed)",
                   phases["write + commit (writer)"], totals_write, args.reps)

        # The writer's job again, synchronously on this thread, for pyinstrument.
        if args.pyinstrument and "save" in phases_wanted:
            profiler = pyinstrument.Profiler(interval=0.0005)
            profiler.start()
            jaxckpt.save(os.path.join(root, "sync"), tree)
            profiler.stop()
            with open(os.path.join(args.pyinstrument, f"{args.workload}-save-sync.txt"),
                      "w") as f:
                f.write(profiler.output_text(unicode=False, color=False, show_all=False))
            take_totals()

        restores = []
        for i in range(args.reps if "restore" in phases_wanted else 0):
            if args.pyinstrument:
                profiler = pyinstrument.Profiler(interval=0.0005)
                profiler.start()
            t = time.perf_counter()
            out = mngr.restore(path, target)
            jax.block_until_ready(out)
            restores.append(time.perf_counter() - t)
            if profiler:
                profiler.stop()
                with open(os.path.join(args.pyinstrument, f"{args.workload}-restore-{i}.txt"),
                          "w") as f:
                    f.write(profiler.output_text(unicode=False, color=False, show_all=False))
            del out
        if restores:
            report("restore with target", restores, take_totals(), args.reps)
        if "parts" in phases_wanted:
            parts(tree, path, max(3, args.reps))
        mngr.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
