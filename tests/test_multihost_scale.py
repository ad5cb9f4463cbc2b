"""The coordination protocol at scale (issue 14): N jax.distributed processes
on localhost, one CPU device each, one save and one restore of a small array.

``JAXCKPT_SCALE_PROCESSES`` sets N (8 here, 64 in ``make torture``). The
times each process measured are printed (``-s``), never asserted.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_multihost import run  # noqa: E402

# Slow (many processes): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow

NPROC = int(os.environ.get("JAXCKPT_SCALE_PROCESSES", "8"))


def test_many_processes_save_and_restore_one_checkpoint(tmp_path):
    facts = run("scale", tmp_path / "run", nproc=NPROC, devices=1, mesh=str(NPROC),
                timeout=120 + 5 * NPROC)
    assert sum(f["shards_checked"] for f in facts) == NPROC
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint", "ckpt-1"]
    save = sorted(f["save_s"] for f in facts)
    print(f"\n{NPROC} processes: save+wait {save[0]:.3f}..{save[-1]:.3f} s, process 0 "
          f"{facts[0]['save_s']:.3f} s (write {facts[0]['write_s']:.3f} s), restore "
          f"max {max(f['restore_s'] for f in facts):.3f} s")
