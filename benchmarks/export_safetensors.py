"""The size and time of a 1 GiB ``jaxckpt export --format safetensors`` (issue 19).

Saves a checkpoint of ``--gib`` GiB (float32 leaves of 64 MiB plus a few
hundred small ones, as a model's params), exports it with the default shard
size and host budget, and prints the export's seconds, throughput, files and
bytes, and the process's peak RSS growth during the export (the host budget
at work). Run: ``python benchmarks/export_safetensors.py [--gib 1] [--dir D]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import jaxckpt


# Peak RSS of the process itself (ru_maxrss survives fork and exec: the parent's).
HWM = ("def _hwm():\n"
       "    for line in open('/proc/self/status'):\n"
       "        if line.startswith('VmHWM:'):\n"
       "            return int(line.split()[1]) / 1024\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(dir=args.dir, prefix="jaxckpt-export-")
    try:
        big = 64 << 20
        n_big = max(1, int(args.gib * (1 << 30)) // big)
        rng = np.random.default_rng(0)
        tree = {"params": {f"layer_{i:02d}": {"kernel": rng.standard_normal(
            (4096, big // 4 // 4096), np.float32)} for i in range(n_big)}}
        for i in range(256):
            tree["params"][f"norm_{i:03d}"] = {"scale": np.ones(1024, np.float32)}
        ckpt = os.path.join(root, "ckpt")
        jaxckpt.save(ckpt, tree)
        nbytes = sum(x.nbytes for x in __import__("jax").tree.leaves(tree))
        del tree
        out = os.path.join(root, "hf")
        # In a fresh process, so that its peak RSS is the export's alone.
        code = (HWM + "import json, time, jaxckpt\n"
                "t0 = time.perf_counter()\n"
                f"done = jaxckpt.export_safetensors({ckpt!r}, {out!r}, prefix='params')\n"
                "s = time.perf_counter() - t0\n"
                "print(json.dumps([s, done['tensors'], done['files'],\n"
                "                  _hwm()]))\n")
        base = subprocess.run([sys.executable, "-c", HWM + "import jaxckpt; jaxckpt.save; print(_hwm())"],
                              capture_output=True, text=True, check=True)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        seconds, tensors, files, peak = json.loads(proc.stdout.strip().splitlines()[-1])
        before = float(base.stdout.strip().splitlines()[-1])
        on_disk = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"exported {nbytes / 2**30:.3f} GiB of tensors ({tensors} tensors) in "
              f"{seconds:.2f} s = {nbytes / seconds / 2**30:.2f} GiB/s; "
              f"{len(files)} shard(s) + index, {on_disk} bytes on disk "
              f"(+{on_disk - nbytes} bytes of headers and index); "
              f"peak RSS of the exporting process {peak:.0f} MiB "
              f"(an idle process after loading jax and jaxckpt: {before:.0f} MiB)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
