"""A training-like process for the crash tests: saves forever until killed.

Step i's state is a pure function of i, so the test can check any restored
checkpoint bit-exact against ``state(i)``.
"""

from __future__ import annotations

import sys

import numpy as np


def state(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "params": {f"layer{j}": rng.standard_normal((64, 64)).astype(np.float32) for j in range(40)},
        "big": np.full((1 << 20,), i, np.float32),
        "step": i,
    }


def main(directory: str) -> None:
    import jaxckpt

    m = jaxckpt.CheckpointManager(directory, max_to_keep=2)
    i = (m.restore()["step"] + 1) if m.latest_checkpoint else 1
    while True:
        m.save(state(i), checkpoint_number=i)
        m.wait_until_finished()
        print(f"committed {i}", flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1])
