"""The read side of one checkpoint: its manifest, and checksum-checked reads of its leaves.

One module of some 530 lines on purpose: every read, check and ``verify`` shares the
reader's manifest, digest cache and damage reporting (``unless_changed``), which
splitting would hand across modules.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np

from .. import _tree
from .._format import (digest as _digest, manifest as _format, check as _manifest_check,
                       names as _names)
from . import orbax as _orbax
from .._storage import arrays as _arrays, location as _location
from .._storage.location import Dir
from ..errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError


def read_manifest(path: str | Dir) -> dict:
    """Reads and checks the manifest of the committed checkpoint at ``path``."""
    return _read_manifest(path)[0]


def _manifest_bytes(where: Dir) -> bytes | None:
    try:
        return where.read(_format.MANIFEST, _manifest_check.MAX_MANIFEST_BYTES)
    except IsADirectoryError:
        return None


def _read_manifest(path: str | Dir) -> tuple[dict, bytes]:
    """The manifest at ``path``, parsed and as bytes."""
    where = _location.locate(path)
    data = _manifest_bytes(where)
    if data is None:
        _location.refuse_file(where, CheckpointNotFoundError)
        if _state_file_present(where):
            raise CheckpointNotFoundError(
                f"{where} is a CheckpointManager directory, not a checkpoint; restore one of "
                "its checkpoints (see jaxckpt.latest_checkpoint(directory))")
        orbax = _orbax.describe(where) if where.exists() else None
        if orbax is not None:
            raise CheckpointNotFoundError(orbax)
        if where.exists():
            raise CheckpointNotFoundError(
                f"{where} is not a committed checkpoint (no {_format.MANIFEST}); it may be "
                "a save that was interrupted.")
        raise CheckpointNotFoundError(f"no checkpoint at {where}")
    return _format.unpack_manifest(data, str(where)), data


class ReplacedWhileReading(CheckpointError):
    """A read failed because the checkpoint was replaced after its manifest was
    read; ``read_consistently`` starts over with the new manifest."""


# How many replacements in a row one read survives before giving up.
REPLACED_RETRIES = 3


def read_consistently(path: str | Dir, read: Callable[["Reader"], Any]) -> Any:
    """``read(Reader(path))``, started over with the new manifest if the
    checkpoint is replaced meanwhile: the result is all of one save.

    Raises:
        CheckpointError: it was replaced ``REPLACED_RETRIES + 1`` times in a
            row while being read.
    """
    for _ in range(REPLACED_RETRIES + 1):
        try:
            return read(Reader(path))
        except ReplacedWhileReading as e:
            last = e
    raise CheckpointError(f"{last}, {REPLACED_RETRIES + 1} times in a row; try again, or read "
                          "a checkpoint that is not being saved again") from last


def _child(root: Dir, *names: str) -> Dir:
    """``root.join(*names)`` for names from a manifest: each one plain, never a path."""
    for name in names:
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise CorruptCheckpointError(f"{root}: the manifest names {name!r}, which is "
                                         "not a plain file name; it is damaged")
    return root.join(*names)


def _state_file_present(where: Dir) -> bool:
    try:
        return where.read(_names.STATE_FILE, 1, head=True) is not None
    except (OSError, ValueError):  # something is there, if not a file we wrote
        return True


# Leaves of this size or more have their files' sizes checked before a read.
_BIG_READ_BYTES = 64 << 20


class Reader:
    """Reads leaves of one checkpoint; every array read is checksum-checked,
    and (format 3) checked against the manifest's digest of each piece it
    covers whole."""

    def __init__(self, path: str | Dir):
        self.where = _location.locate(path)
        self.path = str(self.where)
        self.manifest, self._raw = _read_manifest(self.where)
        self.leaves: list[dict] = self.manifest["leaves"]
        data = self.manifest.get("data")
        self.data = _child(self.where, data) if data else self.where
        # Format 4: files of this checkpoint's data held by an earlier
        # checkpoint's objects, grouped by array ("a/<j>" or "packed").
        self._shared: dict[str, list[tuple[str, str]]] = {}
        for rel, source in (self.manifest.get("shared") or {}).items():
            array, _, key = rel.partition("/c/")
            self._shared.setdefault(array, []).append(("c/" + key, source))
        # Called with each leaf record once read_arrays has its data (progress bars).
        self.on_leaf_read: Callable[[dict], None] | None = None
        self._digests: dict[int, dict] = {}

    def unless_changed(self, err: CorruptCheckpointError) -> CheckpointError:
        """``err``, unless the checkpoint changed since its manifest was read:
        deleted (``CheckpointNotFoundError``) or replaced (``ReplacedWhileReading``)."""
        try:
            now = _manifest_bytes(self.where)
        except Exception:  # cannot tell: report what was seen
            return err
        if now == self._raw:
            return err
        if now is None:
            new: CheckpointError = CheckpointNotFoundError(
                f"{self.path} was deleted while being read (by retention, another process "
                "or by hand); restore another checkpoint")
        else:
            new = ReplacedWhileReading(f"{self.path} was replaced while being read")
        new.__cause__ = err
        return new

    def check(self, leaf: dict, index: tuple, data: np.ndarray) -> None:
        """Compares the digest of each recorded piece that the read ``index``
        covers whole with the bytes read (``data``: the region's stored bytes).

        Raises:
            CorruptCheckpointError: naming the leaf, when one differs.
        """
        recorded = self._digests.get(id(leaf))
        if recorded is None:
            recorded = self._digests[id(leaf)] = _digest.pieces(leaf)
        if not recorded:
            return
        for want, rel in _digest.covered(recorded, _digest.region(index, _stored_shape(leaf))):
            if _digest.of(data[rel] if rel else data) != want:
                raise self.unless_changed(self.mismatch(leaf))

    def mismatch(self, leaf: dict) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{self.path}: leaf {_tree.path_str(leaf['path'])}: bytes do not match the "
            "manifest's digest: swapped or copied from another save. Restore an earlier "
            "checkpoint.")

    def _open(self, leaf: dict | None, shape: list[int]) -> Any:
        """Opens a large leaf's array, or (``leaf`` None) the packed array."""
        if leaf is None:
            self._check_stored_size(None)
        if leaf is not None:
            name = _format.ARRAYS + "/" + _format.array_name(leaf)
            kvstore = self._kvstore(_child(self.data, _format.ARRAYS, _format.array_name(leaf)),
                                    name)
            spec = _arrays.array_spec(kvstore, shape, *_format.array_chunks(leaf), create=False)
        else:
            total = self.manifest["packed_nbytes"]
            shard = self.manifest.get("packed_shard", total)  # one file before 0.2
            kvstore = self._kvstore(self.data.join(_format.PACKED), _format.PACKED)
            spec = _arrays.array_spec(kvstore, [total], [shard],
                                      [self.manifest["packed_chunk"]], create=False)
        return _arrays.open_array(spec)

    def _kvstore(self, own: Dir, array: str) -> dict:
        """The kvstore of an array's files: its own prefix, with the files this
        checkpoint references (``shared``) layered over it, each read from the
        object it names (relative to the checkpoint's parent directory). A
        missing object fails the read: the leaf is reported damaged."""
        refs = self._shared.get(array)
        if not refs:
            return own.kvstore()
        top = self.where.parent().kvstore()
        layers = [{"base": own.kvstore(), "prefix": ""}]
        layers += [{"exact": key, "base": {**top, "path": top["path"] + source}}
                   for key, source in refs]
        return {"driver": "kvstack", "layers": layers}

    def _check_stored_size(self, leaf: dict | None) -> None:
        """Locally, a large leaf's files (``None``: the packed array's) must hold
        the bytes its record declares, so that a few hostile manifest bytes
        cannot make a read allocate terabytes (object stores list no sizes:
        there the allocation may fail, raising MemoryError). Files it
        references (``shared``, under the checkpoint's parent) count too,
        each object once."""
        if leaf is None:
            declared, names = self.manifest["packed_nbytes"], (_format.PACKED,)
            what = f"the packed array ({_format.PACKED})"
        else:
            declared, names = nbytes_of(leaf), (_format.ARRAYS, _format.array_name(leaf))
            what = f"leaf {_tree.path_str(leaf['path'])}"
        if declared < _BIG_READ_BYTES:
            return
        stored = _child(self.data, *names).file_bytes()  # files gone meanwhile: the read reports it
        refs = self._shared.get("/".join(names))
        if stored is not None and refs:
            # One object holds one file of one array: a hostile manifest naming
            # it for every file still counts its bytes once.
            parent = self.where.parent()
            sizes = [parent.size_of(source) for source in sorted({s for _, s in refs})]
            stored = None if None in sizes else stored + sum(sizes)
        if stored is not None and stored < declared:
            raise self.unless_changed(CorruptCheckpointError(
                f"{self.path}: {what} declares {declared} bytes, but its files hold "
                f"{stored}; the checkpoint is damaged or incomplete"))

    def damaged(self, leaf: dict, e: BaseException, *, check: bool = True) -> Exception:
        """The error for a failed read of ``leaf`` (see ``unless_changed``); a
        ``MemoryError`` when the read ran out of memory (the bytes may be sound)."""
        if _out_of_memory(e):
            # Never "damaged": restore_or_initialize would skip a sound checkpoint.
            return MemoryError(
                f"{self.path}: leaf {_tree.path_str(leaf['path'])} ({nbytes_of(leaf)} bytes): "
                f"out of memory while reading it: {e}; free memory, or restore with a "
                "smaller max_host_bytes")
        err = CorruptCheckpointError(
            f"{self.path}: leaf {_tree.path_str(leaf['path'])} is damaged or missing: {e}"
        )
        err.__cause__ = e
        return self.unless_changed(err) if check else err

    def read_arrays(
        self, requests: list[tuple[dict, list[tuple]]]
    ) -> list[list[np.ndarray]]:
        """Reads, for each (leaf record, [index, ...]), host arrays of the leaf's
        stored dtype at each index (tuples of slices over the stored shape).

        All reads are issued before any is awaited.
        """
        packed_needed = [leaf for leaf, _ in requests
                         if _format.where_kind(leaf) == _format.WHERE_PACKED]
        futures: list[list[Any]] = []
        opened = {}
        for leaf, _ in requests:
            if _format.where_kind(leaf) == _format.WHERE_ARRAY:
                shape = list(_stored_shape(leaf)) + [_stored_dtype(leaf).itemsize]
                self._check_stored_size(leaf)
                opened[id(leaf)] = self._open(leaf, shape)
        # The packed array's reads start first and run alongside the others.
        packed_bytes = self._read_packed(packed_needed) if packed_needed else None
        for leaf, indices in requests:
            kind = _format.where_kind(leaf)
            if kind == _format.WHERE_ARRAY:
                try:
                    store = opened[id(leaf)].result()
                except Exception as e:
                    raise self.damaged(leaf, e) from e
                try:
                    futures.append([_arrays.read(store, idx) for idx in indices])
                except (MemoryError, OSError) as e:  # the buffer: mmap raises ENOMEM
                    raise MemoryError(f"{self.path}: leaf {_tree.path_str(leaf['path'])} "
                                      f"({nbytes_of(leaf)} bytes): cannot allocate the memory "
                                      f"to read it: {e}") from e
            else:
                futures.append([None] * len(indices))
        out = []
        for (leaf, indices), futs in zip(requests, futures):
            dtype, shape = _stored_dtype(leaf), _stored_shape(leaf)
            kind = _format.where_kind(leaf)
            if kind == _format.WHERE_EMPTY:
                full = np.zeros(shape, dtype)
                out.append([full[idx] if idx else full for idx in indices])
            elif kind == _format.WHERE_PACKED:
                full = self._packed_leaf(packed_bytes, leaf)
                out.append([full[idx] if idx else full for idx in indices])
            else:
                pieces = []
                for idx, fut in zip(indices, futs):
                    try:
                        data = fut.result()
                    except Exception as e:
                        raise self.damaged(leaf, e) from e
                    self.check(leaf, idx, data)
                    sub_shape = data.shape[:-1]
                    pieces.append(_arrays.from_bytes(data, dtype, sub_shape))
                out.append(pieces)
            if self.on_leaf_read is not None:
                self.on_leaf_read(leaf)
        return out

    def read_packed(self, leaves: list[dict]) -> Callable[[], list[np.ndarray]]:
        """Starts reading the whole stored arrays of packed ``leaves``; the call
        returned waits and gives them in order, each checked against its
        digest (``read_arrays`` for each, without its per-leaf generality)."""
        if not leaves:
            return list
        packed = self._read_packed(leaves)

        def finish() -> list[np.ndarray]:
            one = self._packed_leaf
            out = [one(packed, leaf) for leaf in leaves]
            if self.on_leaf_read is not None:
                for leaf in leaves:
                    self.on_leaf_read(leaf)
            return out

        return finish

    def _packed_leaf(self, packed: "_PackedRead", leaf: dict) -> np.ndarray:
        """A packed leaf's stored array, checked against its digest: ``check``
        without its general region matching where the one recorded piece is
        the whole leaf (what a save writes), so that thousands of small
        leaves cost little more than their hashing (issue 17)."""
        raw = packed.raw(leaf)
        recorded = leaf.get("xxh3")
        if not recorded:
            return packed.typed(leaf, raw)
        if len(recorded) == 1 and recorded[0][0] == _whole_index(leaf["shape"]):
            if _digest.of(raw) != recorded[0][1]:
                raise self.unless_changed(self.mismatch(leaf))
            return packed.typed(leaf, raw)
        full = packed.typed(leaf, raw)
        self.check(leaf, (), full)
        return full

    def _read_packed(self, leaves: list[dict]) -> "_PackedRead":
        """Starts reading the packed leaves; ``[id(leaf)]`` on the result waits."""
        total = self.manifest["packed_nbytes"]
        inline = self.manifest.get("packed_inline")
        if inline is not None:
            buf = _arrays.aligned_empty((len(inline),))
            buf[:] = np.frombuffer(inline, np.uint8)
            return _PackedRead(self, None, leaves, whole=lambda: buf)
        try:
            store = self._open(None, [total]).result()
        except Exception as e:
            raise self.damaged(leaves[0], e) from e
        wanted = sum(_format.packed_span(leaf)[1] for leaf in leaves)
        if wanted * 2 >= total:
            return _PackedRead(self, store, leaves, whole=_arrays.read(store, ()).result)
        futs = {id(leaf): _arrays.read(store, (_format.packed_slice(leaf),))
                for leaf in leaves}
        return _PackedRead(self, store, leaves, pieces=futs)

    def _damaged_packed(self, store: Any, leaves: list[dict]) -> list[str]:
        """Messages for each packed leaf whose bytes fail their chunk checksum
        or digest."""
        futs = [(leaf, _arrays.read(store, (_format.packed_slice(leaf),)))
                for leaf in leaves]
        problems = []
        for leaf, fut in futs:
            try:
                data = fut.result()
            except Exception as e:
                problems.append(str(self.damaged(leaf, e, check=False)))
                continue
            problems += self._packed_mismatch(leaf, data)
        return problems

    def _packed_mismatch(self, leaf: dict, data: np.ndarray) -> list[str]:
        """[message] if the packed leaf's bytes ``data`` differ from its digest."""
        recorded = _digest.pieces(leaf)
        if recorded and _digest.of(data) not in recorded.values():
            return [str(self.mismatch(leaf))]
        return []

    def raise_first_damaged(self, store: Any, leaves: list[dict]) -> None:
        """Re-reads ``leaves`` one by one and raises ``CorruptCheckpointError``
        naming each damaged one (see ``unless_changed``); returns if none is."""
        problems = self._damaged_packed(store, leaves)
        if problems:
            raise self.unless_changed(CorruptCheckpointError("\n".join(problems)))

    def open_leaf(self, leaf: dict) -> Any:
        """The opened tensorstore array of a large leaf (stored shape plus an
        itemsize axis), its files' sizes checked first."""
        self._check_stored_size(leaf)
        shape = list(_stored_shape(leaf)) + [_stored_dtype(leaf).itemsize]
        try:
            return self._open(leaf, shape).result()
        except Exception as e:
            raise self.damaged(leaf, e) from e

    def recorded_digests(self, leaf: dict) -> dict:
        """The manifest's digests of ``leaf``'s pieces, by region (see ``check``)."""
        recorded = self._digests.get(id(leaf))
        if recorded is None:
            recorded = self._digests[id(leaf)] = _digest.pieces(leaf)
        return recorded

    def file_of(self, leaf: dict) -> str:
        """The file (relative to the checkpoint) that holds ``leaf``'s bytes: its
        packed shard file, its own array's directory, or ``""`` (none)."""
        kind = _format.where_kind(leaf)
        data = self.manifest.get("data")
        top = data + "/" if data else ""
        if kind == _format.WHERE_ARRAY:
            return f"{top}{_format.ARRAYS}/{_format.array_name(leaf)}"
        if kind == _format.WHERE_PACKED and "packed_inline" not in self.manifest:
            offset = _format.packed_span(leaf)[0]
            shard = self.manifest.get("packed_shard", self.manifest["packed_nbytes"]) or 1
            return f"{top}{_format.PACKED}/c/{offset // shard}"
        return ""

    def verify(self, on_leaf: Callable[[dict], None] | None = None) -> list[str]:
        """Reads every stored byte, each recorded piece whole so that every
        digest is checked; returns messages naming each damaged leaf (and
        ``self.damage``: ``(file, key path, message)`` for each).

        Raises:
            CheckpointNotFoundError: the checkpoint was deleted meanwhile.
            ReplacedWhileReading: it was replaced meanwhile.
        """
        problems: list[str] = []
        self.damage: list[tuple[str, str, str]] = []

        def add(leaf: dict, messages: list[str]) -> None:
            problems.extend(messages)
            self.damage.extend((self.file_of(leaf), _tree.path_str(leaf["path"]), m)
                               for m in messages)

        arrays = [leaf for leaf in self.leaves if leaf["kind"] != "py"]
        packed = [leaf for leaf in arrays if _format.where_kind(leaf) == _format.WHERE_PACKED]
        if packed and "packed_inline" in self.manifest:  # checked with the manifest
            inline = np.frombuffer(self.manifest["packed_inline"], np.uint8)
            for leaf in packed:
                add(leaf, self._packed_mismatch(leaf, inline[_format.packed_slice(leaf)]))
                if on_leaf:
                    on_leaf(leaf)
        elif packed:
            total = self.manifest["packed_nbytes"]
            store, first = None, None  # store stays None only if the open failed
            try:
                store = self._open(None, [total]).result()
                whole = _arrays.read(store, ()).result()
            except Exception as e:
                first = e
            if first is not None and store is None:
                for leaf in packed:
                    add(leaf, [str(self.damaged(leaf, first, check=False))])
            elif first is not None:
                for leaf in packed:
                    add(leaf, self._damaged_packed(store, [leaf]))
            else:
                for leaf in packed:
                    add(leaf, self._packed_mismatch(leaf, whole[_format.packed_slice(leaf)]))
            if on_leaf:
                for leaf in packed:
                    on_leaf(leaf)
        for leaf in arrays:
            if _format.where_kind(leaf) != _format.WHERE_ARRAY:
                continue
            pieces = [tuple(slice(a, b) for a, b in index) for index, _ in leaf.get("xxh3", ())]
            try:
                self.read_arrays([(leaf, pieces or [()])])
            except CorruptCheckpointError as e:
                add(leaf, [str(e)])
            if on_leaf:
                on_leaf(leaf)
        if problems:
            err = self.unless_changed(CorruptCheckpointError("\n".join(problems)))
            if not isinstance(err, CorruptCheckpointError):
                raise err
        return problems


def _out_of_memory(e: BaseException) -> bool:
    """Whether a tensorstore read failed for want of memory (mmap or malloc: ENOMEM)."""
    text = str(e)
    return isinstance(e, MemoryError) or (
        "RESOURCE_EXHAUSTED" in text and ("os_error_code='12'" in text
                                          or "Cannot allocate memory" in text))


class _PackedRead:
    """Packed leaves being read: the whole packed array, or each leaf's bytes.

    Indexing by ``id(leaf)`` waits for the data; a checksum failure is raised
    as ``CorruptCheckpointError`` naming exactly the damaged leaves.
    """

    def __init__(self, reader: Reader, store: Any, leaves: list[dict], *,
                 whole: Callable[[], np.ndarray] | None = None,
                 pieces: dict[int, Any] | None = None):
        self._reader, self._store, self._leaves = reader, store, leaves
        self._by_id = {id(leaf): leaf for leaf in leaves}
        self._whole, self._pieces = whole, pieces
        self._buf: np.ndarray | None = None

    def __getitem__(self, key: int) -> np.ndarray:
        leaf = self._by_id[key]
        return _arrays.from_bytes(self.raw(leaf), _stored_dtype(leaf), _stored_shape(leaf))

    def typed(self, leaf: dict, raw: np.ndarray) -> np.ndarray:
        """``raw`` (a packed leaf's contiguous bytes) as the leaf's stored array."""
        return raw.view(_stored_dtype(leaf)).reshape(leaf["shape"])

    def raw(self, leaf: dict) -> np.ndarray:
        """The packed leaf's bytes (uint8, contiguous)."""
        key = id(leaf)
        try:
            if self._pieces is not None:
                data = self._pieces[key].result()
            else:
                if self._buf is None:
                    self._buf = self._whole()
                data = self._buf[_format.packed_slice(leaf)]
        except Exception as e:
            # Name exactly the damaged leaves: re-read them one by one.
            self._reader.raise_first_damaged(self._store, self._leaves)
            raise self._reader.damaged(leaf, e) from e
        return data if data.flags.c_contiguous else np.ascontiguousarray(data)


# Stored dtypes by name, and whole-leaf digest indices by shape: the same few
# recur across the thousands of packed leaves of one restore.
_DTYPES: dict[str, np.dtype] = {}
_WHOLE: dict[tuple, list] = {}


def _whole_index(shape: list[int]) -> list:
    """A digest index covering all of ``shape`` (``[[0, n], ...]``)."""
    key = tuple(shape)
    index = _WHOLE.get(key)
    if index is None:
        index = [[0, n] for n in shape]
        if len(_WHOLE) < 1024:
            _WHOLE[key] = index
    return index


def _stored_dtype(leaf: dict) -> np.dtype:
    name = leaf["dtype"]
    dtype = _DTYPES.get(name)
    if dtype is None:
        dtype = _format.dtype_from_name(name)
        if len(_DTYPES) < 1024:  # names are checked (check.py) before any read
            _DTYPES[name] = dtype
    return dtype


def _stored_shape(leaf: dict) -> tuple[int, ...]:
    return tuple(leaf["shape"])


def leaf_paths(leaves: Iterable[dict]) -> list[tuple]:
    return [tuple((k, v) for k, v in leaf["path"]) for leaf in leaves]


def nbytes_of(leaf: dict) -> int:
    if leaf["kind"] == "py":
        return 0
    return math.prod(leaf["shape"]) * _stored_dtype(leaf).itemsize
