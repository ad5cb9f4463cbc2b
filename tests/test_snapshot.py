"""jaxckpt._save.snapshot: the blocking phase's records, pieces and copies, and metadata checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxckpt._format import manifest as _format
from jaxckpt._save import snapshot as _snapshot
from jaxckpt import _tree

from strategies import quick, trees  # tests/ is on sys.path under pytest


def _kind(leaf) -> str:
    if isinstance(leaf, jax.Array):
        return "key" if _tree.is_prng_key(leaf) else "jax"
    if isinstance(leaf, np.ndarray):
        return "array"
    if isinstance(leaf, np.generic):
        return "scalar"
    return "py"


@quick
@given(trees)
def test_records_follow_the_flattened_tree(tree):
    snap = _snapshot.take(tree)
    entries, _ = _tree.flatten(tree)
    assert [r["path"] for r in snap.records] == [[list(t) for t in e.path] for e in entries]
    assert [r["kind"] for r in snap.records] == [_kind(e.leaf) for e in entries]
    arrays = iter(snap.arrays)
    for record, entry in zip(snap.records, entries):
        if record["kind"] == "py":
            assert _format.decode_py(record["value"]) == entry.leaf
            continue
        arr = next(arrays)
        assert arr.record is record and record["shape"] == list(np.shape(entry.leaf))
        assert np.array_equal(arr.shards[0].data, entry.leaf)
    assert next(arrays, None) is None
    assert snap.nbytes == sum(np.asarray(e.leaf).nbytes for e in entries
                              if _kind(e.leaf) != "py")


def test_leaf_kinds_and_what_each_stores():
    key = jax.random.key(0)
    snap = _snapshot.take({"a": np.arange(3, dtype=np.int32), "b": jnp.ones(2, jnp.float32),
                           "c": np.float32(2), "k": key, "n": None, "s": "x"}, {"m": 1})
    by_name = {r["path"][0][1]: r for r in snap.records}
    assert by_name["a"] == {"path": [["k", "a"]], "kind": "array", "dtype": "int32",
                            "shape": [3]}
    assert by_name["c"]["kind"] == "scalar" and by_name["c"]["shape"] == []
    assert by_name["k"]["kind"] == "key" and by_name["k"]["impl"] == "threefry2x32"
    assert by_name["k"]["key_shape"] == [] and by_name["k"]["shape"] == [2]  # key data
    assert by_name["n"]["value"] == ["none", None] and by_name["s"]["value"] == ["str", "x"]
    assert snap.metadata == {"m": 1}
    assert all(a.packed for a in snap.arrays)  # all small: they share the packed array


def test_numpy_leaves_are_copied_so_the_caller_may_reuse_them():
    host = np.arange(1 << 16, dtype=np.float32)
    snap = _snapshot.take({"x": host})
    host[:] = -1
    assert np.array_equal(snap.arrays[0].shards[0].data, np.arange(1 << 16, dtype=np.float32))


def test_a_sharded_array_gives_one_piece_per_distinct_shard():
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("x", "y"))
    shape = (1024, 1024)  # 4 MiB: large enough for its own array
    x = jax.device_put(jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape),
                       NamedSharding(mesh, P("x")))  # replicated over "y"
    (arr,) = _snapshot.take({"x": x}).arrays
    assert not arr.packed and arr.shard_shape == (512, 1024)
    assert sorted(s.index for s in arr.shards) == [((0, 512), (0, 1024)),
                                                   ((512, 1024), (0, 1024))]
    for s in arr.shards:
        (r0, r1), (c0, c1) = s.index
        assert np.array_equal(s.data, np.asarray(x)[r0:r1, c0:c1])


def test_leaves_at_the_large_size_get_their_own_array():
    edge = _format.LARGE_BYTES // 4
    snap = _snapshot.take({"small": np.zeros(edge - 1, np.float32),
                           "large": np.zeros(edge, np.float32)})
    assert {a.record["path"][0][1]: a.packed for a in snap.arrays} == {"large": False,
                                                                       "small": True}


def test_norm_index():
    assert _snapshot._norm_index((slice(None), slice(2, None)), (4, 6)) == ((0, 4), (2, 6))
    assert _snapshot._norm_index((), ()) == ()


def test_check_metadata():
    assert _snapshot.check_metadata(None) is None
    assert _snapshot.check_metadata({"a": (1, 2), "b": {"c": None}}) == {"a": [1, 2],
                                                                       "b": {"c": None}}
    with pytest.raises(TypeError, match="dict or None"):
        _snapshot.check_metadata([1])
    with pytest.raises(TypeError, match="JSON-able"):
        _snapshot.check_metadata({"a": object()})
    with pytest.raises(ValueError, match=r"metadata\['a'\]\[0\] is a string"):
        _snapshot.check_metadata({"a": ["\udc80"]})
    with pytest.raises(ValueError, match="has the key"):
        _snapshot.check_metadata({"\udc80": 1})
