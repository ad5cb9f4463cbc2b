"""jaxckpt._directory.policy: argument checks of a CheckpointManager, before anything happens."""

from __future__ import annotations

import numpy as np
import pytest

from jaxckpt._directory import policy as _policy


def _check(**overrides):
    kwargs = dict(max_pending=2, keep_checkpoint_every_n_hours=None, checkpoint_name="ckpt",
                  checkpoint_interval=None, step_counter=None, callables={},
                  coordination_timeout_s=60.0)
    _policy.check_manager_options(**{**kwargs, **overrides})


def test_positive_int():
    assert _policy.positive_int("n", 3) == 3 and _policy.positive_int("n", np.int64(2)) == 2
    assert _policy.positive_int("n", None) is None
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ValueError, match="n must be a positive int or None"):
            _policy.positive_int("n", bad)
    with pytest.raises(ValueError, match="positive int, got None"):
        _policy.positive_int("n", None, allow_none=False)


def test_as_number():
    assert _policy.as_number(5) == 5 and _policy.as_number(np.asarray(7)) == 7
    assert _policy.as_number(np.uint8(3)) == 3
    for bad, match in [(True, "must be an integer"), (1.5, "integer scalar array"),
                       (np.arange(2), "integer scalar array"), (-1, ">= 0"),
                       ("3", "integer scalar array")]:
        with pytest.raises(ValueError, match=match):
            _policy.as_number(bad)


def test_good_options_pass():
    _check()
    _check(keep_checkpoint_every_n_hours=0.5, checkpoint_interval=3,
           step_counter=lambda s: 0, callables={"init_fn": lambda: None, "clock": None})


@pytest.mark.parametrize("overrides, match", [
    ({"max_pending": 0}, "max_pending"),
    ({"keep_checkpoint_every_n_hours": 0}, "keep_checkpoint_every_n_hours"),
    ({"keep_checkpoint_every_n_hours": True}, "keep_checkpoint_every_n_hours"),
    ({"checkpoint_name": ""}, "checkpoint_name"),
    ({"checkpoint_name": "a/b"}, "path separators"),
    ({"checkpoint_name": ".hidden"}, "start with '.'"),
    ({"checkpoint_name": "\udc80"}, "not valid Unicode"),
    ({"checkpoint_name": "x" * (_policy.MAX_NAME_BYTES + 1)}, "bytes in UTF-8"),
    ({"checkpoint_interval": 2}, "needs a step_counter"),
    ({"callables": {"init_fn": 3}}, "init_fn must be callable"),
    ({"coordination_timeout_s": 0}, "coordination_timeout_s"),
    ({"coordination_timeout_s": float("nan")}, "coordination_timeout_s"),
])
def test_bad_options_name_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        _check(**overrides)


def test_longest_name_fits_a_file_name():
    name = "x" * _policy.MAX_NAME_BYTES
    _check(checkpoint_name=name)
    assert len(f".{name}-{'9' * 20}.trash-{'f' * 64}".encode()) == 255


def test_clock_reading():
    assert _policy.clock_reading(lambda: np.float32(1.5)) == 1.5
    for bad, match in [(lambda: "soon", "number of seconds"), (lambda: float("inf"), "finite"),
                       (lambda: float("nan"), "finite")]:
        with pytest.raises(ValueError, match=match):
            _policy.clock_reading(bad)
