"""Writes tests/golden/v<VERSION>: run once per released format version, then commit.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from golden_tree import golden_tree  # noqa: E402

import jaxckpt  # noqa: E402
from jaxckpt import _format  # noqa: E402

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(__file__), f"v{_format.VERSION}")
    jaxckpt.save(out, golden_tree(), metadata={"golden": _format.VERSION})
    print("wrote", out)
