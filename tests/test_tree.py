"""jaxckpt._tree: key-path tokens, path strings, leaf checks, the raw rebuild."""

from __future__ import annotations

import collections
import random

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxckpt import CorruptCheckpointError, _tree
from jaxckpt._tree import ATTR, DICT, FLAT, INDEX, Entry

from strategies import quick, trees  # tests/ is on sys.path under pytest

Point = collections.namedtuple("Point", ["x", "y"])


def _raw(tree):
    """What a ``target=None`` restore gives for ``tree``: str keys, lists for sequences."""
    if isinstance(tree, dict):
        return {str(k): _raw(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_raw(v) for v in tree]
    return tree


def _same(a, b) -> bool:
    if isinstance(b, dict):
        return type(a) is dict and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, list):
        return type(a) is list and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(b, np.ndarray):
        return a is b
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------- properties


@quick
@given(trees)
def test_flatten_matches_jax_leaves_and_keystr(tree):
    entries, treedef = _tree.flatten(tree)
    with_path = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    assert len(entries) == len(with_path) == treedef.num_leaves
    for entry, (kp, leaf) in zip(entries, with_path):
        assert entry.leaf is leaf
        assert entry.path_str == (jax.tree_util.keystr(kp) or "<root>")


@quick
@given(trees)
def test_token_paths_are_distinct(tree):
    entries, _ = _tree.flatten(tree)
    paths = [e.path for e in entries]
    assert len(set(paths)) == len(paths)
    assert all(kind in (DICT, INDEX) for path in paths for kind, _ in path)


@quick
@given(trees, st.randoms(use_true_random=False))
def test_unflatten_raw_rebuilds_dicts_and_lists_in_any_order(tree, rnd: random.Random):
    entries, _ = _tree.flatten(tree)
    pairs = [(e.path, e.leaf) for e in entries]
    rnd.shuffle(pairs)  # the manifest's order is not the rebuild's
    out = _tree.unflatten_raw([p for p, _ in pairs], [v for _, v in pairs])
    assert _same(out, _raw(tree))


@quick
@given(trees)
def test_unflatten_raw_refuses_a_path_given_twice(tree):
    entries, _ = _tree.flatten(tree)
    paths = [e.path for e in entries]
    with pytest.raises(CorruptCheckpointError, match="damaged"):
        _tree.unflatten_raw(paths + paths[:1], [e.leaf for e in entries] + [0])


# ---------------------------------------------------------------- units


def test_tokens_of_each_key_kind():
    tu = jax.tree_util
    assert _tree._token(tu.DictKey("a")) == (DICT, "a")
    assert _tree._token(tu.DictKey(3)) == (DICT, 3)
    assert _tree._token(tu.DictKey(True)) == (DICT, "True")  # bool is not kept as an int
    assert _tree._token(tu.DictKey(1.5)) == (DICT, "1.5")
    assert _tree._token(tu.GetAttrKey("x")) == (ATTR, "x")
    assert _tree._token(tu.SequenceKey(2)) == (INDEX, 2)
    assert _tree._token(tu.FlattenedIndexKey(4)) == (FLAT, 4)


def test_path_str_renders_like_keystr():
    assert _tree.path_str(()) == "<root>"
    assert _tree.path_str([(DICT, "a"), (ATTR, "b"), (INDEX, 0), (DICT, 7), (FLAT, 2)]) == \
        "['a'].b[0][7][2]"


def test_flatten_keeps_none_and_names_namedtuple_fields():
    entries, treedef = _tree.flatten({"p": Point(1, None), "n": None})
    assert [(e.path_str, e.leaf) for e in entries] == [("['n']", None), ("['p'].x", 1),
                                                       ("['p'].y", None)]
    assert jax.tree_util.tree_unflatten(treedef, [e.leaf for e in entries]) == \
        {"p": Point(1, None), "n": None}


def test_unencodable_names_the_lone_surrogate():
    assert _tree.unencodable("plain") is None and _tree.unencodable("naïve ✓") is None
    assert "'\\udc80' at index 2" in _tree.unencodable("ab\udc80")


def test_check_path_and_check_leaf():
    _tree.check_path(Entry(((DICT, "fine"), (INDEX, 0)), 1))
    with pytest.raises(ValueError, match=r"key path \['\\udc80'\]"):
        _tree.check_path(Entry(((DICT, "\udc80"),), 1))
    for ok in (1, 1.5, 1j, "s", b"b", None, True, np.float32(1), np.zeros(2), jax.numpy.ones(2)):
        _tree.check_leaf(Entry(((DICT, "x"),), ok))
    for bad, match in [(np.array(["s"]), "dtype"), (np.ma.masked_array([1]), "mask"),
                       (object(), "Unsupported leaf"), ("\udc80", "not valid Unicode")]:
        with pytest.raises((TypeError, ValueError), match=match):
            _tree.check_leaf(Entry(((DICT, "x"),), bad))


def test_is_prng_key():
    assert _tree.is_prng_key(jax.random.key(0))
    assert not _tree.is_prng_key(jax.random.PRNGKey(0))  # raw uint32 key data
    assert not _tree.is_prng_key(np.zeros(2)) and not _tree.is_prng_key(3)


@pytest.mark.parametrize("paths, what", [
    ([(), ((DICT, "a"),)], "at the root beside"),
    ([((DICT, "a"),), ((DICT, "a"), (DICT, "b"))], "inside"),
    ([((INDEX, 0),), ((INDEX, 2),)], "list indices"),
])
def test_unflatten_raw_refuses_inconsistent_paths(paths, what):
    with pytest.raises(CorruptCheckpointError, match=what):
        _tree.unflatten_raw(paths, list(range(len(paths))))


def test_unflatten_raw_root_leaf_and_no_leaves():
    assert _tree.unflatten_raw([()], [5]) == 5
    assert _tree.unflatten_raw([], []) == {}
