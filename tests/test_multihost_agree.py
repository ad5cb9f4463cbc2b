"""Every process of a multi-process program decides alike (issue 14).

Process 0 decides what must be equal everywhere (the latest checkpoint when a
manager opens, which checkpoint a restore reads, retention) and shares it
through jax.distributed's key-value store; a non-primary save is finished
only once process 0 has published it.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_multihost import run  # noqa: E402

# Slow (two or more processes): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow


def test_every_process_restores_the_same_latest_checkpoint(tmp_path):
    # Before the fix, process 1 often reopened the directory before process 0
    # had replaced the state file, and restored ckpt-2 while process 0 restored ckpt-3.
    facts = run("agree", tmp_path, nproc=2, devices=2, mesh="4", timeout=300)
    for f in facts:
        assert f["latest"] == ["ckpt-3"] * len(f["latest"]), f
        assert f["steps"] == [3] * len(f["steps"]), f
        assert f["module_latest"] == ["ckpt-3"] * len(f["steps"]), f


@pytest.mark.parametrize("phase", ["open", "restore", "close"])
def test_an_absent_process_is_named_not_waited_for(tmp_path, phase):
    # Process 2 of 3 never opens its manager, never restores, or dies before close.
    facts = run("absent", tmp_path / "run", nproc=3, devices=1, mesh="3",
                extra_env={i: {"JAXCKPT_ABSENT_PHASE": phase} for i in range(3)},
                allow_dead={2} if phase == "close" else set())
    what = {"open": "open its manager", "restore": "ask which checkpoint to restore",
            "close": "close its manager"}[phase]
    for f in facts[:2]:
        assert f["error"] is not None and "TimeoutError" in f["error"], (phase, f)
        assert f"process 2 of 3 did not {what} within 3 s" in f["error"], (phase, f)
