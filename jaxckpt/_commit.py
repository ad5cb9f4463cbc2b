"""Making a written checkpoint visible atomically, and removing old ones.

Local filesystems: a checkpoint is written into a hidden temporary sibling
``.<name>.tmp-<id>``, its files and directories are fsync'd, and it is renamed
into place (``renameat2(RENAME_NOREPLACE)``; replacing an existing checkpoint
swaps the two with ``RENAME_EXCHANGE``), then the parent is fsync'd. Deletion
first renames the checkpoint to ``.<name>.trash-<id>`` (atomic, so a reader
never sees half a checkpoint under its name), then removes it. Temporaries and
trash left by a crash are swept by the next manager.

The manifest (``_format.MANIFEST``) is written last inside the checkpoint, so
a directory without one is never taken for a checkpoint; object stores, which
cannot rename, use its presence alone as the commit record.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import uuid

from . import _faults, _format, _storage

log = logging.getLogger("jaxckpt")

_TMP = ".tmp-"
_TRASH = ".trash-"
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _load_renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()
_AT_FDCWD = -100


def _rename2(src: str, dst: str, flags: int) -> bool:
    """renameat2; False if the kernel or filesystem does not support ``flags``."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


def temp_sibling(final: str) -> str:
    parent, name = os.path.split(final)
    return os.path.join(parent, f".{name}{_TMP}{uuid.uuid4().hex[:12]}")


def is_committed(path: str) -> bool:
    """True if ``path`` holds a manifest with our magic (cheap: no parse)."""
    try:
        with open(os.path.join(path, _format.MANIFEST), "rb") as f:
            return f.read(len(_format.MAGIC)) == _format.MAGIC
    except OSError:
        return False


def publish(tmp: str, final: str, *, replace: bool) -> None:
    """Atomically moves the fully written ``tmp`` to ``final`` and makes it durable.

    Raises:
        FileExistsError: ``final`` exists and ``replace`` is False.
    """
    _faults.point("commit.before_publish")
    _storage.fsync_tree(tmp)
    parent = os.path.dirname(final)
    if os.path.lexists(final):
        if not replace:
            raise FileExistsError(errno.EEXIST, "checkpoint already exists", final)
        if _rename2(tmp, final, _RENAME_EXCHANGE):
            # `tmp` now holds the old checkpoint.
            _faults.point("commit.exchanged")
            _storage.fsync_dir(parent)
            remove(tmp)
            return
        # No atomic exchange here: move the old one aside first. A crash
        # between the two renames leaves the old one as trash and no `final`.
        log.warning("renameat2(RENAME_EXCHANGE) unsupported; replacing %s in two steps", final)
        aside = _trash_name(final)
        os.rename(final, aside)
        os.rename(tmp, final)
        _storage.fsync_dir(parent)
        shutil.rmtree(aside, ignore_errors=True)
        return
    if not _rename2(tmp, final, _RENAME_NOREPLACE):
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "checkpoint already exists", final)
        os.rename(tmp, final)
    _storage.fsync_dir(parent)


def _trash_name(path: str) -> str:
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}{_TRASH}{uuid.uuid4().hex[:12]}")


def remove(path: str) -> None:
    """Deletes a checkpoint: an atomic rename out of sight, then the files."""
    if not os.path.lexists(path):
        return
    trash = _trash_name(path)
    os.rename(path, trash)
    _faults.point("commit.remove.renamed")
    _storage.fsync_dir(os.path.dirname(path))
    shutil.rmtree(trash, ignore_errors=True)


def discard(tmp: str) -> None:
    """Best-effort removal of a temporary after a failed write."""
    shutil.rmtree(tmp, ignore_errors=True)


def sweep_leftovers(directory: str, checkpoint_name: str) -> list[str]:
    """Removes temporaries and trash of ``checkpoint_name`` left by a crash."""
    pattern = re.compile(
        rf"^\.{re.escape(checkpoint_name)}-\d+({re.escape(_TMP)}|{re.escape(_TRASH)})[0-9a-f]+$"
    )
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if pattern.match(name):
            path = os.path.join(directory, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.warning("removed %d leftover(s) of interrupted saves in %s", len(removed), directory)
    return removed
