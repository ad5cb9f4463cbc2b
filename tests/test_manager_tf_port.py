"""TensorFlow's CheckpointManager scenarios, ported to both jaxckpt managers.

Each scenario of TensorFlow's ``CheckpointManagerTest`` (checkpoint_management
tests) runs against ``jaxckpt.tf_compat.CheckpointManager`` over a
``tf_compat.Checkpoint`` holder and against ``jaxckpt.CheckpointManager`` over a
pytree, through ``_tf_port_helpers.Harness``. Only the public contract
(shared/API.md) is used; time comes from a ``FakeClock`` passed as ``clock=``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from _tf_port_helpers import (  # tests/ is on sys.path under pytest
    KINDS,
    FakeClock,
    Harness,
    ckpt_path,
    read_state_file,
    state_file_text,
    write_tf_state_file,
)

HOUR = 3600.0


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


# ---------------------------------------------------------------- retention


def test_deletion_keeps_max_to_keep_newest(kind, tmp_path):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=3)
        paths = [h.save() for _ in range(4)]
        assert paths == [ckpt_path(tmp_path, n) for n in (1, 2, 3, 4)]
        assert not h.exists(paths[0])
        assert all(h.exists(p) for p in paths[1:])
        assert h.checkpoints == paths[1:]
        assert h.latest == paths[3]
    state = read_state_file(tmp_path)
    assert state["model_checkpoint_path"] == ["ckpt-4"]
    assert state["all_model_checkpoint_paths"] == ["ckpt-2", "ckpt-3", "ckpt-4"]


def test_keep_all_survives_reopen_then_max_to_keep_applies(kind, tmp_path):
    directory = tmp_path / "run"  # not created beforehand, as in TensorFlow
    with Harness(kind, str(directory)) as h:
        h.open(max_to_keep=None)
        first, second, third = (h.save() for _ in range(3))
        assert [first, second, third] == [ckpt_path(directory, n) for n in (1, 2, 3)]
        assert all(h.exists(p) for p in (first, second, third))
        assert h.latest == third
        assert h.checkpoints == [first, second, third]

        h.open(max_to_keep=None)
        fourth = h.save()
        assert fourth == ckpt_path(directory, 4)
        assert h.checkpoints == [first, second, third, fourth]

        # Tightening max_to_keep deletes nothing until the next save.
        h.open(max_to_keep=3)
        assert h.checkpoints == [first, second, third, fourth]
        assert all(h.exists(p) for p in (first, second, third, fourth))
        fifth = h.save()
        assert h.checkpoints == [third, fourth, fifth]
        assert all(h.exists(p) for p in (third, fourth, fifth))
        assert not h.exists(first)
        assert not h.exists(second)


def test_save_restore_state_with_keep_checkpoint_every_n_hours(kind, tmp_path):
    clock = FakeClock(3.0)
    name = {n: ckpt_path(tmp_path, n) for n in range(1, 7)}
    with Harness(kind, tmp_path, clock=clock) as h:
        h.open(max_to_keep=2)
        first_time = clock.now = 10000.0
        assert h.save() == name[1]
        second_time = clock.now = first_time + 3610.0
        assert h.save() == name[2]
        h.wait()
        assert read_state_file(tmp_path)["all_model_checkpoint_timestamps"] == [
            first_time, second_time]
        assert h.checkpoints == [name[1], name[2]]
        assert h.latest == name[2]

        # A restarted job recovers the active set and the timestamps.
        h.open(max_to_keep=2, keep_checkpoint_every_n_hours=1.5)
        assert h.checkpoints == [name[1], name[2]]
        assert h.latest == name[2]
        third_time = clock.now = second_time + 0.2 * HOUR
        assert h.save() == name[3]
        # ckpt-1 is 1.5 h past the last preserved time: preserved, not listed.
        assert h.exists(name[1])
        assert h.exists(name[2])
        assert h.checkpoints == [name[2], name[3]]
        assert read_state_file(tmp_path)["last_preserved_timestamp"] == [first_time]

        fourth_time = clock.now = third_time + 0.5 * HOUR
        assert h.save() == name[4]
        assert h.exists(name[1])
        assert not h.exists(name[2])  # under 1.5 h after ckpt-1: deleted
        assert h.checkpoints == [name[3], name[4]]

        clock.now = fourth_time + 0.5 * HOUR
        assert h.save() == name[5]
        assert not h.exists(name[3])
        assert h.checkpoints == [name[4], name[5]]
        h.wait()
        assert read_state_file(tmp_path)["last_preserved_timestamp"] == [first_time]

        # Another restart: last_preserved_timestamp comes back from the file.
        h.open(max_to_keep=2, keep_checkpoint_every_n_hours=1.5)
        assert h.latest == name[5]
        clock.advance(10.0)
        assert h.save() == name[6]
        h.wait()
        assert read_state_file(tmp_path)["last_preserved_timestamp"] == [fourth_time]
        for n in (1, 4, 5, 6):
            assert h.exists(name[n]), n
        for n in (2, 3):
            assert not h.exists(name[n]), n
        assert h.checkpoints == [name[5], name[6]]


def _warned(caplog, caught) -> list[str]:
    """Messages of WARNING+ log records and Python warnings seen so far."""
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return messages + [str(w.message) for w in caught]


def test_clock_went_backwards_warns_and_keeps_everything(kind, tmp_path, caplog):
    clock = FakeClock(10000.0)
    with Harness(kind, tmp_path, clock=clock) as h:
        h.open(max_to_keep=1, keep_checkpoint_every_n_hours=1.0)
        first = h.save()
        clock.advance(HOUR)
        second = h.save()
        clock.advance(HOUR)
        third = h.save()
        assert not h.exists(first)
        assert h.exists(second)  # preserved: one hour after the start
        assert h.exists(third)
        assert h.checkpoints == [third]
        h.wait()
        assert read_state_file(tmp_path)["last_preserved_timestamp"] == [13600.0]

        clock.now = 5000.0  # the clock is set back before the restart
        h.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            h.open(max_to_keep=1)
        messages = _warned(caplog, caught)
        assert messages, "no warning that the clock is behind the last preserved timestamp"

        # Unsure what was preserved, the manager keeps every old checkpoint and
        # no longer tracks them.
        assert h.exists(second)
        assert h.latest == third
        assert h.checkpoints == []
        clock.advance(10.0)
        fourth = h.save()
        assert h.exists(second)
        assert h.exists(third)
        assert h.latest == fourth
        assert h.checkpoints == [fourth]
        clock.advance(10.0)
        fifth = h.save()
        assert h.exists(second)
        assert h.exists(third)
        assert not h.exists(fourth)
        assert h.checkpoints == [fifth]
        h.wait()
    state = read_state_file(tmp_path)
    assert state["last_preserved_timestamp"] == [5000.0]
    assert state["all_model_checkpoint_timestamps"] == [5020.0]
    assert state["all_model_checkpoint_paths"] == [os.path.basename(fifth)]


def test_continue_from_unmanaged_checkpoints(kind, tmp_path):
    """Checkpoints saved outside a manager (TF's ``Checkpoint.save``) are
    restored from but never tracked or deleted by the manager."""
    unusual = [ckpt_path(tmp_path, n, "unusual_prefix") for n in (1, 2)]
    if kind == "tf_compat":
        with Harness(kind, tmp_path) as writer:
            writer.open(max_to_keep=None, checkpoint_name="unusual_prefix")
            writer.x = 1.0
            assert writer.save() == unusual[0]
            writer.x = 2.0
            assert writer.save() == unusual[1]
    else:
        jaxckpt.save(unusual[0], {"x": np.float32(1.0), "step": np.int64(0)})
        jaxckpt.save(unusual[1], {"x": np.float32(2.0), "step": np.int64(0)})
    # What TensorFlow's Checkpoint.save leaves: only the newest, no timestamps.
    with open(tmp_path / "checkpoint", "w", encoding="utf-8") as f:
        f.write('model_checkpoint_path: "unusual_prefix-2"\n'
                'all_model_checkpoint_paths: "unusual_prefix-2"\n')

    with Harness(kind, tmp_path, x=-1.0) as h:
        h.open(max_to_keep=2)
        assert h.latest == unusual[1]
        assert h.restore_latest() == unusual[1]
        assert h.x == 2.0
        if kind == "tf_compat":
            assert h.holder.save_counter == 2
        third = h.save()
        assert h.checkpoints == [third]
        fourth = h.save()
        assert h.checkpoints == [third, fourth]
        fifth = h.save()
        assert h.checkpoints == [fourth, fifth]
        if kind == "tf_compat":
            assert [third, fourth, fifth] == [ckpt_path(tmp_path, n) for n in (3, 4, 5)]
        assert len({third, fourth, fifth} | set(unusual)) == 5
        assert all(h.exists(p) for p in unusual)
        assert not h.exists(third)
        assert h.exists(fourth)
        assert h.exists(fifth)


# ---------------------------------------------------------------- numbering


@pytest.mark.parametrize("as_array", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_custom_numbering(kind, tmp_path, as_array):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=2)
        path = None
        for i in range(5):
            number = as_array(h.step)
            assert number.shape == ()
            path = h.save(checkpoint_number=number)
            assert path == ckpt_path(tmp_path, 2 * i)
            h.step += 2
        if kind == "tf_compat":
            assert h.holder.save_counter == 5  # counts saves, whatever their number
        last_path = h.save(checkpoint_number=32)
        assert last_path == ckpt_path(tmp_path, 32)
        assert h.latest == last_path
        h.wait()
        assert jaxckpt.latest_checkpoint(tmp_path) == last_path
        assert h.checkpoints == [path, last_path]
    assert read_state_file(tmp_path)["all_model_checkpoint_paths"] == ["ckpt-8", "ckpt-32"]


def test_default_numbering_continues_after_custom_numbers(kind, tmp_path):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=None)
        assert h.save() == ckpt_path(tmp_path, 1)
        assert h.save(checkpoint_number=10) == ckpt_path(tmp_path, 10)
        following = h.save()
        if kind == "tf_compat":
            assert following == ckpt_path(tmp_path, 3)  # save_counter, as TF
        else:
            assert following == ckpt_path(tmp_path, 11)  # largest saved + 1


def test_saving_an_existing_number_replaces_it_and_moves_it_last(kind, tmp_path):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=2)
        h.x = 1.0
        first = h.save(checkpoint_number=1)
        h.x = 2.0
        second = h.save(checkpoint_number=2)
        h.x = 3.0
        again = h.save(checkpoint_number=1)
        assert again == first
        assert h.checkpoints == [second, first]
        assert h.latest == first
        h.x = 0.0
        assert h.restore_latest() == first
        assert h.x == 3.0  # the replacement, not the original

        h.x = 4.0
        third = h.save(checkpoint_number=3)
        assert h.checkpoints == [first, third]
        assert not h.exists(second)
        assert h.exists(first)


def test_custom_checkpoint_name(kind, tmp_path):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=2, checkpoint_name="ckpt_name")
        path = h.save(checkpoint_number=5)
        assert os.path.basename(path) == "ckpt_name-5"
        assert path == ckpt_path(tmp_path, 5, "ckpt_name")
        assert h.exists(path)

        h.open(max_to_keep=2)
        path = h.save(checkpoint_number=5)
        assert os.path.basename(path) == "ckpt-5"
        assert h.exists(path)
        assert h.exists(ckpt_path(tmp_path, 5, "ckpt_name"))


# ---------------------------------------------------------------- restore


def test_restore_or_initialize_tf_compat(tmp_path):
    init_path = str(tmp_path / "init")
    jaxckpt.save(init_path, {"x": np.asarray(2.0, np.float32)})
    holder = jaxckpt.tf_compat.Checkpoint(x=np.asarray(1.0, np.float32))
    calls = []

    def init_fn():
        calls.append(1)
        holder.x = jaxckpt.restore(init_path)["x"]

    directory = tmp_path / "ckpt"
    with jaxckpt.tf_compat.CheckpointManager(
            holder, directory, max_to_keep=None, init_fn=init_fn) as mngr:
        assert mngr.restore_or_initialize() is None
        assert calls == [1]
        assert float(holder.x) == 2.0

        saved = mngr.save()
        holder.x = np.asarray(7.0, np.float32)
        assert mngr.restore_or_initialize() == saved
        assert calls == [1]  # init_fn is not called when there is a checkpoint
        assert float(holder.x) == 2.0
        assert holder.save_counter == 1


def test_restore_or_initialize_core(tmp_path):
    init_path = str(tmp_path / "init")
    jaxckpt.save(init_path, {"x": np.asarray(2.0, np.float32)})
    calls = []

    def init_fn():
        calls.append(1)
        return jaxckpt.restore(init_path)

    directory = tmp_path / "ckpt"
    with jaxckpt.CheckpointManager(directory, max_to_keep=None, init_fn=init_fn) as mngr:
        state = mngr.restore_or_initialize()
        assert calls == [1]
        assert float(state["x"]) == 2.0

        state = {"x": np.asarray(3.0, np.float32)}
        assert mngr.save(state) == ckpt_path(directory, 1)
        mngr.wait_until_finished()
        restored = mngr.restore_or_initialize()
        assert restored is not None
        assert isinstance(restored["x"], jax.Array)  # structure from eval_shape(init_fn)
        assert float(restored["x"]) == 3.0

        # An explicit target decides the types.
        restored = mngr.restore_or_initialize(target={"x": np.zeros((), np.float32)})
        assert isinstance(restored["x"], np.ndarray)
        assert float(restored["x"]) == 3.0


def test_restore_or_initialize_without_init_fn_or_checkpoint(kind, tmp_path):
    with Harness(kind, tmp_path, x=4.0) as h:
        h.open(max_to_keep=1)
        assert h.mngr.restore_or_initialize() is None
        assert h.x == 4.0
        if kind == "core":
            h.save()
            h.wait()
            assert float(h.mngr.restore_or_initialize()["x"]) == 4.0  # raw restore


def test_pathlib_directory(kind, tmp_path):
    directory = pathlib.Path(tmp_path)
    expected = str(directory / "ckpt_name-1")
    with Harness(kind, directory, x=5.0) as h:
        h.open(max_to_keep=2, checkpoint_name="ckpt_name")
        assert h.save() == expected
        assert h.mngr.directory == str(directory)
        h.x = 0.0
        assert h.restore_latest() == expected
        assert h.x == 5.0
        if kind == "tf_compat":
            assert h.mngr.restore_or_initialize() == expected
        assert jaxckpt.latest_checkpoint(directory) == expected


# ---------------------------------------------------------------- interval


def test_checkpoint_interval(kind, tmp_path):
    with Harness(kind, tmp_path, step=0) as h:
        h.open(max_to_keep=None, step_counter=True, checkpoint_interval=2)
        assert h.mngr.checkpoint_interval == 2

        saved = [h.save()]  # step 0: the first save always happens
        assert saved[0] is not None and h.exists(saved[0])
        h.step = 1
        assert h.save() is None
        h.step = 2
        saved.append(h.save())
        assert saved[1] is not None and h.exists(saved[1])
        assert h.save() is None  # same step again
        h.step = 3
        assert h.save() is None
        saved.append(h.save(check_interval=False))
        assert saved[2] is not None and h.exists(saved[2])

        # Skipped saves take no number.
        assert saved == [ckpt_path(tmp_path, n) for n in (1, 2, 3)]
        assert h.checkpoints == saved
        if kind == "tf_compat":
            assert h.holder.save_counter == 3


def test_check_interval_false_still_skips_the_same_step(kind, tmp_path):
    with Harness(kind, tmp_path, step=7) as h:
        h.open(max_to_keep=None, step_counter=True, checkpoint_interval=5)
        assert h.save() is not None
        assert h.save(check_interval=False) is None
        h.step = 8
        assert h.save(check_interval=False) is not None


def test_checkpoint_interval_with_last_checkpoint_step(kind, tmp_path):
    with Harness(kind, tmp_path, step=1) as h:
        h.open(max_to_keep=None, step_counter=True, checkpoint_interval=2,
               last_checkpoint_step=1)
        assert h.save() is None  # step 1: already checkpointed
        h.step = 2
        assert h.save() is None  # the interval counts from step 1
        h.step = 3
        path = h.save()
        assert path is not None and h.exists(path)


def test_checkpoint_interval_with_restore(kind, tmp_path):
    with Harness(kind, tmp_path, step=4) as h:
        h.open(max_to_keep=None)
        prepared = h.save()

        h.step = 0
        h.open(max_to_keep=None, step_counter=True, checkpoint_interval=2)
        assert h.restore_latest() == prepared
        assert h.step == 4
        # The restored step counts as checkpointed.
        assert h.save() is None
        h.step = 5
        assert h.save() is None
        h.step = 6
        path = h.save()
        assert path is not None and h.exists(path)
        assert h.checkpoints == [prepared, path]


def test_tf_compat_step_counter_may_be_an_int_like_object(tmp_path):
    class StepVariable:
        """Stands in for a ``tf.Variable``: not callable, ``int()`` reads it."""

        def __init__(self, value: int):
            self.value = value

        def __int__(self) -> int:
            return self.value

        __index__ = __int__

    step = StepVariable(0)
    holder = jaxckpt.tf_compat.Checkpoint(x=np.zeros(3, np.float32))
    with jaxckpt.tf_compat.CheckpointManager(
            holder, tmp_path, max_to_keep=None, step_counter=step,
            checkpoint_interval=3) as mngr:
        assert mngr.save() == ckpt_path(tmp_path, 1)
        step.value = 2
        assert mngr.save() is None
        step.value = 3
        assert mngr.save() == ckpt_path(tmp_path, 2)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("max_to_keep", [0, -1, -5, 1.5, "3"])
def test_invalid_max_to_keep_raises_value_error(kind, tmp_path, max_to_keep):
    with pytest.raises(ValueError):
        Harness(kind, tmp_path).open(max_to_keep=max_to_keep)
    assert not (tmp_path / "checkpoint").exists()


def test_checkpoint_interval_without_step_counter_raises(kind, tmp_path):
    with pytest.raises(ValueError):
        Harness(kind, tmp_path).open(max_to_keep=None, checkpoint_interval=2)
    assert not (tmp_path / "checkpoint").exists()


# ---------------------------------------------------------------- state file


def test_state_file_contents(kind, tmp_path):
    clock = FakeClock(100.0)
    with Harness(kind, tmp_path, clock=clock) as h:
        h.open(max_to_keep=2)
        for t in (100.0, 200.5, 300.25):
            clock.now = t
            h.save()
        h.wait()
    text = state_file_text(tmp_path)
    assert str(tmp_path) not in text  # paths relative to the directory
    state = read_state_file(tmp_path)
    assert state["model_checkpoint_path"] == ["ckpt-3"]
    assert state["all_model_checkpoint_paths"] == ["ckpt-2", "ckpt-3"]
    assert state["all_model_checkpoint_timestamps"] == [200.5, 300.25]
    assert len(state["last_preserved_timestamp"]) == 1
    assert state["last_preserved_timestamp"][0] <= 100.0
    # Field order of TensorFlow's text format.
    keys = [line.split(":", 1)[0].strip() for line in text.splitlines() if line.strip()]
    assert keys == ["model_checkpoint_path", "all_model_checkpoint_paths",
                    "all_model_checkpoint_paths", "all_model_checkpoint_timestamps",
                    "all_model_checkpoint_timestamps", "last_preserved_timestamp"]
    assert jaxckpt.latest_checkpoint(tmp_path) == ckpt_path(tmp_path, 3)
    assert jaxckpt.latest_checkpoint(str(tmp_path)) == ckpt_path(tmp_path, 3)


def test_reads_state_file_written_by_tensorflow(kind, tmp_path):
    """Absolute paths, no timestamps: TensorFlow treats the listed checkpoints
    as preserved, so a manager never deletes or tracks them."""
    old = [ckpt_path(tmp_path, n) for n in (1, 2)]
    if kind == "tf_compat":
        with Harness(kind, tmp_path) as writer:
            writer.open(max_to_keep=None)
            for value in (1.0, 2.0):
                writer.x = value
                writer.save()
    else:
        for path, value in zip(old, (1.0, 2.0)):
            jaxckpt.save(path, {"x": np.float32(value), "step": np.int64(0)})
    write_tf_state_file(tmp_path, old[1], old)
    assert os.path.isabs(old[1])

    assert jaxckpt.latest_checkpoint(tmp_path) == old[1]
    clock = FakeClock(50000.0)
    with Harness(kind, tmp_path, clock=clock, x=-1.0) as h:
        h.open(max_to_keep=1)
        assert h.latest == old[1]
        assert h.checkpoints == []
        assert h.restore_latest() == old[1]
        assert h.x == 2.0
        new = h.save()
        assert new == ckpt_path(tmp_path, 3)
        assert h.checkpoints == [new]
        assert h.latest == new
        clock.advance(1.0)
        newer = h.save()
        assert h.checkpoints == [newer]
        assert not h.exists(new)
        assert all(h.exists(p) for p in old)
    state = read_state_file(tmp_path)
    assert state["model_checkpoint_path"] == ["ckpt-4"]
    assert state["all_model_checkpoint_paths"] == ["ckpt-4"]
    assert state["all_model_checkpoint_timestamps"] == [50001.0]
    assert jaxckpt.latest_checkpoint(tmp_path) == newer


def test_latest_checkpoint_ignores_missing_checkpoints(tmp_path):
    """The module function answers None for a state file naming nothing real."""
    assert jaxckpt.latest_checkpoint(tmp_path) is None
    write_tf_state_file(tmp_path, ckpt_path(tmp_path, 9), [ckpt_path(tmp_path, 9)])
    assert jaxckpt.latest_checkpoint(tmp_path) is None
