"""restore(path, target): shardings, casts, leaf kinds, mismatches, partial, metadata.

Written against API.md alone. Uses the 4 CPU devices that conftest.py asks for.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

import jaxckpt
from jaxckpt import StructureMismatchError


def _mesh_1d() -> Mesh:
    return Mesh(np.array(jax.devices()[:4]), ("x",))


def _mesh_2d() -> Mesh:
    return Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("x", "y"))


SHARDINGS = {
    "rows": lambda: NamedSharding(_mesh_1d(), P("x")),
    "columns": lambda: NamedSharding(_mesh_1d(), P(None, "x")),
    "replicated": lambda: NamedSharding(_mesh_1d(), P()),
    "grid": lambda: NamedSharding(_mesh_2d(), P("x", "y")),
    "half_replicated": lambda: NamedSharding(_mesh_2d(), P("y")),
    "last_device": lambda: SingleDeviceSharding(jax.devices()[3]),
}

HOST = np.arange(8 * 12, dtype=np.float32).reshape(8, 12) * 0.5 - 7.25


def _saved_leaf(kind: str):
    if kind == "numpy":
        return HOST.copy()
    if kind == "jax_default_device":
        return jax.device_put(HOST)
    if kind == "jax_replicated":
        return jax.device_put(HOST, NamedSharding(_mesh_1d(), P()))
    return jax.device_put(HOST, NamedSharding(_mesh_2d(), P("y", "x")))  # "jax_other_sharding"


def _bits(a) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(a)).reshape(-1)
    return a.view(f"uint{8 * a.dtype.itemsize}")


def assert_laid_out(out: jax.Array, host: np.ndarray, sharding) -> None:
    """``out`` has ``sharding`` and every shard holds its slice of ``host``, bit-exact."""
    assert isinstance(out, jax.Array), type(out)
    assert out.sharding.is_equivalent_to(sharding, out.ndim), (out.sharding, sharding)
    assert out.dtype == host.dtype and out.shape == host.shape
    for shard in out.addressable_shards:
        np.testing.assert_array_equal(_bits(shard.data), _bits(host[shard.index]))


# ---------------------------------------------------------------------------
# Shardings


@pytest.mark.parametrize("target_kind", ["jax_array", "shape_dtype_struct"])
@pytest.mark.parametrize("saved_kind", ["numpy", "jax_default_device", "jax_other_sharding",
                                        "jax_replicated"])
@pytest.mark.parametrize("sharding_name", list(SHARDINGS))
def test_target_sharding_is_used(tmp_path, sharding_name, saved_kind, target_kind):
    jaxckpt.save(tmp_path / "ckpt", {"w": _saved_leaf(saved_kind)})
    sharding = SHARDINGS[sharding_name]()
    if target_kind == "jax_array":
        target = jax.device_put(np.zeros_like(HOST), sharding)
    else:
        target = jax.ShapeDtypeStruct(HOST.shape, HOST.dtype, sharding=sharding)
    out = jaxckpt.restore(tmp_path / "ckpt", {"w": target})["w"]
    assert_laid_out(out, HOST, sharding)


@pytest.mark.x64
@pytest.mark.parametrize("target_kind", ["jax_array", "shape_dtype_struct"])
@pytest.mark.parametrize("shape,spec", [((), P()), ((0, 4), P(None, "x")), ((4, 0), P("x")),
                                        ((0,), P())],
                         ids=["scalar", "zero_rows", "zero_columns", "empty_vector"])
def test_sharded_target_for_scalar_and_zero_size(tmp_path, shape, spec, target_kind):
    host = np.full(shape, -1.5, np.float64)
    jaxckpt.save(tmp_path / "ckpt", {"a": host, "b": jax.device_put(host)})
    sharding = NamedSharding(_mesh_1d(), spec)
    if target_kind == "jax_array":
        leaf = jax.device_put(np.zeros(shape), sharding)
    else:
        leaf = jax.ShapeDtypeStruct(shape, np.float64, sharding=sharding)
    out = jaxckpt.restore(tmp_path / "ckpt", {"a": leaf, "b": leaf})
    assert_laid_out(out["a"], host, sharding)
    assert_laid_out(out["b"], host, sharding)


@pytest.mark.parametrize("shape", [(), (0, 4), (3,)], ids=["scalar", "zero_size", "vector"])
def test_shape_dtype_struct_without_sharding_gives_default_device(tmp_path, shape):
    host = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape) - 1
    saved = jax.device_put(host, SingleDeviceSharding(jax.devices()[2]))
    jaxckpt.save(tmp_path / "ckpt", {"a": saved})
    out = jaxckpt.restore(tmp_path / "ckpt", {"a": jax.ShapeDtypeStruct(shape, np.int16)})["a"]
    assert isinstance(out, jax.Array)
    assert out.devices() == {jax.devices()[0]}
    assert_laid_out(out, host, SingleDeviceSharding(jax.devices()[0]))


def test_sharded_prng_keys_restore_with_shape_dtype_target(tmp_path):
    keys = jax.random.split(jax.random.key(42), 8)
    jaxckpt.save(tmp_path / "ckpt", {"keys": keys})
    sharding = NamedSharding(_mesh_1d(), P("x"))
    target = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=sharding)
    out = jaxckpt.restore(tmp_path / "ckpt", {"keys": target})["keys"]
    assert out.dtype == keys.dtype
    assert out.sharding.is_equivalent_to(sharding, out.ndim)
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(out)),
                                  np.asarray(jax.random.key_data(keys)))


# ---------------------------------------------------------------------------
# dtype casts through a ShapeDtypeStruct target

_CAST_VALUES = np.array([0.0, -0.0, 1.5, -2.0, 0.25, 100.0, -96.0, np.inf, -np.inf])

CASTS = [
    ("float32", "bfloat16"),
    ("float32", "float16"),
    ("bfloat16", "float32"),
    ("float64", "float32"),
    ("float16", "float64"),
    ("int32", "int64"),
    ("int64", "int8"),
    ("int16", "float32"),
]


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


@pytest.mark.parametrize("sharded", [False, True], ids=["default_device", "sharded"])
@pytest.mark.parametrize("saved_leaf", ["numpy", "jax"])
@pytest.mark.parametrize("src,dst", [  # JAX holds 64-bit types only with x64
    pytest.param(s, d, id=f"{s}-to-{d}", marks=[pytest.mark.x64] if "64" in s + d else [])
    for s, d in CASTS])
def test_shape_dtype_struct_dtype_casts(tmp_path, src, dst, saved_leaf, sharded):
    values = _CAST_VALUES
    if not (_np_dtype(src).kind == "V" or np.issubdtype(_np_dtype(src), np.floating)):
        values = values[np.isfinite(values)]  # integers: no infinities
    values = np.resize(values, 12).reshape(4, 3)
    saved = values.astype(_np_dtype(src))
    expected = saved.astype(_np_dtype(dst))
    leaf = saved if saved_leaf == "numpy" else jnp.asarray(saved)
    jaxckpt.save(tmp_path / "ckpt", {"v": leaf})
    sharding = (NamedSharding(_mesh_1d(), P("x")) if sharded
                else SingleDeviceSharding(jax.devices()[0]))
    target = jax.ShapeDtypeStruct(saved.shape, _np_dtype(dst),
                                  sharding=sharding if sharded else None)
    out = jaxckpt.restore(tmp_path / "ckpt", {"v": target})["v"]
    assert out.dtype == _np_dtype(dst)
    assert_laid_out(out, expected, sharding)


# ---------------------------------------------------------------------------
# Leaf kinds of the target decide the result's leaf kinds


def test_mixed_target_leaf_kinds(tmp_path):
    sharding = NamedSharding(_mesh_1d(), P("x"))
    saved = {
        "np_to_np": HOST, "jax_to_np": jax.device_put(HOST, sharding),
        "np_to_jax": HOST + 1, "jax_to_sds": jax.device_put(HOST + 2),
        "py": 3, "text": "hi",
    }
    jaxckpt.save(tmp_path / "ckpt", saved)
    target = {
        "np_to_np": np.zeros_like(HOST), "jax_to_np": np.zeros_like(HOST),
        "np_to_jax": jax.device_put(np.zeros_like(HOST), sharding),
        "jax_to_sds": jax.ShapeDtypeStruct(HOST.shape, HOST.dtype, sharding=sharding),
        "py": 0, "text": "",
    }
    out = jaxckpt.restore(tmp_path / "ckpt", target)
    assert type(out["np_to_np"]) is np.ndarray and type(out["jax_to_np"]) is np.ndarray
    np.testing.assert_array_equal(_bits(out["np_to_np"]), _bits(HOST))
    np.testing.assert_array_equal(_bits(out["jax_to_np"]), _bits(HOST))
    assert_laid_out(out["np_to_jax"], HOST + 1, sharding)
    assert_laid_out(out["jax_to_sds"], HOST + 2, sharding)
    assert out["py"] == 3 and type(out["py"]) is int and out["text"] == "hi"


# ---------------------------------------------------------------------------
# Mismatches: StructureMismatchError naming every offending key path


def _saved_tree():
    return {
        "enc": {"w_alpha": np.ones((4, 3), np.float32), "b_ok": np.zeros(3, np.float32)},
        "dec": {"w_beta": np.ones((3, 2), np.float32), "b_gamma": np.ones(2, np.float32)},
        "step_count": 5,
    }


def _target(**replace):
    """The matching target, with `replace` mapping "node/leaf" to a new leaf (None: drop)."""
    tree = {
        "enc": {"w_alpha": np.zeros((4, 3), np.float32), "b_ok": np.zeros(3, np.float32)},
        "dec": {"w_beta": np.zeros((3, 2), np.float32), "b_gamma": np.zeros(2, np.float32)},
        "step_count": 0,
    }
    for where, leaf in replace.items():
        node, name = where.split("__")
        if leaf is None:
            del tree[node][name]
        else:
            tree[node][name] = leaf
    return tree


def _as_kind(leaf, kind):
    if kind == "numpy":
        return leaf
    if kind == "jax":
        return jax.device_put(leaf)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)


def test_matching_target_is_fine(tmp_path):
    jaxckpt.save(tmp_path / "ckpt", _saved_tree())
    out = jaxckpt.restore(tmp_path / "ckpt", _target())
    np.testing.assert_array_equal(out["dec"]["w_beta"], np.ones((3, 2), np.float32))


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("kind", ["numpy", "jax", "shape_dtype_struct"])
def test_shape_mismatch_names_every_offending_path(tmp_path, kind, partial):
    jaxckpt.save(tmp_path / "ckpt", _saved_tree())
    target = _target(enc__w_alpha=_as_kind(np.zeros((3, 4), np.float32), kind),
                     dec__w_beta=_as_kind(np.zeros((3, 2, 1), np.float32), kind),
                     dec__b_gamma=_as_kind(np.zeros((), np.float32), kind))
    with pytest.raises(StructureMismatchError) as info:
        jaxckpt.restore(tmp_path / "ckpt", target, partial=partial)
    message = str(info.value)
    for name in ("enc", "w_alpha", "dec", "w_beta", "b_gamma"):
        assert name in message, (name, message)
    assert isinstance(info.value, ValueError)


MISMATCHES = {
    "missing_from_target": (_target(enc__w_alpha=None, dec__b_gamma=None),
                            ["w_alpha", "b_gamma"]),
    "extra_in_target": (_target(enc__x_extra=np.zeros(1), dec__y_extra=np.zeros(2)),
                        ["x_extra", "y_extra"]),
    "missing_extra_and_shape": (_target(enc__w_alpha=None, dec__y_extra=np.zeros(2),
                                        dec__w_beta=np.zeros((2, 3), np.float32)),
                                ["w_alpha", "y_extra", "w_beta"]),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_structure_mismatch_names_every_offending_path(tmp_path, case):
    jaxckpt.save(tmp_path / "ckpt", _saved_tree())
    target, names = MISMATCHES[case]
    with pytest.raises(StructureMismatchError) as info:
        jaxckpt.restore(tmp_path / "ckpt", target)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_leaf_where_saved_has_a_subtree_is_a_mismatch(tmp_path):
    jaxckpt.save(tmp_path / "ckpt", _saved_tree())
    target = _target()
    target["enc"] = np.zeros(3, np.float32)
    with pytest.raises(StructureMismatchError) as info:
        jaxckpt.restore(tmp_path / "ckpt", target)
    assert "enc" in str(info.value)


# ---------------------------------------------------------------------------
# partial=True


@pytest.mark.parametrize("kind", ["numpy", "jax", "shape_dtype_struct"])
def test_partial_restores_a_subset(tmp_path, kind):
    saved = _saved_tree()
    saved["dec"]["w_beta"] = np.arange(6, dtype=np.float32).reshape(3, 2)
    jaxckpt.save(tmp_path / "ckpt", saved)
    target = {"dec": {"w_beta": _as_kind(np.zeros((3, 2), np.float32), kind)}, "step_count": 0}
    out = jaxckpt.restore(tmp_path / "ckpt", target, partial=True)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(target)
    assert isinstance(out["dec"]["w_beta"], np.ndarray if kind == "numpy" else jax.Array)
    np.testing.assert_array_equal(np.asarray(out["dec"]["w_beta"]), saved["dec"]["w_beta"])
    assert out["step_count"] == 5


def test_partial_subset_with_sharding_and_cast(tmp_path):
    jaxckpt.save(tmp_path / "ckpt", {"big": jax.device_put(HOST), "other": HOST + 1})
    sharding = NamedSharding(_mesh_2d(), P("x", "y"))
    target = {"big": jax.ShapeDtypeStruct(HOST.shape, ml_dtypes.bfloat16, sharding=sharding)}
    out = jaxckpt.restore(tmp_path / "ckpt", target, partial=True)
    assert list(out) == ["big"]
    assert_laid_out(out["big"], HOST.astype(ml_dtypes.bfloat16), sharding)


def test_partial_target_naming_an_unsaved_leaf_is_a_mismatch(tmp_path):
    jaxckpt.save(tmp_path / "ckpt", _saved_tree())
    target = {"dec": {"w_beta": np.zeros((3, 2), np.float32), "z_unsaved": np.zeros(1)}}
    with pytest.raises(StructureMismatchError) as info:
        jaxckpt.restore(tmp_path / "ckpt", target, partial=True)
    assert "z_unsaved" in str(info.value), str(info.value)


def test_without_partial_a_subset_target_is_a_mismatch(tmp_path):
    jaxckpt.save(tmp_path / "ckpt", _saved_tree())
    with pytest.raises(StructureMismatchError) as info:
        jaxckpt.restore(tmp_path / "ckpt", {"dec": {"w_beta": np.zeros((3, 2), np.float32)}})
    for name in ("w_alpha", "b_ok", "b_gamma", "step_count"):
        assert name in str(info.value), (name, str(info.value))


# ---------------------------------------------------------------------------
# metadata(path)


def _metadata_tree():
    big = np.random.default_rng(3).integers(0, 2**32, size=(512, 512), dtype=np.uint32)
    return {
        "big": big.view(np.float32),  # 1 MiB of incompressible bytes
        "bf16": jax.device_put(np.ones((3, 4), ml_dtypes.bfloat16),
                               NamedSharding(_mesh_1d(), P(None, "x"))),
        "empty": np.zeros((0, 3), np.int8),
        "scalar": np.array(2.5),
        "python": {"i": 3, "f": 1.5, "s": "text", "b": True, "c": 1 - 1j},
        "seq": [np.arange(2, dtype=np.int64), (np.ones(1, ml_dtypes.uint4),)],
    }


def _assert_metadata(meta, raw) -> None:
    assert jax.tree_util.tree_structure(meta) == jax.tree_util.tree_structure(raw)
    for (path, m), r in zip(jax.tree_util.tree_leaves_with_path(meta),
                            jax.tree_util.tree_leaves(raw)):
        where = jax.tree_util.keystr(path)
        if isinstance(r, np.ndarray):
            assert isinstance(m, jax.ShapeDtypeStruct), (where, m)
            assert m.shape == r.shape and m.dtype == r.dtype, (where, m, r.dtype)
        else:
            assert type(m) is type(r) and m == r, (where, m, r)


def test_metadata_matches_the_raw_restore(tmp_path):
    jaxckpt.save(tmp_path / "ckpt", _metadata_tree())
    meta = jaxckpt.metadata(tmp_path / "ckpt")
    _assert_metadata(meta, jaxckpt.restore(tmp_path / "ckpt"))
    assert meta["big"].shape == (512, 512) and meta["big"].dtype == np.float32
    assert meta["python"] == {"i": 3, "f": 1.5, "s": "text", "b": True, "c": 1 - 1j}


def test_metadata_is_a_usable_target(tmp_path):
    tree = _metadata_tree()
    jaxckpt.save(tmp_path / "ckpt", tree)
    out = jaxckpt.restore(tmp_path / "ckpt", jaxckpt.metadata(tmp_path / "ckpt"))
    assert isinstance(out["big"], jax.Array) and out["big"].devices() == {jax.devices()[0]}
    np.testing.assert_array_equal(_bits(out["big"]), _bits(tree["big"]))
    assert out["python"]["s"] == "text"


def test_metadata_reads_no_array_data(tmp_path):
    """Damage the stored bytes of a 1 MiB leaf: metadata() must not notice, verify() must."""
    tree = _metadata_tree()
    jaxckpt.save(tmp_path / "ckpt", tree)
    raw_bytes = tree["big"].tobytes()
    probe = raw_bytes[4096:8192]  # random bytes: found only where the array's data lies
    damaged = []
    for file in sorted(p for p in (tmp_path / "ckpt").rglob("*") if p.is_file()):
        content = bytearray(file.read_bytes())
        at = content.find(probe)
        if at >= 0:
            content[at:at + len(probe)] = bytes(b ^ 0xFF for b in probe)
            file.write_bytes(bytes(content))
            damaged.append(file)
    if not damaged:
        pytest.skip("the array's bytes are not stored verbatim; cannot damage them blindly")

    meta = jaxckpt.metadata(tmp_path / "ckpt")
    assert meta["big"].shape == (512, 512) and meta["big"].dtype == np.float32
    assert meta["python"]["s"] == "text"
    with pytest.raises(jaxckpt.CorruptCheckpointError):  # the damage was real
        jaxckpt.verify(tmp_path / "ckpt")
