"""Durability on local filesystems: fsync directories, create and write durably."""

from __future__ import annotations

import os
import threading
from typing import Iterable

from . import location as _location

# Directory fsyncs issued together: each waits for a journal commit, and
# concurrent ones share commits (W5's 129 directories: ~100-140 ms one by
# one, ~40-55 ms 8 at a time here; 32 at a time was slower again).
FSYNC_THREADS = 8


def fsync_dirs(paths: Iterable[str]) -> None:
    """fsyncs every directory in ``paths``, several at a time; raises the first error.

    Short-lived threads rather than a pool: a save flushed at interpreter exit
    may no longer submit to an executor (and a forked child has none of its
    threads); where no thread can start, the rest are fsync'd one by one.
    """
    paths = list(paths)
    if len(paths) <= 2:
        for p in paths:
            fsync_dir(p)
        return
    errors: list[BaseException] = []

    def run(chunk: list[str]) -> None:
        try:
            for p in chunk:
                fsync_dir(p)
        except BaseException as e:  # handed to the caller below
            errors.append(e)

    n = min(FSYNC_THREADS, len(paths))
    chunks = [paths[i::n] for i in range(n)]
    threads = []
    for chunk in chunks[1:]:
        t = threading.Thread(target=run, args=(chunk,), name="jaxckpt-fsync", daemon=True)
        try:
            t.start()
        except RuntimeError:  # interpreter shutting down
            run(chunk)
        else:
            threads.append(t)
    run(chunks[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def fsync_tree(root: str) -> None:
    """fsyncs the directories below ``root`` that tensorstore does not.

    tensorstore's file kvstore fsyncs each file it writes and then the
    directory holding it, so a directory of files only (a chunk directory)
    is durable already; the directories above them are fsync'd here. ``root``
    itself is left to the commit, which fsyncs it after writing the manifest.
    """
    fsync_dirs(dirpath for dirpath, dirnames, _files in os.walk(root, topdown=False)
               if dirpath != root and dirnames)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durably(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, then fsyncs the parent of each
    directory it created: a new directory's name is durable only once its
    parent is fsync'd, and without it a power cut can take a checkpoint
    directory, and every committed checkpoint in it, away."""
    created = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        created.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    for d in reversed(created):
        fsync_dir(os.path.dirname(d))


def write_file_durably(path: str, data: bytes) -> None:
    _location.LocalDir(os.path.dirname(path)).write(os.path.basename(path), data)
