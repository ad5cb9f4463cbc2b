"""The exception tree (jaxckpt/errors.py), raised in real situations.

Each narrower class is also its old base (``CheckpointError``, or
``TimeoutError`` for a multi-process timeout) and the built-in a caller
would catch, so that no ``except`` written against an earlier version breaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jaxckpt
from jaxckpt._directory import agree as _agree
from jaxckpt import errors

sys.path.insert(0, os.path.dirname(__file__))
from _forked import in_fork  # noqa: E402

# (class, the built-ins it must also be) for every class errors.py defines.
TREE = {
    errors.CheckpointError: (Exception,),
    errors.CheckpointNotFoundError: (errors.CheckpointError, FileNotFoundError),
    errors.CorruptCheckpointError: (errors.CheckpointError, ValueError),
    errors.StructureMismatchError: (errors.CheckpointError, ValueError),
    errors.CheckpointWriteError: (errors.CheckpointError,),
    errors.DirectoryLockedError: (errors.CheckpointError, BlockingIOError),
    errors.ManagerClosedError: (errors.CheckpointError, RuntimeError),
    errors.ReadOnlyManagerError: (errors.CheckpointError, RuntimeError),
    errors.ForkedManagerError: (errors.CheckpointError, RuntimeError),
    errors.CoordinationError: (errors.CheckpointError,),
    errors.CoordinationTimeoutError: (errors.CoordinationError, TimeoutError),
}


def test_the_tree_is_as_drawn_and_every_class_says_cause_and_fix():
    defined = {v for v in vars(errors).values()
               if isinstance(v, type) and issubclass(v, BaseException)
               and v.__module__ == errors.__name__}
    assert defined == set(TREE)
    for cls, bases in TREE.items():
        assert all(issubclass(cls, b) for b in bases), cls
        assert cls.__name__ in errors.__doc__, f"{cls.__name__} missing from the drawn tree"
        assert cls.__doc__ and len(cls.__doc__.strip()) > 40, cls
        assert getattr(jaxckpt, cls.__name__) is cls, f"jaxckpt.{cls.__name__} not exported"
        # One-argument construction keeps the plain message (OSError subclasses too).
        assert str(cls("where: what; the fix")) == "where: what; the fix"


_HOLDER = textwrap.dedent("""
    import sys
    import jaxckpt
    m = jaxckpt.CheckpointManager(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
""")


def test_a_directory_held_by_another_process_raises_directory_locked(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(errors.DirectoryLockedError,
                           match=rf"another process \(pid {holder.pid}\)") as e:
            jaxckpt.CheckpointManager(tmp_path)
        assert isinstance(e.value, jaxckpt.CheckpointError)
        assert isinstance(e.value, BlockingIOError)
        # A reader may open beside the writer.
        jaxckpt.CheckpointManager(tmp_path, read_only=True).close()
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()


def test_a_closed_manager_raises_manager_closed(tmp_path):
    m = jaxckpt.CheckpointManager(tmp_path)
    m.save({"a": np.arange(3)})
    m.close()
    for call in (lambda: m.save({"a": np.arange(3)}), lambda: m.save_in_jit({"a": 1}, 2)):
        with pytest.raises(errors.ManagerClosedError, match="is closed") as e:
            call()
        assert isinstance(e.value, jaxckpt.CheckpointError)
        assert isinstance(e.value, RuntimeError)


def test_a_taken_over_manager_raises_manager_closed(tmp_path):
    old = jaxckpt.CheckpointManager(tmp_path)
    with pytest.warns(UserWarning, match="still open"):
        new = jaxckpt.CheckpointManager(tmp_path)
    with new:
        with pytest.raises(errors.ManagerClosedError, match="took over"):
            old.save({"a": np.arange(3)})
    old.close()


def test_a_read_only_manager_raises_read_only(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, read_only=True) as m:
        with pytest.raises(errors.ReadOnlyManagerError, match="read-only") as e:
            m.save({"a": np.arange(3)})
        assert isinstance(e.value, jaxckpt.CheckpointError)
        assert isinstance(e.value, RuntimeError)


def test_a_forked_child_raises_forked_manager(tmp_path):
    m = jaxckpt.CheckpointManager(tmp_path)
    m.save({"a": np.arange(3)})
    m.wait_until_finished()

    def child() -> list:
        out = []
        for call in (lambda: m.save({"a": np.arange(3)}), m.wait_until_finished,
                     lambda: m.restore(1)):
            try:
                call()
                out.append("returned")
            except BaseException as e:
                out.append([type(e).__name__, isinstance(e, jaxckpt.CheckpointError),
                            isinstance(e, RuntimeError)])
        return out

    _, out = in_fork(child)
    assert out == [["ForkedManagerError", True, True]] * 3
    m.close()


def test_a_timeout_reported_by_process_0_stays_a_coordination_timeout():
    # What another process receives when process 0 timed out: it must be a
    # TimeoutError there too, whichever class process 0 raised.
    for raised in (errors.CoordinationTimeoutError("process 2 of 3 did not open it"),
                   TimeoutError("process 2 of 3 did not open it")):
        got = _agree._failure(_agree._encode_error(raised))
        assert isinstance(got, errors.CoordinationTimeoutError), got
        assert str(got) == "process 0 reports: process 2 of 3 did not open it"
    got = _agree._failure(_agree._encode_error(ValueError("bad")))
    assert isinstance(got, errors.CoordinationError), got


def test_an_absent_process_raises_coordination_timeout(tmp_path):
    from test_multihost import run

    # Process 2 of 3 never opens its manager: the others' open times out.
    facts = run("absent", tmp_path / "run", nproc=3, devices=1, mesh="3",
                extra_env={i: {"JAXCKPT_ABSENT_PHASE": "open"} for i in range(3)})
    for f in facts[:2]:
        assert f["error"].startswith("CoordinationTimeoutError: "), f
