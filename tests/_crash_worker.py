"""A training-like process for the crash tests: saves asynchronously until killed.

``python _crash_worker.py DIR MAX_SAVES`` opens a manager on DIR
(max_to_keep=2), resumes from its latest checkpoint, and saves steps one
after the other without waiting for commits, overwriting its NumPy buffers
in place as soon as each ``save`` returns (as a training step would). It
prints ``start N`` once the manager is open (N: the first step it saves)
and ``saved N`` after each ``save`` returns; after MAX_SAVES saves it closes
the manager and prints ``done``. With ``CRASH_WORKER_RESAVE=1`` it first saves
the restored step again under its number (replacing that checkpoint).

Step i's state is a pure function of i, ``state(i)``: about 24 MiB in 208
leaves (one 12 MiB leaf, four 2 MiB ones, 200 small ones packed together, a
``jax.Array``, the step), so the test can check any checkpoint bit-exact.
Part of it never changes, so the (incremental) saves share it: two of the
2 MiB leaves, and "frozen", a 2 MiB ``jax.Array`` made once per process and
saved as the very same object every step (not copied again: ``units.Unchanged``).
"""

from __future__ import annotations

import os
import sys

import numpy as np

N_LAYERS = 100
MAX_TO_KEEP = 2
N_FROZEN_MID = 2  # of the four "mid" leaves, these are the same every step


def _bases() -> dict:
    return {
        "big": np.arange(3 << 20, dtype=np.uint32) * np.uint32(2654435761),
        "mid": [np.arange(1 << 19, dtype=np.uint32) * np.uint32(j + 3) for j in range(4)],
        "w": [np.arange(4096, dtype=np.uint32) * np.uint32(j + 7) for j in range(N_LAYERS)],
        "frozen": (np.arange(1 << 19, dtype=np.uint32) * np.uint32(40503)).view(np.float32),
    }


_BASES = _bases()


def _empty() -> dict:
    return {
        "big": np.empty(3 << 20, np.float32),
        "mid": [np.empty(1 << 19, np.float32) for _ in range(4)],
        "layers": [{"w": np.empty(4096, np.float32), "b": np.empty(64, np.int32)}
                   for _ in range(N_LAYERS)],
        "dev": np.empty(256, np.float32),
        "frozen": np.empty(1 << 19, np.float32),
        "step": 0,
    }


def fill(tree: dict, i: int) -> dict:
    """Writes step ``i``'s values into ``tree``'s NumPy buffers in place."""
    k = np.uint32(i)
    np.add(_BASES["big"], k, out=tree["big"].view(np.uint32))
    for j, (buf, base) in enumerate(zip(tree["mid"], _BASES["mid"])):
        np.add(base, k if j >= N_FROZEN_MID else np.uint32(0), out=buf.view(np.uint32))
    for layer, base in zip(tree["layers"], _BASES["w"]):
        np.add(base, k, out=layer["w"].view(np.uint32))
        layer["b"][:] = i
    tree["dev"][:] = np.float32(i) * 0.5
    tree["frozen"][:] = _BASES["frozen"]
    tree["step"] = i
    return tree


def state(i: int) -> dict:
    """Step ``i``'s state as plain NumPy (what a raw restore gives back)."""
    return fill(_empty(), i)


def main(directory: str, max_saves: int) -> None:
    import jax

    import jaxckpt

    m = jaxckpt.CheckpointManager(directory, max_to_keep=MAX_TO_KEEP)
    restored = m.restore_or_initialize()
    i = 1 if restored is None else int(restored["step"]) + 1
    print(f"start {i}", flush=True)
    tree = _empty()
    # The same jax.Array in every save of this process: its files are linked.
    frozen = jax.device_put(_BASES["frozen"].copy())
    if os.environ.get("CRASH_WORKER_RESAVE") and i > 1:
        # Saves the restored step again under its own number: a replacement.
        fill(tree, i - 1)
        m.save({**tree, "dev": jax.device_put(tree["dev"].copy()), "frozen": frozen},
               checkpoint_number=i - 1)
        print(f"resaved {i - 1}", flush=True)
    for _ in range(max_saves):
        fill(tree, i)
        # A fresh device array each step, as a jitted update returns (from a
        # buffer nobody mutates: on CPU, device_put may alias NumPy memory).
        saved = {**tree, "dev": jax.device_put(tree["dev"].copy()), "frozen": frozen}
        path = m.save(saved)
        assert path.endswith(f"ckpt-{i}"), (path, i)  # numbering continues
        print(f"saved {i}", flush=True)
        i += 1
    m.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
