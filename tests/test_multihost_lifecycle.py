"""The edges of a multi-process program's life (issue 14): a process that
never calls ``close()``, or shuts jax.distributed down with a manager open;
read-only managers; the coordinator's keys over a long run; and which comes
first when a process dies, jaxckpt's deadline or JAX's heartbeat.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import jaxckpt  # noqa: E402
from test_multihost import WORKER, _free_port, run  # noqa: E402

# Slow (two or more processes): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("how", ["exit", "shutdown"])
def test_a_process_that_never_closes_checks_in_at_exit(tmp_path, how):
    # Process 1 leaves its manager open with saves pending: it returns to the
    # exit hooks, or first calls jax.distributed.shutdown() itself. Before the
    # fix, the shutdown cut the key-value store out from under its manager and
    # process 0's close() waited for it until its deadline (TimeoutError).
    env = {1: {"JAXCKPT_SHUTDOWN_FIRST": "1"}} if how == "shutdown" else {}
    d = tmp_path / "run"
    facts = run("exit_flush", d, nproc=2, devices=1, mesh="2", extra_env=env)
    assert facts[0]["checkpoints"] == ["ckpt-1", "ckpt-2"], facts
    with jaxckpt.CheckpointManager(d, read_only=True) as m:
        assert [os.path.basename(p) for p in m.checkpoints] == ["ckpt-1", "ckpt-2"]
        jaxckpt.verify(m.latest_checkpoint)


def test_readers_on_every_process_restore_process_0s_view(tmp_path):
    # Read-only managers follow a writer's state file, each on its own. A
    # checkpoint appears between process 1's call and process 0's: before the
    # fix process 1 initialised from scratch while process 0 restored ckpt-1
    # (and then waited in vain for process 1 to join its restore).
    src = tmp_path / "run-src"
    with jaxckpt.CheckpointManager(src) as m:
        m.save({"step": 1, "w": np.arange(4, dtype=np.float32)})
    (tmp_path / "run").mkdir()
    facts = run("reader", tmp_path / "run", nproc=2, devices=1, mesh="2")
    assert [f["step"] for f in facts] == [1, 1], facts
    # Process 1's call waited for process 0's decision.
    assert facts[0]["process_1_returned_first"] is False, facts


def test_the_coordinator_keeps_a_bounded_number_of_keys(tmp_path):
    # Three managers with four saves and a restore each, three one-off saves,
    # nine module-level restores and latest_checkpoint calls. Before the fix
    # every module-level call and every save's parts stayed in the coordinator
    # for the program's life (a thousand-host job makes many).
    facts = run("keys", tmp_path / "run", nproc=2, devices=1, mesh="2", timeout=300)
    left = facts[0]["keys"]
    allowed = [
        r"jaxckpt/\w+/mngr[123]/agree/a\d+/close its manager/out",  # one per manager
        r"jaxckpt/\w+/save1/0/commit",                              # one per one-off save
        r"jaxckpt/\w+/restore3/a1/restore one-\d/(in/1|out)",      # the last call only
        r"jaxckpt/\w+/latest9/a1/ask for the latest checkpoint/(in/1|out)",
    ]
    stray = [k for k in left if not any(re.fullmatch(p, k) for p in allowed)]
    assert not stray, stray
    assert len(left) <= 3 + 3 + 3 * 2 + 2, left


def _dead_peer(directory, heartbeat_s: int, coordination_s: int):
    """Three processes save ckpt-1; process 2 dies; 0 and 1 try ckpt-2."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAXCKPT_TEST_HEARTBEAT_S": str(heartbeat_s),
           "JAXCKPT_TEST_COORDINATION_S": str(coordination_s)}
    procs = [subprocess.Popen([sys.executable, WORKER, "dead_peer", str(directory), str(port),
                               "3", str(i), "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(3)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    assert outs[2][0] == -9, outs[2]
    return outs[:2]


def test_a_dead_process_with_a_short_heartbeat_is_stopped_by_jax_first(tmp_path):
    # heartbeat_timeout_seconds (6) below coordination_timeout_s (60): JAX's
    # coordination service notices the dead process first and aborts the
    # survivors with its own error; the directory restores the last commit.
    d = tmp_path / "run"
    for rc, out, err in _dead_peer(d, heartbeat_s=6, coordination_s=60):
        assert "SAVED 1" in out and "OK " not in out, (rc, out, err[-3000:])
        assert rc == -6, (rc, err[-3000:])  # SIGABRT from JAX's fatal-error check
        assert "stopped sending heartbeats" in err and "\n2\n" in err, err[-3000:]
    with jaxckpt.CheckpointManager(d) as m:  # sweeps the aborted save's leftovers
        assert os.path.basename(m.latest_checkpoint) == "ckpt-1"
        assert int(m.restore(None)["step"]) == 1
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-1"]


def test_a_dead_process_with_a_long_heartbeat_is_named_by_jaxckpt_first(tmp_path):
    # heartbeat_timeout_seconds (120) above coordination_timeout_s (4):
    # jaxckpt's deadline fires first and names the process and the phase.
    d = tmp_path / "run"
    for rc, out, err in _dead_peer(d, heartbeat_s=120, coordination_s=4):
        assert rc == 0, (rc, err[-3000:])
        assert "process(es) 2 of 3 did not report their part durable within 4 s" in out, out
    with jaxckpt.CheckpointManager(d) as m:
        assert os.path.basename(m.latest_checkpoint) == "ckpt-1"
