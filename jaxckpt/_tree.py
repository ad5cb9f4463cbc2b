"""Pytree <-> flat list of (key path, leaf), leaf validation, raw rebuild.

Key paths are stored as lists of ``[kind, key]`` tokens so that a restore can
rebuild the saved structure without the user's classes. Saved and target
leaves are matched by ``path_str`` (``jax.tree_util.keystr`` style), so a list
saved may be restored into a tuple target and vice versa.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_dtypes
import numpy as np

from .errors import CorruptCheckpointError

# Token kinds: dict key, attribute, sequence index, flattened index.
DICT, ATTR, INDEX, FLAT = "k", "a", "i", "f"

PY_TYPES = (bool, int, float, complex, str, bytes, type(None))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One leaf of a flattened tree with its key path."""

    path: tuple[tuple[str, Any], ...]
    leaf: Any

    @property
    def path_str(self) -> str:
        return path_str(self.path)


def _token(key: Any) -> tuple[str, Any]:
    tu = jax.tree_util
    if isinstance(key, tu.DictKey):
        k = key.key
        return (DICT, k if isinstance(k, (str, int)) and not isinstance(k, bool) else str(k))
    if isinstance(key, tu.GetAttrKey):
        return (ATTR, key.name)
    if isinstance(key, tu.SequenceKey):
        return (INDEX, key.idx)
    if isinstance(key, tu.FlattenedIndexKey):
        return (FLAT, key.key)
    return (DICT, str(key))


def path_str(path: tuple[tuple[str, Any], ...] | list) -> str:
    """Render a token path as ``['a'].b[0]``; ``<root>`` for the empty path."""
    parts = []
    for kind, key in path:
        if kind == ATTR:
            parts.append(f".{key}")
        elif kind in (INDEX, FLAT) or isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            parts.append(f"[{key!r}]")
    return "".join(parts) or "<root>"


def is_none(x: Any) -> bool:
    return x is None


def flatten(tree: Any) -> tuple[list[Entry], Any]:
    """Flattens ``tree`` keeping ``None`` as a leaf; returns entries and treedef."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    entries = [Entry(tuple(_token(k) for k in kp), leaf) for kp, leaf in with_path]
    return entries, treedef


def is_prng_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    # Key dtypes are JAX extended dtypes, never NumPy's: skip the slow check.
    if dtype is None or isinstance(dtype, np.dtype):
        return False
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def unencodable(text: str) -> str | None:
    """Why ``text`` cannot be stored as UTF-8 (a lone surrogate), or None if it can."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"it contains the lone surrogate {text[e.start]!r} at index {e.start}"
    return None


def check_path(entry: Entry) -> None:
    """Raises ``ValueError`` if a key of the leaf's path cannot be stored as UTF-8."""
    for _, key in entry.path:
        why = unencodable(key) if isinstance(key, str) else None
        if why is not None:
            raise ValueError(
                f"key {key!r} in key path {entry.path_str} is not valid Unicode ({why}), so "
                "it cannot be stored as UTF-8; use a key without lone surrogates")


def check_leaf(entry: Entry) -> None:
    """Raises ``TypeError`` naming the key path if the leaf cannot be saved
    (``ValueError`` for a ``str`` that is not valid Unicode)."""
    leaf = entry.leaf
    if isinstance(leaf, str):
        why = unencodable(leaf)
        if why is not None:
            raise ValueError(
                f"str leaf at key path {entry.path_str} is not valid Unicode ({why}), so it "
                "cannot be stored as UTF-8; save it as bytes instead, e.g. "
                "value.encode('utf-8', 'surrogatepass')")
        return
    if isinstance(leaf, jax.Array):
        if leaf.is_deleted():
            raise TypeError(
                f"jax.Array at key path {entry.path_str} has been deleted or donated; "
                "save it before passing it to a function that donates it."
            )
        return
    if isinstance(leaf, np.ma.MaskedArray):
        raise TypeError(
            f"masked array at key path {entry.path_str}: its mask would be lost; save the "
            "data and the mask as two leaves (np.ma.getdata(x), np.ma.getmaskarray(x)), or "
            "fill it first (x.filled())."
        )
    if isinstance(leaf, (np.ndarray, np.generic)):
        if leaf.dtype.kind in "OUS" or leaf.dtype.fields is not None or (
            leaf.dtype.kind == "V" and not hasattr(ml_dtypes, leaf.dtype.name)
        ):
            raise TypeError(
                f"NumPy leaf at key path {entry.path_str} has dtype {leaf.dtype}, which "
                "cannot be checkpointed; use a numeric, bool or JAX dtype (strings as Python str)."
            )
        return
    if isinstance(leaf, PY_TYPES):
        return
    raise TypeError(
        f"Unsupported leaf of type {type(leaf).__module__}.{type(leaf).__qualname__} "
        f"at key path {entry.path_str}: leaves must be jax.Array, np.ndarray, NumPy "
        "scalars, or Python int/float/bool/complex/str/bytes/None. Register the class "
        "as a pytree node, or convert the value before saving."
    )


def unflatten_raw(paths: list[tuple[tuple[str, Any], ...]], values: list[Any]) -> Any:
    """Rebuilds nested dicts/lists from token paths (the ``target=None`` restore).

    Raises:
        CorruptCheckpointError: two leaves share a path, a leaf sits inside
            another, or a list's indices are not exactly 0..n-1 (the paths
            come from a manifest, which may be hostile: nothing is allocated
            from a declared index).
    """
    if len(paths) == 1 and not paths[0]:
        return values[0]
    root: dict = {}
    for path, value in zip(paths, values):
        if not path:
            raise _corrupt(path, "a leaf at the root beside other leaves")
        node = root
        for depth, token in enumerate(path[:-1]):
            node = node.setdefault(token, {})
            if type(node) is not dict or _LEAF in node:
                raise _corrupt(path[: depth + 1], "a leaf with other leaves inside it")
        if path[-1] in node:
            raise _corrupt(path, "two leaves at one key path, or a leaf with leaves inside it")
        node[path[-1]] = {_LEAF: value}
    return _materialise(root, ())


# Marks a leaf's value in the nodes unflatten_raw builds (leaf values may be dicts).
_LEAF = object()


def _corrupt(path: Any, what: str) -> Exception:
    return CorruptCheckpointError(f"key path {path_str(path)}: {what}; the manifest is damaged")


def _materialise(node: dict, at: tuple) -> Any:
    if _LEAF in node:
        return node[_LEAF]
    if not node:  # no leaves at all
        return {}
    if all(kind == INDEX for kind, _ in node):
        keys = sorted(key for _, key in node)
        if keys != list(range(len(keys))):
            raise _corrupt(at, f"list indices {keys[:5]}... are not 0..{len(keys) - 1}"
                           if len(keys) > 5 else f"list indices {keys} are not 0..{len(keys) - 1}")
        return [_materialise(node[(INDEX, i)], at + ((INDEX, i),)) for i in range(len(keys))]
    return {str(key): _materialise(child, at + ((kind, key),))
            for (kind, key), child in node.items()}
