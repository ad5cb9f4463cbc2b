"""Deletion intents, so that a crash between the state file and a deletion leaks nothing.

Retention drops a checkpoint from the state file first and deletes it after
(never delete what a state file still names). A crash in between would leave
a committed checkpoint that no state file names, indistinguishable from one
a user keeps on purpose. So before the state file is replaced, an empty
marker ``.<name>.deleting`` is made durable beside each checkpoint to go (a
file, or on object stores a key); the next manager deletes every marked
checkpoint that its state file does not name, and drops the markers.
"""

from __future__ import annotations

import logging
import os
import re

from . import _commit, _location, _storage
from ._location import Dir

log = logging.getLogger("jaxckpt")

_SUFFIX = ".deleting"


def _marker_name(path: str) -> str:
    return f".{path.rstrip('/').rsplit('/', 1)[-1]}{_SUFFIX}"


def mark(directory: str | Dir, paths: list[str]) -> None:
    """Durably records that ``paths`` (checkpoints in ``directory``) are to be deleted."""
    if not paths:
        return
    where = _location.locate(directory)
    if not where.is_local:
        for path in paths:
            where.write(_marker_name(path), b"")
        return
    for path in paths:
        with open(os.path.join(where.path, _marker_name(path)), "wb"):
            pass
    _storage.fsync_dir(where.path)


def done(directory: str | Dir, path: str) -> None:
    """Drops the marker of ``path`` once it is deleted."""
    where = _location.locate(directory)
    if not where.is_local:
        where.delete(_marker_name(path))
        return
    try:
        os.unlink(os.path.join(where.path, _marker_name(path)))
    except FileNotFoundError:
        pass


def sweep(directory: str | Dir, checkpoint_name: str, named: set[str]) -> list[str]:
    """Deletes marked checkpoints that the state file does not name; drops all markers.

    ``named`` holds the full paths (or URLs) the state file names. Returns the
    checkpoints deleted.
    """
    where = _location.locate(directory)
    pattern = re.compile(rf"^\.({re.escape(checkpoint_name)}-\d+){re.escape(_SUFFIX)}$")
    deleted = []
    for name in where.listdir():
        m = pattern.match(name)
        if not m:
            continue
        ckpt = where.join(m.group(1))
        path = str(ckpt)
        if path not in named and ckpt.exists():
            _commit.remove(ckpt)
            deleted.append(path)
        done(where, path)
    if deleted:
        log.warning("deleted %d checkpoint(s) in %s that an interrupted save had dropped: %s",
                    len(deleted), where, deleted)
    return deleted
