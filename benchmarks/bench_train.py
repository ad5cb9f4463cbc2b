"""W4: a jitted Flax Linen MLP trained with optax Adam, checkpointed every N steps.

The train step donates its state, as real loops do, so a checkpointer that
does not keep its snapshot safe from donation fails here. The loop is timed
until the last step's state is ready; waiting for the last background save
afterwards is reported apart (``drain``), since training would go on. "sync"
only waits for the state at each save point: the floor any checkpointer pays.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class MLP(nn.Module):
    width: int
    depth: int
    classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.classes)(x)


def make(width: int = 512, depth: int = 3, features: int = 256, classes: int = 10,
         batch: int = 128, batches: int = 8) -> tuple[Callable, Any, list]:
    """(train_step, initial state, batches); the state is params + Adam + step."""
    model = MLP(width, depth, classes)
    tx = optax.adam(1e-3)
    params = model.init(jax.random.key(0), jnp.zeros((1, features)))["params"]
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.asarray(0, jnp.int32)}
    rng = np.random.default_rng(4)
    data = [(jnp.asarray(rng.standard_normal((batch, features), dtype=np.float32)),
             jnp.asarray(rng.integers(0, classes, batch)))
            for _ in range(batches)]

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: dict, x: jax.Array, y: jax.Array) -> tuple[dict, jax.Array]:
        def loss_fn(p: Any) -> jax.Array:
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates),
                "opt_state": opt_state, "step": state["step"] + 1}, loss

    return train_step, state, data


def copy_state(state: Any) -> Any:
    return jax.tree.map(lambda x: x.copy(), state)


class Loop:
    """One contender: a fresh state per run; ``save`` is None for no checkpointing."""

    def __init__(self, name: str, save: Callable[[Any, int], None] | None,
                 wait: Callable[[], None] | None, close: Callable[[], None] | None):
        self.name, self.save, self.wait, self._close = name, save, wait, close

    def close(self) -> None:
        if self._close:
            self._close()


def loops(directory: str) -> dict[str, Callable[[], Loop]]:
    """Factories of the three contenders, each with its own directory."""

    def none() -> Loop:
        return Loop("no checkpointing", None, None, None)

    def sync() -> Loop:
        # What any checkpointer pays at least: the host waits for the step.
        return Loop("sync only", lambda s, n: jax.block_until_ready(s), None, None)

    def jaxckpt_loop() -> Loop:
        import jaxckpt

        m = jaxckpt.CheckpointManager(os.path.join(directory, "jaxckpt"), max_to_keep=2)
        return Loop("jaxckpt", lambda s, n: m.save(s, checkpoint_number=n),
                    m.wait_until_finished, m.close)

    def orbax_loop() -> Loop:
        import orbax.checkpoint as ocp

        opts = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
        m = ocp.CheckpointManager(os.path.join(directory, "orbax"), options=opts)
        return Loop("orbax", lambda s, n: m.save(n, args=ocp.args.StandardSave(s)),
                    m.wait_until_finished, m.close)

    return {"none": none, "sync": sync, "jaxckpt": jaxckpt_loop, "orbax": orbax_loop}


def run(loop: Loop, train_step: Callable, state0: Any, data: list, steps: int, every: int,
        first_number: int) -> dict:
    """Trains ``steps`` steps from a copy of ``state0``; seconds of the loop and drain."""
    state = jax.block_until_ready(copy_state(state0))
    saves, blocked = 0, 0.0
    t = time.perf_counter()
    for i in range(steps):
        x, y = data[i % len(data)]
        state, _ = train_step(state, x, y)
        if loop.save is not None and (i + 1) % every == 0:
            t_save = time.perf_counter()
            loop.save(state, first_number + saves)
            blocked += time.perf_counter() - t_save
            saves += 1
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - t
    t = time.perf_counter()
    if loop.wait is not None:
        loop.wait()
    return {"loop_s": elapsed, "drain_s": time.perf_counter() - t, "saves": saves,
            "blocked_s": blocked,
            "step_ms": elapsed / steps * 1e3}


def auto_interval(directory: str, train_step: Callable, state0: Any, data: list, steps: int,
                  mtbf_s: float) -> dict:
    """Trains ``steps`` steps with ``checkpoint_interval="auto"``, ``save()`` at every step:
    the interval the manager chose against the save cost it measured (``write_s``: the
    write time its choice knew of, None if none had finished; ``last_write_s``: the last
    save's, once the loop is done)."""
    import jaxckpt

    state = jax.block_until_ready(copy_state(state0))
    with jaxckpt.CheckpointManager(directory, max_to_keep=2, step_counter=lambda s: s["step"],
                                   checkpoint_interval="auto", mtbf_s=mtbf_s) as m:
        for i in range(steps):
            x, y = data[i % len(data)]
            state, _ = train_step(state, x, y)
            m.save({"state": state, "step": i})
        jax.block_until_ready(state)
        m.wait_until_finished()
        choice, saves = m.interval_choice, m.stats.saves
        written = m.last_save_stats.write_s if m.last_save_stats else None
    if choice is None:
        return {"saves": saves, "error": "no interval chosen"}
    return {"saves": saves, "steps": choice.steps, "bound": choice.bound,
            "cost_s": choice.cost_s, "write_s": choice.write_s, "step_s": choice.step_s,
            "young_daly_s": choice.young_daly_s, "mtbf_s": choice.mtbf_s,
            "overhead": choice.overhead, "max_overhead": choice.max_overhead,
            "last_write_s": written, "error": None}
