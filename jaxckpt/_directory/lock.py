"""One writing process per checkpoint directory: a lock that dies with its process.

A manager holds ``flock(LOCK_EX | LOCK_NB)`` on an open descriptor of the
directory itself, so no lock file appears in the listing and none can go
stale: the kernel drops the lock when the process exits, however it dies
(SIGKILL included). ``flock`` rather than POSIX ``fcntl`` record locks,
which a process loses when it closes *any* descriptor of the file.

Only process 0 of a multi-process JAX program takes it (every process opens
a manager on the same shared directory, and process 0 is the one that
commits and deletes). Directories that are URLs (object stores have no
``flock``) and filesystems that refuse ``flock`` skip it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import weakref

from ..errors import DirectoryLockedError

log = logging.getLogger("jaxckpt")


_HELD: "weakref.WeakSet[DirectoryLock]" = weakref.WeakSet()


class DirectoryLock:
    """A held lock; ``release`` (idempotent, thread-safe) or process exit drops it."""

    def __init__(self, directory: str, fd: int):
        self.directory = directory
        self._fd: int | None = fd
        # The writer thread releases it as it stops, the closing thread after
        # the join: the descriptor must be closed once, never a reused number.
        self._guard = threading.Lock()
        _HELD.add(self)

    def release(self, _close=os.close) -> None:  # os.close bound early: __del__ at exit
        with self._guard:
            fd, self._fd = self._fd, None
            if fd is not None:
                _close(fd)  # closing the last descriptor of the open file drops the flock

    def __del__(self) -> None:
        self.release()


def _drop_in_child() -> None:
    # A forked child (a data-loader worker, say) shares the open file and so
    # the lock; closing its copy leaves the lock to the parent alone, so that
    # it still dies with the parent.
    for lock in list(_HELD):
        lock._guard = threading.Lock()  # the parent's may have been held at the fork
        fd, lock._fd = lock._fd, None
        if fd is not None:
            os.close(fd)


os.register_at_fork(after_in_child=_drop_in_child)


def is_local(directory: str) -> bool:
    return "://" not in directory


def same_directory(a: str, b: str) -> bool:
    """Whether two manager directories are the same place (symlinks resolved)."""
    if a == b:
        return True
    if not (is_local(a) and is_local(b)):
        return False
    return os.path.realpath(a) == os.path.realpath(b)


def _is_process_zero() -> bool:
    import jax

    return jax.process_index() == 0


def _holder(fd: int) -> str:
    """' (pid N)' for the process holding the flock on ``fd``'s inode, if /proc says."""
    st = os.fstat(fd)
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        with open("/proc/locks") as f:
            lines = f.readlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[3] != "WRITE":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return f" (pid {int(fields[4])})"
        except ValueError:
            continue
    return ""


def acquire(directory: str) -> DirectoryLock | None:
    """Takes the directory's writer lock; None where no lock applies.

    Raises:
        DirectoryLockedError: another process holds it, naming that process.
    """
    if not is_local(directory) or not _is_process_zero():
        return None
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DirectoryLockedError(
            f"{directory} is being written by another process{holder}: a CheckpointManager "
            "there holds the directory's lock. Two writers would number over and delete each "
            "other's checkpoints. Close that manager or stop that process (its lock goes "
            "with it), or use another directory."
        ) from None
    except OSError as e:
        os.close(fd)
        log.warning("cannot lock %s (%s); a second writer on it would not be detected",
                    directory, e)
        return None
    return DirectoryLock(directory, fd)
