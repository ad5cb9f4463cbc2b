"""``jaxckpt demo``'s training child: restore or initialize, train, checkpoint, report.

Run as ``python -m jaxckpt._demo.child train DIR STEPS EVERY KEEP`` by
``_demo``; reports JSON lines on stdout. JAX, Flax and optax are imported
only here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

HIDDEN = 512
FEATURES = 16
BATCH = 256


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class _EmitLogs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _emit("log", level=record.levelname, msg=record.getMessage())


def train(directory: str, steps: int, every: int, keep: int) -> None:
    """The training process: restore or initialize, then train and checkpoint to ``steps``."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import jaxckpt

    logging.getLogger("jaxckpt").addHandler(_EmitLogs(logging.WARNING))

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.l1 = nnx.Linear(FEATURES, HIDDEN, rngs=rngs)
            self.l2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
            self.l3 = nnx.Linear(HIDDEN, 1, rngs=rngs)

        def __call__(self, x):
            return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    data_key = jax.random.key(1234)
    teacher = jax.random.normal(jax.random.key(7), (FEATURES,)) / math.sqrt(FEATURES)

    @jax.jit
    def batch(step):
        x = jax.random.normal(jax.random.fold_in(data_key, step), (BATCH, FEATURES))
        return x, jnp.sin(3.0 * x @ teacher)[:, None]

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    def state(step: int) -> dict:
        return {"model": nnx.state(model), "opt": nnx.state(optimizer), "step": step}

    # last_checkpoint_step=0: the first save is at step `every`, not step 1.
    mngr = jaxckpt.CheckpointManager(directory, max_to_keep=keep, last_checkpoint_step=0,
                                     step_counter=lambda s: s["step"], checkpoint_interval=every)
    restored = mngr.restore_or_initialize(target=state(0))
    start = 0
    if restored is not None:
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["opt"])
        start = restored["step"]
    _emit("start", pid=os.getpid(), step=start, resumed_from=mngr.latest_checkpoint)

    reported: set[str] = set()

    def report_finished() -> None:
        for s in mngr.stats.recent:
            key = f"{s.path}@{s.started}"
            if s.done and key not in reported:
                reported.add(key)
                _emit("committed" if s.committed else "failed", path=s.path, nbytes=s.nbytes,
                      blocked_s=s.blocked_s, write_s=s.write_s, deleted=s.deleted,
                      error=s.error)

    for step in range(start + 1, steps + 1):
        loss = float(train_step(model, optimizer, *batch(step)))
        _emit("step", step=step, loss=loss)
        final = step == steps
        path = mngr.save(state(step), checkpoint_number=step, check_interval=not final)
        if path is not None:
            _emit("save", step=step, path=path, blocked_s=mngr.stats.recent[-1].blocked_s)
        report_finished()
    mngr.close()
    report_finished()
    _emit("done", kept=mngr.checkpoints, latest=mngr.latest_checkpoint)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "train":
        train(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: python -m jaxckpt._demo.child train DIR STEPS EVERY KEEP "
                 "(run 'jaxckpt demo')")
