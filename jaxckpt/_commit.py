"""Making a written checkpoint visible atomically, and removing old ones.

Local filesystems: a checkpoint is written into a hidden temporary sibling
``.<name>.tmp-<id>``, its files and directories are fsync'd, and it is renamed
into place (``renameat2(RENAME_NOREPLACE)``; replacing an existing checkpoint
swaps the two with ``RENAME_EXCHANGE``), then the parent is fsync'd. Deletion
first renames the checkpoint to ``.<name>.trash-<id>`` (atomic, so a reader
never sees half a checkpoint under its name), then removes it. Temporaries and
trash left by a crash are swept by the next manager.

The manifest (``_format.MANIFEST``) is written last inside the checkpoint, so
a directory without one is never taken for a checkpoint.

Object stores cannot rename: there the manifest's single PUT is the commit.
The arrays are written under a fresh ``<name>/d-<token>/`` prefix that the
manifest names, so replacing a checkpoint overwrites only the manifest and
then deletes the old data. Deletion removes the manifest first. A prefix
without a manifest, or data no manifest names, is a leftover that the next
manager sweeps.
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
from dataclasses import dataclass

from . import _faults, _format, _location, _storage
from ._location import Dir, KvDir

log = logging.getLogger("jaxckpt")

_TMP = ".tmp-"
_TRASH = ".trash-"
DATA_PREFIX = "d-"
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


def new_token() -> str:
    return uuid.uuid4().hex[:12]


def is_committed(path: str | os.PathLike | Dir) -> bool:
    """True if ``path`` holds a manifest with our magic (cheap: no parse)."""
    where = _location.locate(path)
    if where.is_local:
        try:
            with open(os.path.join(where.path, _format.MANIFEST), "rb") as f:
                return f.read(len(_format.MAGIC)) == _format.MAGIC
        except OSError:
            return False
    # An unreachable store raises: skipping to an older checkpoint would hide it.
    data = where.read(_format.MANIFEST)
    return data is not None and data[: len(_format.MAGIC)] == _format.MAGIC


@dataclass
class Staging:
    """Where one checkpoint's bytes go before it is committed as ``final``."""

    final: Dir
    data: Dir  # what is sealed and committed (local: the temporary), or removed on abort
    data_key: str  # the manifest's "data" entry: the arrays' subdirectory, d-<token>
    arrays: Dir  # arrays go here: <data_key> inside the checkpoint


def stage(final: Dir, token: str, *, create: bool) -> Staging:
    """The staging area for ``final``; ``create`` makes it (process 0 only).

    The arrays go in a subdirectory named after the save (format 3, local
    checkpoints too), so a reader holding the manifest of a checkpoint that
    was replaced since finds no files instead of the new save's bytes.
    """
    key = f"{DATA_PREFIX}{token}"
    if final.is_local:
        tmp = final.parent().join(f".{final.name}{_TMP}{token}")
        if create:
            # Not makedirs: a vanished directory is an error, not recreated. The
            # arrays' subdirectory is made by the first write into it (a save
            # whose arrays all fit in the manifest has none).
            os.mkdir(tmp.path)
        return Staging(final, tmp, key, tmp.join(key))
    return Staging(final, final.join(key), key, final.join(key))


def seal_part(staging: Staging) -> None:
    """Makes this process's files durable: tensorstore fsyncs each file, this
    their directories. Object stores are durable once a write returns."""
    if staging.data.is_local:
        _storage.fsync_tree(staging.data.path)


def commit(staging: Staging, manifest: bytes, *, replace: bool) -> None:
    """Writes the manifest and makes the checkpoint visible atomically.

    Raises:
        FileExistsError: ``final`` exists and ``replace`` is False.
    """
    final = staging.final
    if final.is_local:
        staging.data.write(_format.MANIFEST, manifest)
        _storage.fsync_dir(staging.data.path)
        publish(staging.data.path, final.path, replace=replace)
        return
    if not replace and final.read(_format.MANIFEST) is not None:
        raise FileExistsError(errno.EEXIST, "checkpoint already exists", str(final))
    final.write(_format.MANIFEST, manifest)
    _drop_unnamed_data(final, staging.data_key)


def abort(staging: Staging) -> None:
    """Best-effort removal of what a failed save staged."""
    if staging.data.is_local:
        discard(staging.data.path)
    else:
        try:
            staging.data.delete_all()
        except Exception as e:  # the next manager sweeps it
            log.warning("could not remove staged data %s: %r", staging.data, e)


def _drop_unnamed_data(final: KvDir, keep: str | None) -> None:
    for name in final.listdir():
        if name.startswith(DATA_PREFIX) and name != keep:
            final.join(name).delete_all()


def publish(tmp: str, final: str, *, replace: bool) -> None:
    """Atomically moves the durable ``tmp`` directory to ``final``, fsyncs the parent.

    Raises:
        FileExistsError: ``final`` exists and ``replace`` is False.
    """
    _faults.point("commit.before_publish")
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


def remove(checkpoint: str | Dir) -> None:
    """Deletes a checkpoint: out of sight atomically first, then the files.

    Locally an atomic rename to trash; on object stores the manifest goes
    first, so what remains is an uncommitted leftover.
    """
    where = _location.locate(checkpoint)
    if not where.is_local:
        where.delete(_format.MANIFEST)
        where.delete_all()
        return
    path = where.path
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


def sweep_leftovers(directory: str | Dir, checkpoint_name: str) -> list[str]:
    """Removes temporaries and trash of ``checkpoint_name`` left by a crash."""
    where = _location.locate(directory)
    if not where.is_local:
        return _sweep_kv(where, checkpoint_name)
    directory = where.path
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


def _sweep_kv(directory: KvDir, checkpoint_name: str) -> list[str]:
    """Object stores: prefixes without a manifest, and data no manifest names."""
    pattern = re.compile(rf"^{re.escape(checkpoint_name)}-\d+$")
    removed = []
    for name in directory.listdir():
        if not pattern.match(name):
            continue
        ckpt = directory.join(name)
        raw = ckpt.read(_format.MANIFEST)
        if raw is None:
            ckpt.delete_all()
            removed.append(str(ckpt))
            continue
        try:
            keep = _format.unpack_manifest(raw, str(ckpt)).get("data")
        except Exception:  # a damaged manifest is reported by restore, not swept
            continue
        before = set(ckpt.listdir())
        _drop_unnamed_data(ckpt, keep)
        removed += [str(ckpt.join(n)) for n in before - set(ckpt.listdir())]
    if removed:
        log.warning("removed %d leftover(s) of interrupted saves in %s", len(removed), directory)
    return removed
