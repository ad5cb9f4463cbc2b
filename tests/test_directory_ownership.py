"""A manager manages, numbers past and deletes only ``<its name>-<N>`` in its own directory.

Issue 13, items 2, 3, 4, 7, 15 (latest_checkpoint racing retention), 16 (the
clock), 21 and 22: a lost or stale state file, foreign state-file entries,
two series in one directory, duplicated entries, non-finite timestamps, and
tf_compat restores of a holder with more or fewer attributes than the
checkpoint. Real files, real managers; a subprocess where a race needs one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointWriteError, StructureMismatchError, _faults, tf_compat
from jaxckpt._commit import state_file as _state_file
from jaxckpt._commit.state_file import CheckpointState

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY, assert_equal_trees, named_paths  # noqa: E402


def _tree(i: int) -> dict:
    return {"w": np.full(4, i, np.int32), "step": i}


def _save(d, numbers, name="ckpt", **kw):
    with jaxckpt.CheckpointManager(d, max_to_keep=None, checkpoint_name=name, **kw) as m:
        for n in numbers:
            m.save(_tree(n), checkpoint_number=n)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _clock(*readings):
    values = list(readings)
    return lambda: values.pop(0) if len(values) > 1 else values[0]


# ---------------------------------------------------------------- item 2: lost or stale state file


def test_missing_state_file_adopts_the_committed_checkpoints(tmp_path, caplog):
    _save(tmp_path, [1, 2, 3])
    os.remove(tmp_path / "checkpoint")  # copied without it, or deleted by hand
    TALLY["bad inputs tried"] += 1
    assert jaxckpt.latest_checkpoint(tmp_path) is None  # the module function reads the state file
    assert any("no state file" in w and "ckpt-3" in w for w in _warnings(caplog))
    caplog.clear()
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
            assert m.latest_checkpoint == str(tmp_path / "ckpt-3")
            assert m.checkpoints == [str(tmp_path / f"ckpt-{n}") for n in (1, 2, 3)]
            assert_equal_trees(m.restore_or_initialize(), _tree(3))
            assert m.save(_tree(4)) == str(tmp_path / "ckpt-4")  # never ckpt-1 again
            m.wait_until_finished()
            assert m.checkpoints == [str(tmp_path / "ckpt-3"), str(tmp_path / "ckpt-4")]
    adopting = [w for w in _warnings(caplog) if "adopting" in w]
    assert adopting and "missing" in adopting[0] and str(tmp_path) in adopting[0]
    assert all(f"ckpt-{n}" in adopting[0] for n in (1, 2, 3))
    # Retention applied to the adopted ones as usual; what stays is whole.
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-3", "ckpt-4"]
    assert jaxckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-4")
    assert_equal_trees(jaxckpt.restore(tmp_path / "ckpt-3"), _tree(3))
    TALLY["bad inputs refused"] += 1


def test_tf_compat_restore_or_initialize_resumes_without_a_state_file(tmp_path):
    holder = tf_compat.Checkpoint(w=np.zeros(4, np.int32))
    with tf_compat.CheckpointManager(holder, tmp_path, max_to_keep=None) as tm:
        for i in (1, 2, 3):
            holder.w = np.full(4, i, np.int32)
            tm.save()
    os.remove(tmp_path / "checkpoint")
    holder = tf_compat.Checkpoint(w=np.zeros(4, np.int32))
    with tf_compat.CheckpointManager(holder, tmp_path, max_to_keep=3) as tm:
        assert tm.restore_or_initialize() == str(tmp_path / "ckpt-3")
        assert holder.save_counter == 3 and np.array_equal(holder.w, np.full(4, 3))
        assert tm.save() == str(tmp_path / "ckpt-4")
    for n in (2, 3, 4):
        jaxckpt.verify(tmp_path / f"ckpt-{n}")


def test_stale_state_file_adopts_what_was_committed_after_it(tmp_path, caplog):
    _save(tmp_path, [1, 2])
    old = (tmp_path / "checkpoint").read_bytes()
    _save(tmp_path, [3, 4])
    (tmp_path / "checkpoint").write_bytes(old)  # e.g. restored from an older backup
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
            assert m.latest_checkpoint == str(tmp_path / "ckpt-4")
            assert m.checkpoints == [str(tmp_path / f"ckpt-{n}") for n in (1, 2, 3, 4)]
            assert_equal_trees(m.restore_or_initialize(), _tree(4))
            assert m.save(_tree(5)) == str(tmp_path / "ckpt-5")
    assert any("stale" in w and "ckpt-3" in w and "ckpt-4" in w for w in _warnings(caplog))
    assert [os.path.basename(p) for p in named_paths(tmp_path)] == [
        "ckpt-5", "ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]


@pytest.mark.slow  # child processes
def test_a_commit_the_state_file_missed_is_adopted_not_overwritten(tmp_path):
    """A crash between a commit and the state-file replacement (fault point
    ``manager.committed``) leaves a durable, whole checkpoint that the state
    file does not name: the next manager resumes from it."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import jaxckpt
        with jaxckpt.CheckpointManager(sys.argv[1], max_to_keep=3) as m:
            for i in (1, 2, 3):
                m.save({"w": np.full(4, i, np.int32), "step": i})
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXCKPT_FAULT_POINT": "manager.committed",
           "JAXCKPT_FAULT_SKIP": "2"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert jaxckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-2")
    before = (tmp_path / "ckpt-3" / "_CHECKPOINT").read_bytes()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=3) as m:
        assert m.latest_checkpoint == str(tmp_path / "ckpt-3")
        assert_equal_trees(m.restore_or_initialize(), _tree(3))
        assert m.save(_tree(4)) == str(tmp_path / "ckpt-4")
    assert (tmp_path / "ckpt-3" / "_CHECKPOINT").read_bytes() == before
    assert [os.path.basename(p) for p in named_paths(tmp_path)] == ["ckpt-4", "ckpt-2", "ckpt-3"]


def test_numbers_on_disk_are_never_reused_and_only_real_checkpoints_are_adopted(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    jaxckpt.save(elsewhere, _tree(99))
    d = tmp_path / "run"
    _save(d, [1, 3])
    os.remove(d / "checkpoint")
    os.symlink(elsewhere, d / "ckpt-2")  # a link: never ours to delete
    (d / ".ckpt-3.deleting").touch()  # an interrupted retention dropped ckpt-3
    (d / "ckpt-7").mkdir()  # no manifest: a copy still arriving
    TALLY["bad inputs tried"] += 1
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        assert m.checkpoints == [str(d / "ckpt-1")]
        assert m.latest_checkpoint == str(d / "ckpt-1")
        assert m.save(_tree(8)) == str(d / "ckpt-8")
        m.save(_tree(9))
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-2", "ckpt-7", "ckpt-9"]
    assert_equal_trees(jaxckpt.restore(elsewhere), _tree(99))
    assert os.listdir(d / "ckpt-7") == []
    TALLY["bad inputs refused"] += 1


# ---------------------------------------------------------------- item 3: foreign entries


def test_state_file_entries_outside_the_directory_are_never_managed(tmp_path, caplog):
    best = tmp_path / "models" / "best"
    other = tmp_path / "other_run" / "ckpt-7"
    d = tmp_path / "run"
    nested = d / "nested" / "ckpt-9"
    for path, i in ((best, 50), (other, 7), (nested, 9)):
        jaxckpt.save(path, _tree(i))
    _save(d, [1])
    st = _state_file.read(d)
    foreign = [str(best), "../other_run/ckpt-7", "nested/ckpt-9", "ckpt-x"]
    _state_file.prepare(d, CheckpointState(
        "ckpt-1", foreign + st.all_model_checkpoint_paths,
        [5e9, 5e9, 5e9, 5e9] + st.all_model_checkpoint_timestamps, 0.0)).install()
    TALLY["bad inputs tried"] += 1
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
            assert m.checkpoints == [str(d / "ckpt-1")]
            assert m.save(_tree(2)) == str(d / "ckpt-2")  # not numbered past ckpt-7 or 9
            assert m.save(_tree(3)) == str(d / "ckpt-3")
            m.wait_until_finished()
            assert m.checkpoints == [str(d / "ckpt-3")]
    named_foreign = [w for w in _warnings(caplog) if "not this manager's" in w]
    assert len(named_foreign) == 1
    assert all(f in named_foreign[0] for f in foreign)
    for path, i in ((best, 50), (other, 7), (nested, 9)):
        jaxckpt.verify(path)
        assert_equal_trees(jaxckpt.restore(path), _tree(i))
    # They stay named as written; the manager's own entries follow.
    assert _state_file.read(d).all_model_checkpoint_paths == foreign + ["ckpt-3"]
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:  # and again on the next open
        m.save(_tree(4))
    assert best.exists() and other.exists() and nested.exists()
    TALLY["bad inputs refused"] += 1


# ---------------------------------------------------------------- item 4: two series


def test_two_series_in_one_directory_never_delete_each_other(tmp_path):
    _save(tmp_path, [1, 2], name="a")
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=1, checkpoint_name="b") as b:
        for i in (1, 2, 3):
            b.save(_tree(10 + i))
        b.wait_until_finished()
        assert b.checkpoints == [str(tmp_path / "b-3")]
        assert b.latest_checkpoint == str(tmp_path / "b-3")
    assert sorted(os.listdir(tmp_path)) == ["a-1", "a-2", "b-3", "checkpoint"]
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=5, checkpoint_name="a") as a:
        assert a.checkpoints == [str(tmp_path / "a-1"), str(tmp_path / "a-2")]
        assert a.latest_checkpoint == str(tmp_path / "a-2")  # its own, not b's
        assert_equal_trees(a.restore_or_initialize(), _tree(2))
        assert_equal_trees(a.restore(1), _tree(1))
        assert a.save(_tree(3)) == str(tmp_path / "a-3")
    assert (tmp_path / "b-3").exists()


def test_a_series_dropped_from_the_state_file_is_adopted_again(tmp_path, caplog):
    """TensorFlow's manager for ``b`` would write a state file without ``a``'s entries."""
    _save(tmp_path, [1, 2], name="a")
    _save(tmp_path, [1], name="b")
    st = _state_file.read(tmp_path)
    keep = [i for i, p in enumerate(st.all_model_checkpoint_paths) if p.startswith("b-")]
    _state_file.prepare(tmp_path, CheckpointState(
        "b-1", [st.all_model_checkpoint_paths[i] for i in keep],
        [st.all_model_checkpoint_timestamps[i] for i in keep], st.last_preserved_timestamp)).install()
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, max_to_keep=5, checkpoint_name="a") as a:
            assert a.checkpoints == [str(tmp_path / "a-1"), str(tmp_path / "a-2")]
            assert_equal_trees(a.restore_or_initialize(), _tree(2))
            assert a.save(_tree(3)) == str(tmp_path / "a-3")
    assert any("adopting" in w and "a-1" in w and "a-2" in w for w in _warnings(caplog))
    assert (tmp_path / "b-1").exists()


# ---------------------------------------------------------------- item 7: a path listed twice


def test_a_checkpoint_listed_twice_counts_once(tmp_path):
    _save(tmp_path, [3, 4])
    _state_file.prepare(tmp_path, CheckpointState(
        "ckpt-4", ["ckpt-3", "ckpt-4", str(tmp_path / "ckpt-3")], [10.0, 20.0, 30.0], 1.0)).install()
    TALLY["bad inputs tried"] += 1
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
        # TensorFlow's OrderedDict: first position, last timestamp.
        assert m.checkpoints == [str(tmp_path / "ckpt-3"), str(tmp_path / "ckpt-4")]
        assert m.save(_tree(5)) == str(tmp_path / "ckpt-5")
        m.wait_until_finished()
        assert m.checkpoints == [str(tmp_path / "ckpt-4"), str(tmp_path / "ckpt-5")]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-4", "ckpt-5"]
    st = _state_file.read(tmp_path)
    assert st.all_model_checkpoint_paths == ["ckpt-4", "ckpt-5"]
    for path in named_paths(tmp_path):
        jaxckpt.verify(path)
    TALLY["bad inputs refused"] += 1


# ---------------------------------------------------------------- item 15: a reader racing retention


def test_latest_checkpoint_rereads_a_state_file_replaced_under_it(tmp_path):
    """Aimed: between the reader's read of the state file and its check of the
    checkpoint named there, a save replaces the state file and deletes that
    checkpoint (max_to_keep=1)."""
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=1) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        raced = []

        def save_in_between(_point):
            if not raced:
                raced.append(m.save(_tree(2)))
                m.wait_until_finished()

        with _faults.armed("latest_checkpoint.read", save_in_between):
            got = jaxckpt.latest_checkpoint(tmp_path)
        assert raced and not (tmp_path / "ckpt-1").exists()
        assert got == str(tmp_path / "ckpt-2")


_RACING_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import jaxckpt
    with jaxckpt.CheckpointManager(sys.argv[1], max_to_keep=1) as m:
        for i in range(1, int(sys.argv[2]) + 1):
            m.save({"w": np.full(4, i, np.int32)})
    print("done", flush=True)
""")


@pytest.mark.slow  # child processes
def test_latest_checkpoint_never_none_while_another_process_saves(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen([sys.executable, "-c", _RACING_WRITER, str(tmp_path), "150"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, calls, nones = 0, 0, 0
    logging.getLogger("jaxckpt").disabled = True  # no-state-file warnings before the first save
    try:
        while proc.poll() is None:
            got = jaxckpt.latest_checkpoint(tmp_path)
            calls += 1
            if got is not None:
                seen += 1
            elif seen:
                nones += 1
    finally:
        logging.getLogger("jaxckpt").disabled = False
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert seen, f"no checkpoint seen in {calls} calls"
    assert nones == 0, f"None {nones} times of {calls} after the first commit"
    assert jaxckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-150")


# ---------------------------------------------------------------- item 16: the clock


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_clock_reading_is_refused_before_anything_is_written(tmp_path, bad):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2, clock=_clock(100.0, 101.0, bad)) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        before = sorted(os.listdir(tmp_path)), (tmp_path / "checkpoint").read_bytes()
        TALLY["bad inputs tried"] += 1
        with pytest.raises(ValueError, match="clock"):
            m.save(_tree(2))
        assert (sorted(os.listdir(tmp_path)), (tmp_path / "checkpoint").read_bytes()) == before
        TALLY["bad inputs refused"] += 1
    TALLY["bad inputs tried"] += 1
    with pytest.raises(ValueError, match="clock"):
        jaxckpt.CheckpointManager(tmp_path / "other", clock=lambda: bad)
    TALLY["bad inputs refused"] += 1


def test_a_non_finite_clock_reading_in_save_in_jit_writes_nothing(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2,
                                   clock=_clock(100.0, float("nan"))) as m:
        TALLY["bad inputs tried"] += 1
        jax.jit(lambda s: m.save_in_jit(s, step=s["step"]))({"w": jnp.zeros(3), "step": 1})
        with pytest.raises(CheckpointWriteError) as e:
            m.wait_until_finished()
        assert "clock" in str(e.value) or "clock" in str(e.value.__cause__)
        assert os.listdir(tmp_path) == []
        TALLY["bad inputs refused"] += 1


@pytest.mark.parametrize("stamps, preserved", [
    (["nan", "nan", "nan"], "0.5"), (["1.0", "inf", "nan"], "nan"), (["1.0", "2.0", "3.0"], "inf"),
])
def test_non_finite_state_file_timestamps_keep_the_active_set(tmp_path, caplog, stamps, preserved):
    _save(tmp_path, [1, 2, 3], clock=_clock(1.0, 1.0, 2.0, 3.0))
    text = "".join(f'all_model_checkpoint_paths: "ckpt-{n}"\n' for n in (1, 2, 3))
    text += "".join(f"all_model_checkpoint_timestamps: {t}\n" for t in stamps)
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-3"\n' + text + f"last_preserved_timestamp: {preserved}\n")
    TALLY["corruptions tried"] += 1
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2, clock=lambda: 10.0) as m:
            assert m.checkpoints == [str(tmp_path / f"ckpt-{n}") for n in (1, 2, 3)]
            m.save(_tree(4))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-3", "ckpt-4"]
    assert any("timestamp" in w for w in _warnings(caplog))
    st = _state_file.read(tmp_path)
    assert all(np.isfinite(st.all_model_checkpoint_timestamps))
    assert np.isfinite(st.last_preserved_timestamp)
    TALLY["corruptions caught"] += 1


# ---------------------------------------------------------------- item 21: tf_compat attribute sets


def _training_checkpoint(d):
    holder = tf_compat.Checkpoint(model={"w": np.ones(3, np.float32)},
                                  optimizer={"mu": np.full(3, 2.0, np.float32)}, epoch=4)
    with tf_compat.CheckpointManager(holder, d, max_to_keep=3) as tm:
        tm.save()
        holder.model = {"w": np.full(3, 7.0, np.float32)}
        return tm.save()


def test_tf_compat_eval_holder_restores_the_model_of_a_training_checkpoint(tmp_path):
    path = _training_checkpoint(tmp_path)
    holder = tf_compat.Checkpoint(model={"w": np.zeros(3, np.float32)})
    with tf_compat.CheckpointManager(holder, tmp_path, max_to_keep=3) as tm:
        assert tm.restore_or_initialize() == path
        assert np.array_equal(holder.model["w"], np.full(3, 7.0)) and holder.save_counter == 2
        assert not hasattr(holder, "optimizer")  # only on disk: not read
        assert tm.restore(1) == str(tmp_path / "ckpt-1")
        assert np.array_equal(holder.model["w"], np.ones(3))


def test_tf_compat_holder_with_more_attributes_keeps_the_extra_ones(tmp_path):
    path = _training_checkpoint(tmp_path)
    holder = tf_compat.Checkpoint(model={"w": np.zeros(3, np.float32)}, ema={"w": np.ones(2)},
                                  optimizer={"mu": np.zeros(3, np.float32)})
    with tf_compat.CheckpointManager(holder, tmp_path, max_to_keep=3) as tm:
        assert tm.restore(path) == path
        assert np.array_equal(holder.model["w"], np.full(3, 7.0))
        assert np.array_equal(holder.optimizer["mu"], np.full(3, 2.0))
        assert np.array_equal(holder.ema["w"], np.ones(2))  # not saved: kept


@pytest.mark.parametrize("holder_kw, match", [
    ({"model": {"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}}, r"\['b'\]"),
    ({"model": {}}, r"\['model'\]\['w'\]: on disk, not in the holder"),
    ({"net": {"w": np.zeros(3, np.float32)}}, "no attribute in common"),
    ({"model": {"w": np.zeros(4, np.float32)}}, r"\['model'\]\['w'\]"),
])
def test_tf_compat_mismatch_inside_an_attribute_never_suggests_partial(tmp_path, holder_kw, match):
    _training_checkpoint(tmp_path)
    holder = tf_compat.Checkpoint(**holder_kw)
    TALLY["bad inputs tried"] += 1
    with tf_compat.CheckpointManager(holder, tmp_path, max_to_keep=3) as tm:
        for call in (tm.restore_or_initialize, tm.restore):
            with pytest.raises(StructureMismatchError, match=match) as e:
                call()
            assert "partial" not in str(e.value)
    TALLY["bad inputs refused"] += 1


# ---------------------------------------------------------------- item 22: TensorFlow's own directories


def test_a_directory_tensorflow_wrote_is_read_for_its_state_file_only(tmp_path, caplog):
    for n in (1, 2):  # what TensorFlow's manager writes: files, not directories
        (tmp_path / f"ckpt-{n}.index").write_bytes(b"tf index")
        (tmp_path / f"ckpt-{n}.data-00000-of-00001").write_bytes(b"tf data")
    (tmp_path / "checkpoint").write_text(
        f'model_checkpoint_path: "{tmp_path}/ckpt-2"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-1"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-2"\n'
        "all_model_checkpoint_timestamps: 1.0\nall_model_checkpoint_timestamps: 2.0\n"
        "last_preserved_timestamp: 0.5\n")
    tf_files = sorted(n for n in os.listdir(tmp_path) if n.startswith("ckpt-"))
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, max_to_keep=1,
                                       init_fn=lambda: _tree(0)) as m:
            assert m.latest_checkpoint is None and m.checkpoints == []
            assert_equal_trees(m.restore_or_initialize(), _tree(0))
            assert m.save(_tree(3)) == str(tmp_path / "ckpt-3")  # past the state file's numbers
            m.save(_tree(4))
    assert any("ckpt-1" in w and "ckpt-2" in w for w in _warnings(caplog))
    assert sorted(n for n in os.listdir(tmp_path) if "." in n) == tf_files
