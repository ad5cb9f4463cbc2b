"""jaxckpt against Orbax and the hardware's limits, in one run (issue 3).

    python benchmarks/bench.py [--workloads W1,W2,W3,W4,W5] [--scale 1] [--reps 3]
                               [--dir DIR] [--json PATH] [--cold] [--settle S]

Prints one table and writes every sample to JSON (default
``benchmarks/results/bench-<UTC time>.json``). For each of W1-W3 the same-shaped
tree is written, in the same directory, by plain file writes + fsync (one
file per leaf, and one packed file), by Orbax's async CheckpointManager and
by jaxckpt's, with the contenders interleaved save by save so that a change
in machine load hits all of them alike; then each restores its newest
checkpoint (the raw files are read into fresh NumPy buffers). W4 trains a
small jitted Flax MLP with and without checkpointing. Every W1-W3 save gets
fresh arrays with every byte changed, and jaxckpt runs twice, incremental
(its default) and with ``incremental=False``. W5 (bench_finetune) is a LoRA
fine-tune: a 1 GiB frozen base, only adapters and moments change. A contender that fails
is reported in its cells; the others go on. See the table's footnotes for
what each number means.

Modules: bench_trees (W1-W3, W5), bench_finetune (W5), bench_savers (raw, Orbax, jaxckpt), bench_train
(W4), bench_memory (peak RSS, page faults, memcpy), bench_probes (imports,
fsync under strace), bench_report (the table). profile_jaxckpt.py times
jaxckpt's internals on the same trees.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_finetune  # noqa: E402
import bench_memory  # noqa: E402
import bench_probes  # noqa: E402
import bench_scaling  # noqa: E402
from bench_report import render, stat  # noqa: E402
import bench_savers  # noqa: E402
import bench_train  # noqa: E402
import bench_trees  # noqa: E402

LIBS = ("orbax", "jaxckpt")


def _error(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".splitlines()[0]
    return msg[:200]


# ---------------------------------------------------------------- workloads W1-W3


WARMUP_SAVES = 2


def _settle(seconds: float) -> None:
    # Freed memory is handed back to the hypervisor ~2 s after it is freed on
    # this VM (free page reporting); settling first gives each timed call the
    # cold allocations a real run sees between saves minutes apart.
    if seconds > 0:
        bench_memory.settled_rss()
        time.sleep(seconds)


def storage_workload(name: str, args: argparse.Namespace, root: str) -> dict:
    """Saves and restores of one tree by every contender; samples and errors."""
    tree = bench_trees.build(name, args.scale)
    target = bench_trees.abstract(tree)
    state_bytes = bench_trees.nbytes(tree)
    out: dict[str, Any] = {"tree": bench_trees.describe(tree), "bytes": state_bytes,
                           "leaves": len(jax.tree.leaves(tree)), "contenders": {}}
    host = [np.asarray(x) for x in jax.tree.leaves(tree)]
    copies = [bench_memory.memcpy_times(host) for _ in range(args.reps)]
    out["memcpy_fresh"] = stat([c["fresh"] for c in copies])
    out["memcpy_reused"] = stat([c["reused"] for c in copies])
    del host
    if not args.no_probes:
        # What any restore (fresh arrays) and any buffered write (fresh page
        # cache) pays here before a byte moves: faulting in state-size memory.
        touches = [bench_memory.touch_fresh_seconds(state_bytes, 3.0) for _ in range(args.reps)]
        out["touch_cold"] = stat([x["cold"] for x in touches])
        out["touch_warm"] = stat([x["warm"] for x in touches])

    savers: dict[str, Any] = {}
    results: dict[str, dict] = {}
    for key, factory in bench_savers.SAVERS.items():
        results[key] = {"block": [], "commit": [], "save_peak_extra": [], "restore": [],
                        "restore_peak_extra": [], "error": None}
        try:
            savers[key] = factory(os.path.join(root, name, key), tree, target)
        except Exception as e:
            results[key]["error"] = f"setup: {_error(e)}"
            traceback.print_exc(file=sys.stderr)

    def each(fn: Callable[[str, Any], None], what: str) -> None:
        for key in list(savers):
            try:
                fn(key, savers[key])
            except Exception as e:
                results[key]["error"] = f"{what}: {_error(e)}"
                traceback.print_exc(file=sys.stderr)
                try:
                    savers.pop(key).close()
                except Exception:
                    pass

    saves = max(20, args.reps) if name == "W3" else args.reps
    settle = args.settle if name != "W3" else 0.0
    try:
        # Two warm-up saves: from the third on, a manager has a superseded
        # checkpoint whose cached pages it recycles (steady state; the first
        # save after opening has none, which the README reports apart).
        # Every save gets fresh arrays with every byte changed (the same tree for
        # every contender), made outside the timings: saving one tree again would
        # let an incremental checkpointer share it all.
        for w in range(WARMUP_SAVES):
            tree = bench_trees.vary(name, tree)
            each(lambda k, s, w=w, tree=tree: s.save(w, tree), "warm-up save")
        for i in range(WARMUP_SAVES, WARMUP_SAVES + saves):
            tree = bench_trees.vary(name, tree)

            def one_save(key: str, saver: Any, i: int = i, tree: Any = tree) -> None:
                _settle(settle)
                with bench_memory.PeakRSS() as peak:
                    block, commit = saver.save(i, tree)
                r = results[key]
                r["block"].append(block)
                r["commit"].append(commit)
                r["save_peak_extra"].append(peak.extra)
            each(one_save, f"save {i}")
        for key, saver in savers.items():
            results[key]["files"] = saver.files()
            results[key]["disk_bytes"] = saver.disk_bytes()
        each(lambda k, s: s.restore(), "warm-up restore")
        for i in range(args.reps):
            def one_restore(key: str, saver: Any) -> None:
                if args.cold:
                    saver.evict_latest()
                _settle(settle)
                with bench_memory.PeakRSS() as peak:
                    seconds = saver.restore()
                results[key]["restore"].append(seconds)
                results[key]["restore_peak_extra"].append(max(0, peak.extra - state_bytes))
            each(one_restore, f"restore {i + 1}")
    finally:
        bench_savers.close_all(savers, os.path.join(root, name), args.quiet)
    for key, r in results.items():
        out["contenders"][key] = {
            "block": stat(r["block"]), "commit": stat(r["commit"]),
            "save_peak_extra_bytes": stat(r["save_peak_extra"]),
            "restore": stat(r["restore"]),
            "restore_peak_extra_bytes": stat(r["restore_peak_extra"]),
            "files": r.get("files"), "disk_bytes": r.get("disk_bytes"), "error": r["error"]}
    return out


# ---------------------------------------------------------------- W4, growth


def train_workload(args: argparse.Namespace, root: str) -> dict:
    width = max(16, int(round(512 * math.sqrt(args.scale))))
    step, state, data = bench_train.make(width=width)
    state_bytes = bench_trees.nbytes(state)
    # Compile (and warm the allocator) outside every timing.
    bench_train.run(bench_train.Loop("compile", None, None, None), step, state, data,
                    20, args.w4_every, 0)
    factories = bench_train.loops(os.path.join(root, "W4"))
    loops, errors, runs = {}, {}, {k: [] for k in factories}
    for key, make in factories.items():
        try:
            loops[key] = make()
        except Exception as e:
            errors[key] = f"setup: {_error(e)}"
    try:
        for rep in range(args.w4_reps + 1):  # rep 0 is the warm-up
            for key in list(loops):
                try:
                    r = bench_train.run(loops[key], step, state, data, args.w4_steps,
                                        args.w4_every, 1 + rep * 1000)
                except Exception as e:
                    errors[key] = f"run {rep}: {_error(e)}"
                    traceback.print_exc(file=sys.stderr)
                    loops.pop(key).close()
                    continue
                if rep:
                    runs[key].append(dict(r, rep=rep))
        try:  # once, untimed: the interval checkpoint_interval="auto" picks here
            auto = bench_train.auto_interval(os.path.join(root, "W4", "auto"), step, state, data,
                                             args.w4_steps, args.w4_mtbf)
        except Exception as e:
            auto = {"error": _error(e)}
    finally:
        for loop in loops.values():
            try:
                loop.close()
            except Exception as e:
                print(f"closing W4 {loop.name}: {_error(e)}", file=sys.stderr)
        shutil.rmtree(os.path.join(root, "W4"), ignore_errors=True)
    # Each contender's loop against the no-checkpointing loop of the same
    # repetition (run just before it): slow drifts of this VM cancel out.
    base = {r["rep"]: r["loop_s"] for r in runs["none"]}
    paired = {k: stat([r["loop_s"] / base[r["rep"]] - 1 for r in runs[k] if r["rep"] in base])
              for k in factories if k != "none"}
    return {"state_bytes": state_bytes, "leaves": len(jax.tree.leaves(state)), "width": width,
            "steps": args.w4_steps, "every": args.w4_every, "auto": auto,
            "contenders": {k: {"loop": stat([r["loop_s"] for r in runs[k]]),
                               "step": stat([r["loop_s"] / args.w4_steps for r in runs[k]]),
                               "drain": stat([r["drain_s"] for r in runs[k]]),
                               "blocked_per_save": stat([r["blocked_s"] / r["saves"]
                                                         for r in runs[k] if r["saves"]]),
                               "overhead": paired.get(k),
                               "error": errors.get(k)} for k in factories}}


def growth(args: argparse.Namespace, root: str, saves: int = 50) -> dict:
    """RSS after save 1 and save ``saves`` (each waited for), max_to_keep=2, W3 tree."""
    tree = bench_trees.build("W3", args.scale)
    out = {}
    for key in LIBS:
        d = os.path.join(root, f"growth-{key}")
        try:
            if key == "jaxckpt":
                import jaxckpt

                m = jaxckpt.CheckpointManager(d, max_to_keep=2)
                save = lambda n: m.save(tree, checkpoint_number=n)  # noqa: E731
            else:
                import orbax.checkpoint as ocp

                opts = ocp.CheckpointManagerOptions(max_to_keep=2,
                                                    enable_async_checkpointing=True)
                m = ocp.CheckpointManager(d, options=opts)
                save = lambda n: m.save(n, args=ocp.args.StandardSave(tree))  # noqa: E731
            rss = {}
            try:
                for n in range(1, saves + 1):
                    save(n)
                    m.wait_until_finished()
                    if n in (1, 10, saves):
                        rss[n] = bench_memory.settled_rss()
            finally:
                m.close()
            out[key] = {"rss_bytes": rss, "growth_bytes": rss[saves] - rss[1],
                        "growth_10_to_end_bytes": rss[saves] - rss[10], "error": None}
        except Exception as e:
            out[key] = {"error": _error(e)}
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


# ---------------------------------------------------------------- main


def _git_rev() -> str | None:
    try:
        return subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None


def _fs_type(path: str) -> str | None:
    best, kind = "", None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _, mnt, fstype, *_ = line.split()
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, kind = mnt, fstype
    except OSError:
        pass
    return kind


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("jax", "jaxlib", "tensorstore", "numpy", "flax", "optax", "orbax.checkpoint",
                "jaxckpt"):
        try:
            from importlib import metadata

            out[mod] = metadata.version(mod.replace(".", "-"))
        except Exception:
            out[mod] = None
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="W1,W2,W3,W4,W5",
                    help="comma-separated subset of W1,W2,W3,W4,W5 (default: all)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies every tree's bytes (leaf counts stay)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up")
    ap.add_argument("--dir", default=None,
                    help="where checkpoints are written (default: a temporary directory "
                         "under $BENCH_DIR, else under benchmarks/results/)")
    ap.add_argument("--json", default=None, help="where the samples go")
    ap.add_argument("--cold", action="store_true",
                    help="drop the checkpoint's pages from the page cache before each "
                         "restore (posix_fadvise DONTNEED), so restores read the disk")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to idle before each timed W1/W2 save and restore, so "
                         "that memory freed before it has gone back to the hypervisor "
                         "(free page reporting) as between real saves (default 0)")
    ap.add_argument("--quiet", type=float, default=5.0,
                    help="seconds to idle after each workload's cleanup (deleting and "
                         "syncing its checkpoints), so that the next starts on a quiet "
                         "machine (default 5)")
    ap.add_argument("--w4-steps", type=int, default=300)
    ap.add_argument("--w4-every", type=int, default=50)
    ap.add_argument("--w4-mtbf", type=float, default=3600.0,
                    help="mtbf_s for W4's checkpoint_interval='auto' run (default: 1 hour)")
    ap.add_argument("--w4-reps", type=int, default=7,
                    help="timed W4 repetitions after a warm-up (its loops vary ~10%% run to "
                         "run here, so more than --reps; default 7)")
    ap.add_argument("--no-probes", action="store_true",
                    help="skip the probes: page-fault rates, import times, fsync (strace), "
                         "memory growth over 50 saves")
    ap.add_argument("--no-scaling", action="store_true",
                    help="skip the scaling sweep (bench_scaling: leaves and bytes, jaxckpt "
                         "and Orbax, the plot and the per-leaf rows)")
    ap.add_argument("--scaling-leaves", default="100,1000,10000,50000,100000",
                    help="leaf counts of the scaling sweep")
    ap.add_argument("--scaling-max-bytes", default="auto",
                    help="largest state of the bytes sweep, e.g. 2GiB (default: auto, 1/8 of "
                         "the available memory and of the free disk, at most 8 GiB)")
    ap.add_argument("--scaling-reps", type=int, default=2)
    ap.add_argument("--orbax-cap-s", type=float, default=200.0,
                    help="skip an Orbax scaling point predicted to take longer (default 200)")
    ap.add_argument("--scaling-png", default=None,
                    help="where the plot goes (default benchmarks/results/scaling-<time>.png)")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="print the table of an earlier run's JSON and exit")
    args = ap.parse_args(argv)
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in args.workloads if w not in ("W1", "W2", "W3", "W4", "W5")]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from W1,W2,W3,W4,W5")
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    if not args.scale > 0:
        ap.error("--scale must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render:
        with open(args.render) as f:
            print(render(json.load(f)))
        return 0
    results_dir = os.path.join(HERE, "results")
    base = args.dir or os.environ.get("BENCH_DIR") or results_dir
    os.makedirs(base, exist_ok=True)
    root = tempfile.mkdtemp(prefix="bench-tmp-", dir=base)
    started = datetime.datetime.now(datetime.timezone.utc)
    meta = {"started": started.isoformat(timespec="seconds"), "argv": sys.argv[1:],
            "scale": args.scale, "reps": args.reps, "cold": args.cold, "settle": args.settle,
            "quiet": args.quiet, "w4_reps": args.w4_reps,
            "dir": root, "fs": _fs_type(root), "cpus": os.cpu_count(),
            "load_before": os.getloadavg(), "platform": platform.platform(),
            "jax_devices": [str(d) for d in jax.devices()], "git": _git_rev(),
            "versions": _versions(), "peak_memory_method": bench_memory.PeakRSS.method}
    report: dict[str, Any] = {"meta": meta, "workloads": {}}

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        if not args.no_probes:
            log("page-fault rate of fresh memory")
            report["page_faults"] = bench_memory.page_fault_rates()
        for name in args.workloads:
            log(f"{name} ...")
            try:
                if name == "W4":
                    report["workloads"][name] = train_workload(args, root)
                elif name == "W5":
                    report["workloads"][name] = bench_finetune.workload(args, root)
                else:
                    report["workloads"][name] = storage_workload(name, args, root)
            except Exception as e:  # report it; the other workloads go on
                traceback.print_exc(file=sys.stderr)
                report["workloads"][name] = {"error": _error(e)}
        if not args.no_scaling:
            log("scaling sweep (leaves, bytes)")
            try:
                report["scaling"] = bench_scaling.run(
                    [int(x) for x in args.scaling_leaves.split(",") if x],
                    bench_scaling.parse_bytes(args.scaling_max_bytes, root), args.scaling_reps,
                    os.path.join(root, "scaling"), args.orbax_cap_s, log)
                report["scaling"]["png"] = bench_scaling.plot(
                    report["scaling"], args.scaling_png or os.path.join(
                        results_dir, f"scaling-{started.strftime('%Y%m%dT%H%M%SZ')}.png"),
                    f"{os.cpu_count()} CPUs, {platform.platform()}, jax {jax.__version__} "
                    f"({jax.devices()[0].platform}), {started.strftime('%Y-%m-%d %H:%M')} UTC, "
                    f"git {meta['git']}; load average {meta['load_before'][0]:.1f} at the start; "
                    f"medians of {args.scaling_reps}")
            except Exception as e:  # report it; the rest goes on
                traceback.print_exc(file=sys.stderr)
                report["scaling_error"] = _error(e)
        if not args.no_probes:
            log("memory growth over 50 saves")
            report["growth"] = growth(args, root)
            log("import times (fresh interpreters)")
            report["imports"] = bench_probes.import_times(["jax", "jaxckpt", "orbax.checkpoint"])
            log("fsync probe (strace)")
            report["fsync"] = {lib: bench_probes.fsync_probe(lib) for lib in LIBS}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta["load_after"] = os.getloadavg()
    meta["seconds"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()

    path = args.json or os.path.join(
        results_dir, f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:  # before rendering, so that no sample is lost
        json.dump(report, f, indent=1, default=str)
    print(render(report))
    print(f"\nsamples: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
