"""CheckpointManager: the public class, its lifecycle and the wiring.

Each job lives in the module named for it; this one connects them:

- ``_policy``: argument checks, the interval rule, retention (pure);
- ``_ownership``: recovery and tidying on open, closing together;
- ``_queue``: numbering and queueing, the one save sequence of ``save`` and
  ``save_in_jit``'s host callback (``_snapshot`` makes the snapshot);
- ``_pipeline``: one save on the writer thread (``_writer``), start to end:
  write and fsync, commit, then publish (replace the state file, and only
  then delete what the retention rules drop);
- ``_managed_restore``: restores after a pending save, agreed, with fallback;
- ``_registry.Handle``: the callables handed to ``_registry``, ``_in_jit``
  and ``tf_compat``, so that none of them reads this class's private state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Any, Callable


from . import _faults
from ._directory import (agree as _agree, catalog as _catalog, lock as _lock,
                         ownership as _ownership, policy as _policy, registry as _registry)
from ._format import names as _names
from . import _managed_restore
from ._report import render as _display, listing as _listing
from ._save import in_jit as _in_jit, pipeline as _pipeline, queue as _queue, snapshot as _snapshot, stats as _stats
from ._directory import coordinate as _multihost
from ._storage import durable as _durable, location as _location, page_cache as _page_cache
from ._directory.policy import as_number
from ._save.writer import Writer
from .errors import (CheckpointNotFoundError, CheckpointWriteError, ForkedManagerError,
                     ManagerClosedError, ReadOnlyManagerError)

log = logging.getLogger("jaxckpt")


class CheckpointManager:
    """Manages numbered checkpoints of a pytree in one directory.

    Args:
        directory: where checkpoints and the ``checkpoint`` state file live.
        max_to_keep: how many recent checkpoints to keep; None keeps all.
        keep_checkpoint_every_n_hours: also keep one checkpoint per this many hours.
        checkpoint_name: checkpoint ``N`` is ``<directory>/<checkpoint_name>-<N>``.
        step_counter: ``state -> int``, read for ``checkpoint_interval``.
        checkpoint_interval: save only when the step advanced this much.
        init_fn: zero-arg function giving the initial state, for
            ``restore_or_initialize``.
        last_checkpoint_step: the step of the last checkpoint, for intervals.
        clock: zero-arg function giving seconds; stamps every checkpoint.
        max_pending: saves queued or being written before ``save`` blocks.
        coordination_timeout_s: in a multi-process program, how long a process
            waits for the others' parts (or process 0's commit) before it
            gives up on that save with an error naming the late process.
        read_only: for readers (an evaluator beside a trainer): never saves,
            sweeps, deletes, locks or writes anything; ``save`` raises
            ``ReadOnlyManagerError``. ``latest_checkpoint``, ``checkpoints`` and
            ``restore`` re-read the state file, so they follow the writer.
        incremental: write only the files whose bytes no kept checkpoint
            holds, hard-linking the rest from it (local directories); every
            checkpoint stays complete on its own. False writes every byte.

    Methods are thread-safe. ``save`` blocks only for the host snapshot (and
    while ``max_pending`` saves are already in flight).

    One process writes a directory: the manager holds a lock on it (process 0
    only in a multi-process JAX program; none for URL directories) that dies
    with the process. A new manager on the same directory in the same process
    takes over: the old one is flushed and closed, with a warning.

    Raises:
        DirectoryLockedError: another process's manager holds the directory.
        ValueError, TypeError, NotADirectoryError: a bad argument, before
            anything is written.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 5,
        keep_checkpoint_every_n_hours: float | None = None,
        checkpoint_name: str = "ckpt",
        step_counter: Callable[[Any], Any] | None = None,
        checkpoint_interval: int | None = None,
        init_fn: Callable[[], Any] | None = None,
        last_checkpoint_step: int | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int = 1,
        coordination_timeout_s: float = _multihost.DEFAULT_TIMEOUT_S,
        read_only: bool = False,
        incremental: bool = True,
    ):
        options = _policy.manager_options(
            read_only=read_only, max_to_keep=max_to_keep, checkpoint_interval=checkpoint_interval,
            max_pending=max_pending, keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
            checkpoint_name=checkpoint_name, step_counter=step_counter, init_fn=init_fn,
            clock=clock, coordination_timeout_s=coordination_timeout_s,
            last_checkpoint_step=last_checkpoint_step, incremental=incremental)
        self._read_only = read_only
        self._max_to_keep, self._interval = options.max_to_keep, options.interval
        last_step = options.last_step
        self._keep_hours = keep_checkpoint_every_n_hours
        self._name = checkpoint_name
        self._step_counter = step_counter
        self._init_fn = init_fn
        self._clock = clock
        self._timeout = float(coordination_timeout_s)
        self._root = _location.locate(directory)
        self._dir = str(self._root)
        self._primary = _multihost.process_index() == 0
        if self._root.is_local and os.path.exists(self._dir) and not os.path.isdir(self._dir):
            raise NotADirectoryError(f"checkpoint directory {self._dir} is a file")
        self._scope = _multihost.scope(self._dir, "mngr", _registry.instance_number(self._dir))
        # Decisions shared by every process (process 0 decides; see _agree).
        self._agree = _agree.Agreement(self._scope + "/agree", self._timeout, self._dir)
        self._closed_together = False
        self._number_of = _ownership.number_parser(checkpoint_name)

        self._save_lock = threading.Lock()  # orders numbering with snapshots, and close
        self._stats = _stats.StatsRecorder()
        self._queue = _queue.SaveQueue(self._scope, self._timeout, self._interval, last_step,
                                       step_counter, clock, self._checkpoint_path, self._stats)
        self._closed_why = "it was closed"
        with _registry.opening:
            if not read_only:  # a reader leaves a writer in this process alone
                _registry.take_over(self._dir)
            if self._root.is_local and not read_only:
                _durable.makedirs_durably(self._dir)
            # None: a URL, not process 0, or a reader (which may run beside the writer)
            self._dir_lock = None if read_only else _lock.acquire(self._dir)
            try:
                # Process 0 alone cleans up (and commits, and deletes); a reader never.
                self._recover(opening=True)
                if self._primary and not read_only:
                    _ownership.tidy(self._root, self._name, self._named)
                self._superseded = _page_cache.Superseded(self._root.is_local,
                                                          self._catalog.checkpoints)
                # The writer thread releases the lock as it stops: even a close()
                # interrupted by Ctrl-C cannot leave this process holding it.
                self._writer = Writer(f"jaxckpt-writer:{self._dir}", max_pending,
                                      self._dir_lock.release if self._dir_lock else None)
                pipeline = _pipeline.Pipeline(self._root, self._catalog, self._superseded,
                                              self._stats, self._queue.finish, incremental)
                # Single-process only: each process holds other pieces of a sharded array.
                self._unchanged = None if self._agree.multi else pipeline.unchanged
                self._queue.start(self._catalog, self._writer, pipeline)
            except BaseException:
                if self._dir_lock is not None:
                    self._dir_lock.release()
                raise
            self._closed = False
            self._restorer = _managed_restore.ManagedRestore(
                self._root, self._agree, self._queue.done_event, self._writer.wait,
                self._newest_first, self._queue.restored)
            self._handle = _registry.Handle(
                self, self._dir, self._writer.pid, step_counter, self._interval,
                close=self.close, close_because=self._close, closed_why=self._closed_reason,
                writer_stopped=self._writer_stopped, check_open=self._check_open,
                report=self._writer.report, save_host_snapshot=self._save_host_snapshot,
                restore_newest_sound=self._restorer.newest_sound, path_for=self._path_for)
            if not read_only:
                _registry.register(self._handle, self._agree.multi)

    # ------------------------------------------------------------ recovery

    def _recover(self, opening: bool = False) -> None:
        writer = opening and not self._read_only
        found = _ownership.recover(
            self._root, self._name, self._agree, self._number_of, self._checkpoint_path,
            lambda: _policy.clock_reading(self._clock), sweep=writer and self._primary,
            share=writer and self._agree.multi)
        self._queue.max_number, self._named = found.max_number, found.named
        self._catalog = _catalog.Catalog(
            self._root, found.retention, found.latest, max_to_keep=self._max_to_keep,
            keep_hours=self._keep_hours, primary=self._primary, carried=found.carried)

    # ------------------------------------------------------------ saving

    def save(
        self,
        state: Any,
        checkpoint_number: Any = None,
        check_interval: bool = True,
        *,
        metadata: dict | None = None,
    ) -> str | None:
        """Snapshots ``state`` and queues its write; returns the checkpoint's path.

        Blocks until ``state`` is safe from the caller (host copies made), and
        while ``max_pending`` saves are in flight. Returns None when
        ``checkpoint_interval`` skips this save.

        Raises:
            CheckpointWriteError: an earlier background save failed (cause chained).
            ManagerClosedError, ReadOnlyManagerError: the manager is closed, or read-only.
            TypeError: a leaf cannot be saved; nothing is queued.
            ValueError: ``checkpoint_number`` is not a non-negative integer.
        """
        called = time.perf_counter()
        self._check_open()
        self._check_writable()
        self._raise_error()
        _in_jit.wait_ready(self._handle, state)
        return self._save_sequence(
            lambda: _snapshot.take(state, metadata, self._unchanged),
            lambda: as_number(self._step_counter(state), "step_counter(state)"),
            checkpoint_number, check_interval, called, again=True)

    def _save_sequence(self, take: Callable[[], _snapshot.Snapshot], step_of: Callable[[], int],
                       checkpoint_number: Any, check_interval: bool, called: float,
                       again: bool = False) -> str | None:
        """Every save's rules and queueing (``_queue``), under ``_save_lock``."""
        with self._save_lock:
            if again:
                self._check_open()  # again: close() may have won the lock
            return self._queue.save(take, step_of, checkpoint_number, check_interval, called)

    def _raise_error(self) -> None:
        error = self._writer.take_error() if hasattr(self, "_writer") else None
        if error is not None:
            raise CheckpointWriteError(
                f"a background save in {self._dir} failed; that checkpoint was not "
                f"committed and earlier ones are intact: {error!r}") from error

    def _check_process(self) -> None:
        """Raises in a forked child: the writer thread stayed in the parent."""
        if self._writer.pid != os.getpid():
            raise ForkedManagerError(
                f"this CheckpointManager for {self._dir} belongs to process {self._writer.pid} "
                f"and this is a child forked from it (pid {os.getpid()}); its writer thread "
                "stayed in the parent, so it cannot save or wait here. Make a new "
                "CheckpointManager in the child (another directory, or after the parent's "
                "manager is closed).")

    def _check_open(self) -> None:
        self._check_process()
        if self._closed:
            raise ManagerClosedError(
                f"CheckpointManager for {self._dir} is closed ({self._closed_why}); "
                "make a new one to save or restore")

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyManagerError(
                f"CheckpointManager for {self._dir} is read-only (read_only=True): it restores "
                "and lists but never saves; make one without read_only to save")

    def _closed_reason(self) -> str | None:
        return self._closed_why if self._closed else None

    def _writer_stopped(self) -> bool:
        return self._writer.stopped

    def _refresh(self) -> None:
        """A reader re-reads the state file: the writer is another manager."""
        if self._read_only and not self._closed:
            with self._save_lock:
                self._recover()

    def wait_until_finished(self) -> None:
        """Blocks until every queued save is committed (or failed).

        Raises:
            CheckpointWriteError: a background save failed.
        """
        self._check_process()
        _in_jit.drain(self._handle)
        self._writer.wait()
        self._raise_error()

    def close(self) -> None:
        """Waits for pending saves and stops the writer; idempotent.

        In a multi-process program every process's first ``close`` waits (up
        to ``coordination_timeout_s``) until every process closed its manager.

        Raises:
            CheckpointWriteError: a background save failed.
            CoordinationTimeoutError: another process did not close its manager in time (named).
        """
        failed = True
        try:
            self._close("close() was called")
            failed = False
        finally:
            self._close_together(quiet=failed)

    def _close_together(self, quiet: bool) -> None:
        if self._closed_together or not self._agree.multi or self._writer.pid != os.getpid():
            return
        self._closed_together = True
        _ownership.close_together(self._agree, self._scope, self._dir, quiet)

    def _close(self, why: str) -> None:
        if self._writer.pid != os.getpid():
            return  # a forked child's copy: the parent's writer and lock are not ours
        if not self._closed:
            # Outside the lock: a pending save_in_jit callback takes it.
            _in_jit.drain(self._handle)
        with self._save_lock:  # a save in progress finishes queueing first
            if not self._closed:
                self._closed_why = why
                self._closed = True
            # Even if already closed: a close() interrupted by Ctrl-C left the
            # writer finishing; this joins it (it releases the directory lock
            # as it stops, so the lock is free once this returns).
            self._writer.close()
            if self._dir_lock is not None:
                self._dir_lock.release()
        self._raise_error()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True) is False and self._queue.pending:
            warnings.warn(f"CheckpointManager for {self._dir} was not closed with saves pending",
                          ResourceWarning, stacklevel=1)

    # ------------------------------------------------------------ saving from compiled code

    def save_in_jit(
        self,
        state: Any,
        step: Any = None,
        *,
        checkpoint_number: Any = None,
        check_interval: bool = True,
        metadata: dict | None = None,
    ) -> None:
        """Saves ``state`` from traced code: ``jax.jit``, ``lax.scan``, ``fori_loop``, ``cond``.

        Call it every step inside the compiled loop. On device it sends the
        state to the host only when ``step % checkpoint_interval == 0`` (every
        call without an interval, or with ``check_interval=False``); non-sent
        steps cost no copy and no host round trip. On the host the callback
        applies ``save()``'s rules to the concrete step (skip the step of the
        last save; skip a step below ``last + checkpoint_interval`` when
        ``check_interval``), copies the state out and queues the write on the
        background writer without waiting for it.

        Args:
            state: the pytree to save (traced arrays, PRNG keys, static leaves).
            step: a scalar integer, traced or not; default ``step_counter(state)``.
            checkpoint_number: default ``step``: checkpoint ``N`` holds step ``N``.
            check_interval: as in ``save``; a Python bool.
            metadata: a JSON-able dict stored with every checkpoint it makes.

        Does not block: the work happens when the compiled code runs. A
        failure there (a write, or the callback itself, e.g. a closed manager)
        is raised as ``CheckpointWriteError`` by the next ``save``,
        ``wait_until_finished`` or ``close``; ``wait_until_finished``,
        ``close`` and ``restore()`` first wait for dispatched computations.
        The manager is bound at trace time: a cached compiled function keeps
        saving to the manager it was traced with.

        Raises:
            TypeError: a leaf cannot be saved, or ``step`` is not an integer
                scalar (at trace time; nothing is compiled).
            ValueError: no ``step`` and no ``step_counter``, or a negative step.
            ManagerClosedError: the manager is closed.

        In a multi-process program every process must run it for the same
        steps: each writes its own block of the large leaves (see the README).
        """
        self._check_writable()
        _in_jit.save(self._handle, state, step, checkpoint_number, check_interval, metadata)

    def _save_host_snapshot(self, take: Callable[[], _snapshot.Snapshot], step: int,
                            number: int, check_interval: bool) -> str | None:
        """save()'s rules and queueing, for a snapshot made by save_in_jit's callback.

        Unlike ``save`` it leaves an earlier background failure for the next
        host call to raise.
        """
        called = time.perf_counter()
        self._check_open()
        return self._save_sequence(take, lambda: step, number, check_interval, called)

    # ------------------------------------------------------------ reading

    def _checkpoint_path(self, number: int) -> str:
        return str(self._root.join(_names.numbered(self._name, number)))

    def _path_for(self, checkpoint: Any) -> str:
        if isinstance(checkpoint, (str, os.PathLike)):
            return str(_location.locate(checkpoint))
        return self._checkpoint_path(as_number(checkpoint, "checkpoint"))

    def restore(self, checkpoint: Any = None, target: Any = None, *, partial: bool = False,
                progress: bool = False) -> Any:
        """Restores a checkpoint: a path, a number, or None for the latest.

        Waits for that checkpoint's commit if it is still being written (for
        None: for every pending save). ``progress=True`` shows a progress bar.

        Raises:
            CheckpointNotFoundError: there is no such committed checkpoint.
            StructureMismatchError, CorruptCheckpointError: as ``jaxckpt.restore``.
            ForkedManagerError: in a process forked from the manager's (use
                ``jaxckpt.restore(path)`` there, or a new manager).
        """
        self._check_process()
        _in_jit.drain(self._handle)
        if checkpoint is None:
            _faults.point("manager.restore_waits")
            self._writer.wait()
            path = self._restorer.agreed(self.latest_checkpoint)
            if path is None:
                raise CheckpointNotFoundError(f"no committed checkpoint in {self._dir}")
        else:
            path = self._path_for(checkpoint)
        return self._restorer.restore(path, target, partial=partial, progress=progress)

    def restore_or_initialize(self, target: Any = None) -> Any:
        """Restores the latest checkpoint, or returns ``init_fn()`` (or None).

        Without ``target`` the structure comes from ``jax.eval_shape(init_fn)``
        when ``init_fn`` is given, else the raw saved structure. A damaged or
        vanished checkpoint is skipped, with a WARNING naming it, for the next
        older one. Waits for pending saves first.

        Raises:
            CorruptCheckpointError: checkpoints exist but none of them restores.
            StructureMismatchError: ``target`` does not fit the checkpoint.
        """
        self._check_process()
        _in_jit.drain(self._handle)
        self._writer.wait()
        # In a multi-process program whether there is one is process 0's call
        # too (a reader's own view may lag or lead): newest_sound asks.
        if self._agree.multi or self.latest_checkpoint is not None:
            if target is None and self._init_fn is not None:
                import jax

                target = jax.eval_shape(self._init_fn)
            found = self._restorer.newest_sound(target)
            if found is not None:
                return found[1]
        if self._init_fn is not None:
            return self._init_fn()
        return None

    def _newest_first(self) -> list[str]:
        self._refresh()  # a reader follows the writer's state file
        return self._catalog.newest_first()

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def checkpoints(self) -> list[str]:
        """Committed, managed checkpoints, oldest first. Never blocks."""
        self._refresh()
        return self._catalog.checkpoints

    @property
    def latest_checkpoint(self) -> str | None:
        """The newest committed checkpoint. Never blocks."""
        self._refresh()
        return self._catalog.latest

    @property
    def checkpoint_interval(self) -> int | None:
        return self._interval

    @property
    def pending(self) -> list[str]:
        """Paths of saves queued or being written, oldest first. Never blocks."""
        return self._queue.pending_paths()

    @property
    def last_save_stats(self) -> _stats.SaveStats | None:
        """The newest save whose write finished (committed or failed), or None.

        Its ``blocked_s``, ``write_s``, ``nbytes`` and ``deleted`` are final.
        Never blocks.
        """
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
                                       self._interval, len(self.pending), self.stats)

    def __str__(self) -> str:
        return (f"CheckpointManager\n{_display.text_fields(self._fields())}\n"
                f"{self.list_checkpoints()!r}")

    def _repr_html_(self) -> str:
        return ("<div><strong>CheckpointManager</strong>" + _display.html_fields(self._fields())
                + self.list_checkpoints()._repr_html_() + "</div>")

    def __repr__(self) -> str:
        pending = self.pending
        return (f"CheckpointManager({self._dir!r}, max_to_keep={self._max_to_keep}, "
                f"{len(self.checkpoints)} checkpoint(s), latest={self.latest_checkpoint!r}"
                + (f", {len(pending)} pending" if pending else "") + ")")


def handle(mngr: CheckpointManager) -> _registry.Handle:
    """The callables ``mngr`` hands the modules that build on it (``tf_compat``)."""
    return mngr._handle
