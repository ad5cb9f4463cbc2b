"""``checkpoint_interval="auto"``: a step interval from the measured cost of a save.

Pure: numbers in, an ``IntervalChoice`` out, no I/O, no clock of its own. The manager's
save rules (``_directory/save_rules``) feed ``AutoInterval`` each ``save()``
call's step and clock reading and each save's measured cost.

Young (1974) and Daly (2006), to first order: with checkpoints that cost the
computation ``C`` seconds each and failures every ``M`` seconds on average
(the MTBF), the work lost to checkpoints plus the work redone after a failure
is least with one checkpoint every ``sqrt(2 * C * M)`` seconds.

``C`` here is the time a save *blocks* the training loop (``SaveStats.blocked_s``:
the snapshot, and any wait for a writer slot), the median of the last
``COST_WINDOW`` saves. The background write (``write_s``) costs the loop
nothing, so it is not ``C``; it only delays the moment a checkpoint counts,
which adds the same lost work whatever the interval. It does set a floor:
checkpoints more often than one write takes would queue behind each other
(and then block), so the interval is at least the last ``write_s``.

Two more bounds: the overhead budget, ``C / (steps * step_s) <= max_overhead``
(within rounding), and at least one step. The interval is the largest of the
three, in whole steps (rounded up) of the measured step time.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from typing import Callable

DEFAULT_MAX_OVERHEAD = 0.02
COST_WINDOW = 5  # saves whose blocked time gives the cost (median: a slow first save is an outlier)
_ROUNDING = 1e-9  # relative slack when seconds are turned into whole steps


@dataclasses.dataclass(frozen=True)
class IntervalChoice:
    """One decision of the auto interval, with what it was made from.

    Attributes:
        steps: the interval in steps (``CheckpointManager.checkpoint_interval``).
        seconds: the interval in seconds it stands for, before rounding to steps.
        bound: which rule set it: ``"young_daly"``, ``"overhead"`` (the
            budget ``max_overhead``), ``"write"`` (a write takes longer) or
            ``"one step"``.
        young_daly_s: ``sqrt(2 * cost_s * mtbf_s)``.
        cost_s: the cost of a save: the median blocked time of the recent saves.
        write_s: the last finished save's write time, or None if none finished.
        step_s: the measured seconds per step (on the manager's clock).
        mtbf_s: the mean time between failures given.
        max_overhead: the budget given, a fraction of step time.
    """

    steps: int
    seconds: float
    bound: str
    young_daly_s: float
    cost_s: float
    write_s: float | None
    step_s: float
    mtbf_s: float
    max_overhead: float

    @property
    def overhead(self) -> float:
        """The fraction of step time saves take at this interval: ``cost_s / (steps * step_s)``."""
        return self.cost_s / (self.steps * self.step_s)

    def reason(self) -> str:
        write = "none finished" if self.write_s is None else f"{self.write_s:.4g} s"
        return (f"{self.steps} steps ({self.steps * self.step_s:.4g} s), set by {self.bound}: "
                f"save cost (blocked) {self.cost_s:.4g} s, write {write}, "
                f"step {self.step_s:.4g} s, mtbf {self.mtbf_s:.4g} s, "
                f"Young/Daly sqrt(2*cost*mtbf) = {self.young_daly_s:.4g} s, "
                f"overhead {self.overhead:.3%} (budget {self.max_overhead:.3%})")


def young_daly_s(cost_s: float, mtbf_s: float) -> float:
    """The optimal seconds between checkpoints, ``sqrt(2 * cost_s * mtbf_s)``."""
    return math.sqrt(2.0 * cost_s * mtbf_s)


def to_steps(seconds: float, step_s: float) -> int:
    """``seconds`` in whole steps of ``step_s``, rounded up (at least 1)."""
    n = seconds / step_s
    return max(1, math.ceil(n - _ROUNDING * n))


def choose(cost_s: float, step_s: float, mtbf_s: float, max_overhead: float,
           write_s: float | None = None) -> IntervalChoice:
    """The interval for a save costing ``cost_s`` (blocked) with steps of ``step_s``.

    The largest of: Young/Daly's ``sqrt(2 * cost_s * mtbf_s)``; the budget's
    ``cost_s / max_overhead``; the write time ``write_s``; one step.
    """
    if not step_s > 0:
        raise ValueError(f"step_s must be positive, got {step_s!r}")
    yd = young_daly_s(cost_s, mtbf_s)
    bounds = [("one step", step_s), ("write", write_s or 0.0),
              ("overhead", cost_s / max_overhead), ("young_daly", yd)]
    bound, seconds = max(reversed(bounds), key=lambda b: b[1])  # ties: the first of young_daly, ...
    return IntervalChoice(to_steps(seconds, step_s), seconds, bound, yd, cost_s, write_s, step_s,
                  mtbf_s, max_overhead)


class AutoInterval:
    """The auto interval of one manager as it runs: what it measured, what it chose.

    Not thread-safe: the manager calls it under its save lock.
    """

    def __init__(self, mtbf_s: float, max_overhead: float = DEFAULT_MAX_OVERHEAD):
        self.mtbf_s, self.max_overhead = float(mtbf_s), float(max_overhead)
        self.choice: IntervalChoice | None = None
        self._costs: collections.deque[float] = collections.deque(maxlen=COST_WINDOW)
        self._anchor: tuple[float, int] | None = None  # (clock, step) of the call measured from
        self._stale = True  # a save happened since the last choice

    @property
    def steps(self) -> int | None:
        """The current interval in steps; None before the first choice."""
        return None if self.choice is None else self.choice.steps

    @property
    def measured(self) -> bool:
        """Whether a save's cost was measured (in this process)."""
        return bool(self._costs)

    def saved(self, blocked_s: float) -> None:
        """A save was queued; it blocked the caller ``blocked_s`` seconds."""
        self._costs.append(max(0.0, float(blocked_s)))
        self._stale = True
        if self.choice is None:
            # The first step time is measured from the next call: the span from this
            # call would be one step plus this save's own blocking.
            self._anchor = None

    def observe(self, step: int, now: float, write_s: float | None,
                resync: Callable[[], float | None] | None = None) -> IntervalChoice | None:
        """A ``save()`` call at ``step``, clock ``now``; chooses again after a save.

        The step time is the mean since the call of the previous choice (for the
        first choice: since the call after the first save, so that the save's own
        blocking is not counted as a step). Returns the new choice if the interval in
        steps changed, else None.

        ``resync``, called only when a choice is made, waits for the step's
        arrays and returns the clock then (None if none was still computing):
        with asynchronous dispatch the calls come at the host's dispatch rate,
        not the device's step rate, until something waits for the device.
        """
        if self._anchor is None or step < self._anchor[1]:  # the first call, or a restored older step
            self._anchor = (now, step)
            return None
        if not (self._stale and self._costs):
            return None
        t0, s0 = self._anchor
        if step != s0 and resync is not None:
            fresh = resync()
            if fresh is not None:
                now = fresh
        if step == s0 or not now > t0:
            return None  # no step time yet
        choice = choose(statistics.median(self._costs), (now - t0) / (step - s0), self.mtbf_s,
                        self.max_overhead, write_s)
        self._anchor, self._stale = (now, step), False
        old, self.choice = self.choice, choice
        return choice if old is None or old.steps != choice.steps else None
