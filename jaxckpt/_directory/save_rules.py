"""When a manager saves, beyond TensorFlow's "every N steps": by wall time, and "auto".

Pure (no I/O, no threads; the caller holds the save lock). Two parts:

- ``check``: the options ``save_interval_s``, ``checkpoint_interval="auto"``,
  ``mtbf_s``, ``max_overhead`` and ``permanent_every``, checked before
  anything is written; ``Options`` is their normal form.
- ``Rules``: the decision for one ``save()`` call, used only when
  ``save_interval_s`` or ``"auto"`` is set (otherwise ``policy.skips``, TF's rule,
  decides alone, as before).

The decision, in order:

1. with a step rule (an int ``checkpoint_interval`` or ``"auto"``), the step of
   the last save again: skipped (as TensorFlow);
2. ``check_interval=False``: saved;
3. saved if any rule says so:
   - time: no save yet (none in the directory either), or at least
     ``save_interval_s`` seconds on the manager's clock since the last save
     was queued (after a restart: the newest checkpoint's timestamp);
   - an int ``checkpoint_interval`` N (beside ``save_interval_s``): no step
     saved yet, or the step reached a multiple of N past the last saved one
     (``step // N > last // N``), so that saves by time in between do not move
     the multiples (``permanent_every`` can then keep them);
   - ``"auto"``: no save measured yet in this process (the first save after a
     start measures the cost), or ``step >= last + interval`` with the interval
     ``AutoInterval`` chose.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from typing import Any, Callable

from . import auto_interval as _auto

log = logging.getLogger("jaxckpt")

AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Options:
    """The checked save-rule options of one manager."""

    interval_s: float | None = None
    auto: bool = False
    mtbf_s: float | None = None
    max_overhead: float = _auto.DEFAULT_MAX_OVERHEAD
    permanent_every: int | None = None

    @property
    def decides(self) -> bool:
        """Whether ``Rules`` decides the saves (else TensorFlow's rule alone)."""
        return self.interval_s is not None or self.auto


def _seconds(name: str, value: Any, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number of seconds{hint}, "
                         f"got {value!r}")
    return float(value)


def check(*, checkpoint_interval: Any, save_interval_s: Any, mtbf_s: Any, max_overhead: Any,
          permanent_every: Any, step_counter: Any, clock: Callable[[], Any],
          process_count: int) -> Options:
    """Checks the save-rule options; raises naming the first bad one.

    ``checkpoint_interval`` other than ``"auto"`` and ``clock`` being callable
    are checked by the caller (``policy.manager_options``), first.
    ``clock`` is read once when ``save_interval_s`` is set, so that a clock
    that does not give seconds fails here rather than at the first save.

    Raises:
        ValueError: a bad value, an option without the one it needs, or a
            rule that a multi-process program cannot use yet.
    """
    auto = isinstance(checkpoint_interval, str) and checkpoint_interval == AUTO
    interval_s = None
    if save_interval_s is not None:
        interval_s = _seconds("save_interval_s", save_interval_s, " or None")
    if permanent_every is not None and (
            isinstance(permanent_every, bool) or not isinstance(permanent_every, numbers.Integral)
            or permanent_every <= 0):
        raise ValueError(f"permanent_every must be a positive int or None (checkpoints whose "
                         f"number is a multiple of it are permanent), got {permanent_every!r}")
    if auto:
        if mtbf_s is None:
            raise ValueError(
                "checkpoint_interval='auto' needs mtbf_s, the mean time between failures in "
                "seconds (e.g. mtbf_s=3600 for one failure an hour): the interval is "
                "sqrt(2 * save cost * mtbf_s)")
        mtbf = _seconds("mtbf_s", mtbf_s, "")
        overhead = _auto.DEFAULT_MAX_OVERHEAD
        if max_overhead is not None:
            if isinstance(max_overhead, bool) or not isinstance(max_overhead, numbers.Real) or \
                    not 0 < max_overhead <= 1:
                raise ValueError("max_overhead must be a fraction of step time in (0, 1] "
                                 f"(e.g. 0.02 for 2%), got {max_overhead!r}")
            overhead = float(max_overhead)
        if step_counter is None:
            raise ValueError("checkpoint_interval='auto' needs a step_counter (state -> int): "
                             "the interval is in steps")
    else:
        for name, value in (("mtbf_s", mtbf_s), ("max_overhead", max_overhead)):
            if value is not None:
                raise ValueError(f"{name} is used only with checkpoint_interval='auto', got "
                                 f"{name}={value!r} with checkpoint_interval="
                                 f"{checkpoint_interval!r}")
        mtbf, overhead = None, _auto.DEFAULT_MAX_OVERHEAD
    if (auto or interval_s is not None) and process_count > 1:
        what = "checkpoint_interval='auto'" if auto else "save_interval_s"
        raise ValueError(
            f"{what} is not supported in a multi-process program yet: every process must "
            "save the same steps, and each would measure its own clock and costs; use an "
            "int checkpoint_interval")
    if interval_s is not None:
        try:
            reading = float(clock())
        except Exception as e:
            raise ValueError(f"save_interval_s needs a clock giving seconds; clock() failed or "
                             f"gave no number: {e!r}") from e
        if not math.isfinite(reading):
            raise ValueError(f"save_interval_s needs a clock giving finite seconds; clock() "
                             f"returned {reading!r}")
    return Options(interval_s, auto, mtbf, overhead,
                   None if permanent_every is None else int(permanent_every))


class Rules:
    """The save decision of one manager with ``save_interval_s`` or ``"auto"``."""

    def __init__(self, options: Options, interval: int | None):
        self._interval_s = options.interval_s
        self._interval = interval  # an int checkpoint_interval, or None
        self.auto = (_auto.AutoInterval(options.mtbf_s, options.max_overhead)
                     if options.auto else None)
        self.last_time: float | None = None  # the clock at the last save (or newest checkpoint)

    @property
    def steps(self) -> bool:
        """Whether a rule counts steps (``step_counter`` is read)."""
        return self._interval is not None or self.auto is not None

    @property
    def interval(self) -> int | None:
        """The step interval now: the int given, auto's choice, or None."""
        return self.auto.steps if self.auto is not None else self._interval

    def due(self, last_step: int | None, step: int | None, now: float, check_interval: bool,
            write_s: Callable[[], float | None],
            resync: Callable[[], float | None] | None = None) -> bool:
        """Whether the ``save()`` call at ``step`` (None without a step rule) and
        clock ``now`` saves; ``write_s()`` gives the last finished save's write time;
        ``resync`` as in ``AutoInterval.observe``."""
        if step is not None and last_step is not None and step == last_step:
            return False
        if self.auto is not None and step is not None:
            change = self.auto.observe(step, now, write_s(), resync)
            if change is not None:
                log.info("checkpoint_interval='auto': %s", change.reason())
        if not check_interval:
            return True
        return self._by_time(now) or self._by_step(last_step, step)

    def saved(self, now: float, blocked_s: float) -> None:
        """A save was queued at clock ``now``; it blocked ``blocked_s`` seconds."""
        self.last_time = now
        if self.auto is not None:
            self.auto.saved(blocked_s)

    def _by_time(self, now: float) -> bool:
        if self._interval_s is None:
            return False
        if self.last_time is None:
            return True
        if now < self.last_time:
            log.warning("save_interval_s: the clock went back (%.3f, the last save was at "
                        "%.3f); counting %.4g s from now", now, self.last_time,
                        self._interval_s)
            self.last_time = now
            return False
        return now - self.last_time >= self._interval_s

    def _by_step(self, last_step: int | None, step: int | None) -> bool:
        if step is None:
            return False
        if self.auto is not None:
            if not self.auto.measured or last_step is None:
                return True
            steps = self.auto.steps
            return steps is not None and step >= last_step + steps
        if last_step is None:
            return True
        return step // self._interval > last_step // self._interval
