"""Damaged checkpoints are refused, naming what is damaged; never wrong bytes."""

from __future__ import annotations

import os

import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointNotFoundError, CorruptCheckpointError


def _save(tmp_path):
    tree = {
        "big": np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024),
        "small": np.arange(100, dtype=np.int64),
        "other": np.ones(50, np.float16),
        "n": 3,
    }
    path = tmp_path / "c"
    jaxckpt.save(path, tree)
    return path, tree


def _files(path, sub):
    out = []
    for root, _, files in os.walk(path / sub):
        out += [os.path.join(root, f) for f in files]
    assert out, f"no files under {sub}"
    return out


def _flip(file, offset):
    with open(file, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("where,leaf", [("a", "['big']"), ("packed", "['small']")])
def test_byte_flip_is_caught_by_verify_and_restore(tmp_path, where, leaf):
    path, tree = _save(tmp_path)
    _flip(_files(path, where)[0], 100)
    with pytest.raises(CorruptCheckpointError) as e:
        jaxckpt.verify(path)
    assert leaf in str(e.value)
    with pytest.raises(CorruptCheckpointError, match=r"\[") as e:
        jaxckpt.restore(path)
    assert leaf in str(e.value)


def test_flip_in_one_packed_leaf_names_only_that_leaf_and_spares_a_partial_restore(tmp_path):
    path, tree = _save(tmp_path)
    _flip(_files(path, "packed")[0], 20)
    with pytest.raises(CorruptCheckpointError) as e:
        jaxckpt.verify(path)
    msg = str(e.value)
    assert "['small']" in msg or "['other']" in msg


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_missing_or_truncated_array_file(tmp_path, damage):
    path, _ = _save(tmp_path)
    file = _files(path, "a")[0]
    if damage == "delete":
        os.remove(file)
    else:
        with open(file, "r+b") as f:
            f.truncate(os.path.getsize(file) // 2)
    with pytest.raises(CorruptCheckpointError, match=r"\['big'\]"):
        jaxckpt.verify(path)
    with pytest.raises(CorruptCheckpointError, match=r"\['big'\]"):
        jaxckpt.restore(path)
    # A partial restore of an undamaged leaf still works.
    out = jaxckpt.restore(path, {"small": np.zeros(100, np.int64)}, partial=True)
    assert np.array_equal(out["small"], np.arange(100))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_damaged_manifest(tmp_path, damage):
    path, _ = _save(tmp_path)
    file = path / "_CHECKPOINT"
    data = file.read_bytes()
    if damage == "flip":
        _flip(file, len(data) - 3)
    elif damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        file.write_bytes(b"not a manifest at all")
    with pytest.raises(CorruptCheckpointError, match="_CHECKPOINT"):
        jaxckpt.restore(path)
    with pytest.raises(CorruptCheckpointError):
        jaxckpt.verify(path)


def test_state_file_naming_a_gone_checkpoint(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path) as m:
        m.save({"a": np.ones(3)})
        m.save({"a": np.zeros(3)})
    import shutil

    shutil.rmtree(tmp_path / "ckpt-2")
    assert jaxckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-1")
    with pytest.raises(CheckpointNotFoundError):
        jaxckpt.restore(tmp_path / "ckpt-2")
    with jaxckpt.CheckpointManager(tmp_path) as m:
        assert m.checkpoints == [str(tmp_path / "ckpt-1")]
        assert np.array_equal(m.restore()["a"], np.ones(3))


def test_garbage_state_file(tmp_path):
    (tmp_path / "checkpoint").write_text("\x00\x01 garbage")
    with pytest.raises(CorruptCheckpointError, match="checkpoint"):
        jaxckpt.latest_checkpoint(tmp_path)
