"""A checkpoint's data is bound to its manifest (issue 13 items 12, 13, 15).

A read that meets a replace in progress gives the whole old or the whole new
checkpoint, never a mix; array files swapped between leaves or copied from
another save are refused by name; a checkpoint deleted while being read is
"not found", not "damaged".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointNotFoundError, CorruptCheckpointError, _checkpoint, _storage

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY  # noqa: E402

# ---------------------------------------------------------------- torn reads

_N_LARGE = 3
_LARGE = (2 << 20) // 4  # int32 elements: each large leaf gets an array file of its own


def _generation(g: int) -> dict:
    """A tree in which every leaf, the manifest's Python scalar included, encodes ``g``."""
    return {
        "large": [np.full(_LARGE, g * 10 + i, np.int32) for i in range(_N_LARGE)],
        "small": [np.full(3000, g, np.int32) for _ in range(30)],  # a packed file, not inline
        "g": g,
    }


def _generation_of(out: dict) -> set[int]:
    """Every generation a restored tree's leaves encode (one, unless torn)."""
    seen = {int(out["g"])}
    for i, a in enumerate(out["large"]):
        seen |= {(int(a[0]) - i) // 10, (int(a[-1]) - i) // 10}
    for a in out["small"]:
        seen |= {int(a[0]), int(a[-1])}
    return seen


# Replaces number 1 again and again through the same path a manager's save
# takes (``_checkpoint.write(replace=True)``), until its stdin closes.
_REPLACER = textwrap.dedent("""
    import os, sys, threading, time
    sys.path.insert(0, {tests!r})
    from test_data_binding import _generation
    from jaxckpt import _checkpoint, _location, _multihost, _snapshot
    final = _location.locate({path!r})
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    g = 1
    while not stop.is_set():
        coord = _multihost.SaveCoordinator("replacer", g, str(final), 60)
        _checkpoint.write(_snapshot.take(_generation(g)), final, replace=True,
                          created=time.time(), coordinator=coord)
        if g == 1:
            print("replacing", flush=True)
        g += 1
    print(g - 1, flush=True)
""")


def test_restore_racing_a_replace_returns_one_whole_generation(tmp_path):
    """Item 12: restore (and verify) while number 1 is replaced in a loop by
    another process: every result is one generation, and nothing fails."""
    path = str(tmp_path / "ckpt-1")
    jaxckpt.save(path, _generation(0))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _REPLACER.format(tests=os.path.dirname(__file__), path=path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    torn, errors, changes, last = [], [], 0, None
    try:
        assert proc.stdout.readline().strip() == "replacing"
        for i in range(1500):
            try:
                if i % 10 == 9:
                    jaxckpt.verify(path)
                    continue
                seen = _generation_of(jaxckpt.restore(path))
            except Exception as e:  # a spurious error is a failure too
                errors.append(repr(e)[:300])
                continue
            if len(seen) > 1:
                torn.append(sorted(seen))
            changes += seen != last
            last = seen
    finally:
        proc.stdin.close()
        with proc.stdout:
            replaced = int(proc.stdout.read().split()[-1])
        assert proc.wait(60) == 0
    assert not torn, f"{len(torn)} torn restores of 1350, e.g. {torn[:5]}"
    assert not errors, f"{len(errors)} failed reads, e.g. {errors[:3]}"
    # The race was run: the restores saw many generations go by.
    assert replaced > 20 and changes > 20, (replaced, changes)
