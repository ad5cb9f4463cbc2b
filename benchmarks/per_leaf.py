"""Per-leaf costs of a CheckpointManager's steady state, and where they go.

    python benchmarks/per_leaf.py [--sizes 1000,10000,50000] [--reps 5]
        [--profile N] [--top 10] [--floors N] [--numpy/--no-numpy]

Trees of N leaves of 256 float32 each (dict-of-dicts, like a model's params:
``{"layer_0042": {"w_07": ...}}``), as ``jax.Array`` on the CPU backend and as
NumPy arrays. A manager (``max_to_keep=2``) makes 2 warm-up saves, then each
size reports the median of ``--reps``: ``save()`` blocking (µs per leaf),
save to commit, restore with a target of ``ShapeDtypeStruct`` carrying
shardings, and restore without a target. Every save gets fresh arrays (made
outside the timings), so the incremental "same array" shortcut never applies.

``--profile N`` runs cProfile at N leaves on three phases: ``save()`` on the
caller's thread, the writer thread's job (``Pipeline.run``, wrapped in this
script only), and restore with a target. It lists the top functions by own
and cumulative time and sums own time into groups (jaxckpt, JAX, tensorstore,
msgpack/manifest, other), plus the time the garbage collector ran.

``--floors N`` measures what N leaves cost without jaxckpt: one batched
``device_put`` vs a loop, ``tree_flatten_with_path``, ``np.asarray`` of N CPU
``jax.Array``s, building N small dicts.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxckpt  # noqa: E402
from jaxckpt._save import pipeline as _pipeline  # noqa: E402

LEAF = 256  # float32 per leaf
PER_LAYER = 16  # leaves per inner dict


# ------------------------------------------------------------------ trees

def _names(n: int) -> list[tuple[str, str]]:
    return [(f"layer_{i // PER_LAYER:05d}", f"w_{i % PER_LAYER:02d}") for i in range(n)]


def numpy_tree(n: int, seed: int) -> dict:
    base = np.arange(LEAF, dtype=np.float32) + seed
    tree: dict = {}
    for outer, inner in _names(n):
        tree.setdefault(outer, {})[inner] = base.copy()
    return tree


def jax_tree(n: int, seed: int) -> dict:
    """Fresh jax.Arrays (one batched device_put: cheap, and outside the timings)."""
    host = numpy_tree(n, seed)
    leaves, treedef = jax.tree_util.tree_flatten(host)
    return jax.tree_util.tree_unflatten(treedef, jax.device_put(leaves))


def target_of(n: int) -> dict:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    spec = jax.ShapeDtypeStruct((LEAF,), np.float32, sharding=sharding)
    tree: dict = {}
    for outer, inner in _names(n):
        tree.setdefault(outer, {})[inner] = spec
    return tree


# ------------------------------------------------------------------ timing

class GcTimer:
    """Seconds the cyclic garbage collector ran while installed (any thread)."""

    def __init__(self) -> None:
        self.seconds, self.runs, self._t = 0.0, 0, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t
            self.runs += 1

    def __enter__(self) -> "GcTimer":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self)


def measure(n: int, kind: str, reps: int, workdir: str) -> dict[str, float]:
    make = jax_tree if kind == "jax" else numpy_tree
    directory = os.path.join(workdir, f"{kind}_{n}")
    target = target_of(n)
    block, commit, restore_t, restore_raw = [], [], [], []
    mngr = jaxckpt.CheckpointManager(directory, max_to_keep=2)
    try:
        for i in range(2 + reps):
            tree = make(n, i)
            t0 = time.perf_counter()
            mngr.save(tree, i)
            t1 = time.perf_counter()
            mngr.wait_until_finished()
            t2 = time.perf_counter()
            del tree
            if i < 2:
                continue
            block.append(t1 - t0)
            commit.append(t2 - t0)
            t3 = time.perf_counter()
            out = mngr.restore(i, target)
            t4 = time.perf_counter()
            del out
            t5 = time.perf_counter()
            out = mngr.restore(i)
            t6 = time.perf_counter()
            del out
            restore_t.append(t4 - t3)
            restore_raw.append(t6 - t5)
    finally:
        mngr.close()
        shutil.rmtree(directory, ignore_errors=True)
    med = statistics.median
    return {"block": med(block), "commit": med(commit), "restore": med(restore_t),
            "raw": med(restore_raw)}


def table(rows: list[tuple[str, int, dict]]) -> str:
    head = ("| leaves | kind | save() blocks | µs/leaf | save to commit | µs/leaf "
            "| restore (target) | µs/leaf | restore raw | µs/leaf |")
    lines = [head, "|" + "---|" * 10]
    for kind, n, r in rows:
        cells = [f"{n:,}", kind]
        for key in ("block", "commit", "restore", "raw"):
            cells += [f"{r[key] * 1e3:.1f} ms", f"{r[key] / n * 1e6:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ profiling

GROUPS = (("jaxckpt/_format", "msgpack/manifest"), ("msgpack", "msgpack/manifest"),
          ("jaxckpt", "jaxckpt"), ("tensorstore", "tensorstore"),
          ("jaxlib", "JAX"), ("/jax/", "JAX"))


def group_of(filename: str) -> str:
    for needle, name in GROUPS:
        if needle in filename:
            return name
    if filename == "~":  # builtins: charged to 'builtins' (their callers say whose)
        return "builtins"
    return "other"


def _label(func: tuple) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    parts = filename.replace("\\", "/").split("/")
    for anchor in ("jaxckpt", "jax", "jaxlib", "tensorstore", "numpy"):
        if anchor in parts:
            k = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[k:]) + f":{line}({name})"
    return f"{parts[-1]}:{line}({name})"


def report(title: str, prof: cProfile.Profile, wall: float, gc_s: float, top: int) -> str:
    st = pstats.Stats(prof)
    entries = st.stats  # func -> (cc, nc, tt, ct, callers)
    total_tt = sum(v[2] for v in entries.values())
    groups: dict[str, float] = {}
    for func, (_, _, tt, _, _) in entries.items():
        g = group_of(func[0])
        groups[g] = groups.get(g, 0.0) + tt
    out = [f"## {title}: wall {wall * 1e3:.1f} ms (under cProfile), profiled own time "
           f"{total_tt * 1e3:.1f} ms, GC {gc_s * 1e3:.1f} ms"]
    out.append("groups (own time): " + ", ".join(
        f"{g} {t * 1e3:.1f} ms" for g, t in sorted(groups.items(), key=lambda kv: -kv[1])))
    for key, idx in (("own", 2), ("cumulative", 3)):
        out.append(f"top {top} by {key} time:  calls  own ms  cum ms")
        ranked = sorted(entries.items(), key=lambda kv: -kv[1][idx])[:top]
        for func, (_, nc, tt, ct, _) in ranked:
            out.append(f"  {nc:>8}  {tt * 1e3:8.1f}  {ct * 1e3:8.1f}  {_label(func)}")
    return "\n".join(out)


def profile(n: int, top: int, workdir: str) -> str:
    directory = os.path.join(workdir, f"profile_{n}")
    target = target_of(n)
    writer_prof: list[cProfile.Profile] = []
    original = _pipeline.Pipeline.run
    profiling = threading.Event()

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not profiling.is_set():
            return original(self, *args, **kwargs)
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()  # on the writer thread only
        try:
            return original(self, *args, **kwargs)
        finally:
            prof.disable()
            writer_prof.append(prof)
            writer_wall.append(time.perf_counter() - t)

    writer_wall: list[float] = []
    _pipeline.Pipeline.run = run  # this process only; restored below
    sections = []
    mngr = jaxckpt.CheckpointManager(directory, max_to_keep=2)
    try:
        for i in range(2):
            mngr.save(jax_tree(n, i), i)
            mngr.wait_until_finished()
        tree = jax_tree(n, 2)
        profiling.set()
        with GcTimer() as gct:
            prof = cProfile.Profile()
            t = time.perf_counter()
            prof.enable()
            mngr.save(tree, 2)
            prof.disable()
            wall = time.perf_counter() - t
            gc_block = gct.seconds
            mngr.wait_until_finished()
            gc_writer = gct.seconds - gc_block
        profiling.clear()
        del tree
        sections.append(report(f"save() blocking, caller's thread, {n:,} leaves", prof, wall,
                               gc_block, top))
        sections.append(report(f"writer thread (Pipeline.run), {n:,} leaves", writer_prof[0],
                               writer_wall[0], gc_writer, top))
        with GcTimer() as gct:
            prof = cProfile.Profile()
            t = time.perf_counter()
            prof.enable()
            out = mngr.restore(2, target)
            prof.disable()
            wall = time.perf_counter() - t
        del out
        sections.append(report(f"restore with a target, {n:,} leaves", prof, wall,
                               gct.seconds, top))
    finally:
        _pipeline.Pipeline.run = original
        mngr.close()
        shutil.rmtree(directory, ignore_errors=True)
    return "\n\n".join(sections)


# ------------------------------------------------------------------ floors

def _best(fn: Callable[[], Any], reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def floors(n: int) -> str:
    host = numpy_tree(n, 0)
    leaves, treedef = jax.tree_util.tree_flatten(host)
    dev = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(dev)
    arrays = jax.device_put(leaves)
    packed = np.concatenate(leaves)
    spec = jax.ShapeDtypeStruct((LEAF,), np.float32)
    from jax._src.lib import xla_client as _xc  # private: a floor, not an API to use
    rows = [
        ("jax.device_put(list of N numpy), one call",
         lambda: jax.device_put(leaves)),
        ("jax.device_put(list, [sharding]*N), one call",
         lambda: jax.device_put(leaves, [sharding] * n)),
        ("jax.device_put(x) in a loop",
         lambda: [jax.device_put(x) for x in leaves]),
        ("jax.device_put(x, sharding) in a loop",
         lambda: [jax.device_put(x, sharding) for x in leaves]),
        ("jaxlib's batched_device_put per leaf (below jax.device_put's Python)",
         lambda: [_xc.batched_device_put(spec, sharding, [x], [dev]) for x in leaves]),
        ("one device_put of the packed bytes (N*1 KiB)",
         lambda: jax.device_put(packed).block_until_ready()),
        ("jax.tree_util.tree_flatten (N leaves)",
         lambda: jax.tree_util.tree_flatten(host)),
        ("jax.tree_util.tree_flatten_with_path",
         lambda: jax.tree_util.tree_flatten_with_path(host)),
        ("jax.tree_util.tree_unflatten",
         lambda: jax.tree_util.tree_unflatten(treedef, leaves)),
        ("np.asarray(x) of N CPU jax.Arrays",
         lambda: [np.asarray(x) for x in arrays]),
        ("x.copy() of N numpy leaves",
         lambda: [x.copy() for x in leaves]),
        ("reading .shape/.dtype/.sharding of N jax.Arrays",
         lambda: [(x.shape, x.dtype, x.sharding) for x in arrays]),
        ("x.addressable_shards of N jax.Arrays",
         lambda: [x.addressable_shards for x in arrays]),
        ("building N dicts of 5 fields",
         lambda: [{"path": "a/b", "kind": "array", "dtype": "float32", "shape": [LEAF],
                   "offset": i} for i in range(n)]),
        ("np.split of the packed bytes into N views",
         lambda: np.split(packed, n)),
    ]
    matrix = jax.device_put(packed.reshape(n, LEAF))
    list(matrix)  # warm: iterating a jax.Array compiles its slicing once
    rows.append(("list(jax.Array of shape (N, 256)): N row arrays",
                 lambda: jax.block_until_ready(list(matrix))))
    # A jitted split with N outputs compiles for ~27 s at 1,000 (and grows):
    # measured at most at 1,000 outputs, per leaf.
    m = min(n, 1000)
    split = jax.jit(lambda x: [x[i * LEAF:(i + 1) * LEAF] for i in range(m)])
    whole = jax.device_put(packed[:m * LEAF])
    t = time.perf_counter()
    jax.block_until_ready(split(whole))
    compile_s = time.perf_counter() - t
    rows.append((f"jitted split into {m:,} outputs (compile {compile_s:.1f} s; "
                 f"per leaf of {m:,})", lambda: jax.block_until_ready(split(whole)), m))
    out = [f"## floors at {n:,} leaves (best of 3)", "| operation | total ms | µs/leaf |",
           "|---|---|---|"]
    for name, fn, *count in rows:
        s = _best(fn)
        k = count[0] if count else n
        out.append(f"| {name} | {s * 1e3:.1f} | {s / k * 1e6:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,50000")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--numpy", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="cProfile the three phases at N leaves (0: off)")
    p.add_argument("--floors", type=int, default=0, metavar="N",
                   help="measure the no-jaxckpt floors at N leaves (0: off)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--dir", default=None, help="where checkpoints go (default: a temp dir)")
    args = p.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="per_leaf_", dir=args.dir)
    try:
        rows = []
        for n in [int(s) for s in args.sizes.split(",") if s]:
            for kind in ("jax", "numpy") if args.numpy else ("jax",):
                rows.append((kind, n, measure(n, kind, args.reps, workdir)))
                print(f"done {kind} {n}", file=sys.stderr, flush=True)
        if rows:
            print(f"# per-leaf costs ({LEAF} float32 per leaf, max_to_keep=2, "
                  f"median of {args.reps} after 2 warm-up saves; jax {jax.__version__})")
            print(table(rows))
        if args.floors:
            print()
            print(floors(args.floors))
        if args.profile:
            print()
            print(profile(args.profile, args.top, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
