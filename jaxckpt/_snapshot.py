"""The blocking phase of a save: make the state safe from the caller.

After ``take`` returns, nothing the caller does to its arrays (overwrite a
NumPy array in place, donate or delete a ``jax.Array``) changes what will be
written. NumPy arrays are copied. ``jax.Array`` shards are brought to host:
every device-to-host copy is started before any is awaited; on the CPU
backend the host view shares the buffer and holds a reference to it, which
keeps JAX from reusing it for a donated output.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import numpy as np

from . import _format, _tree


@dataclasses.dataclass
class Shard:
    """A piece of an array leaf: ``index`` as (start, stop) per axis, host data."""

    index: tuple[tuple[int, int], ...]
    data: np.ndarray


@dataclasses.dataclass
class ArrayLeaf:
    record: dict  # manifest fields known now: path, kind, dtype, shape, impl
    dtype: np.dtype  # dtype of the stored data (key data for PRNG keys)
    shape: tuple[int, ...]
    shards: list[Shard]
    shard_shape: tuple[int, ...]  # the chunk grid that matches the sharding

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclasses.dataclass
class Snapshot:
    """What a save writes: manifest records in leaf order plus host array data."""

    records: list[dict]
    arrays: list[ArrayLeaf]
    metadata: dict | None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def _norm_index(index: tuple, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for sl, n in zip(index, shape):
        start, stop, _ = sl.indices(n)
        out.append((start, stop))
    return tuple(out)


def check_metadata(metadata: Any) -> dict | None:
    """Validates user metadata: a JSON-able dict, or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-able: {e}") from e


def take(tree: Any, metadata: dict | None = None) -> Snapshot:
    """Validates ``tree`` and copies it out of the caller's reach.

    Blocks on the device-to-host copies of every ``jax.Array`` shard this
    process must write, started together. Raises ``TypeError`` naming the key
    path of an unsupported leaf before any copy is made.
    """
    metadata = check_metadata(metadata)
    entries, _ = _tree.flatten(tree)
    seen: set[str] = set()
    for entry in entries:
        _tree.check_leaf(entry)
        if entry.path_str in seen:
            # Keys are stored as text: two keys that print alike would lose a leaf.
            raise ValueError(
                f"two leaves have the key path {entry.path_str} once keys are stored as text "
                "(dict keys other than str and int are stored as str(key)); use distinct "
                "str or int keys")
        seen.add(entry.path_str)

    records: list[dict] = []
    arrays: list[ArrayLeaf] = []
    pending: list[tuple[ArrayLeaf, list[tuple[tuple, jax.Array]]]] = []
    for entry in entries:
        leaf = entry.leaf
        record: dict[str, Any] = {"path": [list(t) for t in entry.path]}
        records.append(record)
        if isinstance(leaf, jax.Array):
            if _tree.is_prng_key(leaf):
                record["kind"] = "key"
                record["impl"] = str(jax.random.key_impl(leaf))
                record["key_shape"] = list(leaf.shape)
                leaf = jax.random.key_data(leaf)
            else:
                record["kind"] = "jax"
            shape = tuple(leaf.shape)
            dtype = np.dtype(leaf.dtype)
            pieces = [
                (_norm_index(s.index, shape), s.data)
                for s in leaf.addressable_shards
                if s.replica_id == 0
            ]
            for _, data in pieces:
                if data.devices().pop().platform != "cpu":
                    data.copy_to_host_async()
            shard_shape = tuple(leaf.sharding.shard_shape(shape))
            arr = ArrayLeaf(record, dtype, shape, [], shard_shape)
            pending.append((arr, pieces))
        elif isinstance(leaf, (np.ndarray, np.generic)):
            record["kind"] = "array" if isinstance(leaf, np.ndarray) else "scalar"
            data = np.array(leaf, copy=True, order="C")
            shape = tuple(data.shape)
            full = tuple((0, n) for n in shape)
            arr = ArrayLeaf(record, data.dtype, shape, [Shard(full, data)], shape)
        else:
            record["kind"] = "py"
            record["value"] = _format.encode_py(leaf)
            continue
        record["dtype"] = _format.dtype_name(arr.dtype)
        record["shape"] = list(arr.shape)
        arrays.append(arr)

    # All transfers were started above; now wait for each.
    for arr, pieces in pending:
        arr.shards = [Shard(index, np.asarray(data)) for index, data in pieces]
    return Snapshot(records, arrays, metadata)
