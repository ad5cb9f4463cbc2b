"""Publishing a committed checkpoint: mark deletions, replace the state file, delete.

The tail of the data flow: once a checkpoint is committed, the state file is
replaced to name it, and only then are the checkpoints the retention rules
drop deleted.

The new state file's content is decided before the commit (only the writer
thread changes it), so its temporary is written and fsync'd on a helper
thread while the checkpoint is written: the two fsyncs share one journal
commit instead of following each other (W3: one of five ordered fsyncs off
the critical path). Nothing names the temporary until the commit is done.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import queue
import threading

from . import policy as _policy
from .. import _faults
from .._commit import atomic as _commit, deletions as _deletions
from .._storage.location import Dir

log = logging.getLogger("jaxckpt")

class _Helper:
    """One daemon thread that runs state-file preparations in order.

    Our own thread rather than a ``concurrent.futures`` pool: the pool's exit
    hook shuts it down before ``atexit`` handlers run, and the exit flush
    (``_directory/registry``) still commits pending saves then, each of which prepares
    a state file. A daemon thread keeps working until the interpreter
    finalises, after every ``atexit`` handler.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="jaxckpt-state-file",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as e:  # the waiter re-raises it
                future.set_exception(e)
            else:
                future.set_result(result)
            del future, fn, args  # nothing kept alive while idle

    def submit(self, fn, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return future


_helper: _Helper | None = None
_helper_lock = threading.Lock()


def in_background(fn, *args) -> concurrent.futures.Future:
    """Runs ``fn(*args)`` on the helper thread; inline where no thread can start."""
    global _helper
    with _helper_lock:
        if _helper is None:
            try:
                _helper = _Helper()
            except RuntimeError:  # "can't start new thread" (limits, or finalising)
                return _done(fn, *args)
        return _helper.submit(fn, *args)


def _done(fn, *args) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except Exception as e:
        future.set_exception(e)
    return future


def _forget_helper() -> None:
    # A forked child has none of the parent's threads: it makes its own helper.
    global _helper, _helper_lock
    _helper, _helper_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)


@dataclasses.dataclass
class Publication:
    """What publishing one checkpoint will do, decided before its commit."""

    path: str
    kept: _policy.Retention
    delete: list[str]
    state_file: concurrent.futures.Future | None  # of a _commit/state_file.Replacement


def discard(pub: Publication) -> None:
    """The checkpoint of ``pub`` was not committed: drops its state file."""
    if pub.state_file is not None:
        try:
            pub.state_file.result().discard()
        except BaseException:  # its write failed: nothing to remove
            pass


def install(root: Dir, pub: Publication) -> None:
    """Process 0: marks what ``pub`` deletes, then replaces the state file to name ``pub.path``."""
    _deletions.mark(root, pub.delete)
    pub.state_file.result().install()


def delete_dropped(root: Dir, delete: list[str]) -> None:
    """Process 0, after ``install``: deletes the checkpoints the retention rules drop."""
    for old in delete:
        _faults.point("manager.before_delete")
        try:
            _commit.remove(old)
            _deletions.done(root, old)
        except OSError as e:  # the new one is committed; the next manager retries
            log.warning("could not delete old checkpoint %s: %r", old, e)


def unpublish(root: Dir, path: str, delete: list[str], *, still_named: bool) -> None:
    """After a failed state-file write: the new checkpoint is not committed, so
    remove it, unless the old state file names that path (``still_named``: a replaced number)."""
    for old in delete:
        _deletions.done(root, old)
    if still_named:
        return
    try:
        _commit.remove(path)
    except OSError as e:
        log.warning("could not remove %s after its state-file write failed: %r", path, e)
