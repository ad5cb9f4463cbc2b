"""Deletion intents, so that a crash between the state file and a deletion leaks nothing.

Retention drops a checkpoint from the state file first and deletes it after
(never delete what a state file still names). A crash in between would leave
a committed checkpoint that no state file names, indistinguishable from one
a user keeps on purpose. So before the state file is replaced, an empty
marker ``.<name>.deleting`` is made durable beside each checkpoint to go;
the next manager deletes every marked checkpoint that its state file does
not name, and drops the markers.
"""

from __future__ import annotations

import logging
import os
import re

from . import _commit, _storage

log = logging.getLogger("jaxckpt")

_SUFFIX = ".deleting"


def _marker(path: str) -> str:
    parent, name = os.path.split(path.rstrip("/"))
    return os.path.join(parent, f".{name}{_SUFFIX}")


def mark(directory: str, paths: list[str]) -> None:
    """Durably records that ``paths`` are to be deleted."""
    if not paths:
        return
    for path in paths:
        with open(_marker(path), "wb"):
            pass
    _storage.fsync_dir(directory)


def done(path: str) -> None:
    """Drops the marker of ``path`` once it is deleted."""
    try:
        os.unlink(_marker(path))
    except FileNotFoundError:
        pass


def sweep(directory: str, checkpoint_name: str, named: set[str]) -> list[str]:
    """Deletes marked checkpoints that the state file does not name; drops all markers.

    ``named`` holds the absolute paths the state file names. Returns the
    checkpoints deleted.
    """
    pattern = re.compile(rf"^\.({re.escape(checkpoint_name)}-\d+){re.escape(_SUFFIX)}$")
    deleted = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return deleted
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        path = os.path.join(directory, m.group(1))
        if path not in named and os.path.lexists(path):
            _commit.remove(path)
            deleted.append(path)
        done(path)
    if deleted:
        log.warning("deleted %d checkpoint(s) in %s that an interrupted save had dropped: %s",
                    len(deleted), directory, deleted)
    return deleted
