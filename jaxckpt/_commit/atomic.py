"""Making a written checkpoint visible atomically, and removing old ones.

Local filesystems: a checkpoint is written into a hidden temporary sibling
``.<name>.tmp-<id>``, its files and directories are fsync'd, and it is renamed
into place (``renameat2(RENAME_NOREPLACE)``; replacing an existing checkpoint
swaps the two with ``RENAME_EXCHANGE``), then the parent is fsync'd. Deletion
first renames the checkpoint to ``.<name>.trash-<id>`` (atomic, so a reader
never sees half a checkpoint under its name), then removes it; nothing is
ever followed through a symbolic link. Where ``RENAME_EXCHANGE`` is refused
(NFS, many FUSE mounts) a replace renames the old checkpoint aside to
``.<name>.old-<id>`` first; the next manager's sweep (``_commit/sweep``) puts
a checkpoint back under ``<name>`` if a crash came between the two renames,
then removes every leftover (``_format/names`` builds and parses all of these
names).

The manifest (``_format/manifest.MANIFEST``) is written last inside the checkpoint, so
a directory without one is never taken for a checkpoint.

Object stores cannot rename: there the manifest's single PUT is the commit.
The arrays are written under a fresh ``<name>/d-<token>/`` prefix that the
manifest names, so replacing a checkpoint overwrites only the manifest and
then deletes the old data. Deletion removes the manifest first. A data prefix without a manifest,
or one no manifest names, is a leftover; a manager sweeps it once it is older
than ``LEASE_S`` (its token starts with its creation time; ``_commit/sweep``),
because a save in flight in another process looks the same until its
manifest lands. An incremental save's manifest may reference objects under
an earlier checkpoint's prefix (``shared``, format 4): no deletion removes
an object that a committed manifest references (``_commit/references``).

``LocalCommit`` and ``ObjectStoreCommit`` are the two protocols behind one
interface; ``protocol(where)`` picks one, and the module-level functions
dispatch to it.

One module of some 410 lines on purpose: ``LocalCommit`` and ``ObjectStoreCommit``
stay side by side, step for step, with the helpers both use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import math
import os
import shutil
import stat
import time
from dataclasses import dataclass

from . import references as _references
from .. import _faults
from .._format import manifest as _format, names as _names
from .._storage import durable as _durable, location as _location
from .._storage.location import Dir, KvDir
from ..errors import CheckpointError

log = logging.getLogger("jaxckpt")

# Object stores: a data prefix without a manifest (or not named by its
# manifest) is swept only once it is this old. A save in flight in another
# process (a trainer, seen by an evaluator's manager) is indistinguishable
# from a crashed one until its manifest lands, and listings carry no mtime
# here, so the age comes from the token. A day is longer than any save can
# take; a real leftover costs only storage until then, and readers ignore it.
LEASE_S = 24 * 3600.0
# A test and diagnostic switch: JAXCKPT_NO_RENAME_EXCHANGE=1 makes every
# renameat2 call behave as if the filesystem refused its flags (EINVAL, as
# the Linux NFS client does), so replaces take the two-rename fallback.
NO_RENAME_EXCHANGE = os.environ.get("JAXCKPT_NO_RENAME_EXCHANGE", "") not in ("", "0")
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
    if _renameat2 is None or NO_RENAME_EXCHANGE:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), src, None, dst)


new_token = _names.new_token


def token_age_s(token: str, now: float) -> float:
    """Seconds since ``token`` was made; infinite for a token without a time
    (made before tokens carried one) or with a time implausibly far ahead."""
    made = _names.token_time(token)
    if made is None:
        return math.inf
    age = now - made
    return math.inf if age < -LEASE_S else age


def is_committed(path: str | os.PathLike | Dir) -> bool:
    """True if ``path`` holds a manifest with our magic (cheap: no parse)."""
    where = _location.locate(path)
    return protocol(where).is_committed(where)


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
    return protocol(final).stage(final, token, create=create)


def seal_part(staging: Staging) -> None:
    """Makes this process's files durable (see the protocols' ``seal_part``)."""
    protocol(staging.data).seal_part(staging)


def commit(staging: Staging, manifest: bytes, *, replace: bool) -> None:
    """Writes the manifest and makes the checkpoint visible atomically.

    Raises:
        FileExistsError: ``final`` exists and ``replace`` is False.
        CheckpointError: (object stores) staged data vanished before the commit.
    """
    protocol(staging.final).commit(staging, manifest, replace=replace)


class LocalCommit:
    """Local filesystems: a hidden temporary sibling, fsync'd, renamed into place."""

    def is_committed(self, where: Dir) -> bool:
        try:  # non-blocking, regular files only: a planted FIFO must not hang a listing
            return where.read(_format.MANIFEST, len(_format.MAGIC), head=True) == _format.MAGIC
        except (OSError, ValueError):
            return False

    def stage(self, final: Dir, token: str, *, create: bool) -> Staging:
        key = _names.data(token)
        tmp = final.parent().join(_names.tmp(final.name, token))
        if create:
            # Not makedirs: a vanished directory is an error, not recreated. The
            # arrays' subdirectory is made by the first write into it (a save
            # whose arrays all fit in the manifest has none).
            os.mkdir(tmp.path)
        return Staging(final, tmp, key, tmp.join(key))

    def seal_part(self, staging: Staging) -> None:
        """tensorstore fsyncs each file; this, their directories."""
        _durable.fsync_tree(staging.data.path)

    def commit(self, staging: Staging, manifest: bytes, *, replace: bool) -> None:
        staging.data.write(_format.MANIFEST, manifest)
        _durable.fsync_dir(staging.data.path)
        publish(staging.data.path, staging.final.path, replace=replace)

    def abort(self, staging: Staging) -> None:
        discard(staging.data.path)

    def remove(self, where: Dir) -> None:
        _remove_local(where.path)


class ObjectStoreCommit:
    """Object stores: the arrays under a fresh data prefix; the manifest's single PUT commits."""

    def is_committed(self, where: Dir) -> bool:
        # An unreachable store raises: skipping to an older checkpoint would hide it.
        data = where.read(_format.MANIFEST, len(_format.MAGIC), head=True)
        return data is not None and data[: len(_format.MAGIC)] == _format.MAGIC

    def stage(self, final: Dir, token: str, *, create: bool) -> Staging:
        key = _names.data(token)
        return Staging(final, final.join(key), key, final.join(key))

    def seal_part(self, staging: Staging) -> None:
        """Nothing: object stores are durable once a write returns."""

    def commit(self, staging: Staging, manifest: bytes, *, replace: bool) -> None:
        final = staging.final
        previous = final.read(_format.MANIFEST)
        if not replace and previous is not None:
            raise FileExistsError(errno.EEXIST, "checkpoint already exists", str(final))
        _check_staged_data(staging, manifest)
        final.write(_format.MANIFEST, manifest)
        # The old data of a replaced save may be referenced by later checkpoints
        # (read after the new manifest landed, so its references count too).
        drop_unnamed_data(final, staging.data_key, also=_data_named(previous, final))

    def abort(self, staging: Staging) -> None:
        try:
            staging.data.delete_all()
        except Exception as e:  # the next manager sweeps it
            log.warning("could not remove staged data %s: %r", staging.data, e)

    def remove(self, where: Dir) -> None:
        """The manifest first (the checkpoint is gone), then its objects that no
        other committed manifest references, then the objects it referenced
        that nothing references any more and whose own checkpoint is gone
        (kept for it alone). A crash between the steps leaves every
        remaining manifest's references in place; what it leaves behind the
        sweep removes once the lease is over."""
        mine = _references.shared_of(where.read(_format.MANIFEST), str(where))
        where.delete(_format.MANIFEST)
        _faults.point("commit.remove.unlisted")
        if _names.split_numbered(where.name) is None:
            where.delete_all()  # only a manager's numbered checkpoints are referenced
            return
        found = _references.scan(where.parent())
        where.delete_except(found.kept_under(f"{where.name}/"))
        parent = where.parent()
        for key in sorted(set(mine.values()) - found.referenced):
            owner, data = key.split("/", 2)[:2]
            if found.data.get(owner) != data:  # not a committed checkpoint's own object
                parent.join(owner).delete(key.split("/", 1)[1])


_LOCAL, _OBJECT_STORE = LocalCommit(), ObjectStoreCommit()


def protocol(where: Dir) -> LocalCommit | ObjectStoreCommit:
    """The commit protocol for ``where``: one class per kind of storage."""
    return _LOCAL if where.is_local else _OBJECT_STORE


def _check_staged_data(staging: Staging, manifest: bytes) -> None:
    """Object stores: every array the manifest names has keys under the staged
    prefix. A manifest naming deleted data (swept by another process, an
    older jaxckpt, a lifecycle rule) would be a committed checkpoint that
    cannot be read; better no commit at all."""
    record = _format.unpack_manifest(manifest, str(staging.final))
    want = {f"{_format.ARRAYS}/{_format.array_name(leaf)}" for leaf in record.get("leaves", [])
            if _format.where_kind(leaf) == _format.WHERE_ARRAY}
    if record.get("packed_nbytes") and "packed_inline" not in record:
        want.add(_format.PACKED)
    if not want:
        return
    have = set()
    # Files the manifest references under earlier checkpoints count as present.
    for key in [*staging.data.keys(), *record.get("shared", ())]:
        parts = key.split("/")
        have.add("/".join(parts[:2]) if parts[0] == _format.ARRAYS else parts[0])
    missing = sorted(want - have)
    if missing:
        raise CheckpointError(
            f"{staging.final}: staged data under {staging.data} vanished before the commit "
            f"(missing: {', '.join(missing[:5])}); another process or a lifecycle rule deleted "
            "it. Nothing was committed; save again.")


def _data_named(raw: bytes | None, where: KvDir) -> str | None:
    """The data prefix a manifest names (None if none, or if it is damaged)."""
    if raw is None:
        return None
    try:
        return _format.unpack_manifest(raw, str(where)).get("data")
    except Exception:  # damaged: restore reports it; its data ages out of the lease
        return None


def abort(staging: Staging) -> None:
    """Best-effort removal of what a failed save staged."""
    protocol(staging.data).abort(staging)


def drop_unnamed_data(final: KvDir, keep: str | None, *, also: str | None = None,
                       now: float | None = None,
                       scan: _references.Scan | None = None) -> list[str]:
    """Deletes data prefixes of ``final`` other than ``keep``: ``also`` (the
    data a replaced manifest named) and those older than ``LEASE_S``, never a
    younger one (a save in flight elsewhere), and never an object a committed
    manifest of the directory references (``scan``, read here if None and
    needed). Returns the names deleted (some objects may remain in them)."""
    now = time.time() if now is None else now
    dropped = []
    for name in final.listdir():
        token = _names.data_token(name)
        if token is None or name == keep:
            continue
        if name == also or token_age_s(token, now) > LEASE_S:
            if scan is None:  # only a manager's numbered checkpoints are referenced
                scan = (_references.scan(final.parent()) if _names.split_numbered(final.name)
                        else _references.Scan(set(), {}))
            final.join(name).delete_except(scan.kept_under(f"{final.name}/{name}/"))
            dropped.append(name)
    return dropped


_warned_no_exchange = False


def publish(tmp: str, final: str, *, replace: bool) -> None:
    """Atomically moves the durable ``tmp`` directory to ``final``, fsyncs the parent.

    Raises:
        FileExistsError: ``final`` exists and ``replace`` is False.
    """
    global _warned_no_exchange
    _faults.point("commit.before_publish")
    parent, name = os.path.split(final)
    if os.path.lexists(final):
        if not replace:
            raise FileExistsError(errno.EEXIST, "checkpoint already exists", final)
        if _rename2(tmp, final, _RENAME_EXCHANGE):
            # `tmp` now holds the old checkpoint.
            _faults.point("commit.exchanged")
            _durable.fsync_dir(parent)
            remove(tmp)
            return
        # No atomic exchange here: move the old one aside first, under a name
        # that pairs it with `tmp` (the same token). A crash between the two
        # renames leaves both and no `final`; the next sweep puts one back.
        if not _warned_no_exchange:
            _warned_no_exchange = True
            log.warning("renameat2(RENAME_EXCHANGE) unsupported in %s; replacing checkpoints "
                        "in two renames", parent)
        found = _names.parse(os.path.basename(tmp))
        token = found.token if found and found.kind == _names.TMP else _names.new_id()
        aside = os.path.join(parent, _names.old(name, token))
        os.rename(final, aside)
        _faults.point("commit.aside")
        os.rename(tmp, final)
        _durable.fsync_dir(parent)
        error = delete_entry(aside)
        if error is not None:
            log.warning("replaced %s, but could not remove the old copy %s (the next manager "
                        "retries): %r", final, aside, error)
        return
    if not _rename2(tmp, final, _RENAME_NOREPLACE):
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "checkpoint already exists", final)
        os.rename(tmp, final)
    _durable.fsync_dir(parent)


def delete_entry(path: str) -> OSError | None:
    """Removes the file, link or directory tree at ``path``, following no link
    (a link is unlinked, never what it points to). Returns the error that left
    something behind, or None."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            # rmtree refuses a link at the top and unlinks links inside.
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return e
    return None


def remove(checkpoint: str | Dir) -> None:
    """Deletes a checkpoint: out of sight atomically first, then the files.

    Locally an atomic rename to trash (a symbolic link is renamed and then
    unlinked, its target untouched); on object stores the manifest goes
    first, so what remains is an uncommitted leftover.

    Raises:
        OSError: the checkpoint, or its trash, could not be removed (the trash
            is a leftover the next manager sweeps).
    """
    where = _location.locate(checkpoint)
    protocol(where).remove(where)


def _remove_local(path: str) -> None:
    if not os.path.lexists(path):
        return
    parent, name = os.path.split(path)
    # The trash of a leftover (a replaced checkpoint in its temporary) is named
    # after its checkpoint, so that the sweep of that name finds it.
    trash = os.path.join(parent, _names.trash(_names.base_of(name)))
    os.rename(path, trash)
    _faults.point("commit.remove.renamed")
    _durable.fsync_dir(parent)
    error = delete_entry(trash)
    if error is not None:
        raise OSError(error.errno, f"{path} was moved to {trash}, which could not be removed: "
                      f"{error}; the next manager retries") from error


def discard(tmp: str) -> None:
    """Best-effort removal of a temporary after a failed write."""
    delete_entry(tmp)
