"""Checks a decoded manifest before any reader uses it.

A manifest may come from someone else (a downloaded checkpoint, a shared
directory), so every field a reader touches is checked here, once, in
``_format/manifest.unpack_manifest``: restore, metadata, verify, inspect and the CLI
then index it without further checks, and ``verify`` passes exactly what
``restore`` can read. Every problem is a ``CorruptCheckpointError`` naming
the checkpoint and the field. Unknown extra keys are ignored (forward
compatibility within a version).

The bounds below are far above what a save writes; they exist so that a few
hostile bytes cannot make a reader allocate or loop without limit:

- the manifest file is at most ``MAX_MANIFEST_BYTES`` (256 MiB; about 3.5
  million leaves), read from a regular file only;

- a leaf declares at most ``MAX_LEAF_BYTES`` (16 TiB) and ``MAX_RANK`` axes;
- an array leaf has at most ``MAX_FILES`` (65,536) shard files of at most
  ``MAX_CHUNKS`` inner chunks (a writer makes one file per shard of the
  sharding and ~4 MiB inner chunks);
- the packed array is at most one chunk (``MAX_PACKED_CHUNK``) larger than
  its leaves, which may not overlap, so reading it costs what its leaves do;
- ``shared`` (version 4) names at most ``MAX_SHARED`` files, each one its
  own leaves have, each referencing ``<name>-<N>/d-<hex>/<file>`` (never a
  path of its own: no ``..``, no leading ``/``);
- key paths are at most ``MAX_DEPTH`` tokens, user metadata at most
  ``MAX_NESTING`` containers deep (deeper ones break ``json`` and ``rich``),
  big integers at most ``MAX_BIGINT_DIGITS`` digits (Python's own limit).

Cost: about 5 us per leaf on a loaded 2-core machine (10,000 leaves in ~50
ms; msgpack's decode of the same manifest ~35 ms, the whole restore 250-430 ms).

It stays one module of about 400 lines because it is one pass over one
manifest: every check shares the ``_Bad`` error and the per-manifest state
(packed ranges, key paths seen), and the bounds above are meant to be read
beside the checks that enforce them.
"""

from __future__ import annotations

import math
import re
import reprlib
from typing import Any

import numpy as np

# _format/manifest imports this module first, so its names are read at call time only.
from . import manifest as _format, names as _names
from ..errors import CorruptCheckpointError

# Read at most this much of a _CHECKPOINT (a save of 2000 leaves writes ~150 KiB,
# of a million ~70 MiB): a larger file, or /dev/zero linked in its place, is refused.
MAX_MANIFEST_BYTES = 256 << 20
MAX_LEAF_BYTES = 1 << 44
MAX_RANK = 64  # NumPy's own limit
MAX_FILES = 1 << 16
MAX_CHUNKS = 1 << 20
MAX_PACKED_CHUNK = 64 << 20
MAX_DEPTH = 256
MAX_NESTING = 100
MAX_BIGINT_DIGITS = 4300
MAX_INT = 1 << 62
MAX_SHARED = 1 << 22

KINDS = frozenset({"array", "jax", "scalar", "key", "py"})
_TOKEN_KINDS = frozenset({"k", "a", "i", "f"})
_HEX32 = re.compile(r"[0-9a-f]{32}")
_BIGINT = re.compile(r"-?[0-9]{1,%d}" % MAX_BIGINT_DIGITS)
# A file of a checkpoint's data, and what "shared" may reference: that file in
# another checkpoint of the manager's directory (relative to the directory).
_FILE = r"(?:a/[0-9]{1,12}/c(?:/[0-9]{1,12}){1,%d}|packed/c/[0-9]{1,12})" % (MAX_RANK + 1)
_SHARED_FILE = re.compile(_FILE)
_SHARED_SOURCE = re.compile(r"[^/\\\x00]{1,255}-[0-9]{1,20}/d-[0-9a-f]{1,64}/" + _FILE)

_itemsizes: dict[str, int] = {}


class _Bad(Exception):
    """A problem at ``field``; turned into CorruptCheckpointError by ``check``."""

    def __init__(self, field: str, expected: str, got: Any = None, show: bool = True):
        self.field, self.expected, self.got, self.show = field, expected, got, show


def _is_int(x: Any) -> bool:
    return type(x) is int


def _nonneg(x: Any, limit: int = MAX_INT) -> bool:
    return type(x) is int and 0 <= x <= limit


def _itemsize(name: Any) -> int | None:
    """The itemsize of a dtype name a save can write, or None (object, str,
    void, structured, non-native or unknown dtypes)."""
    if type(name) is not str:
        return None
    found = _itemsizes.get(name)
    if found is not None:
        return found
    try:
        dtype = _format.dtype_from_name(name)
    except Exception:  # NumPy raises TypeError, ValueError and others for bad names
        return None
    ok = (dtype.kind in "biufcmM" or (dtype.kind == "V" and _is_ml_dtype(dtype)))
    if not ok or dtype.fields is not None or dtype.subdtype is not None or not dtype.isnative \
            or dtype.itemsize <= 0 or _format.dtype_name(dtype) != name:
        return None
    if len(_itemsizes) < 1024:
        _itemsizes[name] = dtype.itemsize
    return dtype.itemsize


def _is_ml_dtype(dtype: np.dtype) -> bool:
    import ml_dtypes

    return getattr(ml_dtypes, dtype.name, None) is not None


_impl_shapes: dict[str, tuple[int, ...]] | None = None


def _key_data_shape(impl: Any) -> tuple[int, ...] | None:
    """The trailing key-data shape of a PRNG implementation name, or None."""
    global _impl_shapes
    if _impl_shapes is None:
        shapes = {"threefry2x32": (2,), "rbg": (4,), "unsafe_rbg": (4,)}
        try:  # implementations registered with jax (its own and users')
            from jax._src import prng

            shapes.update({name: tuple(p.key_shape) for name, p in prng.prngs.items()})
        except Exception:  # a jax without this private table: the built-in ones
            pass
        _impl_shapes = shapes
    return _impl_shapes.get(impl) if type(impl) is str else None


def _shape(value: Any, field: str) -> list:
    if type(value) is not list or len(value) > MAX_RANK:
        raise _Bad(field, f"a list of at most {MAX_RANK} non-negative ints", value)
    for n in value:
        if type(n) is not int or not 0 <= n <= MAX_INT:
            raise _Bad(field, f"a list of at most {MAX_RANK} non-negative ints", value)
    return value


_PY_TYPES = {"none": type(None), "bool": bool, "int": int, "float": float, "str": str,
             "bytes": bytes}


def _check_py(value: Any, field: str) -> None:
    if type(value) is not list or len(value) != 2 or type(value[0]) is not str:
        raise _Bad(field, "a [tag, value] pair")
    tag, v = value
    t = type(v)
    want = _PY_TYPES.get(tag)
    if want is not None:
        ok = t is want
    elif tag == "bigint":
        ok = t is str and _BIGINT.fullmatch(v) is not None
    elif tag == "complex":
        ok = t is list and len(v) == 2 and all(type(x) in (float, int) for x in v)
    else:
        ok = None
    if ok is None:
        raise _Bad(field, "a known tag (none, bool, int, bigint, float, complex, str, bytes)",
                   tag)
    if not ok:
        raise _Bad(field, f"a value of the {tag!r} tag's type", v)


def _check_where(leaf: dict, shape: list, itemsize: int, nbytes: int, state: dict) -> None:
    where = leaf.get("where")
    if type(where) is not list or not where:
        raise _Bad("where", "a list")
    tag = where[0]
    if tag == _format.WHERE_EMPTY:
        if len(where) != 1 or nbytes:
            raise _Bad("where", f'["empty"] only for a zero-size shape (shape is '
                       f"{shape})", where)
        return
    if not nbytes:
        raise _Bad("where", '["packed", ...] or ["array", ...] only for a non-empty shape',
                   where)
    if tag == _format.WHERE_PACKED:
        if len(where) != 3 or not _nonneg(where[1]) or not _is_int(where[2]):
            raise _Bad("where", '["packed", offset, nbytes]', where)
        _, off, size = where
        if size != nbytes:
            raise _Bad("where", f"{nbytes} packed bytes (shape {shape}, itemsize "
                       f"{itemsize})", size)
        if off % _format.PACK_ALIGN or off < state["packed_end"]:
            raise _Bad("where", f"an offset that is a multiple of {_format.PACK_ALIGN} "
                       "past the previous packed leaf", off)
        state["packed_end"] = off + size
        return
    if tag == _format.WHERE_ARRAY:
        if len(where) != 4:
            raise _Bad("where", '["array", name, chunk, inner]', where)
        _, name, outer, inner = where
        # Joined onto the checkpoint path: a plain decimal name, never a path.
        if type(name) is not str or not _names.is_array(name):
            raise _Bad("where", "an array name of decimal digits", name)
        if name in state["names"]:
            raise _Bad("where", "an array name no other leaf uses", name)
        state["names"].add(name)
        stored = [*shape, itemsize]
        state["grids"][name] = [-(-n // o) if type(o) is int and o > 0 else 0
                                for n, o in zip(stored, outer)] if type(outer) is list else []
        for what, chunk in (("chunk", outer), ("inner chunk", inner)):
            if type(chunk) is not list or len(chunk) != len(stored) or not all(
                    type(n) is int and 0 < n <= MAX_INT for n in chunk) or chunk[-1] != itemsize:
                raise _Bad("where", f"a {what} shape of {len(stored)} positive ints "
                           f"ending in the itemsize {itemsize}", chunk)
        files = inner_count = 1
        for n, o, i in zip(stored, outer, inner):
            if o % i:
                raise _Bad("where", "inner chunks that divide the chunk", where)
            files *= -(-n // o)
            inner_count *= o // i
        if files > MAX_FILES or inner_count > MAX_CHUNKS:
            raise _Bad("where", f"at most {MAX_FILES} chunk files of at most "
                       f"{MAX_CHUNKS} inner chunks", where)
        return
    raise _Bad("where", 'a kind of "empty", "packed" or "array"', tag)


def _check_digests(value: Any, field: str, shape: list, itemsize: int) -> None:
    if type(value) is not list:
        raise _Bad(field, "a list of [index, xxh3 hex digest] pairs")
    extents = [*shape, itemsize]
    rank = len(shape)
    # Field names are built only for an error: this runs for every leaf (issue 17).
    for i, item in enumerate(value):
        if type(item) is not list or len(item) != 2 or type(item[1]) is not str \
                or _HEX32.fullmatch(item[1]) is None or type(item[0]) is not list:
            raise _Bad(f"{field}[{i}]", "[index, 32-char lowercase hex digest]")
        index = item[0]
        if len(index) != rank and len(index) != rank + 1:
            raise _Bad(f"{field}[{i}]", f"an index of one [start, stop] per axis of shape "
                       f"{shape}")
        for pair, n in zip(index, extents):
            if type(pair) is not list or len(pair) != 2 or not (
                    type(pair[0]) is int and type(pair[1]) is int
                    and 0 <= pair[0] <= pair[1] <= n):
                raise _Bad(f"{field}[{i}]", f"[start, stop] pairs with 0 <= start <= stop <= "
                           f"extent (shape {shape})", pair)


def _check_path(path: Any, field: str) -> tuple:
    if type(path) is not list or len(path) > MAX_DEPTH:
        raise _Bad(field, f"a list of at most {MAX_DEPTH} [kind, key] tokens")
    for token in path:
        if type(token) is list and len(token) == 2:
            kind, key = token
            t = type(key)
            if t is str:
                if kind == "k" or kind == "a":
                    continue
            elif t is int and (kind == "k" or ((kind == "i" or kind == "f") and key >= 0)):
                continue
        raise _Bad(field, '[kind, key] tokens: ["k", str or int], ["a", str], ["i" or "f", '
                   "int >= 0]", token)
    return tuple(map(tuple, path))


def _check_nesting(value: Any, field: str) -> None:
    """Bounded depth, walked without recursion."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise _Bad(field, f"at most {MAX_NESTING} nested containers", show=False)
        if type(node) is dict:
            stack.extend((v, depth + 1) for v in node.values())
        elif type(node) is list:
            stack.extend((v, depth + 1) for v in node)


def _check_leaf(leaf: Any, state: dict) -> tuple:
    """Checks one leaf record; fields in errors are relative to the leaf ("" is the leaf)."""
    if type(leaf) is not dict:
        raise _Bad("", "a dict")
    path = _check_path(leaf.get("path"), "path")
    kind = leaf.get("kind")
    if type(kind) is not str or kind not in KINDS:
        raise _Bad("kind", "one of " + ", ".join(sorted(KINDS)), kind)
    if kind == "py":
        _check_py(leaf.get("value"), "value")
        return path
    itemsize = _itemsize(leaf.get("dtype"))
    if itemsize is None:
        raise _Bad("dtype", "a numeric, bool or ml_dtypes dtype name", leaf.get("dtype"))
    shape = _shape(leaf.get("shape"), "shape")
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_LEAF_BYTES:
        raise _Bad("shape", f"at most {MAX_LEAF_BYTES} bytes", shape)
    if kind == "key":
        if leaf.get("dtype") != "uint32":  # jax's key data, whatever the implementation
            raise _Bad("dtype", "uint32 key data", leaf.get("dtype"))
        tail = _key_data_shape(leaf.get("impl"))
        if tail is None:
            raise _Bad("impl", "a PRNG implementation known to jax", leaf.get("impl"))
        key_shape = _shape(leaf.get("key_shape"), "key_shape")
        if tuple(shape) != (*key_shape, *tail):
            raise _Bad("key_shape", f"the key-data shape {shape} without its "
                       f"trailing {list(tail)}", key_shape)
    elif kind == "scalar" and shape:
        raise _Bad("shape", "[] for a NumPy scalar", shape)
    _check_where(leaf, shape, itemsize, nbytes, state)
    if "xxh3" in leaf:
        _check_digests(leaf["xxh3"], "xxh3", shape, itemsize)
    return path


def _check_top(manifest: dict, state: dict) -> None:
    if type(manifest.get("version")) is not int:  # True and 1.0 compare equal to 1
        raise _Bad("version", "an int", manifest.get("version"))
    created = manifest.get("created")
    if type(created) not in (float, int):
        raise _Bad("created", "a number (seconds since the epoch)", created)
    meta = manifest.get("metadata")
    if meta is not None:
        if type(meta) is not dict:
            raise _Bad("metadata", "a dict or nil", meta)
        _check_nesting(meta, "metadata")
    if "metrics" in manifest:  # a dict of names to numbers (``_directory/best``)
        metrics = manifest["metrics"]
        if (type(metrics) is not dict or len(metrics) > 256
                or any(type(k) is not str or len(k) > 256 or type(v) not in (float, int)
                       for k, v in metrics.items())):
            raise _Bad("metrics", "a dict of at most 256 names to numbers", metrics)
    if "data" in manifest:
        data = manifest["data"]
        # Joined onto the checkpoint path: never a path of its own.
        if type(data) is not str or not _names.is_data(data):
            raise _Bad("data", 'a data prefix "d-<hex>"', data)
    for name in ("packed_nbytes", "packed_chunk"):
        if not _nonneg(manifest.get(name)):
            raise _Bad(name, "a non-negative int", manifest.get(name))
    if "packed_shard" in manifest and not _nonneg(manifest["packed_shard"]):
        raise _Bad("packed_shard", "a non-negative int", manifest["packed_shard"])
    if type(manifest.get("leaves")) is not list:
        raise _Bad("leaves", "a list of leaf records", manifest.get("leaves"))


def _check_packed(manifest: dict, end: int) -> None:
    total, chunk = manifest["packed_nbytes"], manifest["packed_chunk"]
    shard = manifest.get("packed_shard", total)
    inline = manifest.get("packed_inline")
    if inline is not None and (type(inline) is not bytes or len(inline) != total):
        raise _Bad("packed_inline", f"{total} bytes (packed_nbytes)", show=False)
    if not end:
        if total or (inline is not None and len(inline)):
            raise _Bad("packed_nbytes", "0 when no leaf is packed", total)
        return
    if not 0 < chunk <= MAX_PACKED_CHUNK or total % chunk or not 0 < shard <= total \
            or shard % chunk:
        raise _Bad("packed_chunk", f"a chunk size of at most {MAX_PACKED_CHUNK} that divides "
                   f"packed_shard ({shard}) and packed_nbytes ({total})", chunk)
    if not end <= total < end + _format.PACK_ALIGN + chunk:
        raise _Bad("packed_nbytes", f"the packed leaves' {end} bytes, rounded up to a chunk",
                   total)


def _check_shared(manifest: dict, state: dict) -> None:
    """Each key a file this manifest's leaves have, each value such a file in
    another checkpoint of the directory (see ``_format/manifest``)."""
    shared = manifest["shared"]
    if type(shared) is not dict or len(shared) > MAX_SHARED:
        raise _Bad("shared", f"a map of at most {MAX_SHARED} file -> key entries", show=False)
    total, shard = manifest["packed_nbytes"], manifest.get("packed_shard") or 0
    packed_files = -(-total // shard) if shard and "packed_inline" not in manifest else 0
    for rel, source in shared.items():
        if type(rel) is not str or _SHARED_FILE.fullmatch(rel) is None:
            raise _Bad("shared", 'file names "a/<j>/c/<i>/..." or "packed/c/<i>"', rel)
        parts = rel.split("/")
        if parts[0] == _format.PACKED:
            ok = int(parts[2]) < packed_files
        else:
            grid = state["grids"].get(parts[1])
            cell = [int(i) for i in parts[3:]]
            ok = grid is not None and len(cell) == len(grid) and all(
                i < n for i, n in zip(cell, grid))
        if not ok:
            raise _Bad("shared", "files of this checkpoint's own leaves", rel)
        if type(source) is not str or _SHARED_SOURCE.fullmatch(source) is None \
                or source.split("/")[2] != parts[0]:
            raise _Bad(f"shared[{rel!r}]", 'a key "<name>-<N>/d-<hex>/" and a file of the '
                       "same kind", source)


def check(manifest: Any, where: str) -> None:
    """Raises ``CorruptCheckpointError`` naming ``where`` and the field at fault."""
    from .. import _tree

    state: dict = {"packed_end": 0, "names": set(), "grids": {}}
    field = _format.MANIFEST
    try:
        if type(manifest) is not dict:
            raise _Bad("", "a map", type(manifest).__name__)
        _check_top(manifest, state)
        paths = set()
        interior: dict[tuple, set] = {}
        for i, leaf in enumerate(manifest["leaves"]):
            try:
                path = _check_leaf(leaf, state)
            except _Bad as bad:
                if type(leaf) is dict and type(leaf.get("path")) is list and bad.field != "path":
                    try:  # name the key path too, where it is readable
                        bad.field = (f"leaves[{i}].{bad.field} (key path "
                                     f"{_tree.path_str(_check_path(leaf['path'], 'path'))})")
                    except _Bad:
                        bad.field = f"leaves[{i}].{bad.field}"
                else:
                    bad.field = f"leaves[{i}]" + (f".{bad.field}" if bad.field else "")
                raise
            if path in paths:
                raise _Bad(f"leaves[{i}].path", "a key path no other leaf has",
                           _tree.path_str(path))
            paths.add(path)
            # Each node's children; a node's first child registers it in its parent.
            while path:
                node = path[:-1]
                children = interior.get(node)
                if children is not None:
                    children.add(path[-1])
                    break
                interior[node] = {path[-1]}
                path = node
        _check_packed(manifest, state["packed_end"])
        if "shared" in manifest:
            _check_shared(manifest, state)
        _check_tree(paths, interior)
    except _Bad as bad:
        got = f", got {_short(bad.got)}" if bad.show else ""
        at = f" field {bad.field}" if bad.field else ""
        raise CorruptCheckpointError(
            f"{where}: {field}{at}: expected {bad.expected}{got}; the manifest is damaged "
            "or was not written by jaxckpt.") from None


def _check_tree(paths: set, interior: dict) -> None:
    """Leaves are not inside other leaves; list indices of a node are 0..n-1."""
    from .. import _tree

    for node, children in interior.items():
        if node in paths:
            raise _Bad("leaves", "no leaf inside another leaf", _tree.path_str(node))
        if all(kind == _tree.INDEX for kind, _ in children):
            keys = sorted(key for _, key in children)
            if keys[-1] != len(keys) - 1:
                raise _Bad("leaves", f"list indices 0..{len(keys) - 1} under "
                           f"{_tree.path_str(node)}", keys[-1])


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist = 3, 80, 80, 8


def _short(value: Any) -> str:
    """A bounded repr: hostile values may be huge or deeply nested."""
    return _REPR.repr(value)
