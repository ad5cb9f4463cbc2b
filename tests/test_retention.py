from __future__ import annotations

from jaxckpt import _retention
from jaxckpt._retention import Retention

HOUR = 3600.0


def _saved(times, max_to_keep, hours=None, start=-1.0):
    r = Retention([], start)
    deleted = []
    for i, t in enumerate(times):
        r, d = _retention.sweep(_retention.add(r, f"c{i}", t), max_to_keep, hours)
        deleted += d
    return r, deleted


def test_max_to_keep_drops_oldest():
    r, deleted = _saved([1, 2, 3, 4], 2)
    assert [p for p, _ in r.active] == ["c2", "c3"]
    assert deleted == ["c0", "c1"]


def test_none_keeps_everything():
    r, deleted = _saved(range(10), None)
    assert len(r.active) == 10 and deleted == []


def test_preserves_one_per_n_hours():
    times = [0.0, 0.5 * HOUR, 1.0 * HOUR, 1.5 * HOUR, 2.0 * HOUR, 2.5 * HOUR]
    r, deleted = _saved(times, 1, hours=1, start=-1.0)
    # A dropped checkpoint is preserved once it is 1 h newer than the last preserved one.
    assert "c5" == r.active[-1][0]
    assert deleted == ["c0", "c1", "c3"]
    assert r.last_preserved == 2.0 * HOUR


def test_resaving_a_path_moves_it_to_newest():
    r = _retention.add(_retention.add(Retention([], 0), "a", 1), "b", 2)
    r = _retention.add(r, "a", 3)
    assert r.active == [("b", 2), ("a", 3)]


def test_recover_caps_times_when_clock_went_back():
    r, went_back = _retention.recover(["a", "b"], [100.0, 200.0], 50.0, now=10.0)
    assert went_back
    assert r.last_preserved == 10.0
    # every timestamp capped at now == last_preserved: nothing managed, nothing deleted
    assert r.active == []


def test_recover_without_timestamps_leaves_old_checkpoints_unmanaged():
    r, went_back = _retention.recover(["a", "b"], [], 0.0, now=1000.0)
    assert not went_back and r.active == []


def test_recover_keeps_newer_than_last_preserved():
    r, _ = _retention.recover(["a", "b", "c"], [1.0, 5.0, 9.0], 5.0, now=100.0)
    assert r.active == [("c", 9.0)]
