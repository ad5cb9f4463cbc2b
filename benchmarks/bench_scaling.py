"""How save() blocking, save -> commit and restore grow with leaves and bytes (issue 17).

    python benchmarks/bench_scaling.py [--leaves 100,1000,10000,50000,100000]
        [--max-bytes auto] [--reps 2] [--orbax-cap-s 200] [--png PATH] [--json PATH]

Two sweeps, jaxckpt and Orbax interleaved point by point through the same
savers as the bench (``bench_savers``: async managers, ``max_to_keep=None``,
restore into ``ShapeDtypeStruct`` targets carrying shardings, arrays ready):

- leaves: N leaves of 256 float32 each (``per_leaf.py``'s dict-of-dicts tree);
- bytes: 16 float32 matrices, 16 MiB in all up to ``--max-bytes`` (default:
  an eighth of the available memory or of the free disk, at most 8 GiB),
  x4 per point.

Each point: one warm-up save, then ``--reps`` saves of fresh arrays (every
byte changed) and ``--reps`` restores; the medians are plotted (log-log) into
one PNG. Orbax's per-leaf cost makes its large-leaf points take minutes: a
point whose predicted save + restore (from its previous point, linearly in
leaves or bytes) exceeds ``--orbax-cap-s`` is skipped, and the legend says
where its sweep stopped. ``bench.py`` runs this as its last step and takes
the per-leaf rows of its table from the leaf sweep.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_savers  # noqa: E402

MiB = 1 << 20
LEAF = 256  # float32 per leaf in the leaf sweep
LIBS = {"jaxckpt": bench_savers.JaxckptSaver, "orbax": bench_savers.OrbaxSaver}
METRICS = (("block", "save() blocks"), ("commit", "save -> committed"), ("restore", "restore"))


def leaf_tree(n: int, seed: int) -> dict:
    """``n`` leaves of 256 float32, 16 per inner dict, made by one device_put."""
    base = np.arange(LEAF, dtype=np.float32) + seed
    host: dict = {}
    for i in range(n):
        host.setdefault(f"layer_{i // 16:05d}", {})[f"w_{i % 16:02d}"] = base.copy()
    leaves, treedef = jax.tree_util.tree_flatten(host)
    return jax.tree_util.tree_unflatten(treedef, jax.device_put(leaves))


def bytes_tree(total: int, seed: int) -> dict:
    rows = max(1, total // 16 // (1024 * 4))
    return {f"w{i:02d}": jnp.full((rows, 1024), seed + i, jnp.float32) for i in range(16)}


def _bump(tree: Any) -> Any:
    return jax.block_until_ready(jax.tree.map(lambda x: x + jnp.asarray(1, x.dtype), tree))


def _target(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def auto_max_bytes(directory: str) -> int:
    """A power of two <= 8 GiB and <= 1/8 of available memory and of free disk
    (a point holds the state, its next version, a restored copy and the page
    cache of its checkpoints)."""
    avail = 8 << 30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = min(avail, int(line.split()[1]) * 1024 // 8)
    except OSError:
        pass
    st = os.statvfs(directory)
    avail = min(avail, st.f_bavail * st.f_frsize // 8)
    return max(16 * MiB, 1 << (avail.bit_length() - 1))


def byte_points(max_bytes: int) -> list[int]:
    pts, b = [], 16 * MiB
    while b <= max_bytes:
        pts.append(b)
        b *= 4
    if pts[-1] < max_bytes:
        pts.append(max_bytes)
    return pts


def _point(lib: str, directory: str, make: Any, reps: int) -> dict:
    tree = make(0)
    saver = LIBS[lib](directory, tree, _target(tree))
    block, commit, restore = [], [], []
    try:
        saver.save(0, tree)  # warm-up: compiles, opens, allocates once
        for i in range(1, reps + 1):
            tree = _bump(tree)
            b, c = saver.save(i, tree)
            block.append(b)
            commit.append(c)
        del tree
        gc.collect()
        for _ in range(reps):
            restore.append(saver.restore())
    finally:
        saver.close()
        shutil.rmtree(directory, ignore_errors=True)
    med = statistics.median
    return {"block": med(block), "commit": med(commit), "restore": med(restore),
            "samples": {"block": block, "commit": commit, "restore": restore}}


def sweep(kind: str, points: list[int], reps: int, root: str, orbax_cap_s: float,
          log: Any = None) -> dict:
    """{lib: {"points": {x: medians}, "capped_after": x or None}} for one sweep."""
    out: dict[str, Any] = {lib: {"points": {}, "capped_after": None, "error": None}
                           for lib in LIBS}
    for x in points:
        make = (lambda s, x=x: leaf_tree(x, s)) if kind == "leaves" else (
            lambda s, x=x: bytes_tree(x, s))
        for lib in LIBS:
            r = out[lib]
            if r["capped_after"] is not None or r["error"]:
                continue
            if lib == "orbax" and r["points"]:
                last_x = max(r["points"])
                last = r["points"][last_x]
                predicted = (reps + 1) * last["commit"] + reps * last["restore"]
                if predicted * x / last_x > orbax_cap_s:
                    r["capped_after"] = last_x
                    continue
            if log:
                log(f"scaling: {lib}, {x:,} {'leaves' if kind == 'leaves' else 'bytes'}")
            t = time.perf_counter()
            try:
                r["points"][x] = _point(lib, os.path.join(root, f"{kind}-{lib}-{x}"), make, reps)
                r["points"][x]["seconds"] = time.perf_counter() - t
            except Exception as e:  # report it; the other contender goes on
                r["error"] = f"{x}: {type(e).__name__}: {e}"[:200]
            gc.collect()
    return out


def run(leaves: list[int], max_bytes: int, reps: int, root: str, orbax_cap_s: float,
        log: Any = None) -> dict:
    return {"leaf_bytes": LEAF * 4, "reps": reps, "orbax_cap_s": orbax_cap_s,
            "leaves": sweep("leaves", leaves, reps, root, orbax_cap_s, log),
            "bytes": sweep("bytes", byte_points(max_bytes), reps, root, orbax_cap_s, log)}


def plot(result: dict, path: str, note: str) -> str:
    """Writes the two log-log panels to ``path`` (PNG); returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = {"block": "tab:blue", "commit": "tab:orange", "restore": "tab:green"}
    styles = {"jaxckpt": ("-", "o"), "orbax": ("--", "s")}
    for ax, kind, xlabel in ((axes[0], "leaves", f"leaves ({result['leaf_bytes']} B each)"),
                             (axes[1], "bytes", "state size, MiB (16 leaves)")):
        for lib, (ls, marker) in styles.items():
            r = result[kind][lib]
            xs = sorted(int(x) for x in r["points"])
            if not xs:
                continue
            scale = 1 if kind == "leaves" else MiB
            label_lib = lib
            if r.get("capped_after"):
                cap = int(r["capped_after"])
                label_lib += (f" (stopped after {cap // scale:,}"
                              f"{'' if kind == 'leaves' else ' MiB'}: next point "
                              f"> {result['orbax_cap_s']:.0f} s)")
            if r.get("error"):
                label_lib += " (failed later)"
            for key, label in METRICS:
                ys = [r["points"][x if x in r["points"] else str(x)][key] for x in xs]
                ax.plot([x / scale for x in xs], ys, ls=ls, marker=marker, color=colors[key],
                        label=f"{label}, {label_lib}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("against leaf count")
    axes[1].set_title("against bytes")
    fig.suptitle("jaxckpt (solid) vs Orbax (dashed): save() blocking, save -> commit, restore",
                 fontsize=11)
    fig.text(0.5, 0.01, note, ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_bytes(text: str, directory: str) -> int:
    if text == "auto":
        return auto_max_bytes(directory)
    units = {"k": 1 << 10, "m": MiB, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaves", default="100,1000,10000,50000,100000")
    ap.add_argument("--max-bytes", default="auto", help="e.g. 2GiB (default: auto)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--orbax-cap-s", type=float, default=200.0)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = os.path.join(HERE, "results")
    os.makedirs(results, exist_ok=True)
    root = tempfile.mkdtemp(prefix="scaling-", dir=args.dir or results)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    load = os.getloadavg()[0]
    try:
        result = run([int(s) for s in args.leaves.split(",") if s],
                     parse_bytes(args.max_bytes, root), args.reps, root, args.orbax_cap_s,
                     lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr,
                                     flush=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    path = args.json or os.path.join(results, f"scaling-{stamp}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    png = plot(result, args.png or os.path.join(results, f"scaling-{stamp}.png"),
               f"{os.cpu_count()} CPUs, jax {jax.__version__}, {jax.devices()[0].platform}, "
               f"{time.strftime('%Y-%m-%d', time.gmtime())}; load average {load:.1f} at the "
               f"start; medians of {args.reps}")
    print(f"samples: {path}\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
