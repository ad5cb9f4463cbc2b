"""Saving when the host is about to go: ``CheckpointManager(save_on_preemption=True)``.

A preemption is learnt one of two ways, by the kind of program:

- **Single process** (``SigtermNotice``): the manager installs a SIGTERM
  handler on the main thread. Until the preemption checkpoint is committed
  the handler only sets a flag (no lock, no I/O). The next save (``save`` or
  a ``save_in_jit`` step) is then made whatever the interval, the manager
  waits for its commit, and only then is the signal handed on to what was
  installed before, as if it had arrived at that moment: the handler is put
  back and a Python callable is called with ``(SIGTERM, frame)``; under
  ``SIG_DFL`` the signal is raised again, so the process ends, killed by
  SIGTERM; ``SIG_IGN`` stays ignored. If the manager is closed (or collected)
  first, the signal is handed on at that point: its meaning is delayed by one
  commit at most, never lost. The hand-on runs on the main thread: from
  another thread (``save_in_jit``'s host callback) the process sends itself
  SIGTERM again, which the handler, now passing through, hands on as soon as
  the main thread runs Python.
- **Multi-process** (``SyncPointNotice``, JAX's preemption service running,
  as ``jax.distributed.initialize`` starts it): JAX's coordination service
  owns SIGTERM (a C handler that records the notice and keeps the process
  alive) and tells every process; ``reached_preemption_sync_point(step)``
  turns True on every process at the same step, one past the furthest step
  any process had reached. The manager asks it at every ``save``; at that step
  every process saves and waits for the commit. Nothing is re-raised: under
  JAX the signal means "stop soon", which ``reached_preemption`` reports.

``NoNotice`` is the default (``save_on_preemption=False``): nothing installed.
"""

from __future__ import annotations

import logging
import signal
import threading
import weakref
from typing import Any, Callable

log = logging.getLogger("jaxckpt")


def mode(save_on_preemption: Any, read_only: bool, directory: str) -> str | None:
    """Checks the option before anything is written; the notice it will use.

    Returns None (off), ``"signal"`` or ``"jax"``.

    Raises:
        TypeError: not a bool.
        ValueError: on a read-only manager; in a multi-process program without
            JAX's preemption service; off the main thread of a single process;
            with a SIGTERM handler installed outside Python (it cannot be chained).
    """
    if not isinstance(save_on_preemption, bool):
        raise TypeError(f"save_on_preemption must be a bool (True saves at the next step "
                        f"after a preemption notice), got {save_on_preemption!r}")
    if not save_on_preemption:
        return None
    if read_only:
        raise ValueError(f"save_on_preemption=True on the read-only manager for {directory}: "
                         "a read-only manager never saves")
    state = _jax_distributed()
    if state is not None and getattr(state, "preemption_sync_manager", None) is not None:
        return "jax"
    if state is not None and getattr(state, "num_processes", 1) > 1:
        raise ValueError(
            f"save_on_preemption=True for {directory} in a multi-process program needs JAX's "
            "preemption service, so that every process saves the same step; it is off "
            "(jax_enable_preemption_service=False when jax.distributed.initialize ran)")
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            f"save_on_preemption=True for {directory} installs a SIGTERM handler, which "
            "Python allows only on the main thread; make the CheckpointManager on the main "
            "thread (the saves may come from any thread)")
    if signal.getsignal(signal.SIGTERM) is None:
        raise ValueError(
            f"save_on_preemption=True for {directory}: the SIGTERM handler in place was not "
            "installed from Python, so jaxckpt could not hand the signal on to it; install "
            "your handler with signal.signal, or leave SIGTERM's default")
    return "signal"


def _jax_distributed() -> Any:
    """JAX's distributed state if ``jax.distributed.initialize`` ran, else None."""
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - JAX's internals moved
        return None
    state = distributed.global_state
    return state if getattr(state, "client", None) is not None else None


class NoNotice:
    """``save_on_preemption=False``: no save is ever forced."""

    step: int | None = None
    in_jit = False

    def due(self, step_of: Callable[[], int]) -> int | None:
        """The step of a save that must be made now (and waited for), or None."""
        return None

    def noticed(self) -> bool:
        """Read by ``save_in_jit``'s per-step host poll."""
        return False

    def committed(self, step: int) -> None:
        """The forced save of ``step`` is committed."""

    def reached(self, step: int) -> bool:
        return self.step is not None and step >= self.step

    def close(self) -> None:
        """The manager is closed: nothing will be saved any more."""


class SyncPointNotice(NoNotice):
    """Multi-process: JAX's preemption sync point decides the step, the same everywhere."""

    def __init__(self, directory: str):
        self.directory = directory

    def due(self, step_of: Callable[[], int]) -> int | None:
        if self.step is not None:
            return None
        from jax.experimental import multihost_utils

        step = step_of()
        return step if multihost_utils.reached_preemption_sync_point(step) else None

    def committed(self, step: int) -> None:
        self.step = step
        log.warning("preemption: every process reached the preemption sync point at step %d; "
                    "its checkpoint in %s is committed", step, self.directory)


class SigtermNotice(NoNotice):
    """Single process: SIGTERM recorded, the next save forced, then the signal handed on."""

    in_jit = True

    def __init__(self, directory: str, owner: Any):
        self.directory = directory
        self.previous = signal.getsignal(signal.SIGTERM)
        self.flag = False  # the handler's only write while a save is to come
        self.passing = False  # nothing (more) to save: SIGTERM means what it meant before
        self._handler = self._on_sigterm  # one bound method, so that `is` finds it again
        signal.signal(signal.SIGTERM, self._handler)
        weakref.finalize(owner, self.close)  # a manager never closed still hands it on

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.passing:
            self._hand_on(signum, frame)
        else:
            self.flag = True

    def noticed(self) -> bool:
        return self.flag and not self.passing

    def due(self, step_of: Callable[[], int]) -> int | None:
        return step_of() if self.noticed() else None

    def committed(self, step: int) -> None:
        self.step = step
        log.warning("preemption: SIGTERM received; the checkpoint of step %d in %s is committed "
                    "and the signal goes on to %s", step, self.directory, _name(self.previous))
        self._release()

    def close(self) -> None:
        if not self.passing:
            self._release()

    def _release(self) -> None:
        """From now on SIGTERM goes to the previous handler; a recorded one goes there now."""
        self.passing = True
        on_main = threading.current_thread() is threading.main_thread()
        if self.flag:
            if on_main:
                signal.raise_signal(signal.SIGTERM)  # Python runs the handler before returning
            else:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        elif on_main and signal.getsignal(signal.SIGTERM) is self._handler:
            signal.signal(signal.SIGTERM, self.previous)
        # Otherwise the handler stays installed, passing every SIGTERM on.

    def _hand_on(self, signum: int, frame: Any) -> None:
        """In the handler, on the main thread: SIGTERM as if jaxckpt had never been there."""
        previous = self.previous
        if signal.getsignal(signal.SIGTERM) is self._handler:
            signal.signal(signal.SIGTERM, previous)
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)  # the default action: the process ends here
        elif callable(previous):
            previous(signum, frame)
        # SIG_IGN: it was ignored before jaxckpt, so it is ignored now.


def _name(handler: Any) -> str:
    if handler == signal.SIG_DFL:
        return "the default action (the process ends, killed by SIGTERM)"
    if handler == signal.SIG_IGN:
        return "SIG_IGN (ignored)"
    return f"the handler installed before ({getattr(handler, '__qualname__', handler)!r})"


def make(kind: str | None, directory: str, owner: Any) -> NoNotice:
    """The notice for ``mode``'s answer; ``owner`` (the manager) is held weakly."""
    if kind == "signal":
        return SigtermNotice(directory, owner)
    if kind == "jax":
        return SyncPointNotice(directory)
    return NoNotice()
