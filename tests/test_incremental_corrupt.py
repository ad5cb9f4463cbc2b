"""Damage in a file that incremental saves share (issue 16): every checkpoint
whose manifest names that file reports it, by ``verify`` and by ``restore``
(raw and through a manager), whichever checkpoint's directory was damaged and
even after the one that first wrote it is gone."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import jaxckpt
from _reliability import TALLY

SMALL = {f"w{i:02d}": np.full(100_000, i, np.float32) for i in range(30)}  # 12 MiB packed: 3 shards


def _state(step: int) -> dict:
    rng = np.random.default_rng(0)
    return {"base": rng.standard_normal((1024, 1024)).astype(np.float32),  # 4 MiB: one file
            "small": SMALL, "z_changing": np.full(10, step, np.float32), "step": step}


def _save(tmp_path) -> list[str]:
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        for step in (1, 2, 3):
            m.save(_state(step), step)
    return [str(tmp_path / f"ckpt-{s}") for s in (1, 2, 3)]


def _file(checkpoint: str, rel: str) -> str:
    data = next(e for e in os.listdir(checkpoint) if e.startswith("d-"))
    return os.path.join(checkpoint, data, rel)


def _shared(checkpoints: list[str], rel: str) -> None:
    """``rel`` is one file (one inode) in every checkpoint."""
    inodes = {os.stat(_file(c, rel)).st_ino for c in checkpoints}
    assert len(inodes) == 1 and os.stat(_file(checkpoints[0], rel)).st_nlink == len(checkpoints)


def _flip(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))


def _reported_everywhere(directory, checkpoints: list[str], leaf: str) -> None:
    for c in checkpoints:
        with pytest.raises(jaxckpt.CorruptCheckpointError, match=leaf):
            jaxckpt.verify(c)
        with pytest.raises(jaxckpt.CorruptCheckpointError, match=leaf):
            jaxckpt.restore(c)
    with jaxckpt.CheckpointManager(directory, max_to_keep=None) as m:
        for c in checkpoints:
            with pytest.raises(jaxckpt.CorruptCheckpointError, match=leaf):
                m.restore(int(c.rsplit("-", 1)[1]))


def test_a_damaged_shared_packed_shard_is_reported_in_every_checkpoint(tmp_path):
    checkpoints = _save(tmp_path)
    # The first shard file holds only unchanged small leaves: shared by all three.
    _shared(checkpoints, "packed/c/0")
    TALLY["corruptions tried"] += 1
    _flip(_file(checkpoints[1], "packed/c/0"), 12345)  # damaged through the middle one's name
    _reported_everywhere(tmp_path, checkpoints, "small")
    TALLY["corruptions caught"] += 1


def test_a_damaged_shared_large_leaf_file_fails_restore_in_every_checkpoint(tmp_path):
    checkpoints = _save(tmp_path)
    base = next(rel for rel in _rels(checkpoints[0]) if rel.startswith("a/"))
    _shared(checkpoints, base)
    shutil.rmtree(checkpoints[0])  # the checkpoint that wrote it, deleted by hand
    TALLY["corruptions tried"] += 1
    _flip(_file(checkpoints[2], base), 1 << 20)
    _reported_everywhere(tmp_path, checkpoints[1:], "base")
    TALLY["corruptions caught"] += 1


def test_a_truncated_shared_file_is_reported_in_every_checkpoint(tmp_path):
    checkpoints = _save(tmp_path)
    TALLY["corruptions tried"] += 1
    os.truncate(_file(checkpoints[0], "packed/c/1"), 1000)
    _reported_everywhere(tmp_path, checkpoints, "small")
    TALLY["corruptions caught"] += 1


def test_damage_in_a_file_not_shared_stays_in_its_checkpoint(tmp_path):
    """The changed leaf's shard file is each checkpoint's own: damage in one
    checkpoint's copy leaves the others whole."""
    checkpoints = _save(tmp_path)
    last = sorted(r for r in _rels(checkpoints[0]) if r.startswith("packed/"))[-1]
    assert os.stat(_file(checkpoints[1], last)).st_nlink == 1
    TALLY["corruptions tried"] += 1
    _flip(_file(checkpoints[1], last), 100)
    with pytest.raises(jaxckpt.CorruptCheckpointError):
        jaxckpt.verify(checkpoints[1])
    TALLY["corruptions caught"] += 1
    for c in (checkpoints[0], checkpoints[2]):
        jaxckpt.verify(c)
        np.testing.assert_array_equal(jaxckpt.restore(c)["small"]["w29"], SMALL["w29"])


def _rels(checkpoint: str) -> list[str]:
    data = _file(checkpoint, "")
    return [os.path.relpath(os.path.join(r, n), data) for r, _, names in os.walk(data)
            for n in names if n != "_CHECKPOINT"]
