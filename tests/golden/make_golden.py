"""Writes tests/golden/v<VERSION>: run once per released format version, then commit.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from golden_tree import golden_tree  # noqa: E402

import jaxckpt  # noqa: E402
from jaxckpt._format import manifest as _format  # noqa: E402

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(__file__), f"v{_format.VERSION}")
    # Small files that still hold each kind of stored data: the large leaf in
    # an array file of its own (readers follow the manifest's "where", not the
    # threshold), the small leaves in a packed file rather than the manifest.
    _format.LARGE_BYTES = 16 << 10
    _format.INLINE_BYTES = 0
    jaxckpt.save(out, golden_tree(_format.VERSION), metadata={"golden": _format.VERSION})
    print("wrote", out)
