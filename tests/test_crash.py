"""SIGKILL a training-like process at random instants and at aimed fault points.

After every kill the directory must be sound (``_reliability.check_sound``):
the latest checkpoint is committed, verifies, and restores bit-exact to the
state saved under its number; everything the state file names is there. The
next process resumes from it and continues the numbering; a last manager
cleans every leftover and leaves only what the state file names.

``JAXCKPT_CRASH_ROUNDS`` sets the number of random-instant rounds (5 here,
200 in ``make torture``), run in chains of ``CHAIN`` rounds on one directory.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import jaxckpt

sys.path.insert(0, os.path.dirname(__file__))
from _crash_worker import MAX_TO_KEEP, state  # noqa: E402
from _reliability import TALLY, check_sound, leftovers, named_paths  # noqa: E402

# Slow (SIGKILL rounds of child processes): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("JAXCKPT_CRASH_ROUNDS", "5"))
CHAIN = 5
WATCHDOG_S = 120
WORKER = os.path.join(os.path.dirname(__file__), "_crash_worker.py")


class Worker:
    """One run of ``_crash_worker.py`` on ``directory``; stderr goes to a file."""

    def __init__(self, directory, max_saves: int, resave: bool = False, **fault: str):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        if resave:
            env["CRASH_WORKER_RESAVE"] = "1"
        env.pop("XLA_FLAGS", None)  # one CPU device: the worker starts faster
        env.update({f"JAXCKPT_FAULT_{k.upper()}": str(v) for k, v in fault.items()})
        self.stderr_path = os.path.join(os.path.dirname(str(directory)),
                                        f"worker-{time.monotonic_ns()}.err")
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([sys.executable, WORKER, str(directory), str(max_saves)],
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=env)
        # A hung worker must fail the test, not hang it: the reads below then see EOF.
        self._watchdog = threading.Timer(WATCHDOG_S, self.proc.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()[-3000:]

    def line(self) -> str:
        text = self.proc.stdout.readline()
        assert text, f"worker ended early (rc={self.proc.poll()}):\n{self.stderr()}"
        return text.strip()

    def wait_stopped(self) -> None:
        """Waits until the worker stopped itself (SIGSTOP at its fault point)."""
        _, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"worker ended instead of stopping:\n{self.stderr()}"

    def kill(self) -> None:
        assert self.proc.poll() is None, f"worker ended on its own:\n{self.stderr()}"
        self.proc.send_signal(signal.SIGKILL)
        self.close()
        assert self.proc.returncode == -signal.SIGKILL

    def close(self) -> None:
        self.proc.wait()
        self._watchdog.cancel()
        self.proc.stdout.close()
        self._err.close()


def _start(directory, last: int, max_saves: int = 1000, **fault: str) -> Worker:
    w = Worker(directory, max_saves, **fault)
    assert w.line() == f"start {last + 1}", "did not resume from the latest checkpoint"
    return w


def _finish_cleanly(directory, last: int) -> None:
    """A new manager sweeps every leftover, continues the numbering and saves;
    afterwards the directory holds exactly what the state file names."""
    with jaxckpt.CheckpointManager(directory, max_to_keep=MAX_TO_KEEP) as m:
        assert leftovers(directory) == []
        path = m.save(state(last + 1))
    assert os.path.basename(path) == f"ckpt-{last + 1}"
    assert check_sound(directory, state) == last + 1
    named = [os.path.basename(p) for p in named_paths(directory)]
    assert sorted(os.listdir(directory)) == sorted(["checkpoint", *named])
    # The saves were incremental: the newest shares its unchanged leaves' files
    # (two "mid" leaves and "frozen") with the one before, by hard links.
    newest = os.path.join(directory, f"ckpt-{last + 1}")
    links = [n for r, _, fs in os.walk(newest) for n in fs if os.stat(os.path.join(r, n)).st_nlink > 1]
    assert len(links) >= 3, f"{newest} shares no files: the saves were not incremental"


def _random_kill(w: Worker, rng: random.Random, stopped: bool) -> None:
    """Kills ``w`` at a random instant: anywhere in its saves, or (``stopped``:
    the worker stops itself at a fault point) a few ms after that point."""
    if not stopped:
        for _ in range(rng.randint(0, 3)):
            assert w.line().startswith("saved")
        time.sleep(rng.uniform(0.0, 0.3))  # lands anywhere inside the next saves
        w.kill()
        return
    w.wait_stopped()
    w.proc.send_signal(signal.SIGCONT)
    time.sleep(rng.uniform(0.0, 0.02))  # a few ms: inside the deletion or the state-file write
    w.kill()


_NEAR_POINTS = ("manager.before_delete", "state_file.before_replace", "manager.committed",
                "write.linked")
_n_chains = -(-ROUNDS // CHAIN)


@pytest.mark.parametrize("chain", range(_n_chains))
def test_sigkill_at_random_instants_leaves_directory_restorable(tmp_path, chain):
    rng = random.Random(chain)
    d = tmp_path / "run"
    last = 0
    for _ in range(min(CHAIN, ROUNDS - chain * CHAIN)):
        TALLY["kill rounds run"] += 1
        stopped = rng.random() < 0.5
        if stopped:
            w = _start(d, last, point=rng.choice(_NEAR_POINTS), action="stop",
                       skip=rng.randint(0, 2))
        else:
            w = _start(d, last)
        _random_kill(w, rng, stopped)
        number = check_sound(d, state)
        assert number >= last, "a later round lost a committed checkpoint"
        last = number
        TALLY["kill rounds survived"] += 1
    _finish_cleanly(d, last)


# (fault point, times passed before the kill, a leftover the kill must leave)
_AIMED = {
    "orphan-then-exchange": [("manager.committed", 2, "orphan"),
                             ("commit.exchanged", 0, r"^\.ckpt-3\.tmp-[0-9a-f]+$")],
    "publish-then-state-file": [("commit.before_publish", 1, r"^\.ckpt-2\.tmp-[0-9a-f]+$"),
                                ("state_file.before_replace", 1, r"^checkpoint\.tmp-[0-9a-f]+$"),
                                ("state_file.after_replace", 1, None)],
    # An incremental save killed with its hard links made, not yet fsync'd
    # (ckpt-1's save has nothing to link: the first kill is in ckpt-3's).
    "incremental": [("write.linked", 1, r"^\.ckpt-3\.tmp-[0-9a-f]+$"),
                    ("write.linked", 0, r"^\.ckpt-3\.tmp-[0-9a-f]+$")],
    # Round 2 dies in the new manager's sweep of ckpt-1 (before it prints "start"),
    # round 3 in the retention deletion of ckpt-2.
    "deletion": [("manager.before_delete", 0, r"^\.ckpt-1\.deleting$"),
                 ("commit.remove.renamed", 0, r"^\.ckpt-1\.trash-[0-9a-f]+$"),
                 ("commit.remove.renamed", 0, r"^\.ckpt-2\.trash-[0-9a-f]+$")],
}


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("chain", sorted(_AIMED))
def test_sigkill_at_fault_points(tmp_path, monkeypatch, chain, fallback):
    """Kills aimed inside the commit, the state-file write and the deletions;
    ``two-renames``: on a filesystem without RENAME_EXCHANGE (forced)."""
    d = tmp_path / "run"
    last = 0
    if fallback:
        monkeypatch.setenv("JAXCKPT_NO_RENAME_EXCHANGE", "1")  # the workers only
    for point, skip, leaves in _AIMED[chain]:
        if fallback and point == "commit.exchanged":  # the fallback's own instant instead
            point, leaves = "commit.aside", r"^\.ckpt-3\.old-[0-9a-f]+$"
        TALLY["kill rounds run"] += 1
        TALLY["faults injected"] += 1
        # A new manager adopts the orphan: a replacement is made on purpose.
        w = Worker(d, 6, resave=point in ("commit.exchanged", "commit.aside"), point=point, skip=skip)
        first = w.proc.stdout.readline().strip()  # empty: killed while opening the manager
        assert first in ("", f"start {last + 1}"), first
        w.close()
        assert w.proc.returncode == -signal.SIGKILL, (
            f"{point} was never reached (rc={w.proc.returncode}):\n{w.stderr()}")
        listing = os.listdir(d)
        if leaves == "orphan":  # committed, but the state file was not yet replaced
            named = {os.path.basename(p) for p in named_paths(d)}
            assert [n for n in listing if re.match(r"^ckpt-\d+$", n) and n not in named]
        elif leaves is not None:
            assert [n for n in listing if re.match(leaves, n)], (point, listing)
        if point == "commit.aside":
            # Between the fallback's two renames the number is missing until the
            # next manager repairs it (readers see the older latest meanwhile).
            jaxckpt.CheckpointManager(d).close()
        number = check_sound(d, state)
        assert number >= last
        last = number
        TALLY["kill rounds survived"] += 1
    _finish_cleanly(d, last)
