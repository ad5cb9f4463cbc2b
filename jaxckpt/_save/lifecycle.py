"""A manager's lifecycle: open or closed (and why), read-only, forked; closing.

Every public call of a ``CheckpointManager`` first asks this object whether
it may run: in the process that made the manager (a forked child's copy has
no writer thread), on an open manager, and, to save, on a writable one. An
earlier background failure is raised from here, and closing (once, or again
after a close interrupted by Ctrl-C) ends here too.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from .._directory import agree as _agree, lock as _lock, ownership as _ownership
from ..errors import (CheckpointWriteError, ForkedManagerError, ManagerClosedError,
                      ReadOnlyManagerError)
from .writer import Writer


class Lifecycle:
    """The open/closed state of one manager, with its writer thread and directory lock."""

    def __init__(self, directory: str, read_only: bool, writer: Writer,
                 dir_lock: _lock.DirectoryLock | None, save_lock: threading.Lock):
        self.directory = directory
        self.read_only = read_only
        self.writer = writer
        self.dir_lock = dir_lock
        self.save_lock = save_lock  # orders numbering with snapshots, and close
        self.closed = False
        self.why = "it was closed"
        self.closed_together = False
        # Waits for the manager's dispatched save_in_jit callbacks; set once it has a handle.
        self.drain: Callable[[], None] = lambda: None

    def forked(self) -> bool:
        """A forked child's copy: the writer thread and the lock stayed in the parent."""
        return self.writer.pid != os.getpid()

    def check_process(self) -> None:
        """Raises in a forked child: the writer thread stayed in the parent."""
        if self.forked():
            raise ForkedManagerError(
                f"this CheckpointManager for {self.directory} belongs to process "
                f"{self.writer.pid} and this is a child forked from it (pid {os.getpid()}); "
                "its writer thread stayed in the parent, so it cannot save or wait here. "
                "Make a new CheckpointManager in the child (another directory, or after the "
                "parent's manager is closed).")

    def check_open(self) -> None:
        self.check_process()
        if self.closed:
            raise ManagerClosedError(
                f"CheckpointManager for {self.directory} is closed ({self.why}); "
                "make a new one to save or restore")

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyManagerError(
                f"CheckpointManager for {self.directory} is read-only (read_only=True): it "
                "restores and lists but never saves; make one without read_only to save")

    def check_save(self) -> None:
        """Before a save: open, writable, and no earlier background failure (raised)."""
        self.check_open()
        self.check_writable()
        self.raise_error()

    def closed_reason(self) -> str | None:
        return self.why if self.closed else None

    def writer_stopped(self) -> bool:
        return self.writer.stopped

    def raise_error(self) -> None:
        """Raises an earlier background save's failure, once."""
        error = self.writer.take_error()
        if error is not None:
            raise CheckpointWriteError(
                f"a background save in {self.directory} failed; that checkpoint was not "
                f"committed and earlier ones are intact: {error!r}") from error

    def close(self, why: str) -> None:
        """Closes once the save_in_jit callbacks drained; ``why`` goes into later errors."""
        if self.forked():
            return  # a forked child's copy: the parent's writer and lock are not ours
        if not self.closed:
            self.drain()  # outside the lock: a pending save_in_jit callback takes it
        with self.save_lock:  # a save in progress finishes queueing first
            if not self.closed:
                self.why = why
                self.closed = True
            # Even if already closed: a close() interrupted by Ctrl-C left the
            # writer finishing; this joins it (it releases the directory lock
            # as it stops, so the lock is free once this returns).
            self.writer.close()
            if self.dir_lock is not None:
                self.dir_lock.release()
        self.raise_error()

    def close_all(self, agree: _agree.Agreement, scope: str) -> None:
        """``close()``: closes, then (multi-process) waits for every process's close."""
        failed = True
        try:
            self.close("close() was called")
            failed = False
        finally:
            self.close_together(agree, scope, quiet=failed)

    def close_together(self, agree: _agree.Agreement, scope: str, quiet: bool) -> None:
        """Multi-process, once: waits until every process closed its manager."""
        if self.closed_together or not agree.multi or self.forked():
            return
        self.closed_together = True
        _ownership.close_together(agree, scope, self.directory, quiet)
