"""Save policies beyond steps: save_interval_s, permanent_every (temporary checkpoints) and
checkpoint_interval="auto" (Young/Daly). Every clock is injected: no sleeps, no timing asserts."""

from __future__ import annotations

import logging
import math
import os
import statistics

import jax
import numpy as np
import pytest

import jaxckpt
from jaxckpt._commit import state_file as _state_file
from jaxckpt._directory import auto_interval as auto, save_rules
from jaxckpt._directory.policy import Retention
from jaxckpt._directory import temporary
from jaxckpt._storage.location import locate


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _tree(step: int) -> dict:
    return {"step": np.int64(step), "w": np.full(4, step, np.float32)}


def _names(paths) -> list[str]:
    return [os.path.basename(p) for p in paths]


def _on_disk(d) -> list[str]:
    return sorted((n for n in os.listdir(d) if n.startswith("ckpt-")),
                  key=lambda n: int(n.split("-")[1]))


# ------------------------------------------------------------ the Young/Daly math (pure)


def test_young_daly_picks_sqrt_2_cost_mtbf_for_a_synthetic_cost():
    c = auto.choose(cost_s=0.5, step_s=1.0, mtbf_s=3600.0, max_overhead=0.02)
    assert c.young_daly_s == pytest.approx(60.0) and c.bound == "young_daly"
    assert c.steps == 60 and c.overhead == pytest.approx(0.5 / 60)
    # In steps of 0.7 s: 60 / 0.7 = 85.7 -> 86 (rounded up).
    assert auto.choose(0.5, 0.7, 3600.0, 0.02).steps == 86


def test_the_overhead_budget_wins_when_young_daly_would_save_too_often():
    c = auto.choose(cost_s=2.0, step_s=1.0, mtbf_s=1.0, max_overhead=0.02)  # sqrt(4) = 2 s
    assert c.bound == "overhead" and c.steps == 100
    assert c.cost_s / (c.steps * c.step_s) <= 0.02 * (1 + 1e-9)
    # Exact multiples are not rounded up by floating error: 0.1 / 0.02 = 5.000000000000001.
    assert auto.choose(0.1, 1.0, 1e-6, 0.02).steps == 5
    for cost, step, mtbf, budget in [(0.03, 0.013, 10.0, 0.01), (1.7, 0.3, 2.0, 0.05),
                                     (0.2, 3.0, 1e5, 0.5)]:
        c = auto.choose(cost, step, mtbf, budget)
        assert c.overhead <= budget * (1 + 1e-9), c
        assert c.steps * step >= max(auto.young_daly_s(cost, mtbf), step) * (1 - 1e-9)


def test_a_write_longer_than_the_interval_sets_it_and_one_step_is_the_least():
    c = auto.choose(cost_s=0.01, step_s=1.0, mtbf_s=100.0, max_overhead=0.5, write_s=30.0)
    assert (c.bound, c.steps) == ("write", 30)  # young_daly: sqrt(2) s
    c = auto.choose(cost_s=1e-6, step_s=50.0, mtbf_s=10.0, max_overhead=0.5)
    assert (c.bound, c.steps) == ("one step", 1)
    assert "set by one step" in c.reason() and "mtbf 10 s" in c.reason()
    with pytest.raises(ValueError, match="step_s"):
        auto.choose(1.0, 0.0, 1.0, 0.02)


def test_auto_interval_measures_the_step_time_once_the_steps_arrays_are_computed():
    # With asynchronous dispatch save() is called at the host's dispatch rate:
    # the choice waits for the step's arrays (resync) and reads the clock then.
    a = auto.AutoInterval(mtbf_s=3600.0, max_overhead=0.02)
    a.observe(0, 100.0, None)
    a.saved(0.5)
    a.observe(1, 110.0, None)
    waited = []
    first = a.observe(2, 110.001, None, resync=lambda: waited.append(1) or 112.0)
    assert waited == [1] and (first.steps, first.step_s) == (30, 2.0)  # not 1 ms per step
    assert a.observe(3, 114.0, None, resync=lambda: waited.append(2)) is None  # no choice due
    assert waited == [1]
    # Nothing was still computing (resync gives None): the call's own clock reading.
    b = auto.AutoInterval(mtbf_s=3600.0, max_overhead=0.02)
    b.observe(0, 100.0, None), b.saved(0.5), b.observe(1, 110.0, None)
    assert b.observe(2, 112.0, None, resync=lambda: None).step_s == 2.0


def test_auto_interval_measures_the_step_time_on_the_clock_and_chooses_again_after_saves():
    a = auto.AutoInterval(mtbf_s=3600.0, max_overhead=0.02)
    assert a.observe(0, 100.0, None) is None and a.steps is None  # first call: the anchor
    a.saved(0.5)
    assert a.measured
    # The step time is measured from the call after the first save: the span from the
    # save's own call would count its blocking (here 0 -> 1 took 10 s) as a step.
    assert a.observe(1, 110.0, None) is None and a.steps is None
    first = a.observe(2, 112.0, None)  # 2 s per step: sqrt(2 * 0.5 * 3600) = 60 s = 30 steps
    assert (first.steps, first.step_s, first.cost_s) == (30, 2.0, 0.5)
    assert a.observe(5, 118.0, None) is None and a.steps == 30  # no save since: not re-chosen
    a.saved(0.5)
    # Steps slowed to 4 s (mean since the last choice, step 2 at 112 s): 15 steps.
    assert a.observe(32, 232.0, 0.2).steps == 15
    assert a.choice.write_s == 0.2 and a.choice.step_s == 4.0
    # The cost is the median of the recent saves: one slow save does not move it.
    a.saved(50.0)
    assert a.observe(47, 292.0, None) is None and a.choice.cost_s == 0.5  # same interval: None
    for _ in range(auto.COST_WINDOW):
        a.saved(2.0)
    assert a.observe(62, 352.0, None).steps == 30  # sqrt(2 * 2 * 3600) = 120 s / 4 s
    # A step older than the anchor (a restore of an earlier checkpoint) re-anchors.
    a.saved(2.0)
    assert a.observe(10, 400.0, None) is None
    a.observe(20, 480.0, None)
    assert a.choice.step_s == 8.0 and a.steps == 15


# ------------------------------------------------------------ the rules (pure)


def _rules(**kw) -> save_rules.Rules:
    interval = kw.pop("interval", None)
    opts = save_rules.check(checkpoint_interval=kw.pop("checkpoint_interval", interval),
                            save_interval_s=kw.pop("save_interval_s", None),
                            mtbf_s=kw.pop("mtbf_s", None), max_overhead=None,
                            permanent_every=None, step_counter=len, clock=lambda: 0.0,
                            process_count=1)
    return save_rules.Rules(opts, interval if isinstance(interval, int) else None)


def test_time_and_steps_compose_either_rule_saves_and_multiples_stay_put():
    r = _rules(interval=10, save_interval_s=30.0)
    last, saved = None, []
    # 1 s per step, but steps 12..14 take 20 s each: a save by time at 14 (t=52 > 0 + 30 ...).
    t = 0.0
    for step in range(0, 41):
        t += 20.0 if 12 <= step <= 14 else 1.0
        if r.due(last, step, t, True, lambda: None):
            saved.append(step)
            last = step
            r.saved(t, 0.0)
    # 0: first; 10: a multiple; 13: 30 s since step 10; 20, 30, 40: multiples, not 23, 33, 43.
    assert saved == [0, 10, 13, 20, 30, 40]
    assert not r.due(40, 40, t + 100, True, lambda: None)  # the same step again: never
    assert r.due(40, 41, t, False, lambda: None)  # check_interval=False: always


def test_the_clock_going_back_restarts_the_time_count(caplog):
    r = _rules(save_interval_s=10.0)
    assert r.due(None, None, 100.0, True, lambda: None)
    r.saved(100.0, 0.0)
    with caplog.at_level(logging.WARNING, logger="jaxckpt"):
        assert not r.due(None, None, 50.0, True, lambda: None)
    assert "clock went back" in caplog.text
    assert not r.due(None, None, 59.0, True, lambda: None)
    assert r.due(None, None, 60.0, True, lambda: None)


def test_multi_process_programs_refuse_time_and_auto_before_anything():
    for kw in ({"save_interval_s": 5.0}, {"checkpoint_interval": "auto", "mtbf_s": 60.0}):
        args = dict(checkpoint_interval=None, save_interval_s=None, mtbf_s=None,
                    max_overhead=None, permanent_every=None, step_counter=len,
                    clock=lambda: 0.0, process_count=2)
        args.update(kw)
        with pytest.raises(ValueError, match="not supported in a multi-process program"):
            save_rules.check(**args)


def test_temporary_sweep_keeps_permanent_under_tf_rules_and_only_the_newest_temporary():
    number = lambda p: int(p.split("-")[1])  # noqa: E731
    is_temp = temporary.rule(3, number)
    tf = lambda r: (Retention(r.active[-2:], r.last_preserved),  # noqa: E731
                    [p for p, _ in r.active[:-2]])  # max_to_keep=2 without hours
    r = Retention([(f"c-{n}", float(n)) for n in (1, 2, 3, 4, 6, 7, 8)], 0.0)
    kept, delete = temporary.sweep(r, is_temp, tf)
    assert [p for p, _ in kept.active] == ["c-3", "c-6", "c-8"]
    assert sorted(delete) == ["c-1", "c-2", "c-4", "c-7"]
    r = Retention([("c-3", 3.0), ("c-5", 5.0), ("c-9", 9.0)], 0.0)
    kept, delete = temporary.sweep(r, is_temp, tf)  # the newest is permanent: no temporary left
    assert [p for p, _ in kept.active] == ["c-3", "c-9"] and delete == ["c-5"]


# ------------------------------------------------------------ the manager


def test_save_interval_s_alone_saves_by_time_without_a_step_counter(tmp_path):
    clock = Clock()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None, save_interval_s=60,
                                   clock=clock) as m:
        saved = []
        for step in range(10):
            clock.t += 25.0  # 25 s a step: one save every third step (75 s >= 60 s)
            if m.save(_tree(step)) is not None:
                saved.append(step)
        assert saved == [0, 3, 6, 9]
        assert m.checkpoint_interval is None and m.interval_choice is None
        assert m.save(_tree(10), check_interval=False) is not None  # forced: saves
        m.wait_until_finished()
        assert _names(m.checkpoints) == [f"ckpt-{n}" for n in range(1, 6)]


def test_save_interval_s_counts_from_the_newest_checkpoint_after_a_restart(tmp_path):
    clock = Clock(5000.0)
    with jaxckpt.CheckpointManager(tmp_path, save_interval_s=100, clock=clock) as m:
        assert m.save(_tree(0)) is not None  # stamped 5000
    clock.t = 5090.0  # the restarted run: 90 s after that save
    with jaxckpt.CheckpointManager(tmp_path, save_interval_s=100, clock=clock) as m:
        assert m.save(_tree(1)) is None
        clock.t = 5100.0
        assert m.save(_tree(2)) is not None
    state = _state_file.read(locate(tmp_path))
    assert state.all_model_checkpoint_timestamps == [5000.0, 5100.0]


def test_temporary_checkpoints_go_once_a_newer_commits_and_survive_a_restart(tmp_path):
    clock = Clock()
    kw = dict(max_to_keep=2, permanent_every=3, clock=clock)
    with jaxckpt.CheckpointManager(tmp_path, **kw) as m:
        seen = []
        for n in range(1, 9):
            clock.t += 1
            m.save(_tree(n), checkpoint_number=n)
            m.wait_until_finished()
            seen.append(_names(m.checkpoints))
        assert seen[:4] == [["ckpt-1"], ["ckpt-2"], ["ckpt-3"], ["ckpt-3", "ckpt-4"]]
        # Permanent 3 and 6 (max_to_keep=2 of them), and the newest temporary, 8.
        assert seen[-1] == ["ckpt-3", "ckpt-6", "ckpt-8"] and _on_disk(tmp_path) == [
            "ckpt-3", "ckpt-6", "ckpt-8"]
        clock.t += 1
        m.save(_tree(9), checkpoint_number=9)
    assert _on_disk(tmp_path) == ["ckpt-6", "ckpt-9"]  # 9 permanent: 8 went, 3 past max_to_keep
    # A restart, with a temporary newest: the rule is read from the numbers.
    with jaxckpt.CheckpointManager(tmp_path, **kw) as m:
        m.save(_tree(10), checkpoint_number=10)
        m.wait_until_finished()
        assert _names(m.checkpoints) == ["ckpt-6", "ckpt-9", "ckpt-10"]
    with jaxckpt.CheckpointManager(tmp_path, **kw) as m:
        assert _names(m.checkpoints) == ["ckpt-6", "ckpt-9", "ckpt-10"]
        assert m.restore()["step"] == 10
        m.save(_tree(11), checkpoint_number=11)
    assert _on_disk(tmp_path) == ["ckpt-6", "ckpt-9", "ckpt-11"]
    # The state file is TensorFlow's: nothing new in it.
    text = (tmp_path / "checkpoint").read_text()
    assert sorted({line.split(":")[0] for line in text.splitlines()}) == [
        "all_model_checkpoint_paths", "all_model_checkpoint_timestamps",
        "last_preserved_timestamp", "model_checkpoint_path"]


def test_time_saves_are_temporary_beside_permanent_multiples_levanter_style(tmp_path):
    clock = Clock()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None, step_counter=lambda s: s["step"],
                                   checkpoint_interval=100, save_interval_s=600,
                                   permanent_every=100, clock=clock) as m:
        for step in range(0, 351):
            clock.t += 13.0  # 13 s a step: a save by time every 47 steps
            m.save(_tree(step), checkpoint_number=step)
        m.wait_until_finished()
        assert _names(m.checkpoints) == ["ckpt-0", "ckpt-100", "ckpt-200", "ckpt-300",
                                         "ckpt-347"]
    assert _on_disk(tmp_path) == ["ckpt-0", "ckpt-100", "ckpt-200", "ckpt-300", "ckpt-347"]


def _run_auto(m, clock, steps, step_s, start=0):
    saved = []
    for step in range(start, start + steps):
        clock.t += step_s
        if m.save(_tree(step)) is not None:
            saved.append((step, m.checkpoint_interval))
    return saved


def test_auto_chooses_young_daly_from_the_measured_cost_and_logs_each_change(tmp_path, caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="jaxckpt"), jaxckpt.CheckpointManager(
            tmp_path, max_to_keep=2, step_counter=lambda s: int(s["step"]),
            checkpoint_interval="auto", mtbf_s=1e4, clock=clock) as m:
        assert m.checkpoint_interval is None
        saved = _run_auto(m, clock, 400, 1.0)
        assert saved[0] == (0, None)  # the first save measures the cost
        choice = m.interval_choice
        # What it chose is Young/Daly (or a bound) of what the manager measured: the
        # median blocked time of its saves, the step time on the injected clock.
        blocked = [s.blocked_s for s in m.stats.recent]
        if saved[-1][0] == 399:  # the loop's last call saved: no choice after that save
            blocked.pop()
        assert choice.cost_s == statistics.median(blocked[-auto.COST_WINDOW:])
        assert choice.step_s == 1.0 and choice.mtbf_s == 1e4 and choice.max_overhead == 0.02
        assert choice == auto.choose(choice.cost_s, 1.0, 1e4, 0.02, choice.write_s)
        assert choice.steps == m.checkpoint_interval >= math.ceil(
            math.sqrt(2 * choice.cost_s * 1e4) * (1 - 1e-9))
        # Each save came one chosen interval (chosen at the call after the save
        # before it) after the one before.
        gaps = [b[0] - a[0] for a, b in zip(saved, saved[1:])]
        chosen = [interval for _, interval in saved[1:]]
        assert gaps[1:] == chosen[1:] and gaps[0] == max(2, chosen[0])  # the first at call 2
        # Slower steps: re-chosen from the new step time, fewer steps apart.
        before = m.interval_choice
        for step in range(400, 2400):  # two choices after the change: the second is all slow steps
            _run_auto(m, clock, 1, 10.0, start=step)
            if m.interval_choice.step_s == 10.0:
                break
        assert m.interval_choice.step_s == 10.0
        assert m.interval_choice.steps < before.steps or m.interval_choice.bound == "one step"
    logged = [r.getMessage() for r in caplog.records if "checkpoint_interval='auto'" in
              r.getMessage()]
    # One line per change of interval (the first choice included), with its reason.
    changes = 1 + sum(a != b for a, b in zip(chosen, chosen[1:]))
    assert len(logged) >= changes >= 1
    assert all("save cost (blocked)" in t and "step " in t and "mtbf 1e+04 s" in t
               and "Young/Daly" in t for t in logged)


def test_auto_respects_the_overhead_budget_and_measures_again_after_a_restart(tmp_path):
    clock = Clock()
    kw = dict(step_counter=lambda s: int(s["step"]), checkpoint_interval="auto", clock=clock,
              mtbf_s=1e-3, max_overhead=0.5)  # Young/Daly ~ 0: the budget sets it
    with jaxckpt.CheckpointManager(tmp_path, **kw) as m:
        _run_auto(m, clock, 20, 1e-4)
        c = m.interval_choice
        assert c.bound in ("overhead", "write") and c.overhead <= 0.5 * (1 + 1e-9)
        last = int(m.restore()["step"])
    with jaxckpt.CheckpointManager(tmp_path, **kw) as m:
        m.restore()  # the interval counts from the restored step
        assert m.save(_tree(last)) is None  # the same step: never
        assert m.save(_tree(last + 1)) is not None  # nothing measured in this process yet
        assert m.interval_choice is None


def test_save_in_jit_refuses_a_manager_that_decides_on_the_host(tmp_path):
    for kw in ({"save_interval_s": 30}, {"checkpoint_interval": "auto", "mtbf_s": 60,
                                         "step_counter": lambda s: s["step"]}):
        with jaxckpt.CheckpointManager(tmp_path / str(len(kw)), **kw) as m:
            with pytest.raises(ValueError, match="save_in_jit.*decides on the host"):
                jax.jit(lambda s: m.save_in_jit(s, step=s["step"]))(_tree(1))
        assert _on_disk(tmp_path / str(len(kw))) == []


def test_readme_save_policy_snippet_runs(tmp_path):
    from test_readme import BLOCKS, _exec

    blocks = [body for lang, body in BLOCKS if lang == "python" and "save_interval_s=" in body]
    assert len(blocks) == 1
    ns = _exec(blocks[0], {}, tmp_path)
    assert ns["every_10_min"].checkpoint_interval is None
    assert _names(ns["long_run"].checkpoints) == ["ckpt-1000", "ckpt-2000"]
    assert ns["auto"].interval_choice is not None
