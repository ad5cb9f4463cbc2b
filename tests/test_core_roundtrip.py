"""Round trips through jaxckpt.save/restore: dtypes, containers, Flax, shardings."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxckpt
from jaxckpt import StructureMismatchError

DTYPES = ["bool", "int4", "int8", "int16", "int32", "int64", "uint4", "uint8", "uint16",
          "uint32", "uint64", "bfloat16", "float16", "float32", "float64", "complex64",
          "complex128"] + [n for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                       "float8_e5m2fnuz", "float8_e4m3b11fnuz", "float8_e3m4",
                                       "float8_e4m3", "float8_e8m0fnu", "float4_e2m1fn")
                           if hasattr(ml_dtypes, n)]


def _dtype(name):
    return np.dtype(getattr(ml_dtypes, name, None) or name)


def _random(name, shape, seed=0):
    dt = _dtype(name)
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * dt.itemsize,
                                              dtype=np.uint8)
    arr = raw.view(dt).reshape(shape) if dt.itemsize > 0 else raw
    if name in ("int4", "uint4", "float4_e2m1fn", "bool"):  # keep valid bit patterns
        arr = (raw[: arr.size] % 2).astype(dt).reshape(shape)
    return arr


def _bits(x):
    a = np.asarray(x)
    return a.dtype.name, a.shape, a.tobytes()


CASES = [(n, s) for n in DTYPES for s in [(), (0, 3), (5, 7)]] + [
    (n, (600, 1024)) for n in ("float32", "bfloat16", "int4", "complex128")]  # own array files


@pytest.mark.parametrize("name,shape", CASES)
def test_every_dtype_bit_exact_numpy_and_jax(tmp_path, name, shape):
    host = _random(name, shape)
    tree = {"np": host, "jax": jnp.asarray(host)}
    jaxckpt.save(tmp_path / "c", tree)
    raw = jaxckpt.restore(tmp_path / "c")
    assert _bits(raw["np"]) == _bits(host) and _bits(raw["jax"]) == _bits(host)
    out = jaxckpt.restore(tmp_path / "c", tree)
    assert isinstance(out["np"], np.ndarray) and isinstance(out["jax"], jax.Array)
    assert _bits(out["np"]) == _bits(host) and _bits(out["jax"]) == _bits(host)


def test_nan_payloads_and_negative_zero_survive(tmp_path):
    bits = np.array([0x7FC00001, 0xFFC12345, 0x80000000, 0x7F800000], np.uint32)
    jaxckpt.save(tmp_path / "c", {"x": bits.view(np.float32)})
    assert jaxckpt.restore(tmp_path / "c")["x"].view(np.uint32).tolist() == bits.tolist()


def test_prng_keys(tmp_path):
    keys = {"one": jax.random.key(7), "many": jax.random.split(jax.random.key(1), 5)}
    jaxckpt.save(tmp_path / "c", keys)
    out = jaxckpt.restore(tmp_path / "c", keys)
    for k in keys:
        assert out[k].dtype == keys[k].dtype
        assert np.array_equal(jax.random.key_data(out[k]), jax.random.key_data(keys[k]))
    assert jax.random.normal(out["one"]) == jax.random.normal(keys["one"])
    assert jaxckpt.metadata(tmp_path / "c")["many"].dtype == keys["many"].dtype


Point = collections.namedtuple("Point", "x y")


def test_python_leaves_and_containers(tmp_path):
    tree = {"ints": [0, -5, 2**63 - 1, -(2**70)], "f": 1.5, "b": True, "c": 1 - 2j,
            "s": "naïve ✓", "none": None, "by": b"\x00\xff", "np": np.float32(1.5),
            "pt": Point(np.arange(3), 4), "tup": (1, (2, 3)),
            "ik": {7: "int key"}}
    jaxckpt.save(tmp_path / "c", tree)
    raw = jaxckpt.restore(tmp_path / "c")
    assert raw["ints"] == tree["ints"] and raw["c"] == 1 - 2j and raw["s"] == "naïve ✓"
    assert raw["none"] is None and raw["by"] == b"\x00\xff" and raw["ik"]["7"] == "int key"
    assert raw["np"] == np.float32(1.5) and type(raw["np"]) is np.float32
    assert raw["pt"]["y"] == 4 and raw["tup"] == [1, [2, 3]]
    out = jaxckpt.restore(tmp_path / "c", tree)
    assert isinstance(out["pt"], Point) and out["tup"] == (1, (2, 3))
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)


def test_flax_linen_train_state_with_adamw(tmp_path):
    import flax.linen as nn
    import optax
    from flax.training import train_state

    model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(1)])
    x = jnp.ones((4, 8))
    params = model.init(jax.random.key(0), x)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=optax.adamw(1e-3))

    @jax.jit
    def step(s):
        grads = jax.grad(lambda p: jnp.mean(s.apply_fn(p, x) ** 2))(s.params)
        return s.apply_gradients(grads=grads)

    state = step(state)
    jaxckpt.save(tmp_path / "c", state)
    fresh = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=optax.adamw(1e-3))
    out = jaxckpt.restore(tmp_path / "c", fresh)
    assert type(out) is type(state) and int(out.step) == 1
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(state)):
        assert _bits(a) == _bits(b)
    assert type(out.opt_state[0]) is type(state.opt_state[0])


def test_flax_nnx_state(tmp_path):
    from flax import nnx

    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    jaxckpt.save(tmp_path / "c", state)
    other = nnx.Linear(4, 3, rngs=nnx.Rngs(1))
    restored = jaxckpt.restore(tmp_path / "c", nnx.state(other))
    nnx.update(other, restored)
    assert np.array_equal(other.kernel[...], model.kernel[...])
    raw = jaxckpt.restore(tmp_path / "c")
    assert "kernel" in raw


def test_targets_give_shardings_and_cast_dtypes(tmp_path):
    mesh = Mesh(np.array(jax.devices()[:4]), ("x",))
    sh = NamedSharding(mesh, P("x"))
    big = jax.device_put(jnp.arange(4 * 1024 * 256, dtype=jnp.float32).reshape(4 * 1024, 256), sh)
    tree = {"big": big, "small": jnp.arange(8, dtype=jnp.float32)}
    jaxckpt.save(tmp_path / "c", tree)
    other = NamedSharding(Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b")), P("b", "a"))
    target = {"big": jax.ShapeDtypeStruct(big.shape, jnp.float32, sharding=other),
              "small": jax.ShapeDtypeStruct((8,), jnp.bfloat16)}
    out = jaxckpt.restore(tmp_path / "c", target)
    assert out["big"].sharding == other
    assert np.array_equal(np.asarray(out["big"]), np.asarray(big))
    assert out["small"].dtype == jnp.bfloat16 and out["small"].devices() == {jax.devices()[0]}
    same = jaxckpt.restore(tmp_path / "c", tree)
    assert same["big"].sharding == sh


def test_mismatch_names_every_key_path_and_partial_restores_a_subset(tmp_path):
    tree = {"a": np.zeros((2, 3)), "b": {"c": np.ones(4), "d": 5}}
    jaxckpt.save(tmp_path / "c", tree)
    with pytest.raises(StructureMismatchError) as e:
        jaxckpt.restore(tmp_path / "c", {"a": np.zeros((3, 2)), "b": {"c": np.ones(4)},
                                         "x": np.ones(1)})
    msg = str(e.value)
    assert "['a']" in msg and "(3, 2)" in msg and "(2, 3)" in msg
    assert "['x']: in the target, not on disk" in msg
    assert "['b']['d']: on disk, not in the target" in msg
    out = jaxckpt.restore(tmp_path / "c", {"b": {"c": np.zeros(4)}}, partial=True)
    assert out == {"b": {"c": out["b"]["c"]}} and np.array_equal(out["b"]["c"], np.ones(4))


def test_caller_mutation_and_donation_after_save_do_not_change_the_checkpoint(tmp_path):
    host = np.arange(1 << 20, dtype=np.float32)
    dev = jnp.arange(1 << 20, dtype=jnp.float32)
    want_host, want_dev = host.copy(), np.asarray(dev).copy()
    donate = jax.jit(lambda x: x * 0 - 1, donate_argnums=0)
    with jaxckpt.CheckpointManager(tmp_path) as m:
        m.save({"host": host, "dev": dev})
        host[:] = -1
        dev = donate(dev)
        m.wait_until_finished()
        out = m.restore()
    assert np.array_equal(out["host"], want_host)
    assert np.array_equal(out["dev"], want_dev)


@pytest.mark.parametrize("bad", [object(), lambda: 1, {1, 2}, np.array(["s"]),
                                 np.array([object()])])
def test_unsupported_leaf_is_a_type_error_naming_the_path_and_writes_nothing(tmp_path, bad):
    with pytest.raises(TypeError, match=r"\['x'\]\[1\]"):
        jaxckpt.save(tmp_path / "c", {"x": [1, bad]})
    assert not (tmp_path / "c").exists() and list(tmp_path.iterdir()) == []


def test_existing_and_missing_paths(tmp_path):
    jaxckpt.save(tmp_path / "c", {"a": 1})
    with pytest.raises(FileExistsError):
        jaxckpt.save(tmp_path / "c", {"a": 2})
    assert jaxckpt.restore(tmp_path / "c") == {"a": 1}
    with pytest.raises(jaxckpt.CheckpointNotFoundError):
        jaxckpt.restore(tmp_path / "nope")
    with pytest.raises(ValueError, match="ftp"):
        jaxckpt.save("ftp://host/x", {"a": 1})
    assert jaxckpt.save(f"file://{tmp_path}/u", {"a": 3}) == f"file://{tmp_path}/u"
    assert jaxckpt.restore(tmp_path / "u") == {"a": 3}


@pytest.mark.parametrize("shape", [(7,), (1024, 1024)])
def test_all_zero_leaves_round_trip_and_verify(tmp_path, shape):
    tree = {"mu": jnp.zeros(shape, jnp.float32), "nu": np.zeros(shape, np.float32)}
    jaxckpt.save(tmp_path / "c", tree)
    jaxckpt.verify(tmp_path / "c")
    out = jaxckpt.restore(tmp_path / "c", tree)
    assert not np.any(np.asarray(out["mu"])) and not np.any(out["nu"])


def test_awkward_extents_keep_chunks_large(tmp_path):
    from jaxckpt import _storage

    prime = 1_000_003  # no divisor near the wanted chunk size
    outer, inner = _storage.chunking([prime, 4])
    assert inner[0] * 4 >= _storage.INNER_BYTES // 2 and outer[0] % inner[0] == 0
    assert outer[0] >= prime
    x = np.arange(prime, dtype=np.float32)
    jaxckpt.save(tmp_path / "c", {"x": x})
    assert np.array_equal(jaxckpt.restore(tmp_path / "c")["x"], x)
    assert _storage.chunking([1024, 1024, 4]) == ([1024, 1024, 4], [1024, 1024, 4])
