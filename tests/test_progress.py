"""``progress=True`` on restore and verify: a rich bar on stderr, off by default."""

from __future__ import annotations

import os

import numpy as np
import pytest

import jaxckpt
from jaxckpt._read import reader as _reader


def _save(tmp_path):
    # 4 MiB in one large leaf (its own array) and 1 MiB packed small leaves.
    tree = {"big": np.ones((1024, 1024), np.float32),
            "small": [np.full((256, 64), i, np.float32) for i in range(16)], "step": 3}
    path = str(tmp_path / "c")
    jaxckpt.save(path, tree)
    return path, tree


def _bar_line(err: str, verb: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(verb)]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("verb", ["verify", "restore"])
def test_progress_bar_counts_every_byte(tmp_path, capsys, verb):
    path, tree = _save(tmp_path)
    getattr(jaxckpt, verb)(path)
    assert capsys.readouterr().err == ""  # off by default
    out = getattr(jaxckpt, verb)(path, progress=True)
    line = _bar_line(capsys.readouterr().err, f"{verb} c ")
    assert "5.0/5.0 MiB" in line  # the bar's total is the array bytes, and all were read
    if verb == "restore":
        assert np.array_equal(out["big"], tree["big"]) and out["step"] == 3


def test_progress_through_a_manager_and_a_partial_restore(tmp_path, capsys):
    with jaxckpt.CheckpointManager(tmp_path) as m:
        m.save({"a": np.zeros(1 << 20, np.float32), "b": np.ones(3)})
        out = m.restore(target={"a": np.zeros(1 << 20, np.float32)}, partial=True,
                        progress=True)
    assert out["a"].shape == (1 << 20,)
    line = _bar_line(capsys.readouterr().err, "restore ckpt-1 ")
    assert "4.0/4.0 MiB" in line  # a partial restore completes its bar


def test_verify_reads_on_past_damage_then_raises(tmp_path, capsys):
    path, _ = _save(tmp_path)
    array_dir = os.path.join(path, _reader.read_manifest(str(path)).get("data", ""), "a")
    for root, _, files in os.walk(array_dir):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.seek(100)
                b = fh.read(1)
                fh.seek(100)
                fh.write(bytes([b[0] ^ 1]))
    with pytest.raises(jaxckpt.CorruptCheckpointError, match=r"\['big'\]"):
        jaxckpt.verify(path, progress=True)
    line = _bar_line(capsys.readouterr().err, "verify c ")
    assert "5.0/5.0 MiB" in line  # every leaf was still read, so all damage is named
