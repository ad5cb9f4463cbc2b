"""Bytes per second to a local S3-compatible server (moto) versus the local disk.

    python benchmarks/object_store.py [--mib 256] [--leaves 16] [--reps 3]

Both through jaxckpt's synchronous ``save`` and ``restore``, same tree, medians
after a warm-up. moto keeps objects in its own process's memory and speaks
HTTP on loopback, so this measures jaxckpt + tensorstore's S3 path, not a
real object store's bandwidth.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np


def _start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(endpoint, timeout=1).read()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--leaves", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    proc, endpoint = _start_moto()
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1",
                      AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    try:
        import boto3

        import jaxckpt

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="bench")
        n = (args.mib << 20) // 4 // args.leaves
        tree = {f"w{i}": np.full(n, i, np.float32) for i in range(args.leaves)}
        nbytes = sum(v.nbytes for v in tree.values())
        root = tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR"))
        rows = []
        for label, base in (("local disk", root), ("S3 (moto, loopback)", "s3://bench/run")):
            saves, restores = [], []
            for r in range(args.reps + 1):
                path = f"{base}/c{r}"
                saves.append(_time(lambda: jaxckpt.save(path, tree)))
                restores.append(_time(lambda: jaxckpt.restore(path)))
            s, rr = statistics.median(saves[1:]), statistics.median(restores[1:])
            rows.append((label, s, rr, min(saves[1:]), max(saves[1:])))
        shutil.rmtree(root, ignore_errors=True)
        mib = nbytes / 2**20
        print(f"{mib:.0f} MiB in {args.leaves} leaves, medians of {args.reps} after a warm-up")
        print(f"{'':22}{'save MiB/s':>12}{'restore MiB/s':>15}{'save s (min-max)':>22}")
        for label, s, rr, lo, hi in rows:
            print(f"{label:22}{mib / s:>12.0f}{mib / rr:>15.0f}{s:>10.3f} ({lo:.3f}-{hi:.3f})")
        print(f"S3/disk: save {rows[0][1] / rows[1][1]:.2f}x, "
              f"restore {rows[0][2] / rows[1][2]:.2f}x the local disk's speed")
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
