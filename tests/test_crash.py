"""SIGKILL a saving process at random instants; the directory must stay sound."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxckpt
from jaxckpt import _state_file

sys.path.insert(0, os.path.dirname(__file__))
from _crash_worker import state  # noqa: E402

ROUNDS = int(os.environ.get("JAXCKPT_CRASH_ROUNDS", "4"))


def _check_sound(directory: str) -> int:
    latest = jaxckpt.latest_checkpoint(directory)
    assert latest is not None
    st = _state_file.read(directory)
    for name in st.all_model_checkpoint_paths:  # nothing named is missing or partial
        jaxckpt.verify(os.path.join(directory, name))
    jaxckpt.verify(latest)
    out = jaxckpt.restore(latest)
    i = out["step"]
    want = state(i)
    assert os.path.basename(latest) == f"ckpt-{i}"
    assert np.array_equal(out["big"], want["big"])
    for k, v in want["params"].items():
        assert out["params"][k].tobytes() == v.tobytes()
    return i


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_sigkill_at_random_instant_leaves_directory_restorable(tmp_path, seed):
    rng = random.Random(seed)
    d = str(tmp_path)
    worker = os.path.join(os.path.dirname(__file__), "_crash_worker.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    last = 0
    for _ in range(2):  # kill, then resume and kill again
        proc = subprocess.Popen([sys.executable, worker, d], stdout=subprocess.PIPE, text=True, env=env)
        # wait for a commit beyond what is on disk, then kill after a random number of lines
        commits_to_see = rng.randint(1, 3)
        seen = 0
        for line in proc.stdout:
            if line.startswith("committed"):
                seen += 1
                if seen >= commits_to_see:
                    break
        # a random extra delay lands the kill anywhere inside the next save
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        i = _check_sound(d)
        assert i >= last
        last = i
    # A new manager cleans leftovers and continues numbering.
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        assert not [n for n in os.listdir(d) if ".tmp-" in n or ".trash-" in n], os.listdir(d)
        nxt = m.save(state(last + 1))
    assert os.path.basename(nxt) == f"ckpt-{last + 1}"
    assert _check_sound(d) == last + 1
