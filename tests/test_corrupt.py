"""Damaged checkpoints are refused, naming what is damaged; never wrong bytes.

Every stored file of a checkpoint is damaged in turn (byte flips at seeded
offsets including its first and last bytes, zeroing, truncations, deletion),
each on a fresh copy: ``verify`` and ``restore`` must raise
``CorruptCheckpointError`` (``CheckpointNotFoundError`` once the commit
record is gone) naming the checkpoint and a leaf stored in that file.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys

import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointNotFoundError, CorruptCheckpointError, _tree, cli
from jaxckpt._read import reader as _reader

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY, assert_equal_trees  # noqa: E402


@pytest.fixture(autouse=True)
def _packed_in_files(monkeypatch):
    """Small trees' packed leaves go in a file here, not in the manifest
    (tests/test_packed.py covers that case), so there is a file to damage."""
    monkeypatch.setattr(jaxckpt._format.manifest, "INLINE_BYTES", 0)


def _tree_to_save():
    return {
        "big": np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024),
        "mid": np.arange(3 << 19, dtype=np.int16).reshape(1536, 1024),
        "small": np.arange(100, dtype=np.int64),
        "other": np.ones(50, np.float16),
        "many": [np.full(5000, i, np.float32) for i in range(30)],
        "n": 3,
    }


def _save(tmp_path):
    tree = _tree_to_save()
    path = tmp_path / "c"
    jaxckpt.save(path, tree)
    return path, tree


def _data(path) -> str:
    """Where the checkpoint's arrays are: its ``data`` subdirectory (format 3)."""
    return os.path.join(path, _reader.read_manifest(str(path)).get("data", ""))


def _files(path, sub):
    out = []
    for root, _, files in os.walk(os.path.join(_data(path), sub) if sub else path):
        out += [os.path.join(root, f) for f in files]
    assert out, f"no files under {sub}"
    return out


def _flip(file, offset):
    with open(file, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def _leaves_by_file(path) -> dict[str, set[str]]:
    """Relative file -> the key paths of the leaves stored in it."""
    manifest = _reader.read_manifest(str(path))
    out: dict[str, set[str]] = {"_CHECKPOINT": {"_CHECKPOINT"}}
    for rel in (os.path.relpath(f, path) for f in _files(path, "")):
        if rel == "_CHECKPOINT":
            continue
        top = rel.split(os.sep)
        if top[0] == _reader.read_manifest(str(path)).get("data"):
            top = top[1:]
        names = set()
        for leaf in manifest["leaves"]:
            where = leaf.get("where", [None])
            if (top[0] == "packed" and where[0] == "packed") or (
                    top[0] == "a" and where[0] == "array" and where[1] == top[1]):
                names.add(_tree.path_str(leaf["path"]))
        assert names, rel
        out[rel] = names
    return out


def _damages(size: int, rng: random.Random) -> list[tuple[str, object]]:
    offsets = sorted({0, size - 1, *(rng.randrange(size) for _ in range(6))})
    return ([("flip", o) for o in offsets]
            + [("zero", None), ("truncate", 0), ("truncate", size // 2),
               ("truncate", size - 1), ("delete", None)])


def _apply(file: str, kind: str, arg) -> None:
    if kind == "flip":
        _flip(file, arg)
    elif kind == "zero":
        size = os.path.getsize(file)
        with open(file, "r+b") as f:
            f.write(bytes(size))
    elif kind == "truncate":
        with open(file, "r+b") as f:
            f.truncate(arg)
    else:
        os.remove(file)


def test_every_file_damaged_every_way_is_refused_by_name(tmp_path):
    original, tree = _save(tmp_path)
    expected = _leaves_by_file(original)
    rng = random.Random(4)
    problems = []
    for rel, names in sorted(expected.items()):
        size = os.path.getsize(original / rel)
        for kind, arg in _damages(size, rng):
            TALLY["corruptions tried"] += 1
            case = f"{rel} {kind} {arg}"
            copy = tmp_path / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(original, copy)
            _apply(str(copy / rel), kind, arg)
            want = (CheckpointNotFoundError if rel == "_CHECKPOINT" and kind == "delete"
                    else CorruptCheckpointError)
            for what, call in (("verify", jaxckpt.verify), ("restore", jaxckpt.restore)):
                try:
                    out = call(copy)
                except want as e:
                    msg = str(e)
                    if str(copy) not in msg or not (
                            any(n in msg for n in names) or want is CheckpointNotFoundError):
                        problems.append(f"{case}: {what} message names neither the "
                                        f"checkpoint nor one of {sorted(names)[:3]}: {msg[:300]}")
                except Exception as e:  # the wrong type is a failure too
                    problems.append(f"{case}: {what} raised {e!r}")
                else:
                    returned = "" if out is None else " (with its data)"
                    problems.append(f"{case}: {what} accepted the damage{returned}")
            if not any(p.startswith(case + ":") for p in problems):
                TALLY["corruptions caught"] += 1
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("where,leaf", [("a", "['big']"), ("packed", "['many'][0]")])
def test_byte_flip_is_caught_by_verify_and_restore(tmp_path, where, leaf):
    path, tree = _save(tmp_path)
    _flip(_files(path, where)[0], 100)
    with pytest.raises(CorruptCheckpointError) as e:
        jaxckpt.verify(path)
    assert leaf in str(e.value)
    with pytest.raises(CorruptCheckpointError, match=r"\[") as e:
        jaxckpt.restore(path)
    assert leaf in str(e.value)
    assert cli.main(["verify", str(path)]) == 1


def test_flip_in_one_packed_chunk_names_only_its_leaves_and_spares_a_partial_restore(tmp_path):
    path, tree = _save(tmp_path)
    _flip(_files(path, "packed")[0], 20)  # the first 256 KiB chunk: ['many'][0] to [13]
    for call in (jaxckpt.verify, jaxckpt.restore):
        with pytest.raises(CorruptCheckpointError) as e:
            call(path)
        msg = str(e.value)
        assert "['many'][0]" in msg and "['many'][13]" in msg, msg
        assert "['many'][14]" not in msg and "['small']" not in msg, msg  # undamaged chunks
    out = jaxckpt.restore(path, {"small": np.zeros(100, np.int64)}, partial=True)
    assert np.array_equal(out["small"], tree["small"])


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_missing_or_truncated_array_file(tmp_path, damage):
    path, _ = _save(tmp_path)
    file = next(f for f in _files(path, "a") if os.path.getsize(f) > (4 << 20))  # ['big']
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
    with pytest.raises(CorruptCheckpointError):
        jaxckpt.metadata(path)


# ------------------------------------------------------------ the state file


def _two_checkpoints(d, name="ckpt"):
    with jaxckpt.CheckpointManager(d, checkpoint_name=name) as m:
        m.save({"a": np.ones(3)})
        m.save({"a": np.zeros(3)})


def test_state_file_naming_a_gone_checkpoint(tmp_path):
    _two_checkpoints(tmp_path)
    shutil.rmtree(tmp_path / "ckpt-2")
    TALLY["corruptions tried"] += 1
    assert jaxckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-1")
    with pytest.raises(CheckpointNotFoundError, match="ckpt-2"):
        jaxckpt.restore(tmp_path / "ckpt-2")
    with pytest.raises(CheckpointNotFoundError, match="ckpt-2"):
        jaxckpt.verify(tmp_path / "ckpt-2")
    with jaxckpt.CheckpointManager(tmp_path) as m:
        assert m.checkpoints == [str(tmp_path / "ckpt-1")]
        assert np.array_equal(m.restore()["a"], np.ones(3))
        assert np.array_equal(m.restore_or_initialize()["a"], np.ones(3))
        assert m.save({"a": np.full(3, 3.0)}) == str(tmp_path / "ckpt-3")
    TALLY["corruptions caught"] += 1


@pytest.mark.parametrize("content", [b"\x00\x01 garbage", b"", b"  \n", b"model_checkpoint_path: ",
                                     b"all_model_checkpoint_paths: \"ckpt-1\"\n"
                                     b"all_model_checkpoint_timestamps: 1.0\n"
                                     b"all_model_checkpoint_timestamps: 2.0\n",
                                     b"\xff\xfe not utf-8"])
def test_damaged_state_file_is_named_and_a_manager_recovers_from_the_disk(
        tmp_path, caplog, content):
    _two_checkpoints(tmp_path)
    (tmp_path / "checkpoint").write_bytes(content)
    TALLY["corruptions tried"] += 1
    with pytest.raises(CorruptCheckpointError, match="checkpoint"):
        jaxckpt.latest_checkpoint(tmp_path)
    # A manager warns, takes the newest committed checkpoint on disk, and numbers
    # past everything there: nothing saved is ever overwritten or deleted on a guess.
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, max_to_keep=1) as m:
            assert m.latest_checkpoint == str(tmp_path / "ckpt-2")
            assert np.array_equal(m.restore_or_initialize()["a"], np.zeros(3))
            assert m.save({"a": np.full(3, 3.0)}) == str(tmp_path / "ckpt-3")
    assert str(tmp_path / "checkpoint") in caplog.text
    assert jaxckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-3")  # rewritten
    for n in (1, 2, 3):
        jaxckpt.verify(tmp_path / f"ckpt-{n}")
    TALLY["corruptions caught"] += 1


# ------------------------------------------------------------ falling back


def _damage_array_bytes(path):
    for f in _files(path, "packed"):
        _flip(f, 10)


def test_restore_or_initialize_falls_back_to_the_newest_sound_checkpoint(tmp_path, caplog):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=3) as m:
        for i in (1, 2, 3):
            m.save({"a": np.full(3, i, np.int32), "step": i})
    _damage_array_bytes(tmp_path / "ckpt-3")
    TALLY["corruptions tried"] += 1
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, max_to_keep=3) as m:
            with pytest.raises(CorruptCheckpointError, match="ckpt-3"):
                m.restore()  # an explicit restore of the latest refuses it
            out = m.restore_or_initialize()
            assert_equal_trees(out, {"a": np.full(3, 2, np.int32), "step": 2})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tmp_path / "ckpt-3") in w for w in warnings), warnings
    TALLY["corruptions caught"] += 1



def test_tf_compat_restore_or_initialize_falls_back_too(tmp_path, caplog):
    ckpt = jaxckpt.tf_compat.Checkpoint(a=np.zeros(3, np.int32), step=0)
    with jaxckpt.tf_compat.CheckpointManager(ckpt, tmp_path, 3) as tm:
        for i in (1, 2, 3):
            ckpt.a, ckpt.step = np.full(3, i, np.int32), i
            tm.save()
    _damage_array_bytes(tmp_path / "ckpt-3")
    TALLY["corruptions tried"] += 1
    ckpt = jaxckpt.tf_compat.Checkpoint(a=np.zeros(3, np.int32), step=0)
    with jaxckpt.tf_compat.CheckpointManager(ckpt, tmp_path, 3) as tm:
        assert tm.restore_or_initialize() == str(tmp_path / "ckpt-2")
        assert ckpt.step == 2 and np.array_equal(ckpt.a, np.full(3, 2))
    assert str(tmp_path / "ckpt-3") in caplog.text
    TALLY["corruptions caught"] += 1


def test_restore_or_initialize_refuses_when_every_checkpoint_is_damaged(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, init_fn=lambda: {"a": np.zeros(3)}) as m:
        m.save({"a": np.ones(3)})
        m.save({"a": np.ones(3)})
    _damage_array_bytes(tmp_path / "ckpt-2")
    os.remove(tmp_path / "ckpt-1" / "_CHECKPOINT")
    TALLY["corruptions tried"] += 2
    with jaxckpt.CheckpointManager(tmp_path, init_fn=lambda: {"a": np.zeros(3)}) as m:
        # Silently starting over would throw the training run away.
        with pytest.raises(CorruptCheckpointError, match="ckpt-2") as e:
            m.restore_or_initialize()
    assert "ckpt-1" in str(e.value) or "ckpt-2" in str(e.value)
    TALLY["corruptions caught"] += 2
