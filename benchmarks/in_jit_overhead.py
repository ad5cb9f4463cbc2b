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
  callback_N  the floor JAX sets for every_N: the same ordered io_callback of
              the whole state inside the same lax.cond every N steps, doing
              nothing with it (JAX's operand copies and host round trip only)

Times are per step, from the call to ``block_until_ready`` of its result, one
warm-up call first, repetitions of the variants interleaved; pending writes
are drained between calls, outside the timed region. Prints medians with
min/max. Not part of the test suite.
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
from jax.experimental import io_callback
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


def loop_callback(step, every: int):
    """What save_in_jit compiles to, minus jaxckpt: the state sent to an
    ordered host callback that does nothing, every ``every`` steps."""
    def ignore(state):
        return None

    def send(state):
        io_callback(ignore, None, state, ordered=True)

    def body(state, batch):
        state = step(state, batch)
        jax.lax.cond(state.step % every == 0, send, lambda s: None, state)
        return state, None

    return jax.jit(lambda state, data: jax.lax.scan(body, state, data)[0])


def run_once(fn, state, data, mngr):
    t = time.perf_counter()
    state = jax.block_until_ready(fn(state, data))
    elapsed = time.perf_counter() - t
    if mngr is not None:
        mngr.wait_until_finished()  # outside the timed region
    return state, elapsed


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
    dirs = [tempfile.mkdtemp() for _ in range(2)]
    try:
        managers = [jaxckpt.CheckpointManager(d, max_to_keep=2, step_counter=lambda s: s.step,
                                              checkpoint_interval=interval,
                                              max_pending=args.max_pending)
                    for d, interval in zip(dirs, (10 * args.steps, args.every))]
        variants = [("none", loop(step, None), None),
                    ("never_due", loop(step, managers[0]), managers[0]),
                    (f"every_{args.every}", loop(step, managers[1]), managers[1]),
                    (f"callback_{args.every}", loop_callback(step, args.every), None)]
        # Each variant's calls continue from its last state, so that steps keep
        # rising and every due step really saves (save() skips older steps).
        # Repetitions are interleaved so that a change in machine load hits all.
        states = [run_once(fn, state, data, m)[0] for _, fn, m in variants]  # compile, warm up
        times: list[list[float]] = [[] for _ in variants]
        for _ in range(args.reps):
            for i, (_, fn, m) in enumerate(variants):
                states[i], elapsed = run_once(fn, states[i], data, m)
                times[i].append(elapsed / args.steps * 1e3)
        for m in managers:
            m.close()
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    results = [(name, xs) for (name, _, _), xs in zip(variants, times)]

    base = statistics.median(results[0][1])
    print(f"{'variant':<12} {'median ms/step':>15} {'min':>8} {'max':>8} {'vs none':>8}")
    for name, xs in results:
        med = statistics.median(xs)
        print(f"{name:<12} {med:>15.3f} {min(xs):>8.3f} {max(xs):>8.3f} "
              f"{(med / base - 1) * 100:>+7.1f}%")
    extra = (statistics.median(results[2][1]) - base) * args.every
    floor = (statistics.median(results[3][1]) - base) * args.every
    print(f"cost of one real save, from the medians: {extra:.1f} ms "
          f"({nbytes / 2**20:.1f} MiB of state); JAX's callback alone: {floor:.1f} ms; "
          f"jaxckpt's own part: {extra - floor:.1f} ms")


if __name__ == "__main__":
    main()
