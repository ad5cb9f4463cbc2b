"""keep_best: the best K checkpoints by a metric saved with them, beside the newest max_to_keep."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxckpt
from jaxckpt._directory import best as _best

TF_FIELDS = {"model_checkpoint_path", "all_model_checkpoint_paths",
             "all_model_checkpoint_timestamps", "last_preserved_timestamp"}


def _names(m) -> list[str]:
    return [os.path.basename(p) for p in m.checkpoints]


def _run(m, values) -> None:
    for i, v in enumerate(values, 1):
        m.save({"w": np.full(3, i, np.int32)},
               metrics=None if v is None else {"loss": v, "step": i})
    m.wait_until_finished()


def test_the_best_k_stay_beside_the_newest_max_to_keep(tmp_path):
    # ckpt-4 has no metric and ckpt-6 NaN: never best; the two lowest losses
    # are ckpt-8 (0.1) and ckpt-2 (0.2), the newest two ckpt-8 and ckpt-9.
    losses = [0.5, 0.2, 0.9, None, 0.8, math.nan, 0.95, 0.1, 0.99]
    with jaxckpt.CheckpointManager(tmp_path / "min", max_to_keep=2,
                                   keep_best=(2, "loss", "min")) as m:
        _run(m, losses)
        assert _names(m) == ["ckpt-2", "ckpt-8", "ckpt-9"]
        assert m.restore(2)["w"].tolist() == [2, 2, 2]  # kept ones restore by number
    assert sorted(os.listdir(tmp_path / "min")) == ["checkpoint", "ckpt-2", "ckpt-8", "ckpt-9"]
    # "max" ranks the other way: 0.99 (ckpt-9, newest anyway) and 0.95 (ckpt-7).
    with jaxckpt.CheckpointManager(tmp_path / "max", max_to_keep=1,
                                   keep_best=(2, "loss", "max")) as m:
        _run(m, losses)
        assert _names(m) == ["ckpt-7", "ckpt-9"]
    # Ties: the newer checkpoint ranks first.
    with jaxckpt.CheckpointManager(tmp_path / "tie", max_to_keep=1,
                                   keep_best=(1, "loss", "min")) as m:
        _run(m, [0.3, 0.1, 0.1, 0.5])
        assert _names(m) == ["ckpt-3", "ckpt-4"]
    # Without keep_best the metrics are stored and TensorFlow's rules alone apply.
    with jaxckpt.CheckpointManager(tmp_path / "plain", max_to_keep=2) as m:
        _run(m, [0.1, 0.5, 0.6])
        assert _names(m) == ["ckpt-2", "ckpt-3"]
        assert jaxckpt.checkpoint_metrics(m.latest_checkpoint) == {"loss": 0.6, "step": 3.0}


def test_a_restarted_manager_ranks_by_the_metrics_in_the_checkpoints(tmp_path):
    d = tmp_path / "run"
    with jaxckpt.CheckpointManager(d, max_to_keep=1, keep_best=(2, "loss", "min")) as m:
        _run(m, [0.3, 0.1, 0.2, 0.9])
        assert _names(m) == ["ckpt-2", "ckpt-3", "ckpt-4"]
    state = (d / "checkpoint").read_text()
    assert {line.split(":")[0] for line in state.splitlines()} <= TF_FIELDS, state
    # A new process: its manager knows the kept ones' metrics from their manifests.
    code = f"""
import numpy as np, jaxckpt, os
with jaxckpt.CheckpointManager({str(d)!r}, max_to_keep=1, keep_best=(2, "loss", "min")) as m:
    m.save({{"w": np.zeros(3, np.int32)}}, metrics={{"loss": 0.15}})
    m.wait_until_finished()
    print([os.path.basename(p) for p in m.checkpoints])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert out.returncode == 0, out.stderr
    # Best two: ckpt-2 (0.1) and ckpt-5 (0.15, also the newest); 0.2 and 0.9 go.
    assert out.stdout.split("\n")[-2] == "['ckpt-2', 'ckpt-5']"
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-2", "ckpt-5"]


def test_jaxckpt_ls_shows_the_metrics(tmp_path):
    d = tmp_path / "run"
    with jaxckpt.CheckpointManager(d, max_to_keep=1, keep_best=(1, "loss", "min")) as m:
        _run(m, [0.25, 0.5])
        listing = m.list_checkpoints()
    assert listing.headers[-1] == "metrics"
    assert [row[-1] for row in listing.rows()] == ["loss=0.25 step=1", "loss=0.5 step=2"]
    assert "loss=0.25 step=1" in repr(listing)
    out = subprocess.run([sys.executable, "-m", "jaxckpt", "ls", str(d), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [e["metrics"] for e in json.loads(out.stdout)] == [
        {"loss": 0.25, "step": 1.0}, {"loss": 0.5, "step": 2.0}]


@pytest.mark.parametrize("keep_best, error, match", [
    ((0, "loss", "min"), ValueError, "positive int"),
    ((True, "loss", "min"), ValueError, "positive int"),
    ((2, "", "min"), ValueError, "metric name"),
    ((2, "loss", "lowest"), ValueError, "'min' or 'max'"),
    ("loss", TypeError, "tuple"),
    ((2, "loss"), TypeError, "tuple"),
])
def test_a_bad_keep_best_is_refused_before_anything_is_written(tmp_path, keep_best, error, match):
    with pytest.raises(error, match=match):
        jaxckpt.CheckpointManager(tmp_path / "run", keep_best=keep_best)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("metrics, match", [
    ([0.1], "dict"),
    ({1: 0.1}, "key 1"),
    ({"loss": "low"}, r"metrics\['loss'\]"),
    ({"loss": True}, r"metrics\['loss'\]"),
    ({"loss": np.zeros(2)}, r"metrics\['loss'\]"),
    ({"loss": None}, r"metrics\['loss'\]"),
])
def test_bad_metrics_are_refused_and_nothing_is_queued(tmp_path, metrics, match):
    with jaxckpt.CheckpointManager(tmp_path / "run", keep_best=(1, "loss", "min")) as m:
        with pytest.raises(TypeError, match=match):
            m.save({"w": np.ones(2)}, metrics=metrics)
        assert not m.pending and not m.checkpoints
    assert os.listdir(tmp_path / "run") == []


def test_numpy_and_0d_metrics_are_numbers():
    got = _best.check_metrics({"a": np.float32(0.5), "b": np.asarray(2), "c": 3, "d": math.inf})
    assert got == {"a": 0.5, "b": 2.0, "c": 3.0, "d": math.inf}
    assert all(type(v) is float for v in got.values())


def test_readme_keep_best_snippet_runs(tmp_path, capsys):
    from test_readme import BLOCKS, _exec

    blocks = [body for lang, body in BLOCKS if lang == "python" and "keep_best=" in body]
    assert len(blocks) == 1
    _exec(blocks[0], {}, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "['ckpt-3', 'ckpt-4', 'ckpt-5', 'ckpt-9', 'ckpt-10']"
    assert lines[1] == "{'eval_loss': 0.7}"
