"""GPU path check: save() blocking, device-to-host bandwidth, donation
safety, restore onto the GPU, against issue 17's targets.

Run on a machine with a GPU: ``python benchmarks/gpu_check.py [--mib 2048]``.
Prints one JSON line per measurement, then one with the targets:
save() <= 5 ms for 2 GiB (large leaves leave their copies in flight,
``_save/host_copies``), jaxckpt's device-to-host rate >= 80% of plain
``jax.device_put`` into pinned host memory, restore >= 80% of
(read to host + host-to-device). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxckpt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--leaves", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    dev = jax.devices()[0]
    n = args.mib * 2**20 // 4 // args.leaves
    keys = jax.random.split(jax.random.key(0), args.leaves)
    state = {f"w{i}": jax.random.normal(k, (n,), jnp.float32) for i, k in enumerate(keys)}
    jax.block_until_ready(state)
    print(json.dumps({"device": str(dev), "platform": dev.platform, "mib": args.mib,
                      "leaves": args.leaves}))

    # Raw device-to-host: every transfer started, then awaited.
    raw = []
    for _ in range(args.reps + 1):
        t = time.perf_counter()
        for x in state.values():
            x.copy_to_host_async()
        [np.asarray(x) for x in state.values()]
        raw.append(time.perf_counter() - t)
        state = {k: v + 0 for k, v in state.items()}  # fresh arrays: no cached host copy
        jax.block_until_ready(state)

    # Plain device_put into pinned host memory (the link's rate) and back.
    pinned = {k: v.sharding.with_memory_kind("pinned_host") for k, v in state.items()}
    to_host, to_dev = [], []
    for _ in range(args.reps + 1):
        t = time.perf_counter()
        host = jax.block_until_ready(jax.device_put(state, pinned))
        to_host.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(jax.device_put(host, {k: v.sharding for k, v in state.items()}))
        to_dev.append(time.perf_counter() - t)
        del host
    link_d2h = args.mib / 1024 / statistics.median(to_host[1:])
    link_h2d = args.mib / 1024 / statistics.median(to_dev[1:])
    print(json.dumps({"pinned_d2h_GBps": link_d2h, "pinned_h2d_GBps": link_h2d}))

    d = tempfile.mkdtemp()
    block, commit = [], []
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        for _ in range(args.reps + 1):
            state = {k: v + 0 for k, v in state.items()}
            jax.block_until_ready(state)
            t = time.perf_counter()
            m.save(state)
            block.append(time.perf_counter() - t)
            m.wait_until_finished()
            commit.append(time.perf_counter() - t)
    print(json.dumps({
        "raw_d2h_s": statistics.median(raw[1:]),
        "jaxckpt_save_block_s": statistics.median(block[1:]),
        "jaxckpt_save_to_commit_s": statistics.median(commit[1:]),
        "d2h_GBps": args.mib / 1024 / statistics.median(raw[1:]),
    }))

    # Donation: overwrite the saved buffers right after save() returns.
    expect = {k: np.asarray(v).copy() for k, v in state.items()}
    zero = jax.jit(lambda t: jax.tree.map(lambda x: x * 0 - 1, t), donate_argnums=0)
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        path = m.save(state, checkpoint_number=1000)
        state = zero(state)  # donates every buffer that was just saved
        jax.block_until_ready(state)
        m.wait_until_finished()
        out = jaxckpt.restore(path)
    ok = all(np.array_equal(out[k], expect[k]) for k in expect)
    donated = float(np.asarray(state["w0"])[0]) == -1.0
    print(json.dumps({"donation_safe": ok, "buffers_overwritten_after_save": donated}))

    # Restore onto the GPU with a target.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    times = []
    for _ in range(args.reps + 1):
        t = time.perf_counter()
        r = jaxckpt.restore(path, abstract)
        jax.block_until_ready(r)
        times.append(time.perf_counter() - t)
    reads = []
    for _ in range(args.reps + 1):
        t = time.perf_counter()
        jaxckpt.restore(path)  # NumPy on the host: the read alone
        reads.append(time.perf_counter() - t)
    restore_s, read_s = statistics.median(times[1:]), statistics.median(reads[1:])
    print(json.dumps({"restore_to_gpu_s": restore_s, "read_to_host_s": read_s,
                      "restored_on": str(next(iter(r.values())).devices())}))
    block_s = statistics.median(block[1:])
    write_s = statistics.median(commit[1:])
    limit_s = read_s + args.mib / 1024 / link_h2d
    print(json.dumps({
        "target_save_block_ms<=5_for_2GiB": round(block_s * 1e3 * 2048 / args.mib, 2),
        "raw_d2h_vs_pinned_link": round(args.mib / 1024 / statistics.median(raw[1:]) / link_d2h, 3),
        "save_to_commit_s": round(write_s, 3),
        "target_restore_vs_read_plus_h2d>=0.8": round(limit_s / restore_s, 3),
    }))
    shutil.rmtree(d, ignore_errors=True)
    if not ok:
        raise SystemExit("donation changed a saved checkpoint")


if __name__ == "__main__":
    main()
