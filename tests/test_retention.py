from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jaxckpt._directory import policy as _policy
from jaxckpt._directory.policy import Retention

from strategies import keep_hours, max_to_keeps, quick, save_times  # tests/ is on sys.path

HOUR = 3600.0


def _saved(times, max_to_keep, hours=None, start=-1.0):
    r = Retention([], start)
    deleted = []
    for i, t in enumerate(times):
        r, d = _policy.sweep(_policy.add(r, f"c{i}", t), max_to_keep, hours)
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
    r = _policy.add(_policy.add(Retention([], 0), "a", 1), "b", 2)
    r = _policy.add(r, "a", 3)
    assert r.active == [("b", 2), ("a", 3)]


def test_recover_caps_times_when_clock_went_back():
    r, went_back = _policy.recover(["a", "b"], [100.0, 200.0], 50.0, now=10.0)
    assert went_back
    assert r.last_preserved == 10.0
    # every timestamp capped at now == last_preserved: nothing managed, nothing deleted
    assert r.active == []


def test_recover_without_timestamps_leaves_old_checkpoints_unmanaged():
    r, went_back = _policy.recover(["a", "b"], [], 0.0, now=1000.0)
    assert not went_back and r.active == []


def test_recover_keeps_newer_than_last_preserved():
    r, _ = _policy.recover(["a", "b", "c"], [1.0, 5.0, 9.0], 5.0, now=100.0)
    assert r.active == [("c", 9.0)]


# ---------------------------------------------------------------- properties


def _model(times, max_to_keep, hours, start):
    """The rules applied once to the whole history: the last ``max_to_keep`` stay;
    of the rest, oldest first, one is preserved when ``hours`` newer than the last."""
    names = [f"c{i}" for i in range(len(times))]
    if max_to_keep is None:
        return names, [], start
    dropped = list(zip(names, times))[: max(0, len(names) - max_to_keep)]
    preserved, last = [], start
    for name, t in dropped:
        if hours and t - hours * HOUR >= last:
            preserved.append(name)
            last = t
    return names[len(dropped):], [n for n, _ in dropped if n not in preserved], last


@quick
@given(save_times, max_to_keeps, keep_hours)
def test_sweeping_after_each_save_matches_the_whole_history_model(times, max_to_keep, hours):
    start = -1.0
    r = Retention([], start)
    deleted, last_seen = [], start
    for i, t in enumerate(times):
        r, d = _policy.sweep(_policy.add(r, f"c{i}", t), max_to_keep, hours)
        deleted += d
        assert r.last_preserved >= last_seen  # never moves back
        last_seen = r.last_preserved
        if max_to_keep is not None:
            assert len(r.active) == min(max_to_keep, i + 1)
    active, model_deleted, last = _model(times, max_to_keep, hours, start)
    assert [p for p, _ in r.active] == active
    assert deleted == model_deleted
    assert r.last_preserved == last
    names = {f"c{i}" for i in range(len(times))}
    preserved = names - set(active) - set(deleted)
    assert not set(active) & set(deleted) and len(deleted) == len(set(deleted))
    if not hours:
        assert not preserved


@quick
@given(save_times, max_to_keeps, keep_hours)
def test_preserved_checkpoints_are_at_least_n_hours_apart(times, max_to_keep, hours):
    start = -1.0
    r, deleted = _saved(times, max_to_keep, hours, start)
    active = {p for p, _ in r.active}
    kept_times = [t for i, t in enumerate(times)
                  if f"c{i}" not in active and f"c{i}" not in deleted]
    for earlier, later in zip([start] + kept_times, kept_times):
        assert later - earlier >= hours * HOUR


@quick
@given(save_times, max_to_keeps, keep_hours)
def test_recover_from_what_a_state_file_records_gives_the_same_set(times, max_to_keep, hours):
    r, _ = _saved(times, max_to_keep, hours, -1.0)
    now = times[-1] if times else 0.0
    back, went_back = _policy.recover(
     [p for p, _ in r.active], [t for _, t in r.active], r.last_preserved, now)
    assert not went_back
    assert back == r


@quick
@given(st.lists(st.floats(0, 1e6), max_size=8), st.floats(0, 1e6), st.floats(0, 1e6))
def test_recover_never_manages_a_time_past_now_or_before_last_preserved(stamps, last, now):
    paths = [f"c{i}" for i in range(len(stamps))]
    r, went_back = _policy.recover(paths, stamps, last, now)
    assert went_back == (now < last)
    assert r.last_preserved == min(last, now)
    assert all(r.last_preserved < t <= now for _, t in r.active)
    assert [p for p, _ in r.active] == [p for p, t in zip(paths, stamps)
                                       if min(t, now) > min(last, now)]
