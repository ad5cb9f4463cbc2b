"""One restore plan per tree structure: a manager's steady state plans once.

Matching a target against a manifest (key paths rendered and looked up,
each pair's shapes, dtypes and kinds compared, each sharding's device
indices computed) costs some 15 us per leaf; a training job restores the
same structure into the same target shapes every time. ``Cache`` keeps the
outcome of a successful match keyed by what it depended on:

- the target: its treedef and, per leaf, its type, shape, dtype and
  sharding (shardings compared by equality, each distinct one once);
- the manifest: per saved leaf, the fields planning reads (key path, kind,
  dtype, shape, key shape, PRNG implementation, a Python leaf's value),
  compared in full on every lookup.

Only planning is cached: every restore still reads and digest-checks every
byte against its own manifest (offsets, digests and files are never taken
from the cache), and the cache holds no array data and no target leaves.
Key paths are assumed to follow from the treedef, as they do for every
pytree node type registered with JAX's key-path API.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import jax
import numpy as np

_JAX, _NUMPY, _NPSCALAR, _PYTHON = "jax", "numpy", "npscalar", "python"
_PY = (bool, int, float, complex, str, bytes, type(None))
_kinds: dict[type, str | None] = {}


def _kind(t: type) -> str | None:
    found = _kinds.get(t, False)
    if found is False:
        if issubclass(t, (jax.Array, jax.ShapeDtypeStruct)):
            found = _JAX
        elif issubclass(t, np.ndarray):
            found = _NUMPY
        elif issubclass(t, np.generic):
            found = _NPSCALAR
        elif issubclass(t, _PY):
            found = _PYTHON
        else:
            found = None  # unsupported: planning reports it, uncached
        if len(_kinds) < 1024:
            _kinds[t] = found
    return found


def target_key(treedef: Any, leaves: Sequence[Any], partial: bool) -> tuple | None:
    """What a plan for ``leaves`` (flattened with ``treedef``) depends on, or
    None where a leaf is not one planning supports."""
    shardings: list[Any] = []
    slots: dict[int, int] = {}
    sig = []
    for t in leaves:
        tp = type(t)
        kind = _kind(tp)
        if kind is _JAX:
            s = t.sharding
            slot = slots.get(id(s))
            if slot is None:
                slot = slots[id(s)] = len(shardings)
                shardings.append(s)
            sig.append((tp, t.shape, t.dtype, slot))
        elif kind is _NUMPY:
            sig.append((tp, t.shape, t.dtype))
        elif kind is _NPSCALAR:
            sig.append((tp, t.dtype))
        elif kind is _PYTHON:
            sig.append(tp)
        else:
            return None
    try:
        key = (treedef, partial, tuple(sig), tuple(shardings))
        hash(key)
    except TypeError:  # an unhashable sharding or dtype: plan every time
        return None
    return key


def leaf_struct(rec: dict) -> tuple:
    """The fields of a saved leaf record that planning reads."""
    get = rec.get
    return (rec["path"], rec["kind"], get("dtype"), get("shape"), get("key_shape"),
            get("impl"), get("value"))


class Cache:
    """Plans by target key, each valid for manifests of one structure."""

    def __init__(self, size: int = 8):
        self._size = size
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[list[tuple], Any]] = {}

    def get(self, key: tuple | None, records: Sequence[dict]) -> Any:
        """The plan stored for ``key``, if ``records`` have the structure it was made for."""
        if key is None:
            return None
        found = self._entries.get(key)
        if found is None:
            return None
        structs, plan = found
        if len(structs) != len(records):
            return None
        for want, rec in zip(structs, records):
            if leaf_struct(rec) != want:
                return None
        return plan

    def put(self, key: tuple | None, records: Sequence[dict], plan: Any) -> None:
        if key is None:
            return
        structs = [leaf_struct(rec) for rec in records]
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (structs, plan)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
