"""The module-level functions: save, restore, metadata, verify, latest_checkpoint."""

from __future__ import annotations

import collections
import errno
import os
import threading
import time
from typing import Any

from ._directory import agree as _agree
from ._commit import state_file as _state_file
from ._read import latest as _latest, reader as _reader, restore as _restore, stream as _stream
from ._report import progress as _progress, verified as _verified
from ._report.verified import VerifySummary
from ._save import gc as _gc, snapshot as _snapshot, staging as _staging, write as _write
from ._directory import coordinate as _multihost
from ._storage import durable as _durable, location as _location
from .errors import CorruptCheckpointError

# Module-level saves to one path, counted so that the processes of a
# multi-process program pair up their coordination keys.
_save_counts: collections.Counter = collections.Counter()
_save_counts_lock = threading.Lock()



def save(
    path: str | os.PathLike,
    tree: Any,
    *,
    metadata: dict | None = None,
    coordination_timeout_s: float = _multihost.DEFAULT_TIMEOUT_S,
    max_host_bytes: int | None = None,
) -> str:
    """Writes ``tree`` as one checkpoint at ``path``, synchronously and atomically.

    Blocks until the checkpoint is durable and committed. A crash at any
    instant leaves either no checkpoint at ``path`` or a whole one.
    Thread-safe for distinct paths. In a multi-process program every process
    calls it with the same arguments; each writes its own shards, process 0
    commits, and a process that does not report within
    ``coordination_timeout_s`` is named in the error the others raise.
    ``max_host_bytes``: a ceiling on the host copies held at once; each leaf
    is then copied just before it is written and freed once written (one
    piece larger than it is copied alone). None: every leaf is copied first.

    Raises:
        FileExistsError: ``path`` exists.
        TypeError: a leaf cannot be saved (the message names its key path), or
            ``metadata`` is not a JSON-able dict. Nothing is written.
        ValueError: two keys of the tree print alike (naming the key path), or
            ``path`` is a URL of an unknown scheme, or ``max_host_bytes`` is not a
            positive int. Nothing is written.
    """
    budget = _staging.HostBudget(max_host_bytes) if max_host_bytes is not None else None
    final = _location.locate(path)
    with _save_counts_lock:
        _save_counts[str(final)] += 1
        seq = _save_counts[str(final)]
    coord = _multihost.SaveCoordinator(_multihost.scope(str(final), "save", seq), 0,
                                       str(final), coordination_timeout_s)
    parent = os.path.dirname(final.path) if final.is_local else None

    def prepare() -> _snapshot.Snapshot:
        # Process 0 alone looks for the path, before any process writes: on an
        # object store a path "exists" once any process's first shard landed.
        if coord.primary and final.exists():
            raise FileExistsError(errno.EEXIST, "checkpoint path already exists", str(final))
        if parent is not None and os.path.exists(parent) and not os.path.isdir(parent):
            raise NotADirectoryError(errno.ENOTDIR, "parent of checkpoint path is not a directory",
                                     parent)
        taken.append(_snapshot.take(tree, metadata) if budget is None
                     else _staging.take(tree, metadata, None, budget, lazy=True))
        return taken[0]

    # Every process gets past here, or none does: one that refused the save
    # never leaves the others waiting for its part.
    taken: list[_snapshot.Snapshot] = []
    try:
        snapshot = coord.checks(str(final), coordination_timeout_s).together(
            f"save {_agree.name(str(final))}", prepare)
    except BaseException:
        if taken and taken[0].rolling is not None:
            taken[0].rolling.close()
        raise
    try:
        if parent is not None:
            _durable.makedirs_durably(parent)
        _write.write(snapshot, final, replace=False, created=time.time(), coordinator=coord)
    finally:
        if snapshot.rolling is not None:
            snapshot.rolling.close()
    return str(path)


def restore(path: str | os.PathLike, target: Any = None, *, partial: bool = False,
            progress: bool = False,
            coordination_timeout_s: float = _multihost.DEFAULT_TIMEOUT_S,
            max_host_bytes: int | None = None) -> Any:
    """Reads the checkpoint at ``path``.

    Args:
        path: the checkpoint directory (or file:// URL).
        target: ``None`` for the saved structure as nested dicts/lists with
            NumPy arrays; else a pytree whose structure, types, dtypes and
            shardings the result takes.
        partial: the target names a subset of the saved leaves; only those
            are read.
        progress: show a progress bar (rich, on stderr) of the bytes read.
        coordination_timeout_s: in a multi-process program, how long process
            0 waits for every process's outcome.
        max_host_bytes: a ceiling (at least 1 MiB) on the host memory that
            reads of large leaves stage at once: each is read in slabs and
            assembled on its devices instead of whole on the host (on CPU
            devices, which share host memory, the result itself is not counted).
            None: every leaf is read whole, all at once (fastest).

    Blocks until every requested leaf is read and checked. Thread-safe. A
    restore racing a save of the same path gives all of one save or the other.
    In a multi-process program every process calls it alike; it returns only
    if the restore worked on every process, else every process raises.

    Raises:
        CheckpointNotFoundError: no committed checkpoint at ``path``, or it
            was deleted while being read.
        StructureMismatchError: ``target`` does not fit, naming every key path.
        CorruptCheckpointError: stored bytes fail their checksums, or are not
            the bytes the manifest recorded (swapped or copied from another save).
        TimeoutError: another process did not restore it in time (named).
        TypeError, ValueError: ``max_host_bytes`` is not an int of at least 1 MiB.
        MemoryError: the host memory for a read could not be had.
    """
    _stream.check_budget(max_host_bytes)
    if _multihost.process_count() == 1:
        return restore_here(path, target, partial=partial, progress=progress,
                            max_host_bytes=max_host_bytes)
    where = str(_location.locate(path))
    return _agree.for_call("restore", where, coordination_timeout_s).together(
        f"restore {_agree.name(where)}",
        lambda: restore_here(path, target, partial=partial, progress=progress,
                             max_host_bytes=max_host_bytes))


def restore_here(path: str | os.PathLike, target: Any = None, *, partial: bool = False,
                 progress: bool = False, max_host_bytes: int | None = None) -> Any:
    """``restore`` in this process alone."""
    budget = _stream.check_budget(max_host_bytes)
    def read(reader: _reader.Reader) -> Any:
        # A partial restore reads less than the bar's total; the bar completes at the end.
        with _progress.bar(_progress.total_bytes(reader.leaves) if progress else 0,
                           _progress.label("restore", path),
                           progress) as bar:
            reader.on_leaf_read = bar
            if target is None:
                return _restore.restore_raw(reader, budget)
            return _restore.restore_target(reader, target, partial, budget)

    with _gc.paused():  # decoding thousands of leaf records set off full collections
        # Started over if the checkpoint is replaced meanwhile: never a mix of two saves.
        return _reader.read_consistently(path, read)


def metadata(path: str | os.PathLike) -> Any:
    """The saved structure with ``jax.ShapeDtypeStruct`` leaves; reads no array data."""
    return _restore.abstract(_reader.Reader(path))


def user_metadata(path: str | os.PathLike) -> dict | None:
    """The ``metadata`` dict given to ``save`` for this checkpoint, or None."""
    return _reader.read_manifest(path).get("metadata")


def checkpoint_metrics(path: str | os.PathLike) -> dict | None:
    """The ``metrics`` given to the manager's ``save`` for this checkpoint, or None."""
    return _reader.read_manifest(path).get("metrics")


def verify(path: str | os.PathLike, *, progress: bool = False) -> VerifySummary:
    """Re-reads every stored byte and checks it against its checksum.

    ``progress=True`` shows a progress bar (rich, on stderr; in Jupyter, the
    cell's output) of the bytes read. Blocks until every byte is read.
    Thread-safe.

    Returns:
        A ``VerifySummary`` (leaves, bytes checked, seconds; text and HTML reprs).

    Raises:
        CorruptCheckpointError: naming each damaged file with the leaves whose
            bytes it holds, and each leaf whose bytes are not those its manifest
            recorded (swapped or copied from another save).
        CheckpointNotFoundError: no committed checkpoint at ``path``, or it
            was deleted while being read.
    """
    started = time.perf_counter()

    def read(reader: _reader.Reader) -> tuple[_reader.Reader, list[str]]:
        with _progress.bar(_progress.total_bytes(reader.leaves), _progress.label("verify", path),
                           progress) as bar:
            return reader, reader.verify(on_leaf=bar)

    reader, problems = _reader.read_consistently(path, read)
    if problems:
        raise CorruptCheckpointError("\n".join(_verified.group_by_file(reader.damage)))
    return VerifySummary(reader.path, len(reader.leaves), _progress.total_bytes(reader.leaves),
                         time.perf_counter() - started)


def latest_checkpoint(directory: str | os.PathLike, *,
                      coordination_timeout_s: float = _multihost.DEFAULT_TIMEOUT_S
                      ) -> str | None:
    """The newest committed checkpoint named in ``<directory>/checkpoint``, or None.

    Safe to call while a manager saves and deletes in ``directory``: when
    none of the checkpoints it read is committed any more (retention deleted
    them after replacing the state file), it reads the state file again.
    Without a state file it answers None, and logs a WARNING if committed
    checkpoints are there (a CheckpointManager adopts them; this reads only
    the state file).

    In a multi-process program every process calls it alike: process 0 reads
    the state file and every process returns its answer (process 0 waits up
    to ``coordination_timeout_s`` for the others' calls).

    Raises:
        CorruptCheckpointError: the state file exists but cannot be parsed.
        NotADirectoryError: ``directory`` is a file.
        TimeoutError: another process did not call it in time (named).
    """
    root = _location.locate(directory)
    _location.refuse_file(root)
    if _multihost.process_count() == 1:
        return _latest.latest_here(root)
    agree = _agree.for_call("latest", str(root), coordination_timeout_s)

    def read() -> str:
        found = _latest.latest_here(root)
        return "" if found is None else _state_file.relative(root, found)

    rel = agree.share("ask for the latest checkpoint", read)
    return _state_file.resolve(root, rel) if rel else None
