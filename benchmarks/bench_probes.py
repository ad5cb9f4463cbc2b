"""Facts measured in fresh processes: import times, and who fsyncs what.

``import_times`` starts a fresh interpreter per sample (interleaving the
modules) and times only the ``import`` statement inside it.

``fsync_probe`` runs one small save of a library in a child process under
``strace -f -y -e trace=fsync,fdatasync,sync_file_range,msync,rename,renameat2``
and compares the fsync'd paths with the files the committed checkpoint holds.
Run as a script (``python bench_probes.py save LIB DIR``) it is that child.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

_IMPORT = ("import time; t = time.perf_counter(); import {m}; "
           "print(time.perf_counter() - t)")
# The same module imported after jax in the same fresh interpreter: what it
# adds to a program that already uses jax (less noisy than a difference of
# two separate medians).
_AFTER_JAX = ("import time, jax; t = time.perf_counter(); import {m}; "
              "print(time.perf_counter() - t)")


NO_PYC = " (no bytecode cache)"


def _env(pycache: str | None) -> dict[str, str]:
    """The children's environment. With ``pycache``, bytecode is cached there
    (as an installed package's is), even where PYTHONDONTWRITEBYTECODE is
    set: this box sets it, so each import compiled jaxckpt's ~60 modules from
    source, which issue 17's +414 ms measured. Without, bytecode is neither
    written nor kept (what was cached beside the sources is still read: jax's,
    installed by pip)."""
    env = dict(os.environ)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def import_times(modules: list[str], samples: int = 7) -> dict[str, dict]:
    """Seconds for ``import M`` in a fresh interpreter: median, min, max, samples.

    Also ``M after jax`` for every M but jax: the import's cost in a fresh
    interpreter that has already imported jax; and ``jaxckpt after jax (no
    bytecode cache)``, every module compiled from source. The others run with
    bytecode cached in a temporary directory, warmed by one import first.
    """
    keys = modules + [f"{m} after jax" for m in modules if m != "jax"]
    if "jaxckpt" in modules:
        keys.append("jaxckpt after jax" + NO_PYC)
    runs: dict[str, list[float]] = {m: [] for m in keys}
    errors: dict[str, str] = {}
    pycache = tempfile.mkdtemp(prefix="bench-pycache-")
    cached = _env(pycache)
    for m in modules:  # compile once, into the cache
        subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True, env=cached)
    try:
        _sample(keys, samples, runs, errors, cached)
    finally:
        shutil.rmtree(pycache, ignore_errors=True)
    return _summary(keys, runs, errors)


def _sample(keys: list[str], samples: int, runs: dict, errors: dict, cached: dict) -> None:
    for _ in range(samples):
        for key in keys:
            if key in errors:
                continue
            name = key.removesuffix(NO_PYC)
            m, _, after = name.partition(" after ")
            code = (_AFTER_JAX if after else _IMPORT).format(m=m)
            env = _env(None) if key.endswith(NO_PYC) else cached
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env=env)
            if p.returncode:
                errors[key] = (p.stderr.strip().splitlines()[-1] if p.stderr
                               else f"rc {p.returncode}")
            else:
                runs[key].append(float(p.stdout.strip().splitlines()[-1]))


def _summary(keys: list[str], runs: dict, errors: dict) -> dict[str, dict]:
    out = {}
    for m in keys:
        if m in errors:
            out[m] = {"error": errors[m]}
        else:
            xs = runs[m]
            out[m] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
                      "n": len(xs), "samples": xs}
    return out


def _child_save(lib: str, directory: str) -> None:
    import jax.numpy as jnp
    import numpy as np

    tree = {"small": jnp.arange(1000, dtype=jnp.float32),
            "large": jnp.asarray(np.ones((1024, 1024), np.float32)),
            "nested": {"b": jnp.zeros((7, 3), jnp.int32)}}
    if lib == "jaxckpt":
        import jaxckpt

        with jaxckpt.CheckpointManager(directory) as m:
            m.save(tree, checkpoint_number=1)
    else:
        import orbax.checkpoint as ocp

        opts = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
        with ocp.CheckpointManager(directory, options=opts) as m:
            m.save(1, args=ocp.args.StandardSave(tree))
            m.wait_until_finished()


# strace -y prints "fsync(5</abs/path>)".
_FSYNC = re.compile(r"\b(fsync|fdatasync|sync_file_range|msync)\((\d+)<([^>]*)>")
_RENAME = re.compile(r"\b(rename|renameat2?)\(")


def _normalise(rel: str) -> str:
    """Maps temporary names (checkpoint directories, tensorstore's ``.__lock``
    files) to the final names they are renamed to."""
    parts = []
    for part in rel.split("/"):
        part = re.sub(r"\.orbax-checkpoint-tmp(-\d+)?$", "", part)
        part = re.sub(r"\.__lock$", "", part)
        m = re.match(r"^\.?(.+)\.tmp-[0-9a-f]+$", part)
        parts.append(m.group(1) if m else part)
    return "/".join(parts)


def fsync_probe(lib: str) -> dict:
    """What ``lib`` fsyncs in one save: counts, and the committed files never fsync'd."""
    strace = shutil.which("strace")
    if strace is None:
        return {"error": "strace not installed (apt-get install strace)"}
    root = tempfile.mkdtemp(prefix=f"fsync-{lib}-", dir=os.environ.get("BENCH_DIR"))
    directory = os.path.join(root, "run")
    log = os.path.join(root, "strace.txt")
    try:
        p = subprocess.run(
            [strace, "-f", "-qq", "-y", "-o", log, "-e",
             "trace=fsync,fdatasync,sync_file_range,msync,rename,renameat,renameat2",
             sys.executable, os.path.abspath(__file__), "save", lib, directory],
            capture_output=True, text=True)
        if p.returncode:
            tail = (p.stderr.strip().splitlines() or [f"rc {p.returncode}"])[-1]
            return {"error": f"probe failed: {tail}"}
        synced_files, synced_dirs, calls, renames = set(), set(), 0, 0
        # Is the last rename into `directory` (the commit) made durable by an
        # fsync of `directory` after it?
        commit_rename, parent_synced = False, False
        with open(log) as f:
            for line in f:
                if _RENAME.search(line) and directory in line:
                    renames += 1
                    dst = line.rsplit('"', 2)[-2] if line.count('"') >= 4 else ""
                    if os.path.dirname(dst) == directory:
                        commit_rename, parent_synced = True, False
                m = _FSYNC.search(line)
                if not m or not m.group(3).startswith(directory):
                    continue
                calls += 1
                if m.group(3) == directory:
                    parent_synced = True
                    continue
                rel = _normalise(os.path.relpath(m.group(3), directory))
                (synced_dirs if os.path.isdir(os.path.join(directory, rel))
                 else synced_files).add(rel)
        written = sorted(os.path.relpath(os.path.join(d, n), directory)
                         for d, _, names in os.walk(directory) for n in names)
        return {"fsync_calls": calls, "renames": renames, "files": len(written),
                "files_fsynced": sum(1 for w in written if w in synced_files),
                "dirs_fsynced": len(synced_dirs),
                "commit_rename_then_parent_fsync": commit_rename and parent_synced,
                "files_not_fsynced": [w for w in written if w not in synced_files]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "save":
        _child_save(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} save jaxckpt|orbax DIR")
