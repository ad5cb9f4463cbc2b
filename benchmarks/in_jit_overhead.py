"""Step time of a scanned Flax/optax training loop with and without save_in_jit.

    python benchmarks/in_jit_overhead.py [--steps 200] [--every 20] [--reps 7]

Variants, each one compiled ``lax.scan`` over ``--steps`` steps of an MLP with
adam (state size printed):

  none        no save_in_jit at all
  never_due   save_in_jit every step, checkpoint_interval larger than the run:
              the cost of the on-device test alone (no copy, no callback)
  every_N     save_in_jit every step, checkpoint_interval N: a real save every
              N steps (device-to-host copy + callback; the write runs on the
              background writer and competes for the CPU)

Times are per step, from the call to ``block_until_ready`` of its result, one
warm-up call first; pending writes are drained between repetitions, outside
the timed region. Prints medians with min/max. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import jaxckpt


class MLP(nn.Module):
    width: int
    depth: int

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(1)(x)


def make(width: int, depth: int, batch: int, steps: int):
    model = MLP(width, depth)
    xs = jax.random.normal(jax.random.key(1), (steps, batch, 32), jnp.float32)
    ys = jnp.sum(xs, axis=-1, keepdims=True)
    params = model.init(jax.random.key(0), xs[0])
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=optax.adam(1e-3))

    def step(state, batch):
        x, y = batch
        grads = jax.grad(lambda p: jnp.mean((state.apply_fn(p, x) - y) ** 2))(state.params)
        return state.apply_gradients(grads=grads)

    return state, step, (xs, ys)


def loop(step, mngr):
    def body(state, batch):
        state = step(state, batch)
        if mngr is not None:
            mngr.save_in_jit(state)
        return state, None

    return jax.jit(lambda state, data: jax.lax.scan(body, state, data)[0])


def measure(name, fn, state, data, steps, reps, mngr):
    # Each call continues from the last one, so that steps keep rising and every
    # due step really saves (save() skips a step at or below the last saved one).
    state = jax.block_until_ready(fn(state, data))  # compile and warm up
    if mngr is not None:
        mngr.wait_until_finished()
    per_step = []
    for _ in range(reps):
        t = time.perf_counter()
        state = jax.block_until_ready(fn(state, data))
        per_step.append((time.perf_counter() - t) / steps * 1e3)
        if mngr is not None:
            mngr.wait_until_finished()
    return name, per_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-pending", type=int, default=1)
    args = ap.parse_args()

    state, step, data = make(args.width, args.depth, args.batch, args.steps)
    nbytes = sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(state))
    print(f"device {jax.devices()[0]}, state {nbytes / 2**20:.1f} MiB, {args.steps} steps "
          f"per scan, {args.reps} reps")
    results = []
    results.append(measure("none", loop(step, None), state, data, args.steps, args.reps, None))
    for name, interval in (("never_due", 10 * args.steps), (f"every_{args.every}", args.every)):
        d = tempfile.mkdtemp()
        try:
            with jaxckpt.CheckpointManager(d, max_to_keep=2, step_counter=lambda s: s.step,
                                           checkpoint_interval=interval,
                                           max_pending=args.max_pending) as mngr:
                results.append(measure(name, loop(step, mngr), state, data, args.steps, args.reps, mngr))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    base = statistics.median(results[0][1])
    print(f"{'variant':<12} {'median ms/step':>15} {'min':>8} {'max':>8} {'vs none':>8}")
    for name, xs in results:
        med = statistics.median(xs)
        print(f"{name:<12} {med:>15.3f} {min(xs):>8.3f} {max(xs):>8.3f} "
              f"{(med / base - 1) * 100:>+7.1f}%")


if __name__ == "__main__":
    main()
