"""GPU path check: device-to-host snapshot time and donation safety.

Run on a machine with a GPU: ``python benchmarks/gpu_check.py [--mib 512]``.
Prints one JSON line per measurement. Not part of the test suite.
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
    ap.add_argument("--mib", type=int, default=512)
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
    print(json.dumps({"restore_to_gpu_s": statistics.median(times[1:]),
                      "restored_on": str(next(iter(r.values())).devices())}))
    shutil.rmtree(d, ignore_errors=True)
    if not ok:
        raise SystemExit("donation changed a saved checkpoint")


if __name__ == "__main__":
    main()
