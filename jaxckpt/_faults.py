"""Named fault points: a test hook that kills, stops or fails the process on demand.

The library calls ``point("name")`` at the few instants where a crash or an
error is worth aiming at (between the state-file write and the deletions, in
the middle of a deletion, ...). Unless a test armed a point, ``point`` costs
one truth test of an empty dict.

Tests arm points in a subprocess through the environment, read at import::

    JAXCKPT_FAULT_POINT=manager.before_delete   the point's name
    JAXCKPT_FAULT_ACTION=kill                   kill (SIGKILL, the default),
                                                stop (SIGSTOP) or raise (OSError EIO)
    JAXCKPT_FAULT_SKIP=2                        pass the point this many times first

and in-process with ``armed(name, action)``, where ``action`` may also be a
callable run at the point (to block on a ``threading.Event``, or to fill a
disk). The points are listed in ``POINTS``; arming another name is an error,
so a renamed point cannot silently disarm a test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from typing import Callable, Iterator, Union

Action = Union[str, Callable[[str], None]]

POINTS = (
    "commit.before_publish",  # checkpoint fully written in its temporary, nothing visible yet
    "commit.exchanged",  # a replaced checkpoint swapped out, still in the temporary's name
    "commit.aside",  # no RENAME_EXCHANGE: the old checkpoint renamed aside, the new not yet in
    "commit.remove.renamed",  # a deleted checkpoint renamed to trash, files not yet removed
    "commit.remove.unlisted",  # object stores: a deleted checkpoint's manifest gone, objects not yet
    "latest_checkpoint.read",  # latest_checkpoint read the state file, not yet its checkpoints
    "manager.committed",  # checkpoint in place, state file not yet updated
    "manager.before_delete",  # state file updated, an old checkpoint not yet deleted
    "manager.restore_waits",  # restore is about to wait for a pending save
    "multihost.part_written",  # this process's part is durable, not yet reported to process 0
    "state_file.before_replace",  # new state file durable in its temporary, not yet renamed
    "staging.wait",  # the writer is about to wait for a leaf's host copy (a host budget's save)
    "state_file.after_replace",  # new state file renamed into place, directory not yet fsync'd
    "write.linked",  # an incremental save's hard links made, their directories not yet fsync'd
)

_ACTIONS = ("kill", "stop", "raise")


class _Fault:
    def __init__(self, action: Action, skip: int):
        if not callable(action) and action not in _ACTIONS:
            raise ValueError(f"fault action must be one of {_ACTIONS} or a callable, got {action!r}")
        self.action = action
        self.skip = skip
        self.hits = 0
        self._lock = threading.Lock()

    def hit(self, name: str) -> None:
        with self._lock:
            self.hits += 1
            if self.hits <= self.skip:
                return
        if callable(self.action):
            self.action(name)
        elif self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            raise OSError(errno.EIO, f"fault injected at {name} (JAXCKPT_FAULT_POINT)")


_ARMED: dict[str, _Fault] = {}


def point(name: str) -> None:
    """Acts if a test armed ``name``; otherwise does nothing."""
    if _ARMED:
        fault = _ARMED.get(name)
        if fault is not None:
            fault.hit(name)


def _check_name(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; known: {', '.join(POINTS)}")


@contextlib.contextmanager
def armed(name: str, action: Action = "raise", skip: int = 0) -> Iterator[_Fault]:
    """Arms ``name`` for the duration of the block (tests only); yields its hit counter."""
    _check_name(name)
    fault = _Fault(action, skip)
    previous = _ARMED.get(name)
    _ARMED[name] = fault
    try:
        yield fault
    finally:
        if previous is None:
            _ARMED.pop(name, None)
        else:
            _ARMED[name] = previous


def _arm_from_environment() -> None:
    name = os.environ.get("JAXCKPT_FAULT_POINT")
    if not name:
        return
    _check_name(name)
    _ARMED[name] = _Fault(os.environ.get("JAXCKPT_FAULT_ACTION", "kill"),
                          int(os.environ.get("JAXCKPT_FAULT_SKIP", "0")))


_arm_from_environment()
