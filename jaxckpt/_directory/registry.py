"""This process's open CheckpointManagers: take-over, instance counts, exit flush.

A notebook cell that makes a manager, re-run, must find the directory's lock
free: the new manager flushes and closes the old one. Every process of a
multi-process program makes the same managers in the same order, so a count
per directory pairs up their coordination keys.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import warnings
import weakref
from typing import Any, Callable

from . import lock as _lock
from ..errors import CheckpointWriteError

log = logging.getLogger("jaxckpt")


class Handle:
    """What the modules beneath a CheckpointManager may ask of it.

    The manager makes one and hands it to the registry, ``save_in_jit`` and
    ``tf_compat``, so that none of them reads the manager's private state.
    It holds the manager's callables weakly: neither the registry nor a
    cached compiled ``save_in_jit`` keeps a manager alive.
    """

    def __init__(self, mngr: Any, directory: str, pid: int, step_counter: Any,
                 interval: int | None, save_on_preemption: bool = False,
                 **calls: Callable[..., Any]):
        self.directory = directory
        self.save_on_preemption = save_on_preemption
        self.pid = pid  # the process whose writer thread this manager has
        self.step_counter = step_counter
        self.interval = interval
        self._mngr = weakref.ref(mngr)
        self._calls = {name: weakref.WeakMethod(fn) for name, fn in calls.items()}

    @property
    def manager(self) -> Any:
        """The manager, or None once it was garbage-collected."""
        return self._mngr()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        try:
            fn = self.__dict__["_calls"][name]()
        except KeyError:
            raise AttributeError(name) from None
        if fn is None:
            raise ReferenceError(f"the CheckpointManager for {self.directory} is gone")
        return fn


def live() -> list[Handle]:
    _MANAGERS[:] = [h for h in _MANAGERS if h.manager is not None]
    return [h for h in _MANAGERS if h.manager is not None]


_MANAGERS: list = []
# Managers made per directory in this process: every process of a
# multi-process program makes the same ones, so the count pairs them up.
_INSTANCES: dict[str, int] = {}
_INSTANCES_LOCK = threading.Lock()

opening = threading.Lock()  # one takeover-and-lock at a time in this process


def take_over(directory: str) -> None:
    """Closes (flushing) this process's open managers on ``directory``, with a warning.

    A notebook cell that makes a manager, re-run, must not fail on the lock
    that its previous run holds. A manager whose ``close()`` was interrupted
    (Ctrl-C) is closed but its writer may still be finishing, holding the lock:
    it is joined, silently. A manager copied into a forked child is the
    parent's: it is left alone (the parent's lock then refuses the new one).
    """
    for other in live():
        if other.pid != os.getpid() or not _lock.same_directory(other.directory, directory):
            continue
        closed_why = other.closed_why()
        if closed_why is not None:
            if not other.writer_stopped():
                try:
                    other.close_because(closed_why)
                except CheckpointWriteError as e:
                    log.warning("the closed CheckpointManager for %s had a failed background "
                                "save: %r", directory, e.__cause__)
            continue
        problem = ""
        try:
            other.close_because("a newer CheckpointManager on the same directory took over")
        except CheckpointWriteError as e:
            problem = f"; its last background save had failed: {e.__cause__!r}"
        warnings.warn(
            f"a CheckpointManager for {directory} was still open in this process; it was "
            f"flushed and closed, and the new one takes over{problem}", stacklevel=3)


@atexit.register
def _flush_at_exit() -> None:
    for mngr in live():
        try:
            mngr.close()  # the public close(): waits, then closes together
        except Exception as e:  # exit must go on; the error was logged by the writer
            log.error("jaxckpt: pending save in %s failed at exit: %r", mngr.directory, e)


def register(handle: Handle, multi: bool) -> None:
    """Tracks a manager (weakly, through its ``handle``) for take-over and the exit flush."""
    _MANAGERS.append(handle)
    if multi:
        _flush_before_jax_shutdown()


_HOOKED = threading.Lock()


def _flush_before_jax_shutdown() -> None:
    """Makes ``jax.distributed.shutdown()`` close this process's managers first.

    A script that ends with ``jax.distributed.shutdown()`` while a manager is
    open would otherwise cut the key-value store out from under its pending
    saves and its collective close: the other processes would wait for it
    until their deadline. Both ``jax.distributed.shutdown`` and JAX's own exit
    hook go through ``global_state.shutdown``, so the flush wraps that one
    method of that one object, once; if JAX's internals differ, nothing is
    wrapped and managers must be closed before the shutdown (as documented).
    """
    try:
        from jax._src import distributed
    except ImportError:
        return
    state = distributed.global_state
    with _HOOKED:
        original = getattr(state, "shutdown", None)
        if original is None or getattr(original, "_jaxckpt_flush", False):
            return

        def shutdown(*args: Any, **kwargs: Any) -> Any:
            if getattr(state, "client", None) is not None:
                _flush_at_exit()
            return original(*args, **kwargs)

        shutdown._jaxckpt_flush = True  # type: ignore[attr-defined]
        state.shutdown = shutdown


def instance_number(directory: str) -> int:
    """How many managers this process has made for ``directory``, this one included."""
    with _INSTANCES_LOCK:
        _INSTANCES[directory] = _INSTANCES.get(directory, 0) + 1
        return _INSTANCES[directory]
