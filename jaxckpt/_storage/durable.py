"""Durability on local filesystems: fsync directories, create and write durably."""

from __future__ import annotations

import os

from . import location as _location


def fsync_tree(root: str) -> None:
    """fsyncs the directories below ``root`` that tensorstore does not.

    tensorstore's file kvstore fsyncs each file it writes and then the
    directory holding it, so a directory of files only (a chunk directory)
    is durable already; the directories above them are fsync'd here. ``root``
    itself is left to the commit, which fsyncs it after writing the manifest.
    """
    for dirpath, dirnames, _files in os.walk(root, topdown=False):
        if dirpath != root and dirnames:
            fsync_dir(dirpath)


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
