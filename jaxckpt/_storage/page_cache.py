"""Hands earlier checkpoints' file pages back just before the next write.

A checkpoint written (or restored) through the page cache stays cached. Once
its successor is being written those pages are rarely read again, yet they
hold state-size memory, which counts against a container's memory limit.
Dropping them just before the write also speeds the write up: its page-cache
pages reuse the memory the kernel just freed. On VMs that hand idle free
memory back to the hypervisor, a first touch of memory is slow: writing W2's
256 MiB took 0.57-0.62 s onto cold memory and 0.27-0.46 s after the previous
checkpoint's pages were dropped. The files themselves are untouched: only
clean, fsync'd cache pages go. The checkpoint just written stays cached
until the next save starts, so a restore after a crash between saves reads
memory.
"""

from __future__ import annotations

import os

# Smaller checkpoints are left alone: W4's 7.6 MiB saves measured no faster
# with their pages dropped (writer CPU 13-17 ms per save either way).
MIN_BYTES = 16 << 20

_CAN_DROP = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")


def drop(path: str) -> None:
    """Drops the cached pages of every file under the local directory ``path``.

    Best effort: a file that vanished or cannot be opened is skipped.
    """
    if not _CAN_DROP:
        return
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


class Superseded:
    """The local checkpoints of one manager whose pages may be cached: the large
    ones it wrote, and those it found when it opened (a restart's restore reads
    the newest of them).

    Used from the writer thread only.
    """

    def __init__(self, enabled: bool, found: list[str]):
        """``found``: the checkpoints already there, of unknown size, whose
        pages an earlier run or a restore may have left cached."""
        self._enabled = enabled and _CAN_DROP
        self._cached: list[str] = list(found) if self._enabled else []

    def written(self, path: str, nbytes: int) -> None:
        """Notes a committed checkpoint whose pages the write left cached."""
        if self._enabled and nbytes >= MIN_BYTES and path not in self._cached:
            self._cached.append(path)

    def drop_all(self) -> None:
        """Before a write: drops the cached pages of every noted checkpoint."""
        for path in self._cached:
            drop(path)
        self._cached = []
