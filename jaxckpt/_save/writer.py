"""The background writer: one thread, a bounded queue, errors handed back.

Jobs are plain callables; this module knows nothing of JAX or checkpoints.
A job's exception is stored and raised once, by the next ``submit``,
``wait`` or ``close`` (wrapped by the caller), never swallowed. No asyncio is
involved, so it works under Jupyter's running event loop.

Ctrl-C safe: a ``KeyboardInterrupt`` (or any exception a signal handler
raises) in a caller's ``submit``, ``wait`` or ``close`` leaves the writer
consistent. The caller's side mutates one thing, under one condition
variable: ``submit`` appends its job to a deque (one C-level call, so a job
is either queued or not) and ``close`` sets a flag; the counts that decide
whether ``submit`` must wait are derived from the deque and from what the
writer thread, which signals never interrupt, is running.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Callable

log = logging.getLogger("jaxckpt")


# The caller's waits wake this often: a SIGINT that arrives just before a wait
# blocks runs its handler (KeyboardInterrupt) only once the wait returns, and a
# wait for a slot may otherwise last as long as a whole write.
_WAKE_S = 0.25


class Writer:
    """Runs submitted jobs in order on one daemon thread.

    Thread-safe: ``submit`` may be called from any thread; it blocks while
    ``max_pending`` jobs are queued or running. ``on_stop``, if given, runs on
    the writer thread as its last act, after the last job, so that what it
    releases (the directory lock) is released even if the ``close`` that
    stopped the thread was itself interrupted.
    """

    def __init__(self, name: str, max_pending: int = 1,
                 on_stop: Callable[[], None] | None = None):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._max_pending = max_pending
        self._cond = threading.Condition(threading.Lock())
        self._jobs: collections.deque = collections.deque()
        self._running = 0  # jobs taken off the deque and not finished: writer thread only
        self._errors: list[BaseException] = []
        self._closed = False
        self._on_stop = on_stop
        self.pid = os.getpid()  # the process whose thread runs the jobs
        # Set by the thread as its last act. Not Thread.join/is_alive: before
        # Python 3.13 a join interrupted by Ctrl-C marks a running thread stopped.
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._jobs and not self._closed:
                        self._cond.wait()
                    if not self._jobs:  # closed and drained
                        return
                    job = self._jobs.popleft()
                    self._running = 1
                try:
                    job()
                except BaseException as e:  # handed back to the caller, never lost
                    log.error("background save failed: %r", e)
                    with self._cond:
                        self._errors.append(e)
                finally:
                    with self._cond:
                        self._running = 0
                        self._cond.notify_all()
                # Drop the job's arrays here, not in this frame's teardown after
                # _finished is set: freeing them releases the GIL in C++, and an
                # interpreter that finalises meanwhile aborts the process.
                job = None
        finally:
            if self._on_stop is not None:
                try:
                    self._on_stop()
                except BaseException as e:
                    log.error("writer shutdown failed: %r", e)
            self._finished.set()

    def take_error(self) -> BaseException | None:
        """The oldest stored job failure, removed so that it is raised once."""
        with self._cond:
            return self._errors.pop(0) if self._errors else None

    def report(self, error: BaseException) -> None:
        """Stores a failure that happened outside a job, to be raised like a job's."""
        with self._cond:
            self._errors.append(error)

    def submit(self, job: Callable[[], None]) -> None:
        """Queues ``job``; blocks while the queue is full. Never drops a job.

        Once it returns the job is queued; if it raises (``RuntimeError``: the
        writer is closed or belongs to another process, or an interrupt while
        it waits) the job is not.
        """
        self._check_process()
        with self._cond:
            while not self._closed and len(self._jobs) + self._running >= self._max_pending:
                self._cond.wait(_WAKE_S)
            if self._closed:
                raise RuntimeError("writer is closed")
            # Notify first: the thread cannot look before this block ends, and an
            # interrupt between the two leaves the job unqueued, never queued unseen.
            self._cond.notify_all()
            self._jobs.append(job)  # the one mutation: the job is queued, or it is not

    def wait(self) -> None:
        """Blocks until every submitted job has finished."""
        self._check_process()
        with self._cond:
            while (self._jobs or self._running) and not self._finished.is_set():
                self._cond.wait(_WAKE_S)

    def close(self) -> None:
        """Finishes pending jobs and stops the thread; idempotent.

        Once the flag is set the thread stops by itself after the last job,
        even if this call is interrupted while it joins; a later call joins again.
        In a forked child it does nothing: the thread and its jobs are the parent's.
        """
        if os.getpid() != self.pid:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._finished.wait()

    def _check_process(self) -> None:
        # A forked child has the parent's deque but not its thread (and maybe a
        # copy of a lock the thread held): waiting there would never end.
        if os.getpid() != self.pid:
            raise RuntimeError(f"this writer belongs to process {self.pid}, not to this "
                               f"forked process {os.getpid()}")

    @property
    def stopped(self) -> bool:
        """Whether the thread has finished (after ``close``, every job done)."""
        return self._finished.is_set()
