"""Restores of many small leaves (issue 17): the native batched transfer, one
cached plan per tree structure, and the packed leaves' own read pass.

Every cached-plan test restores twice or more in one process, so the second
restore runs from the plan the first one stored; results are compared bit
for bit with what was saved and with what ``jax.device_put`` gives.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

import jaxckpt
from jaxckpt import CorruptCheckpointError, StructureMismatchError
from jaxckpt._read import batch as _batch, restore as _restore

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_plans(monkeypatch):
    """Packed bytes in files (not inline in the manifest), and no plan left
    over from another test."""
    monkeypatch.setattr(jaxckpt._format.manifest, "INLINE_BYTES", 0)
    _restore._PLANS.clear()
    yield
    _restore._PLANS.clear()


DTYPES = [np.float32, np.int8, np.uint16, np.int32, np.bool_, np.complex64, np.float16,
          ml_dtypes.bfloat16]
SHAPES = [(), (1,), (7,), (3, 5), (2, 0), (4, 1, 2)]


def _mixed_tree(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for i in range(n):
        dtype = np.dtype(DTYPES[i % len(DTYPES)])
        shape = SHAPES[(i // len(DTYPES)) % len(SHAPES)]
        bits = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
        value = bits.view(dtype).reshape(shape) if dtype != np.bool_ else (bits % 2 == 1).reshape(
            shape)
        tree.setdefault(f"layer_{i // 10:03d}", {})[f"w{i % 10}"] = value
    tree["step"] = seed
    tree["rate"] = 0.5 + seed
    return tree


def _bits(x) -> np.ndarray:
    host = np.asarray(x)
    return host.reshape(-1).view(np.uint8) if host.size else host.reshape(-1)


def _targets(tree: dict, sharding) -> dict:
    def one(x):
        if isinstance(x, np.ndarray):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return x
    return jax.tree_util.tree_map(one, tree)


def _assert_bit_exact(out, saved, sharding=None) -> None:
    flat_out, def_out = jax.tree_util.tree_flatten(out)
    flat_in, def_in = jax.tree_util.tree_flatten(saved)
    assert def_out == def_in
    for got, want in zip(flat_out, flat_in):
        if isinstance(want, np.ndarray):
            assert isinstance(got, jax.Array) and got.dtype == want.dtype
            assert got.shape == want.shape and np.array_equal(_bits(got), _bits(want))
            assert got.committed
            if sharding is not None:
                assert got.sharding == sharding
        else:
            assert got == want and type(got) is type(want)


def test_many_mixed_leaves_restore_bit_exact_and_like_device_put(tmp_path):
    tree = _mixed_tree(400, 1)
    jaxckpt.save(tmp_path / "c", tree)
    sharding = SingleDeviceSharding(jax.devices()[1])
    target = _targets(tree, sharding)
    for _ in range(3):  # the first plans, the others reuse its plan
        out = jaxckpt.restore(tmp_path / "c", target)
        _assert_bit_exact(out, tree, sharding)
    assert len(_restore._PLANS._entries) == 1
    # The same array jax.device_put makes: aval (weak_type included), sharding, committed.
    for got, host in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(tree)):
        if isinstance(host, np.ndarray):
            want = jax.device_put(host, sharding)
            assert got.aval == want.aval and got.sharding == want.sharding
            assert got.committed == want.committed


def test_the_native_transfer_is_used_here():
    """On this jax the fast path is on: the other tests exercise it."""
    assert _batch.native()


@pytest.mark.parametrize("spec", [P("x"), P(), P(None, "x"), P("x", None)])
def test_sharded_leaves_restore_with_each_shard_on_its_device(tmp_path, spec):
    mesh = Mesh(np.array(jax.devices()[:4]), ("x",))
    sharding = NamedSharding(mesh, spec)
    rng = np.random.default_rng(3)
    tree = {f"w{i}": rng.standard_normal((8, 4)).astype(np.float32) for i in range(60)}
    jaxckpt.save(tmp_path / "c", tree)
    target = _targets(tree, sharding)
    for _ in range(2):
        out = jaxckpt.restore(tmp_path / "c", target)
        for key, host in tree.items():
            got, want = out[key], jax.device_put(host, sharding)
            assert got.sharding == sharding and got.aval == want.aval
            shards = {(s.device, tuple((i.start, i.stop) for i in s.index)): np.asarray(s.data)
                      for s in got.addressable_shards}
            for s in want.addressable_shards:
                index = tuple((i.start, i.stop) for i in s.index)
                assert np.array_equal(shards[(s.device, index)], np.asarray(s.data))


def test_a_cached_plan_follows_a_changed_target_sharding_and_dtype(tmp_path):
    tree = {f"w{i}": np.arange(8, dtype=np.float32) + i for i in range(50)}
    jaxckpt.save(tmp_path / "c", tree)
    one = SingleDeviceSharding(jax.devices()[0])
    two = NamedSharding(Mesh(np.array(jax.devices()[:2]), ("x",)), P("x"))
    for sharding, dtype in [(one, np.float32), (two, np.float32), (one, jnp.bfloat16),
                            (one, np.float32), (two, np.int32)]:
        target = {k: jax.ShapeDtypeStruct(v.shape, dtype, sharding=sharding)
                  for k, v in tree.items()}
        out = jaxckpt.restore(tmp_path / "c", target)
        for k, v in tree.items():
            assert out[k].sharding == sharding and out[k].dtype == dtype
            assert np.array_equal(np.asarray(out[k]), v.astype(dtype))
    assert len(_restore._PLANS._entries) == 4


def test_concrete_array_targets_reuse_the_plan_and_are_not_kept(tmp_path):
    tree = {f"w{i}": np.full(16, i, np.float32) for i in range(40)}
    jaxckpt.save(tmp_path / "c", tree)
    target = {k: jax.device_put(np.zeros(16, np.float32)) for k in tree}
    for _ in range(2):
        out = jaxckpt.restore(tmp_path / "c", target)
        assert all(np.array_equal(np.asarray(out[k]), v) for k, v in tree.items())
    # The cache holds no target leaf: neither the arrays nor their data.
    (_, templates), = _restore._PLANS._entries.values()
    assert all(kept.entry.leaf is None and kept.leaf is None for _, kept, _ in templates)


def test_a_changed_saved_structure_is_planned_again_with_the_same_errors(tmp_path):
    base = {f"w{i}": np.zeros(4, np.float32) for i in range(30)}
    target = _targets(base, None)
    jaxckpt.save(tmp_path / "a", base)
    jaxckpt.restore(tmp_path / "a", target)  # cached
    variants = {
        "shape": {**base, "w3": np.zeros(5, np.float32)},
        "dtype": {**base, "w3": np.zeros(4, np.int64)},  # a cast, not an error
        "extra": {**base, "extra": np.zeros(4, np.float32)},
        "missing": {k: v for k, v in base.items() if k != "w3"},
        "renamed": {**{k: v for k, v in base.items() if k != "w3"}, "w3x": base["w3"]},
        "python": {**base, "w3": 3},
    }
    for name, saved in variants.items():
        path = tmp_path / name
        jaxckpt.save(path, saved)
        try:
            got = jaxckpt.restore(path, target)
        except StructureMismatchError as e:
            got = e
        _restore._PLANS.clear()  # what a first restore of it says
        try:
            want = jaxckpt.restore(path, target)
        except StructureMismatchError as e:
            want = e
        assert type(got) is type(want), name
        if isinstance(want, Exception):
            assert str(got) == str(want), name
        else:
            assert all(np.array_equal(np.asarray(got[k]), np.asarray(want[k])) for k in want)
        jaxckpt.restore(tmp_path / "a", target)  # the plan for "a" again


def test_python_leaf_values_are_part_of_the_structure(tmp_path):
    jaxckpt.save(tmp_path / "a", {"x": np.zeros(3, np.float32), "n": 2})
    jaxckpt.save(tmp_path / "b", {"x": np.zeros(3, np.float32), "n": 2.5})
    target = {"x": jax.ShapeDtypeStruct((3,), np.float32), "n": 0}
    assert jaxckpt.restore(tmp_path / "a", target)["n"] == 2
    with pytest.raises(StructureMismatchError, match="not exactly representable"):
        jaxckpt.restore(tmp_path / "b", target)  # 2.5 into an int: refused, cache or not
    assert jaxckpt.restore(tmp_path / "a", {"x": target["x"], "n": 0.0})["n"] == 2.0


def _swap_packed_files(src, dst) -> None:
    """Replaces dst's packed files with src's: every chunk checksum still
    holds, only the manifest's digests tell."""
    def files(path):
        return sorted(glob.glob(os.path.join(path, "*", "packed", "c", "*")))
    src_files, dst_files = files(src), files(dst)
    assert src_files and len(src_files) == len(dst_files)
    for a, b in zip(src_files, dst_files):
        shutil.copyfile(a, b)


@pytest.mark.parametrize("kind", ["target", "raw"])
def test_swapped_bytes_are_caught_on_every_restore_with_a_cached_plan(tmp_path, kind):
    trees = [{f"w{i}": np.full(32, i + 100 * s, np.float32) for i in range(80)} for s in (0, 1)]
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=5, incremental=False) as m:
        for step, tree in enumerate(trees):
            m.save(tree, step)
    target = _targets(trees[1], None) if kind == "target" else None
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=5, incremental=False) as m:
        for _ in range(2):  # plans cached by sound restores of both
            for step in (0, 1):
                out = m.restore(step, target)
                assert np.array_equal(np.asarray(out["w5"]), trees[step]["w5"])
        _swap_packed_files(tmp_path / "ckpt-0", tmp_path / "ckpt-1")
        for _ in range(3):
            TALLY["corruptions tried"] += 1
            with pytest.raises(CorruptCheckpointError, match="do not match the manifest's digest"):
                m.restore(1, target)
            TALLY["corruptions caught"] += 1


def test_restored_leaves_share_no_memory_with_each_other_or_a_later_restore(tmp_path):
    tree = {f"w{i}": np.full(64, i, np.float32) for i in range(50)}
    jaxckpt.save(tmp_path / "c", tree)
    target = _targets(tree, None)
    first = jaxckpt.restore(tmp_path / "c", target)
    second = jaxckpt.restore(tmp_path / "c", target)
    # Donating a restored array lets XLA reuse its buffer for the output.
    bump = jax.jit(lambda x: x + 1000, donate_argnums=0)
    for k in ("w0", "w7", "w49"):
        bump(first[k]).block_until_ready()
    for k, v in tree.items():
        assert np.array_equal(np.asarray(second[k]), v), k
        if k not in ("w0", "w7", "w49"):
            assert np.array_equal(np.asarray(first[k]), v), k
    third = jaxckpt.restore(tmp_path / "c", target)
    assert all(np.array_equal(np.asarray(third[k]), v) for k, v in tree.items())


def test_numpy_results_may_be_written_without_touching_other_leaves(tmp_path):
    tree = {f"w{i}": np.full(64, i, np.float32) for i in range(50)}
    jaxckpt.save(tmp_path / "c", tree)
    target = {k: np.zeros(64, np.float32) for k in tree}
    first = jaxckpt.restore(tmp_path / "c", target)
    raw = jaxckpt.restore(tmp_path / "c")
    for k in ("w1", "w2"):
        first[k][:] = -1
        raw[k][:] = -2
    for k, v in tree.items():
        if k not in ("w1", "w2"):
            assert np.array_equal(first[k], v) and np.array_equal(raw[k], v), k
    again = jaxckpt.restore(tmp_path / "c", target)
    assert all(np.array_equal(again[k], v) for k, v in tree.items())


def test_float64_targets_without_x64_take_the_public_path(tmp_path):
    """A dtype JAX would canonicalise goes through jax.device_put, as before."""
    jaxckpt.save(tmp_path / "c", {"x": np.arange(4, dtype=np.float64)})
    target = {"x": jax.ShapeDtypeStruct((4,), np.float64)}
    for _ in range(2):
        out = jaxckpt.restore(tmp_path / "c", target)["x"]
        want = jax.device_put(np.arange(4, dtype=np.float64))
        assert out.dtype == want.dtype and out.aval == want.aval
        assert np.array_equal(np.asarray(out), np.asarray(want))


def test_mixed_packed_and_large_leaves_in_one_restore(tmp_path):
    rng = np.random.default_rng(5)
    tree = {"big": rng.standard_normal((600, 600)).astype(np.float32),
            "small": [rng.standard_normal(16).astype(np.float32) for _ in range(40)],
            "key": jax.random.key(3), "n": 7}
    jaxckpt.save(tmp_path / "c", tree)
    sharding = SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        if isinstance(x, (np.ndarray, jax.Array)) else x, tree)
    for _ in range(2):
        out = jaxckpt.restore(tmp_path / "c", target)
        assert np.array_equal(np.asarray(out["big"]), tree["big"])
        assert all(np.array_equal(np.asarray(a), b) for a, b in zip(out["small"], tree["small"]))
        assert np.array_equal(jax.random.key_data(out["key"]), jax.random.key_data(tree["key"]))
        assert out["n"] == 7
        raw = jaxckpt.restore(tmp_path / "c")
        assert np.array_equal(raw["big"], tree["big"])
        assert all(np.array_equal(a, b) for a, b in zip(raw["small"], tree["small"]))
