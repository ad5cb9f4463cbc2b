"""Restoring a checkpoint: raw, into a target's structure, or a subset of it.

A target decides what each leaf becomes: a ``jax.Array`` or
``jax.ShapeDtypeStruct`` leaf gives a ``jax.Array`` with its sharding (only
the slices this process's devices hold are read), an ``np.ndarray`` gives an
``np.ndarray``, a Python scalar gives a Python scalar. Dtypes are cast to the
target's.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from . import batch as _batch, plan as _plan, reader as _reader, stream as _stream
from .. import _tree
from .._format import manifest as _format
from ..errors import StructureMismatchError

_SINGLE_DEVICE = jax.sharding.SingleDeviceSharding


def _raw_value(leaf: dict, data: np.ndarray | None) -> Any:
    kind = leaf["kind"]
    if kind == "py":
        return _format.decode_py(leaf["value"])
    if kind == "key":
        return jax.random.wrap_key_data(data, impl=leaf["impl"])
    if kind == "scalar":
        return data[()]
    return data


def restore_raw(reader: _reader.Reader, max_host_bytes: int | None = None) -> Any:
    arrays = [leaf for leaf in reader.leaves if leaf["kind"] != "py"]
    packed = [leaf for leaf in arrays if _format.where_kind(leaf) == _format.WHERE_PACKED]
    finish = reader.read_packed(packed)
    others = [leaf for leaf in arrays if _format.where_kind(leaf) != _format.WHERE_PACKED]
    # Under a budget, large leaves stream in slabs after the others (see _stream).
    streamed = [] if max_host_bytes is None else [leaf for leaf in others if _streams(leaf)]
    if streamed:
        others = [leaf for leaf in others if not _streams(leaf)]
    data = reader.read_arrays([(leaf, [()]) for leaf in others])
    by_id = {id(leaf): pieces[0] for leaf, pieces in zip(others, data)}
    by_id.update(zip(map(id, packed), finish()))
    if streamed:
        jobs = [_stream.Job(leaf, tuple(slice(0, n) for n in leaf["shape"]),
                            _format.dtype_from_name(leaf["dtype"]), []) for leaf in streamed]
        _stream.run(reader, jobs, max_host_bytes)
        by_id.update((id(job.leaf), job.result) for job in jobs)
    values = [_raw_value(leaf, by_id.get(id(leaf))) for leaf in reader.leaves]
    return _tree.unflatten_raw(_reader.leaf_paths(reader.leaves), values)


def _streams(leaf: dict) -> bool:
    """Whether a budgeted restore streams the leaf (its own array files)."""
    return _format.where_kind(leaf) == _format.WHERE_ARRAY


def _saved_shape(leaf: dict) -> tuple[int, ...] | None:
    if leaf["kind"] == "py":
        return None
    if leaf["kind"] == "key":
        return tuple(leaf["key_shape"])
    return tuple(leaf["shape"])


def _describe(leaf: dict) -> str:
    if leaf["kind"] == "py":
        return f"a Python {leaf['value'][0]}"
    if leaf["kind"] == "key":
        return f"PRNG keys {tuple(leaf['key_shape'])} ({leaf['impl']})"
    return f"{leaf['dtype']}{tuple(leaf['shape'])}"


class _Plan:
    """How one target leaf is produced from one saved leaf."""

    def __init__(self, entry: _tree.Entry, leaf: dict):
        self.entry, self.leaf = entry, leaf
        t = entry.leaf
        self.sharding = None
        self.dtype = None
        self.out = "python"
        if isinstance(t, (jax.Array, jax.ShapeDtypeStruct)):
            self.out = "jax"
            self.dtype = t.dtype
            sharding = getattr(t, "sharding", None)
            if sharding is None:
                sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            self.sharding = sharding
            self.shape = tuple(t.shape)
        elif isinstance(t, (np.ndarray, np.generic)):
            self.out = "numpy" if isinstance(t, np.ndarray) else "npscalar"
            self.dtype = t.dtype
            self.shape = tuple(np.shape(t))
        elif t is None or isinstance(t, _tree.PY_TYPES):
            self.shape = ()
        else:
            raise TypeError(
                f"Unsupported target leaf of type {type(t).__qualname__} at key path "
                f"{entry.path_str}: use jax.Array, jax.ShapeDtypeStruct, np.ndarray or a "
                "Python scalar."
            )

    def problem(self) -> str | None:
        leaf, t = self.leaf, self.entry.leaf
        saved = _saved_shape(leaf)
        want_key = self.dtype is not None and _tree.is_prng_key(self)
        if (leaf["kind"] == "key") != want_key and self.out != "python":
            return f"{_describe(leaf)} on disk, {self._target_desc()} in the target"
        if self.out == "python":
            if t is None:
                return None if leaf["kind"] == "py" and leaf["value"][0] == "none" else (
                    f"{_describe(leaf)} on disk, None in the target")
            if leaf["kind"] == "py":
                return self._lossy(_format.decode_py(leaf["value"]))
            if saved != () or leaf["kind"] == "key":
                return f"{_describe(leaf)} on disk, a Python {type(t).__name__} in the target"
            return None
        if saved is None:
            numeric = leaf["value"][0] in ("bool", "int", "float", "complex")
            if numeric and self.shape == () and not want_key:
                return None
            return f"{_describe(leaf)} on disk, {self._target_desc()} in the target"
        if saved != self.shape:
            return f"shape {self.shape} in the target, {saved} on disk"
        return None

    def _target_desc(self) -> str:
        return f"{self.dtype}{self.shape}" if self.dtype is not None else "a Python value"

    def requests(self) -> list[tuple]:
        """Indices (over the stored shape) this plan reads."""
        if self.leaf["kind"] == "py":
            return []
        if self.out == "jax" and self.leaf["kind"] != "key":
            if type(self.sharding) is _SINGLE_DEVICE:
                full = tuple(slice(0, n) for n in self.shape)
                key = tuple((0, n) for n in self.shape)
                self._index_of = {None: key}
                self._keys = [key]
                self._devices = list(self.sharding.device_set)
                self._aval = _batch.aval(self.shape, self.dtype, self.sharding)
                return [full]
            self._index_of = {}
            unique: dict[tuple, tuple] = {}
            for device, index in self.sharding.addressable_devices_indices_map(self.shape).items():
                norm = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, self.shape))
                key = tuple((s.start, s.stop) for s in norm)
                unique.setdefault(key, norm)
                self._index_of[device] = key
            self._keys = list(unique)
            self._devices = list(self._index_of)  # the sharding's addressable order
            self._aval = _batch.aval(self.shape, self.dtype, self.sharding)
            return list(unique.values())
        return [()]

    def build(self, pieces: list[np.ndarray]) -> Any:
        """The result, for every plan that is not ``batched``."""
        leaf = self.leaf
        if leaf["kind"] == "py":
            value = _format.decode_py(leaf["value"])
            if self.out == "python":
                return self._as_python(value)
            host = np.asarray(value, dtype=self.dtype)
            if self.out == "jax":
                return jax.device_put(host, self.sharding)
            return host if self.out == "numpy" else host[()]
        if self.out == "python":
            return self._as_python(pieces[0][()].item())
        if leaf["kind"] == "key":
            keys = jax.random.wrap_key_data(pieces[0], impl=leaf["impl"])
            return jax.device_put(keys, self.sharding) if self.out == "jax" else keys
        if self.out == "numpy":
            return pieces[0] if pieces[0].dtype == self.dtype else pieces[0].astype(self.dtype)
        if self.out == "npscalar":
            return pieces[0].astype(self.dtype)[()]
        raise AssertionError("jax.Array results are built by transfers() and assemble()")

    @property
    def batched(self) -> bool:
        """Whether the result is a ``jax.Array`` built by ``transfers``/``assemble``."""
        return self.out == "jax" and self.leaf["kind"] not in ("py", "key")

    def transfers(self, pieces: list[np.ndarray]) -> list[tuple[np.ndarray, Any]]:
        """(host data, device or sharding) for each piece of the result."""
        by_key = dict(zip(self._keys, pieces))
        single = type(self.sharding) is _SINGLE_DEVICE
        out = []
        for device, key in self._index_of.items():
            host = by_key[key]
            if host.dtype != self.dtype:
                host = host.astype(self.dtype)
            out.append((host, self.sharding if single else device))
        return out

    def put(self, pieces: list[np.ndarray]) -> jax.Array:
        """The result in one native transfer (see ``batch``)."""
        if len(pieces) == 1:
            host = pieces[0]
            shards = [host if host.dtype == self.dtype else host.astype(self.dtype)]
            shards *= len(self._devices)
        else:
            by_key = dict(zip(self._keys, pieces))
            shards = [by_key[key] for key in self._index_of.values()]
            shards = [h if h.dtype == self.dtype else h.astype(self.dtype) for h in shards]
        return _batch.put(self._aval, self.sharding, shards, self._devices)

    def assemble(self, arrays: list[jax.Array]) -> jax.Array:
        if type(self.sharding) is _SINGLE_DEVICE:
            return arrays[0]
        return jax.make_array_from_single_device_arrays(self.shape, self.sharding, list(arrays))

    def streams(self) -> bool:
        """Whether a budgeted restore streams this plan's reads (see ``_stream``)."""
        if not _streams(self.leaf) or self.leaf["kind"] == "key":
            return False
        if self.out == "jax":
            # Host memory kinds (pinned_host) hold the result on the host anyway.
            kind = getattr(self.sharding, "memory_kind", None)
            device = next(iter(self.sharding.device_set))
            return kind is None or kind == device.default_memory().kind
        return self.out == "numpy"

    def stream_jobs(self, requests: list[tuple]) -> list[_stream.Job]:
        """A job per region of ``requests()`` (its result), onto the devices that hold it."""
        if self.out == "numpy":
            self._jobs = [_stream.Job(self.leaf, tuple(slice(0, n) for n in self.shape),
                                      self.dtype, [])]
            return self._jobs
        single = type(self.sharding) is _SINGLE_DEVICE
        dests: dict[tuple, list] = {key: [] for key in self._keys}
        for device, key in self._index_of.items():
            dests[key].append(self.sharding if single else device)
        self._jobs = [_stream.Job(self.leaf, index, self.dtype, dests[key])
                      for key, index in zip(self._keys, requests)]
        return self._jobs

    def from_stream(self) -> Any:
        """The result, once ``_stream.run`` ran the jobs of ``stream_jobs``."""
        if self.out == "numpy":
            return self._jobs[0].result
        results = {key: iter(job.result) for key, job in zip(self._keys, self._jobs)}
        return self.assemble([next(results[key]) for key in self._index_of.values()])

    def _convert(self, value: Any) -> tuple[Any, bool]:
        """(value as the Python target's type, whether that is exact)."""
        t = self.entry.leaf
        if t is None or value is None:
            return value, True
        if isinstance(t, (bool, int, float, complex)) and isinstance(value, (bool, int, float, complex)):
            try:
                out = type(t)(value)
            except (TypeError, ValueError, OverflowError):  # complex -> int, nan -> int
                return value, False
            # int and bool targets must hold the value exactly (1.0 -> 1, never 1.5 -> 1);
            # float and complex ones take what a float can (int -> float, as NumPy does).
            return out, not isinstance(t, int) or out == value
        return value, True

    def _lossy(self, value: Any) -> str | None:
        """Why ``value`` cannot become the Python target's type, or None."""
        out, exact = self._convert(value)
        if exact:
            return None
        return (f"{type(value).__name__} {value!r} on disk, {type(self.entry.leaf).__name__} in "
                "the target (not exactly representable)")

    def _as_python(self, value: Any) -> Any:
        out, exact = self._convert(value)
        if not exact:
            raise StructureMismatchError(
                f"restore target does not match the checkpoint at key path "
                f"{self.entry.path_str}: {self._lossy(value)}")
        return out


# Plans of recent restores by tree structure (see plan.py): planning costs ~15 us per leaf.
_PLANS = _plan.Cache()


def _template(plan: _Plan, idx: list[tuple], pos: int) -> tuple[int, _Plan, list[tuple]]:
    """A plan to keep: without its manifest record or the target's leaf."""
    kept = _Plan.__new__(_Plan)
    kept.__dict__.update(plan.__dict__)
    kept.leaf = None
    kept.entry = _tree.Entry(plan.entry.path, None)
    return pos, kept, idx


def _bind(templates: list, leaves: list[dict], targets: list) -> list[tuple[_Plan, list]]:
    """The cached plans, each given this restore's record and target leaf."""
    out = []
    for (pos, kept, idx), t in zip(templates, targets):
        plan = _Plan.__new__(_Plan)
        plan.__dict__.update(kept.__dict__)
        plan.leaf = leaves[pos]
        if plan.out == "python":
            plan.entry = _tree.Entry(kept.entry.path, t)
        out.append((plan, idx))
    return out


def restore_target(reader: _reader.Reader, target: Any, partial: bool,
                   max_host_bytes: int | None = None) -> Any:
    targets, flat_def = jax.tree_util.tree_flatten(target, is_leaf=_tree.is_none)
    key = _plan.target_key(flat_def, targets, partial)
    templates = _PLANS.get(key, reader.leaves)
    if templates is not None:
        requests = _bind(templates, reader.leaves, targets)
        return _restore_planned(reader, requests, flat_def, max_host_bytes)
    entries, treedef = _tree.flatten(target)
    saved = {_tree.path_str(leaf["path"]): leaf for leaf in reader.leaves}
    problems: list[str] = []
    plans: list[_Plan] = []
    for entry in entries:
        leaf = saved.get(entry.path_str)
        if leaf is None:
            problems.append(f"{entry.path_str}: in the target, not on disk")
            continue
        plan = _Plan(entry, leaf)
        issue = plan.problem()
        if issue:
            problems.append(f"{entry.path_str}: {issue}")
        plans.append(plan)
    if not partial:
        wanted = {e.path_str for e in entries}
        problems += [f"{p}: on disk, not in the target" for p in saved if p not in wanted]
    if problems:
        raise StructureMismatchError(
            f"restore target does not match checkpoint {reader.path} at "
            f"{len(problems)} key path(s):\n  " + "\n  ".join(problems)
            + ("" if partial else "\n(pass partial=True to restore a subset of the saved leaves)")
        )
    requests = [(plan, plan.requests()) for plan in plans]
    if key is not None:
        position = {id(leaf): i for i, leaf in enumerate(reader.leaves)}
        _PLANS.put(key, reader.leaves, [_template(plan, idx, position[id(plan.leaf)])
                                        for plan, idx in requests])
    return _restore_planned(reader, requests, treedef, max_host_bytes)


def _restore_planned(reader: _reader.Reader, requests: list[tuple[_Plan, list]],
                     treedef: Any, max_host_bytes: int | None = None) -> Any:
    # Under a budget, large leaves stream after the others are read (see _stream).
    streamed = ([] if max_host_bytes is None else
                [(plan, idx) for plan, idx in requests if idx and plan.streams()])
    skip = {id(plan) for plan, _ in streamed}
    if streamed:
        requests = [(plan, [] if id(plan) in skip else idx) for plan, idx in requests]
    # Packed leaves (the many small ones) in one pass of their own; their
    # read starts before the large leaves' reads, and runs alongside them.
    packed_kind = [bool(idx) and _format.where_kind(plan.leaf) == _format.WHERE_PACKED
                   for plan, idx in requests]
    finish = reader.read_packed([plan.leaf for (plan, _), p in zip(requests, packed_kind) if p])
    reads = [(plan.leaf, idx) for (plan, idx), p in zip(requests, packed_kind) if idx and not p]
    data = iter(reader.read_arrays(reads))
    packed = iter(finish())
    values: list[Any] = []
    batch: list[tuple[int, _Plan, int]] = []
    hosts: list[np.ndarray] = []
    dests: list[Any] = []
    native, direct = _batch.native(), {}
    for (plan, idx), in_packed in zip(requests, packed_kind):
        if in_packed:
            full = next(packed)
            pieces = [full[i] if i else full for i in idx]
        else:
            pieces = next(data) if idx else []
        if skip and id(plan) in skip:
            values.append(None)
        elif native and plan.batched and plan._aval is not None \
                and _batch.direct(plan.dtype, direct):
            values.append(plan.put(pieces))
        elif plan.batched:
            # One device_put for every leaf: per-leaf calls cost ~0.1 ms each.
            pairs = plan.transfers(pieces)
            batch.append((len(values), plan, len(pairs)))
            hosts += [h for h, _ in pairs]
            dests += [d for _, d in pairs]
            values.append(None)
        else:
            values.append(plan.build(pieces))
    arrays = jax.device_put(hosts, dests) if hosts else []
    pos = 0
    for i, plan, n in batch:
        values[i] = plan.assemble(arrays[pos : pos + n])
        pos += n
    if streamed:
        _stream.run(reader, [job for plan, idx in streamed for job in plan.stream_jobs(idx)],
                    max_host_bytes)
        where = {id(plan): i for i, (plan, _) in enumerate(requests)}
        for plan, _ in streamed:
            values[where[id(plan)]] = plan.from_stream()
    return jax.tree_util.tree_unflatten(treedef, values)


def abstract(reader: _reader.Reader) -> Any:
    """The saved structure with ``jax.ShapeDtypeStruct`` for array leaves."""
    values = []
    for leaf in reader.leaves:
        kind = leaf["kind"]
        if kind == "py":
            values.append(_format.decode_py(leaf["value"]))
        elif kind == "key":
            data = jax.ShapeDtypeStruct(tuple(leaf["shape"]), np.uint32)
            values.append(jax.eval_shape(
                lambda d, impl=leaf["impl"]: jax.random.wrap_key_data(d, impl=impl), data))
        else:
            values.append(jax.ShapeDtypeStruct(tuple(leaf["shape"]),
                                               _format.dtype_from_name(leaf["dtype"])))
    return _tree.unflatten_raw(_reader.leaf_paths(reader.leaves), values)
