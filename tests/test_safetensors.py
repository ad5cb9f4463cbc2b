"""Export to Hugging Face safetensors (read back by the ``safetensors`` package itself)
and import from it onto a target's shardings."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxckpt
from jaxckpt.cli import main

st_numpy = pytest.importorskip("safetensors.numpy")
import safetensors.flax as st_flax  # noqa: E402
from safetensors import safe_open  # noqa: E402


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {
        "params": {
            "layer_0": {"kernel": rng.standard_normal((64, 32)).astype(np.float32),
                        "bias": np.arange(32, dtype=np.float32)},
            "layer_1": {"kernel": jnp.asarray(rng.standard_normal((32, 16)), jnp.bfloat16),
                        "scale": np.arange(-8, 8, dtype=np.int8)},
            # a large leaf: its own array files, and slabs under a small budget
            "embed": rng.standard_normal((600, 1024)).astype(np.float32),
        },
        "opt": {"count": np.int32(7), "mu": np.zeros((3,), np.float16)},
        "step": 12,
        "note": "hello",
    }


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("st") / "ckpt")
    jaxckpt.save(path, _tree())
    return path


def _load_all(out: str) -> tuple[dict, dict]:
    """Every file of an export through the safetensors package: (tensors as raw
    bytes with dtype and shape, metadata)."""
    tensors, meta = {}, {}
    for name in sorted(os.listdir(out)):
        if not name.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(out, name), framework="numpy") as f:
            meta.update(f.metadata() or {})
        # safetensors.numpy has no bfloat16; safetensors.flax reads every dtype.
        loaded = {k: np.asarray(v) for k, v in st_flax.load_file(os.path.join(out, name)).items()}
        try:
            as_numpy = st_numpy.load_file(os.path.join(out, name))
        except (TypeError, ValueError, KeyError):
            assert any(v.dtype == ml_dtypes.bfloat16 for v in loaded.values())
        else:
            assert {k: v.tobytes() for k, v in as_numpy.items()} == {
                k: v.tobytes() for k, v in loaded.items()}
        for key, value in loaded.items():
            tensors[key] = (name, value)
    return tensors, meta


def test_export_matches_the_checkpoint_bytes_and_index(ckpt, tmp_path):
    out = str(tmp_path / "hf")
    done = jaxckpt.export_safetensors(ckpt, out, max_shard_bytes=1 << 20)
    files = sorted(n for n in os.listdir(out))
    assert files[-1] == "model.safetensors.index.json"
    shards = files[:-1]
    n = len(shards)
    assert n >= 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    tensors, meta = _load_all(out)
    want = {
        "params.layer_0.kernel": np.asarray(_tree()["params"]["layer_0"]["kernel"]),
        "params.layer_0.bias": np.arange(32, dtype=np.float32),
        "params.layer_1.kernel": np.asarray(_tree()["params"]["layer_1"]["kernel"]),
        "params.layer_1.scale": np.arange(-8, 8, dtype=np.int8),
        "params.embed": _tree()["params"]["embed"],
        "opt.count": np.asarray(np.int32(7)),
        "opt.mu": np.zeros((3,), np.float16),
    }
    assert set(tensors) == set(want) == set(index["weight_map"])
    for name, value in want.items():
        file, got = tensors[name]
        assert index["weight_map"][name] == file
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in want.values())
    assert done["total_size"] == index["metadata"]["total_size"]
    assert tensors["params.layer_1.kernel"][1].dtype == ml_dtypes.bfloat16
    # Python leaves travel as JSON text in every shard's __metadata__.
    assert meta["format"] == "flax" and meta["step"] == "12" and json.loads(meta["note"]) == "hello"


def test_prefix_and_select(ckpt, tmp_path):
    jaxckpt.export_safetensors(ckpt, tmp_path / "p", prefix="params")
    tensors, _ = _load_all(str(tmp_path / "p"))
    assert sorted(tensors) == ["embed", "layer_0.bias", "layer_0.kernel", "layer_1.kernel",
                               "layer_1.scale"]
    jaxckpt.export_safetensors(ckpt, tmp_path / "s", select="params.layer_1")
    tensors, _ = _load_all(str(tmp_path / "s"))
    assert sorted(tensors) == ["params.layer_1.kernel", "params.layer_1.scale"]
    with pytest.raises(ValueError, match="nothing to export under 'params.nope'"):
        jaxckpt.export_safetensors(ckpt, tmp_path / "n", select="params.nope")
    assert not os.path.exists(tmp_path / "n")


def test_a_leaf_larger_than_the_host_budget_exports_in_slabs(ckpt, tmp_path, monkeypatch):
    from jaxckpt._read import reader as _reader

    reads = []
    real = _reader.Reader.read_arrays

    def counting(self, requests):
        out = real(self, requests)
        reads.extend(sum(p.nbytes for p in pieces) for pieces in out)
        return out

    # Observe (not replace) the reads: every one stays within the budget.
    monkeypatch.setattr(_reader.Reader, "read_arrays", counting)
    budget = 1 << 20  # the embed leaf is 2.4 MiB
    jaxckpt.export_safetensors(ckpt, tmp_path / "b", max_host_bytes=budget)
    assert max(reads) <= budget and len(reads) > 3
    tensors, _ = _load_all(str(tmp_path / "b"))
    assert tensors["params.embed"][1].tobytes() == _tree()["params"]["embed"].tobytes()


def test_unsupported_dtype_is_refused_naming_the_key_path_or_skipped(tmp_path):
    path = str(tmp_path / "c")
    jaxckpt.save(path, {"w": np.ones(3, np.float32), "rng": jax.random.key(0),
                        "z": np.ones(2, np.complex64), "q": np.ones(4, ml_dtypes.int4)})
    with pytest.raises(TypeError) as e:
        jaxckpt.export_safetensors(path, tmp_path / "out")
    msg = str(e.value)
    assert "['rng'] (PRNG keys" in msg and "['z'] (dtype complex64)" in msg
    assert "['q'] (dtype int4)" in msg and "skip_unsupported" in msg
    assert not os.path.exists(tmp_path / "out")
    done = jaxckpt.export_safetensors(path, tmp_path / "out", skip_unsupported=True)
    assert sorted(done["skipped"]) == ["q", "rng", "z"]
    assert list(_load_all(str(tmp_path / "out"))[0]) == ["w"]
    with pytest.raises(FileExistsError):
        jaxckpt.export_safetensors(path, tmp_path / "out", skip_unsupported=True)


def test_nnx_value_suffix_is_dropped(tmp_path):
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    path = str(tmp_path / "nnx")
    jaxckpt.save(path, nnx.state(model))
    jaxckpt.export_safetensors(path, tmp_path / "out")
    assert sorted(_load_all(str(tmp_path / "out"))[0]) == ["bias", "kernel"]


def test_round_trip_onto_a_target_with_shardings(ckpt, tmp_path):
    out = str(tmp_path / "rt")
    jaxckpt.export_safetensors(ckpt, out, prefix="params", max_shard_bytes=1 << 20)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("x",))
    row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    src = _tree()["params"]
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=row), src)
    target["layer_1"]["scale"] = np.zeros(16, np.int8)  # a NumPy leaf: a NumPy array
    got = jaxckpt.import_safetensors(out, target)
    assert isinstance(got["layer_1"]["scale"], np.ndarray)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(src)[0],
                            jax.tree.leaves(got)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    assert got["embed"].sharding == row and got["layer_1"]["kernel"].dtype == jnp.bfloat16
    # Without a target: nested dicts of NumPy arrays.
    raw = jaxckpt.import_safetensors(out)
    assert raw["layer_0"]["bias"].tobytes() == src["layer_0"]["bias"].tobytes()
    # A target that does not fit names every offending leaf.
    bad = {"embed": jax.ShapeDtypeStruct((2, 2), jnp.float32), "missing": np.zeros(1)}
    with pytest.raises(jaxckpt.StructureMismatchError) as e:
        jaxckpt.import_safetensors(out, bad)
    assert "shape (2, 2) in the target, (600, 1024)" in str(e.value)
    assert "['missing'] ('missing'): not in" in str(e.value)
    assert "partial=True" in str(e.value)
    got = jaxckpt.import_safetensors(out, {"embed": np.zeros((600, 1024), np.float32)},
                                     partial=True)
    assert got["embed"].tobytes() == src["embed"].tobytes()


def test_cli_export(ckpt, tmp_path, capsys):
    out = str(tmp_path / "cli")
    rc = main(["export", ckpt, out, "--format", "safetensors", "--prefix", "params"])
    stdout, _ = capsys.readouterr()
    assert rc == 0 and "5 tensors" in stdout, stdout
    assert "layer_0.kernel" in _load_all(out)[0]
    rc = main(["export", ckpt, out])
    _, err = capsys.readouterr()
    assert rc == 2 and "exists" in err
    rc = main(["export", ckpt, str(tmp_path / "x"), "--format", "gguf"])
    assert rc == 2
