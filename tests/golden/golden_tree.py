"""The tree stored in every golden checkpoint; never change it for an old version."""

from __future__ import annotations

import ml_dtypes
import numpy as np


# From version 3 on the large leaf is small, and make_golden.py lowers the
# packing threshold to match, so that it still gets an array file of its own.
SMALL_BIG_FROM = 3


def golden_tree(version: int = 2) -> dict:
    big = 6000 if version >= SMALL_BIG_FROM else 600_000
    return {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "bf16": (np.arange(6, dtype=np.float32) - 2.5).astype(ml_dtypes.bfloat16),
        "i4": np.array([-8, -1, 0, 7], dtype=ml_dtypes.int4),
        "f8": np.array([0.5, -2.0, 448.0], dtype=ml_dtypes.float8_e4m3fn),
        "c128": np.array([1 + 2j, -3.5j]),
        "big": np.arange(big, dtype=np.int32),  # over the packing threshold
        "empty": np.zeros((0, 3), np.float16),
        "scalar": np.float64(0.1),
        "py": [1, 2.5, True, "naïve", None, 3 - 4j, 2**70],
    }
