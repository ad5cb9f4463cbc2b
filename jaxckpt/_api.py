"""The module-level functions: save, restore, metadata, verify, latest_checkpoint."""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from . import _checkpoint, _commit, _restore, _snapshot, _state_file, _storage
from .errors import CorruptCheckpointError


def save(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> str:
    """Writes ``tree`` as one checkpoint at ``path``, synchronously and atomically.

    Blocks until the checkpoint is durable and committed. A crash at any
    instant leaves either no checkpoint at ``path`` or a whole one.
    Thread-safe for distinct paths.

    Raises:
        FileExistsError: ``path`` exists.
        TypeError: a leaf cannot be saved (the message names its key path), or
            ``metadata`` is not a JSON-able dict. Nothing is written.
        ValueError: two keys of the tree print alike (naming the key path), or
            ``path`` is a URL of an unknown scheme. Nothing is written.
    """
    final = _storage.local_path(path)
    if os.path.lexists(final):
        raise FileExistsError(errno.EEXIST, "checkpoint path already exists", final)
    snapshot = _snapshot.take(tree, metadata)
    parent = os.path.dirname(final)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(errno.ENOTDIR, "parent of checkpoint path is not a directory", parent)
    os.makedirs(parent, exist_ok=True)
    _checkpoint.write(snapshot, final, replace=False, created=time.time())
    return str(path)


def restore(path: str | os.PathLike, target: Any = None, *, partial: bool = False) -> Any:
    """Reads the checkpoint at ``path``.

    Args:
        path: the checkpoint directory (or file:// URL).
        target: ``None`` for the saved structure as nested dicts/lists with
            NumPy arrays; else a pytree whose structure, types, dtypes and
            shardings the result takes.
        partial: the target names a subset of the saved leaves; only those
            are read.

    Blocks until every requested leaf is read and checked. Thread-safe.

    Raises:
        CheckpointNotFoundError: no committed checkpoint at ``path``.
        StructureMismatchError: ``target`` does not fit, naming every key path.
        CorruptCheckpointError: stored bytes fail their checksums.
    """
    reader = _checkpoint.Reader(_storage.local_path(path))
    if target is None:
        return _restore.restore_raw(reader)
    return _restore.restore_target(reader, target, partial)


def metadata(path: str | os.PathLike) -> Any:
    """The saved structure with ``jax.ShapeDtypeStruct`` leaves; reads no array data."""
    return _restore.abstract(_checkpoint.Reader(_storage.local_path(path)))


def user_metadata(path: str | os.PathLike) -> dict | None:
    """The ``metadata`` dict given to ``save`` for this checkpoint, or None."""
    return _checkpoint.read_manifest(_storage.local_path(path)).get("metadata")


def verify(path: str | os.PathLike) -> None:
    """Re-reads every stored byte and checks it against its checksum.

    Raises:
        CorruptCheckpointError: naming each damaged leaf.
        CheckpointNotFoundError: no committed checkpoint at ``path``.
    """
    reader = _checkpoint.Reader(_storage.local_path(path))
    problems = reader.verify()
    if problems:
        raise CorruptCheckpointError("\n".join(problems))


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """The newest committed checkpoint named in ``<directory>/checkpoint``, or None.

    Raises:
        CorruptCheckpointError: the state file exists but cannot be parsed.
        NotADirectoryError: ``directory`` is a file.
    """
    root = _storage.local_path(directory)
    if os.path.isfile(root):
        raise NotADirectoryError(errno.ENOTDIR, "checkpoint directory is a file", root)
    state = _state_file.read(root)
    if state is None:
        return None
    names = list(reversed(state.all_model_checkpoint_paths))
    if state.model_checkpoint_path is not None:
        names.insert(0, state.model_checkpoint_path)
    for name in names:
        path = _state_file.resolve(root, name)
        if _commit.is_committed(path):
            return path
    return None
