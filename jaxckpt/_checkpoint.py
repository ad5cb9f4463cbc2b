"""One checkpoint: write a snapshot to storage and commit it; read it back.

Small leaves are packed back to back into one array (one file, one fsync for
thousands of leaves); leaves of ``LARGE_BYTES`` or more get an array each,
chunked along their sharding so that each writer owns whole files.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterable

import numpy as np

from . import _commit, _format, _snapshot, _storage, _tree
from .errors import CheckpointNotFoundError, CorruptCheckpointError

LARGE_BYTES = 2 << 20


def _layout(snapshot: _snapshot.Snapshot) -> tuple[int, int]:
    """Assigns each array leaf its place; returns (packed bytes, inner chunk)."""
    offset = 0
    n_large = 0
    for arr in snapshot.arrays:
        if arr.nbytes == 0:
            arr.record["where"] = ["empty"]
        elif arr.nbytes < LARGE_BYTES:
            arr.record["where"] = ["packed", offset, arr.nbytes]
            offset += -(-arr.nbytes // _storage.PACK_ALIGN) * _storage.PACK_ALIGN
        else:
            outer, inner = _storage.chunking(list(arr.shard_shape) + [arr.dtype.itemsize])
            arr.record["where"] = ["array", str(n_large), outer, inner]
            n_large += 1
    inner = min(_storage.PACKED_INNER_BYTES, offset) if offset else 0
    total = -(-offset // inner) * inner if inner else 0
    return total, inner


def _pack(snapshot: _snapshot.Snapshot, total: int) -> np.ndarray:
    buf = np.empty(total, np.uint8)
    for arr in snapshot.arrays:
        where = arr.record["where"]
        if where[0] != "packed":
            continue
        _, off, nbytes = where
        region = buf[off : off + nbytes].view(arr.dtype).reshape(arr.shape)
        for shard in arr.shards:
            region[tuple(slice(a, b) for a, b in shard.index)] = shard.data
    return buf


def write(snapshot: _snapshot.Snapshot, final: str, *, replace: bool, created: float) -> None:
    """Writes ``snapshot`` as the committed checkpoint ``final``.

    Blocks until the bytes are durable and the checkpoint is in place.
    On failure nothing is left under ``final`` (nor of the temporary).
    """
    tmp = _commit.temp_sibling(final)
    os.mkdir(tmp)  # not makedirs: a vanished directory (or mount) is an error, not recreated
    try:
        _write_into(snapshot, tmp, created)
        _commit.publish(tmp, final, replace=replace)
    except BaseException:
        _commit.discard(tmp)
        raise


def _write_into(snapshot: _snapshot.Snapshot, root: str, created: float) -> None:
    total, inner = _layout(snapshot)
    context = _storage.make_context()
    opened = []
    for arr in snapshot.arrays:
        where = arr.record["where"]
        if where[0] == "array":
            path = os.path.join(root, _format.ARRAYS, where[1])
            spec = _storage.array_spec(path, list(arr.shape) + [arr.dtype.itemsize],
                                       where[2], where[3], create=True)
            opened.append((arr, _storage.open_array(spec, context)))
    packed_future = None
    if total:
        spec = _storage.array_spec(os.path.join(root, _format.PACKED), [total], [total],
                                   [inner], create=True)
        packed_future = _storage.open_array(spec, context)
    commits = []
    for arr, fut in opened:
        store = fut.result()
        for shard in arr.shards:
            index = tuple(slice(a, b) for a, b in shard.index)
            commits.append(_storage.write(store, index, _storage.byte_view(shard.data)))
    if packed_future is not None:
        buf = _pack(snapshot, total)
        commits.append(_storage.write(packed_future.result(), (), buf))
    for c in commits:
        c.result()
    manifest = {
        "version": _format.VERSION,
        "created": created,
        "metadata": snapshot.metadata,
        "packed_nbytes": total,
        "packed_chunk": inner,
        "leaves": snapshot.records,
    }
    _storage.write_file_durably(os.path.join(root, _format.MANIFEST),
                                _format.pack_manifest(manifest))


# ---------------------------------------------------------------- reading


def read_manifest(path: str) -> dict:
    """Reads and checks the manifest of the committed checkpoint at ``path``."""
    file = os.path.join(path, _format.MANIFEST)
    try:
        with open(file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if os.path.isfile(os.path.join(path, "checkpoint")):
            raise CheckpointNotFoundError(
                f"{path} is a CheckpointManager directory, not a checkpoint; restore one of "
                "its checkpoints (see jaxckpt.latest_checkpoint(directory))") from None
        if os.path.isdir(path):
            raise CheckpointNotFoundError(
                f"{path} is not a committed checkpoint (no {_format.MANIFEST}); it may be "
                "a save that was interrupted."
            ) from None
        raise CheckpointNotFoundError(f"no checkpoint at {path}") from None
    except NotADirectoryError:
        raise CheckpointNotFoundError(f"{path} is a file, not a checkpoint directory") from None
    return _format.unpack_manifest(data, path)


class Reader:
    """Reads leaves of one checkpoint; every array read is checksum-checked."""

    def __init__(self, path: str):
        self.path = path
        self.manifest = read_manifest(path)
        self.leaves: list[dict] = self.manifest["leaves"]
        self._context = _storage.make_context()
        self._packed = None

    def _open(self, where: list, shape: list[int]) -> Any:
        if where[0] == "array":
            spec = _storage.array_spec(os.path.join(self.path, _format.ARRAYS, where[1]),
                                       shape, where[2], where[3], create=False)
        else:
            total = self.manifest["packed_nbytes"]
            spec = _storage.array_spec(os.path.join(self.path, _format.PACKED), [total],
                                       [total], [self.manifest["packed_chunk"]], create=False)
        return _storage.open_array(spec, self._context)

    def damaged(self, leaf: dict, e: BaseException) -> CorruptCheckpointError:
        err = CorruptCheckpointError(
            f"{self.path}: leaf {_tree.path_str(leaf['path'])} is damaged or missing: {e}"
        )
        err.__cause__ = e
        return err

    def read_arrays(
        self, requests: list[tuple[dict, list[tuple]]]
    ) -> list[list[np.ndarray]]:
        """Reads, for each (leaf record, [index, ...]), host arrays of the leaf's
        stored dtype at each index (tuples of slices over the stored shape).

        All reads are issued before any is awaited.
        """
        packed_needed = [leaf for leaf, _ in requests if leaf["where"][0] == "packed"]
        packed_bytes = None
        if packed_needed:
            packed_bytes = self._read_packed(packed_needed)
        futures: list[list[Any]] = []
        opened = {}
        for leaf, _ in requests:
            if leaf["where"][0] == "array":
                shape = list(_stored_shape(leaf)) + [_stored_dtype(leaf).itemsize]
                opened[id(leaf)] = self._open(leaf["where"], shape)
        for leaf, indices in requests:
            kind = leaf["where"][0]
            if kind == "array":
                try:
                    store = opened[id(leaf)].result()
                except Exception as e:
                    raise self.damaged(leaf, e) from e
                futures.append([_storage.read(store, idx) for idx in indices])
            else:
                futures.append([None] * len(indices))
        out = []
        for (leaf, indices), futs in zip(requests, futures):
            dtype, shape = _stored_dtype(leaf), _stored_shape(leaf)
            kind = leaf["where"][0]
            if kind == "empty":
                full = np.zeros(shape, dtype)
                out.append([full[idx] if idx else full for idx in indices])
            elif kind == "packed":
                _, off, nbytes = leaf["where"]
                full = packed_bytes[id(leaf)]
                out.append([full[idx] if idx else full for idx in indices])
            else:
                pieces = []
                for idx, fut in zip(indices, futs):
                    try:
                        data = fut.result()
                    except Exception as e:
                        raise self.damaged(leaf, e) from e
                    sub_shape = data.shape[:-1]
                    pieces.append(_storage.from_bytes(data, dtype, sub_shape))
                out.append(pieces)
        return out

    def _read_packed(self, leaves: list[dict]) -> dict[int, np.ndarray]:
        total = self.manifest["packed_nbytes"]
        try:
            store = self._open(["packed"], [total]).result()
        except Exception as e:
            raise self.damaged(leaves[0], e) from e
        wanted = sum(leaf["where"][2] for leaf in leaves)
        result = {}
        if wanted * 2 >= total:
            try:
                buf = _storage.read(store, ()).result()
            except Exception:
                # Name exactly the damaged leaves: re-read them one by one.
                self._raise_first_damaged(store, leaves)
                raise
            for leaf in leaves:
                _, off, nbytes = leaf["where"]
                result[id(leaf)] = _storage.from_bytes(
                    buf[off : off + nbytes], _stored_dtype(leaf), _stored_shape(leaf))
            return result
        futs = [(leaf, _storage.read(store, (slice(leaf["where"][1],
                                                   leaf["where"][1] + leaf["where"][2]),)))
                for leaf in leaves]
        for leaf, fut in futs:
            try:
                data = fut.result()
            except Exception:
                self._raise_first_damaged(store, leaves)
                raise
            result[id(leaf)] = _storage.from_bytes(data, _stored_dtype(leaf), _stored_shape(leaf))
        return result

    def _damaged_packed(self, store: Any, leaves: list[dict]) -> list[str]:
        """Messages for each packed leaf whose bytes fail their chunk checksum."""
        futs = [(leaf, _storage.read(store, (slice(leaf["where"][1],
                                                   leaf["where"][1] + leaf["where"][2]),)))
                for leaf in leaves]
        problems = []
        for leaf, fut in futs:
            try:
                fut.result()
            except Exception as e:
                problems.append(str(self.damaged(leaf, e)))
        return problems

    def _raise_first_damaged(self, store: Any, leaves: list[dict]) -> None:
        problems = self._damaged_packed(store, leaves)
        if problems:
            raise CorruptCheckpointError("\n".join(problems))

    def verify(self, on_leaf: Callable[[dict], None] | None = None) -> list[str]:
        """Reads every stored byte; returns messages naming each damaged leaf."""
        problems = []
        arrays = [leaf for leaf in self.leaves if leaf["kind"] != "py"]
        packed = [leaf for leaf in arrays if leaf["where"][0] == "packed"]
        if packed:
            total = self.manifest["packed_nbytes"]
            store, first = None, None  # store stays None only if the open failed
            try:
                store = self._open(["packed"], [total]).result()
                _storage.read(store, ()).result()
            except Exception as e:
                first = e
            if first is not None and store is None:
                problems += [str(self.damaged(leaf, first)) for leaf in packed]
            elif first is not None:
                problems += self._damaged_packed(store, packed)
        for leaf in arrays:
            if leaf["where"][0] != "array":
                continue
            try:
                self.read_arrays([(leaf, [()])])
            except CorruptCheckpointError as e:
                problems.append(str(e))
            if on_leaf:
                on_leaf(leaf)
        return problems


def _stored_dtype(leaf: dict) -> np.dtype:
    return _format.dtype_from_name(leaf["dtype"])


def _stored_shape(leaf: dict) -> tuple[int, ...]:
    return tuple(leaf["shape"])


def leaf_paths(leaves: Iterable[dict]) -> list[tuple]:
    return [tuple((k, v) for k, v in leaf["path"]) for leaf in leaves]


def now() -> float:
    return time.time()


def nbytes_of(leaf: dict) -> int:
    if leaf["kind"] == "py":
        return 0
    return math.prod(leaf["shape"]) * _stored_dtype(leaf).itemsize
