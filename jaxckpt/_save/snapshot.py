"""The blocking phase of a save: make the state safe from the caller.

After ``take`` returns, nothing the caller does to its arrays (overwrite a
NumPy array in place, donate or delete a ``jax.Array``) changes what will be
written. NumPy arrays are copied. ``jax.Array`` shards are brought to host:
every device-to-host copy is started before any is awaited; on the CPU
backend the host view shares the buffer and holds a reference to it, which
keeps JAX from reusing it for a donated output. Large leaves on an
accelerator are not awaited at all: one batched ``device_put`` into the
device's pinned host memory starts their copies, save() returns, and the
writer waits for them (``Snapshot.settle``); the copy is a new array, so
donating the original at once is safe (``_save/host_copies``).

In a multi-process program each process keeps only what it writes: the
shards it owns (``replica_id == 0``) of arrays that span processes; process 0
alone keeps host values (NumPy, process-local ``jax.Array``) and small
leaves it can assemble from its own devices, which go into the packed array.

One module of some 470 lines on purpose: the blocking phase is one hot loop over the
leaves (measured in ``benchmarks/``) with the records and pieces it builds beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import numpy as np

from . import gc as _gc, host_copies as _host_copies
from .._directory import coordinate as _multihost
from .. import _tree
from .._format import manifest as _format


@dataclasses.dataclass(slots=True)
class Shard:
    """A piece of an array leaf: ``index`` as (start, stop) per axis, host data."""

    index: tuple[tuple[int, int], ...]
    data: np.ndarray


@dataclasses.dataclass(slots=True)
class ArrayLeaf:
    record: dict  # manifest fields known now: path, kind, dtype, shape, impl
    dtype: np.dtype  # dtype of the stored data (key data for PRNG keys)
    shape: tuple[int, ...]
    shards: list[Shard]  # what this process writes (may be none)
    shard_shape: tuple[int, ...]  # the chunk grid that matches the sharding
    packed: bool = False  # small: stored in the shared packed array (written by process 0)
    exact: bool = False  # shards of several processes: chunk files must match them exactly
    # An incremental save: the caller's jax.Array (for Unchanged.remember), and,
    # when that same array was saved before, its pieces' (region, digest): then
    # nothing was copied (``shards`` is empty) and the writer links its files.
    origin: Any = None
    known: list | None = None
    _size: int = -1  # nbytes, once computed (the writer asks several times a leaf)

    @property
    def nbytes(self) -> int:
        size = self._size
        if size < 0:
            size = self._size = math.prod(self.shape) * self.dtype.itemsize
        return size


@dataclasses.dataclass
class Snapshot:
    """What a save writes: manifest records in leaf order plus host array data."""

    records: list[dict]
    arrays: list[ArrayLeaf]
    metadata: dict | None
    # ``take(defer=True)``: (leaf, jax pieces, or None for a NumPy leaf whose
    # shard is still the caller's array) not yet on the host, in leaf order;
    # ``_save/staging`` copies them under the host budget and sets ``rolling``.
    unstaged: list | None = None
    rolling: Any = None
    _size: int = -1
    host_bytes: int = 0  # new host memory the copies take (without a budget: all at once)
    # Large accelerator leaves whose copy into host memory save() only
    # started: (leaf, [(index, host jax.Array)]); ``settle`` waits for them.
    copying: list = dataclasses.field(default_factory=list)
    metrics: dict | None = None  # a manager save's ``metrics`` (``_directory/best``)

    def settle(self) -> None:
        """Waits for the copies ``take`` left in flight (on the writer thread)
        and puts their host data into the leaves' shards."""
        copying, self.copying = self.copying, []
        for arr, pieces in copying:
            arr.shards = [Shard(index, np.asarray(data)) for index, data in pieces]

    @property
    def nbytes(self) -> int:
        if self._size < 0:
            self._size = sum(a.nbytes for a in self.arrays)
        return self._size


def _norm_index(index: tuple, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for sl, n in zip(index, shape):
        start, stop, _ = sl.indices(n)
        out.append((start, stop))
    return tuple(out)


def _primary_holds_all(sharding: Any, shape: tuple[int, ...]) -> bool:
    """Whether process 0's devices hold every distinct piece of the array."""
    held: dict[tuple, bool] = {}
    for device, index in sharding.devices_indices_map(shape).items():
        key = _norm_index(index, shape)
        held[key] = held.get(key, False) or device.process_index == 0
    return all(held.values())


_SINGLE_DEVICE = jax.sharding.SingleDeviceSharding
_ARRAY_TYPES: set[type] = set()  # concrete jax.Array classes seen
_DTYPE_NAMES: dict[np.dtype, str] = {}


def small(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return math.prod(shape) * dtype.itemsize < _format.LARGE_BYTES


def jax_kind(record: dict, leaf: Any) -> Any:
    """Records a jax leaf's kind (``jax`` or ``key``); returns the array to store
    (a typed PRNG key array's key data). Works on traced values too."""
    if _tree.is_prng_key(leaf):
        record["kind"] = "key"
        record["impl"] = str(jax.random.key_impl(leaf))
        record["key_shape"] = list(leaf.shape)
        return jax.random.key_data(leaf)
    record["kind"] = "jax"
    return leaf


def leaf_record(stored: list, leaf: Any, copy: bool = True) -> tuple[dict, Any]:
    """The manifest record of one checked leaf and the array to store.

    The record holds ``path`` (``stored``: the key path as stored tokens),
    ``kind`` and either ``dtype`` and ``shape`` (plus ``impl`` and
    ``key_shape`` for PRNG keys) or a Python leaf's ``value``. The array is a
    ``jax.Array``'s data (key data for PRNG keys; tracers too), a C-ordered
    copy of a NumPy leaf (the leaf itself unless ``copy``), or None.
    """
    record: dict[str, Any] = {"path": stored}
    if isinstance(leaf, jax.Array):
        data = jax_kind(record, leaf)
        dtype = np.dtype(data.dtype)
    elif isinstance(leaf, (np.ndarray, np.generic)):
        record["kind"] = "array" if isinstance(leaf, np.ndarray) else "scalar"
        data = np.array(leaf, copy=True, order="C") if copy else leaf
        dtype = np.dtype(leaf.dtype)
    else:
        record["kind"] = "py"
        record["value"] = _format.encode_py(leaf)
        return record, None
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = _format.dtype_name(dtype)
    record["dtype"] = name
    record["shape"] = list(data.shape)
    return record, data


def host_array(record: dict, data: np.ndarray) -> ArrayLeaf:
    """An array leaf of host data that this process writes whole."""
    shape = tuple(data.shape)
    return ArrayLeaf(record, data.dtype, shape, [Shard(tuple((0, n) for n in shape), data)],
                     shape, packed=small(shape, data.dtype))


def check_metadata(metadata: Any) -> dict | None:
    """Validates user metadata: a JSON-able dict, or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    try:
        checked = json.loads(json.dumps(metadata, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must be JSON-able: {e}") from e
    _check_text(checked, "metadata")
    return checked


def _check_text(value: Any, where: str) -> None:
    """Raises ``ValueError`` naming the first key or string under ``value`` that is
    not valid Unicode (JSON escapes a lone surrogate; msgpack cannot store it)."""
    if isinstance(value, str):
        why = _tree.unencodable(value)
        if why is not None:
            raise ValueError(f"{where} is a string that is not valid Unicode ({why}); "
                             "metadata strings must be storable as UTF-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            why = _tree.unencodable(key)
            if why is not None:
                raise ValueError(f"{where} has the key {key!r}, which is not valid Unicode "
                                 f"({why}); metadata keys must be storable as UTF-8")
            _check_text(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]")


def _pieces(leaf: jax.Array, shape: tuple[int, ...], mine: bool | None) -> list:
    """(index, shard data) this process writes: all distinct pieces if ``mine``,
    none if not, its ``replica_id == 0`` shards if None."""
    if mine is None:
        return [(_norm_index(s.index, shape), s.data)
                for s in leaf.addressable_shards if s.replica_id == 0]
    if not mine:
        return []
    unique: dict[tuple, Any] = {}
    for s in leaf.addressable_shards:
        unique.setdefault(_norm_index(s.index, shape), s.data)
    return list(unique.items())


def host_pieces(leaf: jax.Array) -> list[Shard]:
    """Every distinct piece of a fully addressable ``jax.Array`` on the host
    (waits for the copies): for a leaf ``take`` did not copy."""
    shape = tuple(leaf.shape)
    pieces = _pieces(leaf, shape, True)
    for _, data in pieces:
        data.copy_to_host_async()
    return [Shard(index, np.asarray(data)) for index, data in pieces]


def take(tree: Any, metadata: dict | None = None, unchanged: Any = None,
         defer: bool = False) -> Snapshot:
    """See ``_take``; the cyclic garbage collector is paused meanwhile.

    ``defer``: check and lay out the tree but make no host copy (no NumPy
    copy, no device-to-host transfer started); what still needs one is in
    ``Snapshot.unstaged``, for ``_save/staging`` to copy under a budget.

    ``unchanged`` (``units.Unchanged``, incremental single-process saves):
    a large ``jax.Array`` that is the very object a committed save of this
    manager wrote is not copied at all; its digests come from that save.

    A snapshot of thousands of leaves allocates enough small objects to set
    off full collections of a large program's heap inside the blocking phase
    (tens of ms on W2); nothing here makes cycles, so reference counting
    frees it all the same.
    """
    with _gc.paused():
        return _take(tree, metadata, unchanged, defer)


class _Paths:
    """What a tree structure determines: each leaf's key path as stored tokens,
    already checked for collisions. Cached per treedef, since a training loop
    saves the same structure every time (flattening with key paths and
    building tokens is ~7 us per leaf; a plain flatten is ~0.7)."""

    def __init__(self, tree: Any):
        entries, _ = _tree.flatten(tree)
        seen: set[tuple] = set()
        for entry in entries:
            _tree.check_path(entry)
            if entry.path in seen:  # the stored tokens, which is what would collide
                # Keys are stored as text: two keys that print alike would lose a leaf.
                raise ValueError(
                    f"two leaves have the key path {entry.path_str} once keys are stored as "
                    "text (dict keys other than str and int are stored as str(key)); use "
                    "distinct str or int keys")
            seen.add(entry.path)
        self.paths = [entry.path for entry in entries]
        # Shared by every snapshot of this structure; nothing mutates them.
        self.stored = [[list(t) for t in entry.path] for entry in entries]
        # Per leaf, the last single-device leaf seen there: (device, dtype,
        # shape, _Plain). Checked by identity, which is cheap where a lookup
        # by value is not.
        self.last: list[tuple | None] = [None] * len(entries)


_PATHS: dict[Any, _Paths] = {}
_PATHS_MAX = 16


def _paths_of(tree: Any, treedef: Any) -> _Paths:
    try:
        found = _PATHS.get(treedef)
    except TypeError:  # an unhashable node's auxiliary data
        return _Paths(tree)
    if found is None:
        found = _Paths(tree)
        if len(_PATHS) >= _PATHS_MAX:
            _PATHS.pop(next(iter(_PATHS)))
        _PATHS[treedef] = found
    return found


@dataclasses.dataclass(frozen=True)
class _Plain:
    """What a single-device array's shape, dtype and sharding imply."""

    shape: tuple[int, ...]
    dtype: np.dtype
    dtype_name: str
    index: tuple[tuple[int, int], ...]
    packed: bool
    on_cpu: bool


_PLAIN: dict[tuple, _Plain] = {}



def _device_of(sharding: Any) -> Any:
    """A single-device sharding's device, read cheaply: JAX's sharding hash and
    ``==`` run in Python (~5 us a leaf), a device's in C++. ``device_set`` is
    the public fallback should the attribute go away."""
    device = getattr(sharding, "_device", None)
    return device if device is not None else next(iter(sharding.device_set))


def _plain(shape: tuple[int, ...], dtype: np.dtype, device: Any) -> _Plain:
    """Keyed by the device, not the sharding: every fresh array (a jitted step's
    outputs, ``device_put``) brings its own sharding object, and what a
    ``_Plain`` holds depends only on the device's platform."""
    key = (shape, dtype, device)
    found = _PLAIN.get(key)
    if found is None:
        if len(_PLAIN) >= 4096:
            _PLAIN.clear()
        found = _PLAIN[key] = _Plain(
            tuple(shape), np.dtype(dtype), _format.dtype_name(np.dtype(dtype)),
            tuple((0, n) for n in shape), small(tuple(shape), np.dtype(dtype)),
            device.platform == "cpu")
    return found


def _check(path: tuple, leaf: Any) -> None:
    if isinstance(leaf, jax.Array):
        if not leaf.is_deleted():
            return
    _tree.check_leaf(_tree.Entry(path, leaf))


def _take(tree: Any, metadata: dict | None = None, unchanged: Any = None,
          defer: bool = False) -> Snapshot:
    """Validates ``tree`` and copies it out of the caller's reach.

    Blocks on the device-to-host copies of the small ``jax.Array`` shards this
    process must write, started together; the large ones' copies are left in
    flight where the backend has pinned host memory. Raises ``TypeError`` naming the key
    path of an unsupported leaf before any copy is made.
    """
    metadata = check_metadata(metadata)
    primary = _multihost.process_index() == 0
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_tree.is_none)
    known = _paths_of(tree, treedef)
    # Nothing below writes or copies before every leaf is checked: the checks
    # come first for all but jax.Arrays, whose one check (not deleted) is made
    # in the loop before their host view is taken.
    array_types = _ARRAY_TYPES
    for path, leaf in zip(known.paths, leaves):
        if type(leaf) not in array_types and not isinstance(leaf, jax.Array):
            _check(path, leaf)

    records: list[dict] = []
    arrays: list[ArrayLeaf] = []
    pending: list[tuple[ArrayLeaf, list[tuple[tuple, jax.Array]]]] = []
    in_flight: list[tuple[ArrayLeaf, list[tuple[tuple, jax.Array, Any]]]] = []
    host_bytes = 0
    last = known.last
    new_leaf, new_shard, host_view = ArrayLeaf, Shard, np.asarray
    for i, (stored, leaf) in enumerate(zip(known.stored, leaves)):
        # isinstance against jax.Array is an ABC check; a set lookup is cheaper.
        is_array = type(leaf) in array_types
        if not is_array and isinstance(leaf, jax.Array):
            array_types.add(type(leaf))
            is_array = True
        if is_array:
            if leaf.is_deleted():
                _check(known.paths[i], leaf)  # raises, naming the key path
            sharding = leaf.sharding
            dtype = leaf.dtype
            if type(sharding) is _SINGLE_DEVICE and isinstance(dtype, np.dtype):
                # The common case, kept cheap: one shard, the whole array.
                seen = last[i]
                device = _device_of(sharding)
                if (seen is not None and seen[0] is device and seen[1] is dtype
                        and seen[2] == leaf.shape):
                    plain = seen[3]
                else:
                    plain = _plain(leaf.shape, dtype, device)
                    last[i] = (device, dtype, plain.shape, plain)
                record = {"path": stored, "kind": "jax", "dtype": plain.dtype_name,
                          "shape": list(plain.shape)}
                records.append(record)
                tracked = unchanged is not None and not plain.packed
                saved = unchanged.get(leaf) if tracked else None
                if saved is not None:  # saved before: no copy at all
                    arr = new_leaf(record, plain.dtype, plain.shape, [], plain.shape)
                    arr.origin, arr.known = leaf, saved
                    arrays.append(arr)
                    continue
                on_host = plain.on_cpu and not (_host_copies.FORCE_IN_FLIGHT and not plain.packed)
                if primary and on_host:  # a view of the buffer, which it keeps alive
                    shards = [new_shard(plain.index, host_view(leaf))]
                else:
                    shards = []
                arr = new_leaf(record, plain.dtype, plain.shape, shards, plain.shape,
                               plain.packed)
                if tracked:
                    arr.origin = leaf
                arrays.append(arr)
                if primary and not on_host:
                    # Large: the writer waits for its copy (under a host budget
                    # ``_save/staging`` makes every copy, counted).
                    target = None if plain.packed or defer else _host_copies.target(device)
                    if target is not None:
                        in_flight.append((arr, [(plain.index, leaf, target)]))
                    else:
                        if not defer:
                            leaf.copy_to_host_async()
                        pending.append((arr, [(plain.index, leaf)]))
                continue
        # Key data for PRNG keys (with its own sharding); a copy of NumPy data.
        record, data = leaf_record(stored, leaf, copy=primary and not defer)
        records.append(record)
        if data is None:  # a Python leaf: stored in the manifest
            continue
        if isinstance(leaf, jax.Array):
            leaf = data
            sharding = leaf.sharding
            shape = tuple(leaf.shape)
            dtype = np.dtype(leaf.dtype)
            shard_shape = tuple(sharding.shard_shape(shape))
            arr = ArrayLeaf(record, dtype, shape, [], shard_shape)
            if leaf.is_fully_addressable:
                arr.packed = small(shape, dtype)
                mine = primary
                if unchanged is not None and not arr.packed and record["kind"] == "jax":
                    arr.origin, arr.known = leaf, unchanged.get(leaf)
                    if arr.known is not None:
                        arrays.append(arr)
                        continue
            elif small(shape, dtype) and _primary_holds_all(leaf.sharding, shape):
                arr.packed = True
                mine = primary
            else:
                arr.exact = True
                mine = None  # each process its replica-0 shards
            pieces = _pieces(leaf, shape, mine)
            targets = []
            for _, data in pieces:
                # devices() is the set JAX caches on the sharding: read it, never pop it.
                device = next(iter(data.devices()))
                if (not defer and not arr.packed
                        and (device.platform != "cpu" or _host_copies.FORCE_IN_FLIGHT)):
                    targets.append(_host_copies.target(device))
                else:
                    targets.append(None)
            if pieces and all(t is not None for t in targets):
                in_flight.append((arr, [(index, data, t)
                                        for (index, data), t in zip(pieces, targets)]))
            else:
                if not defer:
                    for _, data in pieces:
                        if next(iter(data.devices())).platform != "cpu":
                            data.copy_to_host_async()
                pending.append((arr, pieces))
        else:  # NumPy
            shape = tuple(np.shape(leaf))
            shards = [Shard(tuple((0, n) for n in shape), data)] if primary else []
            arr = ArrayLeaf(record, np.dtype(leaf.dtype), shape, shards, shape,
                            packed=small(shape, np.dtype(leaf.dtype)))
            if shards and not defer:
                host_bytes += data.nbytes  # leaf_record's copy
            if defer and shards:
                pending.append((arr, None))
        arrays.append(arr)

    if defer:
        return Snapshot(records, arrays, metadata, unstaged=pending)
    # Every small transfer was started above; the large ones start now, in one
    # batch, and are left in flight for the writer (``Snapshot.settle``).
    copying = _host_copies.start(in_flight, pending)
    for _, pieces in pending:
        host_bytes += sum(data.nbytes for _, data in pieces
                          if next(iter(data.devices())).platform != "cpu")
    for _, pieces in copying:
        host_bytes += sum(data.nbytes for _, data in pieces)
    for arr, pieces in pending:
        arr.shards = [Shard(index, np.asarray(data)) for index, data in pieces]
    return Snapshot(records, arrays, metadata, host_bytes=host_bytes, copying=copying)
