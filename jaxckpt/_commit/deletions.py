"""Deletion intents, so that a crash between the state file and a deletion leaks nothing.

Retention drops a checkpoint from the state file first and deletes it after
(never delete what a state file still names). A crash in between would leave
a committed checkpoint that no state file names, indistinguishable from one
a user keeps on purpose. So before the state file is replaced, an empty
marker ``.<name>.deleting`` is made durable beside each checkpoint to go (a
file, or on object stores a key); the next manager deletes every marked
checkpoint that its state file does not name, and drops the markers.

Markers are made, checked and removed without following symbolic links: a
link planted under a marker's name is replaced, never written through, and
is not taken for a marker.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from . import atomic as _commit
from .._format import names as _names
from .._storage import durable as _durable, location as _location
from .._storage.location import Dir

log = logging.getLogger("jaxckpt")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def marker_name(path: str) -> str:
    return _names.deleting(_names.basename(path))


def _is_marker(path: str) -> bool:
    """A regular file (not a link, directory or FIFO): one that ``mark`` made."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _make_marker(path: str) -> None:
    """Creates the empty file ``path``; never opens an existing entry (which
    may be a link planted there), but replaces whatever is not a marker."""
    for _ in range(3):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644))
            return
        except FileExistsError:
            if _is_marker(path):
                return
            error = _commit.delete_entry(path)  # a link is unlinked, its target untouched
            if error is not None:
                raise error
    raise OSError(errno.EEXIST, "could not create the deletion marker", path)


def mark(directory: str | Dir, paths: list[str]) -> None:
    """Durably records that ``paths`` (checkpoints in ``directory``) are to be deleted."""
    if not paths:
        return
    where = _location.locate(directory)
    if not where.is_local:
        for path in paths:
            where.write(marker_name(path), b"")
        return
    for path in paths:
        _make_marker(os.path.join(where.path, marker_name(path)))
    _durable.fsync_dir(where.path)


def done(directory: str | Dir, path: str) -> None:
    """Drops the marker of ``path`` once it is deleted."""
    where = _location.locate(directory)
    if not where.is_local:
        where.delete(marker_name(path))
        return
    error = _commit.delete_entry(os.path.join(where.path, marker_name(path)))
    if error is not None:
        raise error


def sweep(directory: str | Dir, checkpoint_name: str, named: set[str]) -> list[str]:
    """Deletes marked checkpoints that the state file does not name; drops all markers.

    ``named`` holds the full paths (or URLs) the state file names. Returns the
    checkpoints deleted.
    """
    where = _location.locate(directory)
    deleted = []
    for name in where.listdir():
        found = _names.parse(name)
        if (found is None or found.kind != _names.DELETING
                or _names.number_of(found.base, checkpoint_name) is None):
            continue
        ckpt = where.join(found.base)
        path = str(ckpt)
        # Locally only a regular file is a marker; anything else under its
        # name (a planted link) is removed without acting on it.
        marked = not where.is_local or _is_marker(os.path.join(where.path, name))
        if marked and path not in named and ckpt.exists():
            try:
                _commit.remove(ckpt)
            except OSError as e:  # the marker stays: the next manager retries
                log.warning("could not delete %s, marked for deletion: %r", path, e)
                continue
            deleted.append(path)
        done(where, path)
    if deleted:
        log.warning("deleted %d checkpoint(s) in %s that an interrupted save had dropped: %s",
                    len(deleted), where, deleted)
    return deleted
