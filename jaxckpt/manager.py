"""CheckpointManager: the public class, its lifecycle and the wiring.

Each job lives in the module named for it; this one connects them:
``_directory/policy`` checks the arguments; ``_save/opening`` opens the
directory (take over, lock, recover, tidy), keeps its catalog and starts the
writer; ``_save/lifecycle`` makes every call's checks and closes;
``_save/queue`` numbers and queues the saves of ``save`` and ``save_in_jit``
(``_save/snapshot`` makes the snapshot) for ``_save/pipeline``, one save on
the writer thread from start to end; ``_managed_restore`` restores after a
pending save, agreed, with fallback; ``_directory/registry.Handle`` carries
the callables handed to the registry, ``_save/in_jit`` and ``tf_compat``, so
that none of them reads this class's private state.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Callable

from . import _managed_restore
from ._directory import (agree as _agree, auto_interval as _auto_interval, best as _best,
                         coordinate as _multihost, policy as _policy, registry as _registry,
                         save_rules as _save_rules)
from ._directory.policy import as_number
from ._report import listing as _listing, render as _display
from ._read import stream as _stream
from ._save import (in_jit as _in_jit, opening as _opening, preemption as _preemption,
                    queue as _queue, staging as _staging, stats as _stats)
from ._storage import location as _location
from .errors import CheckpointNotFoundError  # noqa: F401  (tf_compat raises it from here)


class CheckpointManager:
    """Manages numbered checkpoints of a pytree in one directory.

    Args:
        directory: where checkpoints and the ``checkpoint`` state file live.
        max_to_keep: how many recent checkpoints to keep; None keeps all.
        keep_checkpoint_every_n_hours: also keep one checkpoint per this many hours.
        checkpoint_name: checkpoint ``N`` is ``<directory>/<checkpoint_name>-<N>``.
        step_counter: ``state -> int``, read for ``checkpoint_interval``.
        checkpoint_interval: save only when the step advanced this much; ``"auto"``:
            a step interval chosen from the measured cost of a save and ``mtbf_s``
            (Young/Daly), re-chosen after each save (README, "Save policies").
        init_fn: zero-arg function giving the initial state, for ``restore_or_initialize``.
        last_checkpoint_step: the step of the last checkpoint, for intervals.
        clock: zero-arg function giving seconds; stamps every checkpoint.
        max_pending: saves queued or being written before ``save`` blocks.
        coordination_timeout_s: in a multi-process program, how long a process
            waits for the others' parts (or process 0's commit) before it
            gives up on that save with an error naming the late process.
        read_only: for readers (an evaluator beside a trainer): never saves, sweeps, deletes,
            locks or writes anything; ``save`` raises ``ReadOnlyManagerError``. Its
            ``latest_checkpoint``, ``checkpoints`` and ``restore`` re-read the state
            file, so they follow the writer.
        incremental: write only files no kept checkpoint holds, hard-linking the rest (local
            directories); every checkpoint stays whole. False writes every byte.
        max_host_bytes: a ceiling on the host memory saves hold in copies (NumPy
            leaves, device-to-host copies); a larger save rolls through: ``save``
            copies while the budget allows and the writer frees each leaf's copy
            once written. One piece larger than it is copied alone. Restores read
            large leaves in slabs under it too (at least 1 MiB; a restore's own
            ``max_host_bytes`` overrides it). None: no limit.
        save_interval_s: also save once this many seconds on ``clock`` passed since
            the last save (after a restart: the newest checkpoint's timestamp); with
            an int ``checkpoint_interval`` a save happens when either rule says so.
        permanent_every: checkpoints whose number is a multiple of it are permanent
            (kept under ``max_to_keep`` and ``keep_checkpoint_every_n_hours``); any
            other is temporary: deleted once a newer checkpoint commits.
        mtbf_s: with ``checkpoint_interval="auto"`` (and only then, required): the
            mean time between failures, in seconds.
        max_overhead: with ``"auto"``: the most of the step time saves may block,
            a fraction (default 0.02).
        keep_best: ``(k, metric, "min" | "max")``: also keep the ``k`` checkpoints
            with the best value of ``metric`` (passed with ``save(..., metrics=)``), in
            addition to what ``max_to_keep`` and the other rules keep; after a restart
            too (the metrics are read from the checkpoints).
        save_on_preemption: on SIGTERM (one process) or JAX's preemption notice
            (``jax.distributed``), the next save is made whatever the interval and
            waited for; ``reached_preemption(step)`` then says to stop. The README's
            "Saving on preemption" says what happens to the signal.

    Methods are thread-safe; ``save`` blocks only for the host snapshot (and
    while ``max_pending`` saves are in flight). One process writes a directory
    (it holds a lock, see the README); a new manager on it in this process
    takes over: the old one is flushed and closed, with a warning.

    Raises:
        DirectoryLockedError: another process's manager holds the directory.
        ValueError, TypeError, NotADirectoryError: a bad argument, before anything is written.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 5,
                 keep_checkpoint_every_n_hours: float | None = None, checkpoint_name: str = "ckpt",
                 step_counter: Callable[[Any], Any] | None = None,
                 checkpoint_interval: int | None = None, init_fn: Callable[[], Any] | None = None,
                 last_checkpoint_step: int | None = None, clock: Callable[[], float] = time.time,
                 max_pending: int = 1,
                 coordination_timeout_s: float = _multihost.DEFAULT_TIMEOUT_S,
                 read_only: bool = False, incremental: bool = True,
                 max_host_bytes: int | None = None, save_interval_s: float | None = None,
                 permanent_every: int | None = None, mtbf_s: float | None = None,
                 max_overhead: float | None = None, save_on_preemption: bool = False,
                 keep_best: tuple[int, str, str] | None = None):
        options = _policy.manager_options(
            read_only=read_only, max_to_keep=max_to_keep, checkpoint_interval=checkpoint_interval,
            max_pending=max_pending, keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
            checkpoint_name=checkpoint_name, step_counter=step_counter, init_fn=init_fn,
            clock=clock, coordination_timeout_s=coordination_timeout_s,
            last_checkpoint_step=last_checkpoint_step, incremental=incremental,
            save_rules=dict(save_interval_s=save_interval_s, permanent_every=permanent_every,
                            mtbf_s=mtbf_s, max_overhead=max_overhead),
            process_count=_multihost.process_count())
        self._budget = _staging.HostBudget(max_host_bytes)  # checked before anything is written
        self._keep_best = _best.check_keep_best(keep_best)
        preempt_mode = _preemption.mode(save_on_preemption, read_only, str(directory))
        self._preemption: _preemption.NoNotice = _preemption.NoNotice()
        self._max_to_keep, self._interval = options.max_to_keep, options.interval
        self._keep_hours, self._name = keep_checkpoint_every_n_hours, checkpoint_name
        self._step_counter, self._init_fn = step_counter, init_fn
        self._root = _location.locate(directory)
        self._dir = str(self._root)
        _location.refuse_file(self._root)
        self._scope = _multihost.scope(self._dir, "mngr", _registry.instance_number(self._dir))
        timeout = float(coordination_timeout_s)
        # Decisions shared by every process (process 0 decides; see _directory/agree).
        self._agree = _agree.Agreement(self._scope + "/agree", timeout, self._dir)
        self._stats = _stats.StatsRecorder()
        self._directory = _opening.Directory(
            self._root, checkpoint_name, self._agree, clock, max_to_keep=self._max_to_keep,
            keep_hours=self._keep_hours, primary=_multihost.process_index() == 0,
            read_only=read_only, permanent_every=options.rules.permanent_every,
            keep_best=self._keep_best)
        rules = (_save_rules.Rules(options.rules, self._interval) if options.rules.decides
                 else None)
        self._queue = _queue.SaveQueue(self._scope, timeout, self._interval, options.last_step,
                                       step_counter, clock, self._directory.path_of, self._stats,
                                       rules)
        with self._directory.open(self._queue, self._stats, max_pending, incremental) as opened:
            self._writer, self._dir_lock, self._life = opened.writer, opened.dir_lock, opened.life
            self._unchanged = opened.unchanged
            self._restorer = _managed_restore.ManagedRestore(
                self._root, self._agree, self._queue.done_event, self._writer.wait,
                lambda: self._directory.catalog().newest_first(), self._queue.restored)
            if self._budget.limit is not None:  # restores stream under it too (slabs need 1 MiB)
                self._restorer.default_budget = max(self._budget.limit, _stream.MIN_HOST_BYTES)
            life = self._life
            self._handle = _registry.Handle(
                self, self._dir, self._writer.pid, step_counter, self._interval,
                preempt_mode is not None,
                close=self.close, close_because=life.close, closed_why=life.closed_reason,
                writer_stopped=life.writer_stopped, check_open=life.check_open,
                report=self._writer.report, save_host_snapshot=self._queue.save_host_snapshot,
                restore_newest_sound=self._restorer.newest_sound,
                path_for=self._directory.path_for, preempt_poll=self._preempt_poll,
                preempt_due=self._preempt_due, preempt_saved=self._preempt_saved)
            if rules is not None:  # the device-side filter needs a fixed step interval
                self._handle.jit_refusal = ("save_interval_s" if options.rules.interval_s
                                            is not None else "checkpoint_interval='auto'")
            self._life.drain = lambda: _in_jit.drain(self._handle)
            # Last: a manager that failed to open leaves no handler behind.
            self._preemption = _preemption.make(preempt_mode, self._dir, self)
            if not read_only:
                _registry.register(self._handle, self._agree.multi)

    @property
    def _closed(self) -> bool:
        return self._life.closed

    def save(self, state: Any, checkpoint_number: Any = None, check_interval: bool = True, *,
             metadata: dict | None = None, metrics: dict | None = None) -> str | None:
        """Snapshots ``state`` and queues its write; returns the checkpoint's path.

        Blocks until ``state`` is safe from the caller (host copies made), and
        while ``max_pending`` saves are in flight. Returns None when
        ``checkpoint_interval`` skips this save.

        Raises:
            CheckpointWriteError: an earlier background save failed (cause chained).
            ManagerClosedError, ReadOnlyManagerError: the manager is closed, or read-only.
            TypeError: a leaf cannot be saved, or ``metrics`` is not a dict of str to
                real numbers; nothing is queued.
            ValueError: ``checkpoint_number`` is not a non-negative integer.

        ``metrics``: numbers stored with the checkpoint (``keep_best`` ranks by
        one of them; ``checkpoint_metrics`` and ``jaxckpt ls`` show them).
        """
        called = time.perf_counter()
        checked_metrics = _best.check_metrics(metrics)
        self._life.check_save()
        _in_jit.wait_ready(self._handle, state)
        # After a preemption notice: this save, whatever the interval, waited for.
        forced = self._preemption.due(lambda: self._preemption_step(state, checkpoint_number))
        path = self._queue.save(  # the rules and the queueing, under the save lock
            lambda: _with_metrics(_staging.take(state, metadata, self._unchanged, self._budget),
                                  checked_metrics),
            lambda: as_number(self._step_counter(state), "step_counter(state)"),
            checkpoint_number, check_interval and forced is None, called, again=True,
            ready=lambda: _queue.wait_for_arrays(state))
        if forced is not None:  # None: that step's save was already queued; waited for too
            self.wait_until_finished()
            self._preemption.committed(forced)  # may end the process (the default SIGTERM)
        return path

    def reached_preemption(self, step: Any) -> bool:
        """Whether to stop now: True once the checkpoint saved for a preemption notice
        (``save_on_preemption=True``) is committed, for ``step`` at or after its step.

        The step is ``step_counter(state)`` of that save (without a step counter: its
        checkpoint number). Never blocks; False without ``save_on_preemption``.

        Raises:
            ValueError: ``step`` is not a non-negative integer.
        """
        return self._preemption.reached(as_number(step, "step"))

    def _preemption_step(self, state: Any, checkpoint_number: Any) -> int:
        """A save's step for the preemption notice: the same on every process."""
        if self._step_counter is not None:
            return as_number(self._step_counter(state), "step_counter(state)")
        if checkpoint_number is not None:
            return as_number(checkpoint_number)
        return self._queue.max_number + 1

    def _preempt_poll(self) -> bool:
        """save_in_jit's per-step question, on its callback thread: save this step?"""
        return self._preemption.noticed()

    def _preempt_due(self, step: int) -> bool:
        return self._preemption.due(lambda: step) is not None

    def _preempt_saved(self, step: int) -> None:
        """On save_in_jit's callback thread: waits for the forced save's commit (a
        failure stays for the next host call to raise; the next step tries again)."""
        self._writer.wait()
        if not self._stats.last_finished() or not self._stats.last_finished().committed:
            return
        self._preemption.committed(step)

    def wait_until_finished(self) -> None:
        """Blocks until every queued save is committed (or failed).

        Raises:
            CheckpointWriteError: a background save failed.
        """
        self._life.check_process()
        _in_jit.drain(self._handle)
        self._writer.wait()
        self._life.raise_error()

    def close(self) -> None:
        """Waits for pending saves and stops the writer; idempotent.

        In a multi-process program every process's first ``close`` waits (up
        to ``coordination_timeout_s``) until every process closed its manager.

        Raises:
            CheckpointWriteError: a background save failed.
            CoordinationTimeoutError: another process did not close its manager in time (named).
        """
        try:
            self._life.close_all(self._agree, self._scope)
        finally:
            self._preemption.close()  # a SIGTERM recorded and not yet saved goes on now

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True) is False and self._queue.pending:
            warnings.warn(f"CheckpointManager for {self._dir} was not closed with saves pending",
                          ResourceWarning, stacklevel=1)

    # ------------------------------------------------------------ saving from compiled code

    def save_in_jit(self, state: Any, step: Any = None, *, checkpoint_number: Any = None,
                    check_interval: bool = True, metadata: dict | None = None) -> None:
        """Saves ``state`` from traced code: ``jax.jit``, ``lax.scan``, ``fori_loop``, ``cond``.

        Call it every step inside the compiled loop. On device it sends the
        state to the host only when ``step % checkpoint_interval == 0`` (every
        call without an interval, or with ``check_interval=False``); on the
        host the callback applies ``save()``'s rules to the concrete step and
        queues the write without waiting for it. In a multi-process program
        every process must run it for the same steps. The README's
        "Checkpointing inside jit / scan" has the details.

        Args:
            state: the pytree to save (traced arrays, PRNG keys, static leaves).
            step: a scalar integer, traced or not; default ``step_counter(state)``.
            checkpoint_number: default ``step``: checkpoint ``N`` holds step ``N``.
            check_interval: as in ``save``; a Python bool.
            metadata: a JSON-able dict stored with every checkpoint it makes.

        Does not block: a failure when the compiled code runs (a write, or the callback
        itself) is raised as ``CheckpointWriteError`` by the next ``save``,
        ``wait_until_finished`` or ``close``. The manager is bound at trace time: a cached
        compiled function keeps saving to it.

        Raises:
            TypeError: a leaf cannot be saved, or ``step`` is not an integer
                scalar (at trace time; nothing is compiled).
            ValueError: no ``step`` and no ``step_counter``, or a negative step.
            ManagerClosedError: the manager is closed.
        """
        self._life.check_writable()
        _in_jit.save(self._handle, state, step, checkpoint_number, check_interval, metadata)

    # ------------------------------------------------------------ reading

    def restore(self, checkpoint: Any = None, target: Any = None, *, partial: bool = False,
                progress: bool = False, max_host_bytes: int | None = None) -> Any:
        """Restores a checkpoint: a path, a number, or None for the latest.

        Waits for that checkpoint's commit if it is still being written (for
        None: for every pending save). ``progress=True`` shows a progress bar.
        ``max_host_bytes``: as ``jaxckpt.restore``.

        Raises:
            CheckpointNotFoundError: there is no such committed checkpoint.
            StructureMismatchError, CorruptCheckpointError: as ``jaxckpt.restore``.
            ForkedManagerError: in a process forked from the manager's (use
                ``jaxckpt.restore(path)`` there, or a new manager).
        """
        self._life.check_process()
        _stream.check_budget(max_host_bytes)
        _in_jit.drain(self._handle)
        path = (self._restorer.latest(lambda: self.latest_checkpoint) if checkpoint is None
                else self._directory.path_for(checkpoint))
        return self._restorer.restore(path, target, partial=partial, progress=progress,
                                      max_host_bytes=max_host_bytes)

    def restore_or_initialize(self, target: Any = None) -> Any:
        """Restores the latest checkpoint, or returns ``init_fn()`` (or None).

        Without ``target`` the structure comes from ``jax.eval_shape(init_fn)`` when
        ``init_fn`` is given, else the raw saved structure. A damaged or vanished checkpoint
        is skipped, with a WARNING naming it, for the next older one. Waits for pending saves.

        Raises:
            CorruptCheckpointError: checkpoints exist but none of them restores.
            StructureMismatchError: ``target`` does not fit the checkpoint.
        """
        self._life.check_process()
        _in_jit.drain(self._handle)
        return self._restorer.or_initialize(target, self._init_fn, lambda: self.latest_checkpoint)

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def checkpoints(self) -> list[str]:
        """Committed, managed checkpoints, oldest first. Never blocks."""
        return self._directory.catalog().checkpoints

    @property
    def latest_checkpoint(self) -> str | None:
        """The newest committed checkpoint. Never blocks."""
        return self._directory.catalog().latest

    @property
    def checkpoint_interval(self) -> int | None:
        """The step interval: as given, or with ``"auto"`` the current choice (None
        until the first is made). Never blocks."""
        rules = self._queue.rules
        return self._interval if rules is None else rules.interval

    @property
    def interval_choice(self) -> _auto_interval.IntervalChoice | None:
        """With ``checkpoint_interval="auto"``: the current choice with what it was
        made from (cost, write and step time, MTBF, bound); else None. Never blocks."""
        rules = self._queue.rules
        return None if rules is None or rules.auto is None else rules.auto.choice

    @property
    def pending(self) -> list[str]:
        """Paths of saves queued or being written, oldest first. Never blocks."""
        return self._queue.pending_paths()

    @property
    def last_save_stats(self) -> _stats.SaveStats | None:
        """The newest save whose write finished (committed or failed), or None; its
        ``blocked_s``, ``write_s``, ``nbytes`` and ``deleted`` are final. Never blocks."""
        return self._stats.last_finished()

    @property
    def stats(self) -> _stats.SaveSummary:
        """Totals over every save of this manager (a snapshot). Never blocks."""
        return self._stats.summary()

    def list_checkpoints(self) -> _listing.CheckpointList:
        """This manager's checkpoints on disk with their status (pending ones too)."""
        return _listing.list_checkpoints(self._dir, checkpoint_name=self._name,
                                         pending=self.pending)

    def _fields(self) -> list[tuple[str, str]]:
        return _display.manager_fields(self._dir, self._max_to_keep, self._keep_hours,
                                       self.checkpoint_interval, len(self.pending), self.stats)

    def __str__(self) -> str:
        return _display.manager_text(self._fields(), repr(self.list_checkpoints()))

    def _repr_html_(self) -> str:
        return _display.manager_html(self._fields(), self.list_checkpoints()._repr_html_())

    def __repr__(self) -> str:
        return _display.manager_repr(self._dir, self._max_to_keep, len(self.checkpoints),
                                     self.latest_checkpoint, len(self.pending))


def _with_metrics(snapshot: Any, metrics: dict | None) -> Any:
    snapshot.metrics = metrics
    return snapshot


def handle(mngr: CheckpointManager) -> _registry.Handle:
    """The callables ``mngr`` hands the modules that build on it (``tf_compat``)."""
    return mngr._handle
