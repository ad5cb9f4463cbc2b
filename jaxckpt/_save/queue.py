"""Numbering and queueing: one manager's save sequence, on the caller's thread.

Every save, from ``save`` or ``save_in_jit``'s host callback, runs the same
steps in this order while ``SaveQueue.save_lock`` is held: the interval rule
(``_directory/policy.skips``, or ``_directory/save_rules`` with
``save_interval_s`` or ``checkpoint_interval="auto"``), the number, the clock, the snapshot, then the
queueing of ``_save/pipeline.Pipeline.run`` on the writer thread. The saves queued or being
written are this module's ``pending``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .._directory import coordinate as _multihost
from . import pipeline as _pipeline, snapshot as _snapshot, stats as _stats
from .._directory import catalog as _catalog, policy as _policy, save_rules as _save_rules
from .writer import Writer

log = logging.getLogger("jaxckpt")


class SaveQueue:
    """The numbering, interval state and pending saves of one manager."""

    def __init__(self, scope: str, timeout: float, interval: int | None,
                 last_step: int | None, step_counter: Callable[[Any], Any] | None,
                 clock: Callable[[], Any], path_of: Callable[[int], str],
                 stats: _stats.StatsRecorder, rules: _save_rules.Rules | None = None):
        self._scope = scope
        self._timeout = timeout
        self._interval = interval
        self._step_counter = step_counter
        self._clock = clock
        self._path_of = path_of
        self._stats = stats
        self._seq = 0
        self.max_number = 0
        self.last_step = last_step
        self.save_lock = threading.Lock()  # orders numbering with snapshots, and close
        self.lock = threading.Lock()  # guards pending
        self.pending: dict[str, threading.Event] = {}
        self._catalog: _catalog.Catalog | None = None
        self._writer: Writer | None = None
        self._pipeline: _pipeline.Pipeline | None = None
        self._check_open: Callable[[], None] = lambda: None
        self.rules = rules  # save_interval_s / "auto": they decide instead of policy.skips
        self._counts_steps = interval is not None or (rules is not None and rules.steps)
        self.last_blocked_s = 0.0

    def start(self, catalog: _catalog.Catalog, writer: Writer, pipeline: _pipeline.Pipeline,
              check_open: Callable[[], None]) -> None:
        """Once the directory is open: where saves are numbered, queued and run;
        ``check_open`` raises once the manager is closed (or in a forked child)."""
        self._catalog, self._writer, self._pipeline = catalog, writer, pipeline
        self._check_open = check_open
        if self.rules is not None:  # saves by time count from the newest checkpoint
            self.rules.last_time = catalog.newest_timestamp()

    def save(self, take: Callable[[], _snapshot.Snapshot], step_of: Callable[[], int],
             checkpoint_number: Any, check_interval: bool, called: float, *,
             again: bool = False, ready: Callable[[], bool] | None = None) -> str | None:
        """Under ``save_lock`` (``again``: after checking again that the manager
        is open, as close() may have won the lock): every save's rules, in order;
        the path queued, or None if the interval skips it. ``step_of`` is read
        only with an interval; ``checkpoint_number`` None is the next number.
        ``ready()`` waits for the state's arrays, True if it had to (for
        ``checkpoint_interval="auto"``'s step time)."""
        with self.save_lock:
            if again:
                self._check_open()
            return self._save(take, step_of, checkpoint_number, check_interval, called, ready)

    def save_host_snapshot(self, take: Callable[[], _snapshot.Snapshot], step: int,
                           number: int, check_interval: bool) -> str | None:
        """save()'s rules and queueing, for a snapshot made by save_in_jit's callback.

        Unlike ``save`` it leaves an earlier background failure for the next
        host call to raise.
        """
        called = time.perf_counter()
        self._check_open()
        return self.save(take, lambda: step, number, check_interval, called)

    def _save(self, take: Callable[[], _snapshot.Snapshot], step_of: Callable[[], int],
              checkpoint_number: Any, check_interval: bool, called: float,
              ready: Callable[[], bool] | None = None) -> str | None:
        step = None
        if self.rules is not None:
            step = step_of() if self.rules.steps else None
            timestamp = _policy.clock_reading(self._clock)
            resync = None if ready is None else (
                lambda: _policy.clock_reading(self._clock) if ready() else None)
            if not self.rules.due(self.last_step, step, timestamp, check_interval,
                                  self._last_write_s, resync):
                return None
        elif self._interval is not None:
            step = step_of()
            if _policy.skips(self.last_step, step, self._interval, check_interval):
                return None
        number = (self.max_number + 1 if checkpoint_number is None
                  else _policy.as_number(checkpoint_number))
        if self.rules is None:
            timestamp = _policy.clock_reading(self._clock)
        self._catalog.warn_if_clock_went_back(timestamp)
        computing_s = 0.0
        if self.rules is not None and ready is not None:
            # What the snapshot would wait for the device to compute (queued
            # steps) is not the save's cost: measured apart, left out of it.
            t = time.perf_counter()
            if ready():
                computing_s = time.perf_counter() - t
        snapshot = take()
        path = self._enqueue(snapshot, number, step, timestamp, called)
        if self.rules is not None:
            self.rules.saved(timestamp, max(0.0, self.last_blocked_s - computing_s))
        return path

    def _last_write_s(self) -> float | None:
        last = self._stats.last_finished()
        return None if last is None else last.write_s

    def _enqueue(self, snapshot: _snapshot.Snapshot, number: int, step: int | None,
                 timestamp: float, called: float) -> str:
        """Numbering, coordination and stats; queues the write.

        The step and number count as saved only once the write is queued: an
        interrupt (Ctrl-C) while ``submit`` waits for a slot leaves them as they
        were, so that saving the same step again is not skipped.
        """
        path = self._path_of(number)
        seq = self._seq + 1
        coord = _multihost.SaveCoordinator(self._scope, seq, path, self._timeout,
                                           hold_commit=True)
        done = threading.Event()
        with self.lock:
            self.pending[path] = done
        stats = _stats.SaveStats(path, snapshot.nbytes, started=time.time())
        queued = time.perf_counter()
        run = self._pipeline.run
        try:
            self._writer.submit(
                lambda: run(snapshot, path, timestamp, coord, done, stats, queued))
        except BaseException:
            if snapshot.rolling is not None:
                snapshot.rolling.close()
            self.finish(path, done)
            raise
        self._seq = seq
        if step is not None:
            self.last_step = step
        self.max_number = max(self.max_number, number)
        if snapshot.rolling is not None:  # the copies a host budget held back
            snapshot.rolling.stage_rest()
        stats.blocked_s = self.last_blocked_s = time.perf_counter() - called
        self._stats.started(stats)
        return path

    def finish(self, path: str, done: threading.Event) -> None:
        """The save of ``path`` that made ``done`` is no longer pending."""
        with self.lock:
            if self.pending.get(path) is done:
                del self.pending[path]
        done.set()

    def pending_paths(self) -> list[str]:
        with self.lock:
            return list(self.pending)

    def done_event(self, path: str) -> threading.Event | None:
        """Set once the pending save of ``path`` finished; None if there is none."""
        with self.lock:
            return self.pending.get(path)

    def restored(self, path: str, state: Any) -> None:
        """After a restore of ``path``: the interval counts from its step."""
        if self._counts_steps:
            try:
                self.last_step = _policy.as_number(self._step_counter(state),
                                                   "step_counter(state)")
            except Exception as e:
                log.warning("step_counter could not read the restored state of %s: %r", path, e)


def wait_for_arrays(state: Any) -> bool:
    """Waits for the ``jax.Array``s of ``state`` still being computed; True if any was."""
    import jax

    waited = False
    for leaf in jax.tree_util.tree_leaves(state):
        if (isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
                and not leaf.is_deleted() and not leaf.is_ready()):
            leaf.block_until_ready()
            waited = True
    return waited
