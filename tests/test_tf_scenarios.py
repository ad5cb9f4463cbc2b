"""TensorFlow's CheckpointManager test scenarios, for tf_compat and the core manager."""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
import pytest

import jaxckpt
from jaxckpt import tf_compat


class Clock:
    def __init__(self, t=10000.0):
        self.t = t

    def __call__(self):
        return self.t


class Core:
    """Drives the core manager with a TF-like surface."""

    name = "core"

    def __init__(self, directory, max_to_keep, **kw):
        self.value = np.zeros(2)
        self.step = 0
        if "step_counter" in kw:
            kw["step_counter"] = lambda s: s["step"]
        self.m = jaxckpt.CheckpointManager(directory, max_to_keep=max_to_keep, **kw)

    def save(self, checkpoint_number=None, check_interval=True):
        path = self.m.save({"v": self.value, "step": self.step}, checkpoint_number, check_interval)
        self.m.wait_until_finished()  # TF's scenarios look at the disk right after save
        return path

    def restore_latest(self):
        return self.m.restore_or_initialize()

    @property
    def checkpoints(self):
        self.m.wait_until_finished()
        return self.m.checkpoints

    @property
    def latest(self):
        self.m.wait_until_finished()
        return self.m.latest_checkpoint

    def close(self):
        self.m.close()


class TF:
    name = "tf"

    def __init__(self, directory, max_to_keep, **kw):
        self.ckpt = tf_compat.Checkpoint(v=np.zeros(2), step=0)
        if "step_counter" in kw:
            kw["step_counter"] = lambda: self.ckpt.step
        self.m = tf_compat.CheckpointManager(self.ckpt, directory, max_to_keep, **kw)

    value = property(lambda s: s.ckpt.v, lambda s, v: setattr(s.ckpt, "v", v))
    step = property(lambda s: s.ckpt.step, lambda s, v: setattr(s.ckpt, "step", v))

    def save(self, checkpoint_number=None, check_interval=True):
        path = self.m.save(checkpoint_number, check_interval)
        self.m.wait_until_finished()
        return path

    def restore_latest(self):
        return self.m.restore_or_initialize()

    checkpoints = property(lambda s: s.m.checkpoints)
    latest = property(lambda s: s.m.latest_checkpoint)

    def close(self):
        self.m.close()


@pytest.fixture(params=[Core, TF], ids=["core", "tf_compat"])
def make(request):
    made = []

    def _make(*a, **kw):
        m = request.param(*a, **kw)
        made.append(m)
        return m

    yield _make
    for m in made:
        m.close()


def _p(d, n, name="ckpt"):
    return os.path.join(str(d), f"{name}-{n}")


def test_deletion(tmp_path, make):
    m = make(tmp_path, 3)
    paths = [m.save() for _ in range(4)]
    assert m.checkpoints == paths[1:]
    assert not os.path.exists(paths[0]) and all(os.path.exists(p) for p in paths[1:])


def test_keep_all_across_reopen(tmp_path, make):
    m = make(tmp_path, None)
    paths = [m.save() for _ in range(3)]
    m.close()
    m2 = make(tmp_path, None)
    assert m2.checkpoints == paths
    assert m2.latest == paths[-1]
    m2.restore_latest()  # tf_compat: brings back save_counter
    more = m2.save()
    assert m2.checkpoints == paths + [more]
    assert all(os.path.exists(p) for p in paths + [more])


def test_save_restore_state_with_preservation(tmp_path, make):
    clock = Clock()
    m = make(tmp_path, 2, keep_checkpoint_every_n_hours=1.5, clock=clock)
    first = m.save()
    clock.t += 3600.0
    second = m.save()
    clock.t += 3600.0
    third = m.save()  # first leaves the set: 10000 - 1.5h < last preserved (10000 - 1): deleted
    assert not os.path.exists(first)
    assert m.checkpoints == [second, third]
    clock.t += 3600.0
    fourth = m.save()  # second leaves the set: 1h after start >= 1.5h? no -> deleted
    assert not os.path.exists(second)
    clock.t += 3600.0
    fifth = m.save()  # third (2h) - 1.5h >= 9999: preserved
    assert os.path.exists(third) and m.checkpoints == [fourth, fifth]
    state_text = (tmp_path / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-5"' in state_text
    assert f"last_preserved_timestamp: {10000.0 + 2 * 3600.0!r}" in state_text
    m.close()
    # Reopen: the preserved one is not managed, the active set and timestamps are recovered.
    clock.t += 3600.0
    m2 = make(tmp_path, 2, keep_checkpoint_every_n_hours=1.5, clock=clock)
    assert m2.checkpoints == [fourth, fifth]
    sixth = m2.save()
    assert not os.path.exists(fourth) and os.path.exists(third)
    assert m2.checkpoints == [fifth, sixth]


def test_clock_reset_keeps_everything(tmp_path, make, caplog):
    clock = Clock(10000.0)
    m = make(tmp_path, 1, keep_checkpoint_every_n_hours=1.0, clock=clock)
    clock.t = 14000.0
    a = m.save()
    clock.t += 7200.0
    b = m.save()  # a is preserved: over 1 h newer than the manager's start
    m.close()
    clock.t = 500.0  # went backwards
    with caplog.at_level(logging.WARNING, logger="jaxckpt"):
        m2 = make(tmp_path, 1, keep_checkpoint_every_n_hours=1.0, clock=clock)
    assert any("clock" in r.message for r in caplog.records)
    m2.restore_latest()
    c = m2.save()
    d = m2.save()
    assert os.path.exists(a) and os.path.exists(b), "old checkpoints deleted after a clock reset"
    assert m2.checkpoints == [d] and not os.path.exists(c)


def test_custom_numbering(tmp_path, make):
    m = make(tmp_path, 2)
    assert m.save(checkpoint_number=5) == _p(tmp_path, 5)
    assert m.save(checkpoint_number=np.int64(7)) == _p(tmp_path, 7)
    assert m.save(checkpoint_number=5) == _p(tmp_path, 5)  # replaced, moves to newest
    assert m.checkpoints == [_p(tmp_path, 7), _p(tmp_path, 5)]
    assert m.latest == _p(tmp_path, 5)


def test_custom_checkpoint_prefix(tmp_path, make):
    m = make(tmp_path, 2, checkpoint_name="model")
    assert m.save() == _p(tmp_path, 1, "model")
    assert os.path.isdir(tmp_path / "model-1")
    assert jaxckpt.latest_checkpoint(tmp_path) == _p(tmp_path, 1, "model")


def test_pathlib_directory(tmp_path, make):
    m = make(pathlib.Path(tmp_path) / "sub", 2)
    m.save()
    assert m.latest == _p(tmp_path / "sub", 1)


def test_restore_or_initialize(tmp_path, make):
    calls = []
    m = make(tmp_path, 2, init_fn=lambda: calls.append(1) or {"v": np.zeros(2), "step": 0})
    assert m.restore_latest() is None or m.name == "core"
    assert calls == [1]
    m.value = np.array([3.0, 4.0])
    m.step = 9
    path = m.save()
    m.close()
    m2 = make(tmp_path, 2, init_fn=lambda: calls.append(2))
    out = m2.restore_latest()
    if m2.name == "tf":
        assert out == path and np.array_equal(m2.value, [3.0, 4.0]) and m2.step == 9
        assert m2.ckpt.save_counter == 1
    else:
        assert np.array_equal(out["v"], [3.0, 4.0]) and out["step"] == 9
    # The core manager takes the target's structure from jax.eval_shape(init_fn),
    # which traces init_fn once; TensorFlow's does not call it.
    assert calls == ([1] if m2.name == "tf" else [1, 2])


def test_checkpoint_interval(tmp_path, make):
    m = make(tmp_path, None, step_counter=True, checkpoint_interval=2)
    saved = []
    for step in range(8):
        m.step = step
        saved.append(m.save() is not None)
    assert saved == [True, False, True, False, True, False, True, False]
    m.step = 7
    assert m.save(check_interval=False) is not None  # forced despite the interval
    assert m.save(check_interval=False) is None  # same step twice: skipped


def test_checkpoint_interval_with_restore(tmp_path, make):
    m = make(tmp_path, None, step_counter=True, checkpoint_interval=3)
    m.step = 4
    assert m.save() is not None
    m.close()
    m2 = make(tmp_path, None, step_counter=True, checkpoint_interval=3)
    m2.restore_latest()
    m2.step = 5
    assert m2.save() is None  # 5 < 4 + 3
    m2.step = 7
    assert m2.save() is not None


def test_last_checkpoint_step(tmp_path, make):
    m = make(tmp_path, None, step_counter=True, checkpoint_interval=5, last_checkpoint_step=10)
    m.step = 12
    assert m.save() is None
    m.step = 15
    assert m.save() is not None


def test_state_file_is_relative_with_timestamps(tmp_path, make):
    clock = Clock(1234.5)
    m = make(tmp_path, 2, clock=clock)
    m.save()
    clock.t = 1300.25
    m.save()
    assert (tmp_path / "checkpoint").read_text() == (
        'model_checkpoint_path: "ckpt-2"\n'
        'all_model_checkpoint_paths: "ckpt-1"\n'
        'all_model_checkpoint_paths: "ckpt-2"\n'
        "all_model_checkpoint_timestamps: 1234.5\n"
        "all_model_checkpoint_timestamps: 1300.25\n"
        "last_preserved_timestamp: 1233.5\n"
    )


def test_reads_a_state_file_tensorflow_wrote(tmp_path, make):
    src = make(tmp_path, None)
    src.save()
    src.save()
    src.close()
    (tmp_path / "checkpoint").write_text(
        f'model_checkpoint_path: "{tmp_path}/ckpt-2"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-1"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-2"\n')
    m = make(tmp_path, 2)
    assert m.latest == _p(tmp_path, 2)
    assert m.save() == _p(tmp_path, 3) or m.name == "tf"
    assert jaxckpt.latest_checkpoint(tmp_path) in (_p(tmp_path, 3), _p(tmp_path, 1))
    assert os.path.exists(_p(tmp_path, 1)) and os.path.exists(_p(tmp_path, 2))  # unmanaged: kept


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_bad_max_to_keep(tmp_path, bad):
    with pytest.raises(ValueError, match="max_to_keep"):
        jaxckpt.CheckpointManager(tmp_path, max_to_keep=bad)
    with pytest.raises(ValueError, match="max_to_keep"):
        tf_compat.CheckpointManager(tf_compat.Checkpoint(), tmp_path, bad)
    assert not (tmp_path / "checkpoint").exists()


def test_interval_without_step_counter(tmp_path):
    with pytest.raises(ValueError, match="step_counter"):
        jaxckpt.CheckpointManager(tmp_path, checkpoint_interval=2)
    with pytest.raises(ValueError, match="step_counter"):
        tf_compat.CheckpointManager(tf_compat.Checkpoint(), tmp_path, 2, checkpoint_interval=2)


def test_tf_save_counter_always_increments(tmp_path):
    ckpt = tf_compat.Checkpoint(v=np.ones(1))
    with tf_compat.CheckpointManager(ckpt, tmp_path, 5) as m:
        assert m.save() == _p(tmp_path, 1)
        assert m.save(checkpoint_number=10) == _p(tmp_path, 10)
        assert m.save() == _p(tmp_path, 3)
        assert ckpt.save_counter == 3
        ckpt.save_counter = 0
        m.restore_or_initialize()
        assert ckpt.save_counter == 3
