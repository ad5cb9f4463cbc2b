"""A training process that gets preempted, for tests/test_preemption.py.

    python _preemption_child.py DIR MODE STEPS

A small jitted MLP (plain JAX: SGD with momentum) restores or initializes,
then trains to STEPS with ``checkpoint_interval=1000`` and
``save_on_preemption=True``; batch ``i`` is a pure function of ``i``. After
its third step it prints ``paused`` and reads one line from stdin: the test
sends SIGTERM, then the line. MODE ``default`` leaves SIGTERM's default
action; ``handler`` installs a Python handler first (it counts its calls) and
then the loop stops when ``reached_preemption(step)`` says so, and trains a
fresh model uninterrupted for the reference losses. Reports JSON lines.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> None:
    directory, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = []
    if mode == "handler":
        signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))

    import jax
    import jax.numpy as jnp

    import jaxckpt

    key = jax.random.key(1234)

    def init() -> dict:
        k1, k2 = jax.random.split(jax.random.key(0))
        params = {"w1": jax.random.normal(k1, (16, 64)) / 4.0,
                  "w2": jax.random.normal(k2, (64, 1)) / 8.0}
        return {"params": params, "mom": jax.tree.map(jnp.zeros_like, params),
                "step": jnp.asarray(0)}

    @jax.jit
    def train_step(state):
        step = state["step"] + 1
        x = jax.random.normal(jax.random.fold_in(key, step), (128, 16))
        y = jnp.sin(x.sum(axis=1, keepdims=True))

        def loss_fn(p):
            return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        mom = jax.tree.map(lambda m, g: 0.9 * m + g, state["mom"], grads)
        params = jax.tree.map(lambda p, m: p - 0.05 * m, state["params"], mom)
        return {"params": params, "mom": mom, "step": step}, loss

    mngr = jaxckpt.CheckpointManager(directory, step_counter=lambda s: int(s["step"]),
                                     checkpoint_interval=1000, last_checkpoint_step=0,
                                     init_fn=init, save_on_preemption=True)
    state = mngr.restore_or_initialize()
    start = int(state["step"])
    emit("start", pid=os.getpid(), step=start)
    for step in range(start + 1, steps + 1):
        state, loss = train_step(state)
        emit("step", step=step, loss=float(loss))
        path = mngr.save(state, checkpoint_number=step)
        if path is not None:  # only the preemption save: the interval is 1000
            emit("saved", step=step, path=path, handler_calls=len(calls))
        if mngr.reached_preemption(step):
            emit("preempted", step=step, handler_calls=len(calls))
            break
        if step == start + 3:
            emit("paused")
            sys.stdin.readline()
    mngr.close()
    reference, fresh = [], init()
    for _ in range(steps):
        fresh, loss = train_step(fresh)
        reference.append(float(loss))
    emit("done", handler_calls=len(calls), reference=reference,
         handler_back=signal.getsignal(signal.SIGTERM) is not None
         and getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "<lambda>")


if __name__ == "__main__":
    main()
