"""The sweep: what crashed saves left behind, put back or removed once, on open.

A manager opening a directory as its writer calls ``sweep_leftovers`` for its
checkpoint name before it reads the directory (``_directory/ownership``).
Locally that is every temporary ``.<name>.tmp-<id>``, trash
``.<name>.trash-<id>`` and set-aside copy ``.<name>.old-<id>`` of a
checkpoint of that name, after a checkpoint that a crash inside a two-rename
replace left without its name is put back (``_repair``). On object stores it
is every data prefix ``<name>/d-<token>/`` that no manifest names, once it is
older than ``atomic.LEASE_S``, less the objects in it that a committed
manifest references (``_commit/references``). ``_format/names`` builds and parses the names;
``atomic`` holds the commit protocols that leave these behind.
"""

from __future__ import annotations

import logging
import os
import time

from . import atomic as _commit, references as _references
from .._format import manifest as _format, names as _names
from .._storage import durable as _durable, location as _location
from .._storage.location import Dir, KvDir

log = logging.getLogger("jaxckpt")


def sweep_leftovers(directory: str | Dir, checkpoint_name: str) -> list[str]:
    """Removes temporaries, trash and set-aside copies of ``checkpoint_name``
    left by a crash, after putting back a checkpoint that a crash inside a
    two-rename replace left without its name. Returns what was removed."""
    where = _location.locate(directory)
    if where.is_local:
        return _sweep_local(where.path, checkpoint_name)
    return _sweep_kv(where, checkpoint_name)


def _sweep_local(directory: str, checkpoint_name: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    mine = {}
    for name in names:
        found = _names.parse(name)
        if (found is not None and found.kind != _names.DELETING
                and _names.number_of(found.base, checkpoint_name) is not None):
            mine[name] = found
    for name in _repair(directory, mine):
        del mine[name]
    removed = []
    for name in mine:
        path = os.path.join(directory, name)
        error = _commit.delete_entry(path)
        if error is None:
            removed.append(path)
        else:
            log.warning("could not remove the leftover %s: %r", path, error)
    if removed:
        log.warning("removed %d leftover(s) of interrupted saves in %s", len(removed), directory)
    return removed


def _repair(directory: str, leftovers: dict[str, _names.Leftover]) -> list[str]:
    """A crash between a two-rename replace's renames left ``.<name>.old-<t>``
    and no ``<name>``: rolls forward to ``.<name>.tmp-<t>`` if it holds an intact
    manifest (it was durable before the first rename), else back to the old
    copy. Returns the leftover names put back."""
    restored = []
    asides = sorted(((n, f) for n, f in leftovers.items() if f.kind == _names.OLD),
                    key=lambda item: item[1].token, reverse=True)  # newest first
    for name, found in asides:
        final = os.path.join(directory, found.base)
        if os.path.lexists(final):
            continue
        tmp = _names.tmp(found.base, found.token)
        chosen = tmp if tmp in leftovers and _intact(os.path.join(directory, tmp)) else name
        if os.path.islink(os.path.join(directory, chosen)):
            continue
        os.rename(os.path.join(directory, chosen), final)
        _durable.fsync_dir(directory)
        restored.append(chosen)
        log.warning("%s was missing after an interrupted replace; put back %s (the %s "
                    "checkpoint)", final, chosen, "new" if chosen == tmp else "old")
    return restored


def _intact(path: str) -> bool:
    """A real directory whose manifest parses (magic, checksum, msgpack)."""
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    try:
        with open(os.path.join(path, _format.MANIFEST), "rb") as f:
            _format.unpack_manifest(f.read(), path)
    except Exception:
        return False
    return True


def _sweep_kv(directory: KvDir, checkpoint_name: str) -> list[str]:
    """Object stores: data prefixes without a manifest, or that no manifest
    names, once they are older than ``atomic.LEASE_S``."""
    removed = []
    now = time.time()
    # Every committed manifest's data and references, read once: an object a
    # manifest references is never swept, however old its prefix.
    found = _references.scan(directory)
    for name in directory.listdir():
        if _names.number_of(name, checkpoint_name) is None or name in found.damaged:
            continue  # a damaged manifest is reported by restore, not swept
        ckpt = directory.join(name)
        removed += [str(ckpt.join(n)) for n in _commit.drop_unnamed_data(
            ckpt, found.data.get(name), now=now, scan=found)]
    if removed:
        log.warning("removed %d leftover(s) of interrupted saves in %s", len(removed), directory)
    return removed
