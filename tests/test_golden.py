"""Every released format version must still restore bit-exact."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import jaxckpt

HERE = os.path.join(os.path.dirname(__file__), "golden")
sys.path.insert(0, HERE)
from golden_tree import golden_tree  # noqa: E402

VERSIONS = sorted(d for d in os.listdir(HERE) if d.startswith("v") and d[1:].isdigit())


def _bits(x):
    a = np.asarray(x)
    return a.dtype.name, a.shape, a.tobytes()


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_restores_bit_exact(version):
    path = os.path.join(HERE, version)
    jaxckpt.verify(path)
    raw = jaxckpt.restore(path)
    want = golden_tree(int(version[1:]))
    for key in want:
        if key == "py":
            assert raw["py"] == want["py"]
        else:
            assert _bits(raw[key]) == _bits(want[key]), key
    assert jaxckpt.user_metadata(path) == {"golden": int(version[1:])}


def test_format_has_a_golden_checkpoint():
    from jaxckpt._format import manifest as _format

    assert f"v{_format.VERSION}" in VERSIONS
