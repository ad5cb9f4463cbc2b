"""What a manager tells its users: pending saves, per-save statistics, log lines."""

from __future__ import annotations

import logging
import os
import shutil
import threading

import numpy as np
import pytest

import jaxckpt
from jaxckpt._save import stats as _stats


def _tree(i: int, n: int = 1 << 16) -> dict:
    return {"w": np.full((n,), i, np.float32), "step": i}


def test_stats_of_committed_saves(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
        assert m.last_save_stats is None and m.stats.saves == 0 and m.stats.throughput is None
        paths = [m.save(_tree(i)) for i in range(1, 5)]
        m.wait_until_finished()
        last = m.last_save_stats
        s = m.stats
    assert last.path == paths[-1] and last.committed and last.error is None
    assert last.nbytes == (1 << 16) * 4
    assert last.blocked_s > 0 and last.write_s > 0 and last.queued_s >= 0
    assert last.deleted == [paths[1]]
    assert last.throughput == last.nbytes / last.write_s
    assert (s.saves, s.committed, s.failed, s.pending) == (4, 4, 0, 0)
    assert s.bytes_written == 4 * (1 << 16) * 4
    assert s.deleted == tuple(paths[:2])
    assert [r.path for r in s.recent] == paths
    assert s.blocked_max_s == max(r.blocked_s for r in s.recent)
    assert s.blocked_mean_s == pytest.approx(sum(r.blocked_s for r in s.recent) / 4)
    assert s.write_s == pytest.approx(sum(r.write_s for r in s.recent))
    assert s.write_max_s == max(r.write_s for r in s.recent)
    assert s.throughput == pytest.approx(s.bytes_written / s.write_s)
    d = s.as_dict()
    assert d["saves"] == 4 and d["deleted"] == paths[:2] and "recent" not in d
    assert "recent" not in repr(s)  # the summary's repr stays one readable line


def test_skipped_saves_are_not_counted(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, step_counter=lambda s: s["step"],
                                   checkpoint_interval=10) as m:
        saved = [m.save(_tree(i)) for i in range(1, 25)]
        m.wait_until_finished()
        assert m.stats.saves == sum(p is not None for p in saved) == 3


def test_pending_while_the_writer_is_held(tmp_path):
    m = jaxckpt.CheckpointManager(tmp_path, max_pending=3)
    release, started = threading.Event(), threading.Event()
    try:
        m._writer.submit(lambda: (started.set(), release.wait()))  # hold the writer
        started.wait()
        a = m.save(_tree(1))
        b = m.save(_tree(2))
        assert m.pending == [a, b]
        s = m.stats
        assert (s.saves, s.pending, s.committed) == (2, 2, 0)
        assert m.last_save_stats is None
        assert [r.done for r in s.recent] == [False, False]
        assert all(r.blocked_s > 0 and r.write_s is None for r in s.recent)
        release.set()
        m.wait_until_finished()
        assert m.pending == []
        assert m.stats.pending == 0 and m.stats.committed == 2
        assert m.last_save_stats.path == b
    finally:
        release.set()
        m.close()


def test_failed_save_is_recorded(tmp_path):
    d = tmp_path / "run"
    m = jaxckpt.CheckpointManager(d)
    try:
        m.save(_tree(1))
        m.wait_until_finished()
        shutil.rmtree(d)
        d.write_text("not a directory any more")  # the next write cannot create its temporary
        path = m.save(_tree(2))
        with pytest.raises(jaxckpt.CheckpointWriteError):
            m.wait_until_finished()
        last = m.last_save_stats
        assert last.path == path and not last.committed and last.write_s is None
        assert "Error" in last.error
        s = m.stats
        assert (s.saves, s.committed, s.failed, s.pending) == (2, 1, 1, 0)
    finally:
        os.remove(d)
        m.close()


def test_recorder_counts_a_save_the_writer_finished_first():
    # The writer may finish before save() records the stats; it is counted once.
    rec = _stats.StatsRecorder()
    fast = _stats.SaveStats("/x/ckpt-1", 10, started=0.0, blocked_s=0.5)
    rec.finished(fast)  # not yet started: ignored
    fast.write_s = 0.25
    rec.started(fast)
    slow = _stats.SaveStats("/x/ckpt-2", 30, started=1.0, blocked_s=0.1)
    rec.started(slow)
    assert rec.summary().pending == 1
    slow.write_s = 0.75
    rec.finished(slow)
    rec.finished(slow)  # idempotent
    s = rec.summary()
    assert (s.saves, s.committed, s.pending, s.bytes_written) == (2, 2, 0, 40)
    assert s.write_s == 1.0 and s.throughput == 40.0
    assert rec.last_finished() is slow


def test_one_info_line_per_committed_save(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, max_to_keep=1) as m:
            paths = [m.save(_tree(i)) for i in range(3)]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 3
    for path, msg in zip(paths, info):
        assert msg.startswith(f"committed {path} ({(1 << 16) * 4} bytes, written in ")
    assert "deleted 1 old" in info[1] and "deleted" not in info[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_warnings_for_recovery_and_clock(tmp_path, caplog):
    os.makedirs(tmp_path / ".ckpt-3.tmp-0123456789ab")  # left by a crash
    now = [1000.0]
    with caplog.at_level(logging.WARNING, logger="jaxckpt"):
        with jaxckpt.CheckpointManager(tmp_path, clock=lambda: now[0]) as m:
            m.save(_tree(1))
            m.wait_until_finished()
            now[0] = 900.0  # the clock is set back during the run
            m.save(_tree(2))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2, messages
    assert messages[0] == f"removed 1 leftover(s) of interrupted saves in {tmp_path}"
    assert messages[1].startswith(f"clock went backwards in {tmp_path}: this save is stamped "
                                  "900.000, before the newest checkpoint's 1000.000")


def test_tf_compat_manager_exposes_the_same(tmp_path):
    ckpt = jaxckpt.tf_compat.Checkpoint(w=np.ones(4))
    with jaxckpt.tf_compat.CheckpointManager(ckpt, tmp_path, max_to_keep=2) as m:
        for _ in range(3):
            m.save()
        m.wait_until_finished()
        assert m.pending == [] and m.stats.committed == 3
        assert m.last_save_stats.path == m.latest_checkpoint
        assert "ckpt-3" in str(m) and "<table>" in m._repr_html_()
