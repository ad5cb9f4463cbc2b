"""The background writer: one thread, a bounded queue, errors handed back.

Jobs are plain callables; this module knows nothing of JAX or checkpoints.
A job's exception is stored and raised once, by the next ``submit``,
``wait`` or ``close`` (wrapped by the caller), never swallowed. No asyncio is
involved, so it works under Jupyter's running event loop.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger("jaxckpt")

_STOP = object()


class Writer:
    """Runs submitted jobs in order on one daemon thread.

    Thread-safe: ``submit`` may be called from any thread; it blocks while
    ``max_pending`` jobs are queued or running.
    """

    def __init__(self, name: str, max_pending: int = 1):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(max_pending)
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                try:
                    job()
                except BaseException as e:  # handed back to the caller, never lost
                    log.error("background save failed: %r", e)
                    with self._lock:
                        self._errors.append(e)
                finally:
                    self._slots.release()
            finally:
                self._queue.task_done()

    def take_error(self) -> BaseException | None:
        """The oldest stored job failure, removed so that it is raised once."""
        with self._lock:
            return self._errors.pop(0) if self._errors else None

    def report(self, error: BaseException) -> None:
        """Stores a failure that happened outside a job, to be raised like a job's."""
        with self._lock:
            self._errors.append(error)

    def submit(self, job: Callable[[], None]) -> None:
        """Queues ``job``; blocks while the queue is full. Never drops a job."""
        if self._closed:
            raise RuntimeError("writer is closed")
        self._slots.acquire()
        self._queue.put(job)

    def wait(self) -> None:
        """Blocks until every submitted job has finished."""
        self._queue.join()

    def close(self) -> None:
        """Finishes pending jobs and stops the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    @property
    def closed(self) -> bool:
        return self._closed
