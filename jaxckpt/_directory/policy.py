"""The manager's rules, as pure functions: no I/O, no threads, no state.

Used by ``CheckpointManager``, ``tf_compat.CheckpointManager`` and
``save_in_jit``'s host callback alike, so that each rule is written once:

- argument checks: what callers pass a manager, with clear errors before
  anything happens (``positive_int``, ``as_number``, ``check_manager_options``,
  ``clock_reading``);
- the interval rule: which steps a save skips (``skips``);
- retention, TensorFlow's CheckpointManager rules (``Retention``, ``recover``,
  ``fresh``, ``add``, ``sweep``).

The active set is an ordered list of (path, timestamp), oldest first. When it
grows past ``max_to_keep`` the oldest leave it; one of them is preserved
(kept on disk, no longer managed) if it is at least
``keep_checkpoint_every_n_hours`` newer than the last preserved one.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import numpy as np

from . import save_rules as _save_rules

# ------------------------------------------------------------ argument checks

# The longest name made from a checkpoint_name is a temporary or trash entry,
# ``.<name>-<N>.trash-<token>``: with room for a 20-digit N and a 64-character
# token it must fit in a file name's 255 bytes.
MAX_NAME_BYTES = 255 - len(".-.trash-") - 20 - 64


def positive_int(name: str, value: Any, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return int(value)


def as_number(value: Any, what: str = "checkpoint_number") -> int:
    """An int from an int or an integer scalar array; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        try:
            arr = np.asarray(value)
        except Exception as e:
            raise ValueError(f"{what} must be an integer, got {value!r}") from e
        if arr.ndim != 0 or arr.dtype.kind not in "iu":
            raise ValueError(f"{what} must be an integer or integer scalar array, got {value!r}")
        number = int(arr)
    if number < 0:
        raise ValueError(f"{what} must be >= 0, got {number}")
    return number


def check_manager_options(
    *,
    max_pending: Any,
    keep_checkpoint_every_n_hours: Any,
    checkpoint_name: Any,
    checkpoint_interval: int | None,
    step_counter: Any,
    callables: dict[str, Callable | None],
    coordination_timeout_s: Any,
) -> None:
    """Raises ``ValueError`` naming the first bad argument."""
    positive_int("max_pending", max_pending, allow_none=False)
    if keep_checkpoint_every_n_hours is not None and (
        isinstance(keep_checkpoint_every_n_hours, bool)
        or not isinstance(keep_checkpoint_every_n_hours, numbers.Real)
        or not keep_checkpoint_every_n_hours > 0
    ):
        raise ValueError("keep_checkpoint_every_n_hours must be a positive number or None, "
                         f"got {keep_checkpoint_every_n_hours!r}")
    if not isinstance(checkpoint_name, str) or not checkpoint_name or any(
        c in checkpoint_name for c in "/\\\0") or checkpoint_name.startswith("."):
        raise ValueError(
            f"checkpoint_name must be a non-empty file name without path separators "
            f"that does not start with '.', got {checkpoint_name!r}")
    try:
        size = len(checkpoint_name.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(f"checkpoint_name {checkpoint_name!r} is not valid Unicode (a lone "
                         "surrogate); it must be storable as a UTF-8 file name") from e
    if size > MAX_NAME_BYTES:
        raise ValueError(
            f"checkpoint_name is {size} bytes in UTF-8; at most {MAX_NAME_BYTES} fit, since "
            f"'.<name>-<N>.trash-<token>' must stay within a file name's 255 bytes: "
            f"{checkpoint_name[:40]!r}...")
    if checkpoint_interval is not None and step_counter is None:
        raise ValueError("checkpoint_interval needs a step_counter (state -> int)")
    for name, fn in callables.items():
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable, got {fn!r}")
    if isinstance(coordination_timeout_s, bool) or not isinstance(
            coordination_timeout_s, numbers.Real) or not coordination_timeout_s > 0:
        raise ValueError("coordination_timeout_s must be a positive number of seconds, "
                         f"got {coordination_timeout_s!r}")


@dataclasses.dataclass(frozen=True)
class ManagerOptions:
    """A CheckpointManager's checked arguments that it keeps in normal form."""

    max_to_keep: int | None
    interval: int | None
    last_step: int | None
    rules: Any = None  # _directory/save_rules.Options: by time, "auto", temporaries


def manager_options(*, read_only: Any, max_to_keep: Any, checkpoint_interval: Any,
                    max_pending: Any, keep_checkpoint_every_n_hours: Any, checkpoint_name: Any,
                    step_counter: Any, init_fn: Any, clock: Any, coordination_timeout_s: Any,
                    last_checkpoint_step: Any, incremental: Any = True,
                    save_rules: dict | None = None, process_count: int = 1) -> ManagerOptions:
    """Checks every CheckpointManager argument, in order; raises naming the first bad one.

    ``save_rules``: the options ``_directory/save_rules.check`` takes
    (``save_interval_s``, ``mtbf_s``, ``max_overhead``, ``permanent_every``).

    Raises:
        TypeError: ``read_only`` or ``incremental`` is not a bool.
        ValueError: any other bad argument.
    """
    if not isinstance(read_only, bool):
        raise TypeError(f"read_only must be a bool, got {read_only!r}")
    if not isinstance(incremental, bool):
        raise TypeError(f"incremental must be a bool (True shares unchanged files with kept "
                        f"checkpoints, False writes every byte), got {incremental!r}")
    keep = positive_int("max_to_keep", max_to_keep)
    auto = isinstance(checkpoint_interval, str) and checkpoint_interval == _save_rules.AUTO
    if isinstance(checkpoint_interval, str) and not auto:
        raise ValueError(f"checkpoint_interval must be a positive int, {_save_rules.AUTO!r} or "
                         f"None, got {checkpoint_interval!r}")
    interval = None if auto else positive_int("checkpoint_interval", checkpoint_interval)
    check_manager_options(
        max_pending=max_pending, keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
        checkpoint_name=checkpoint_name, checkpoint_interval=interval,
        step_counter=step_counter,
        callables={"step_counter": step_counter, "init_fn": init_fn, "clock": clock},
        coordination_timeout_s=coordination_timeout_s)
    rules = _save_rules.check(checkpoint_interval=checkpoint_interval, step_counter=step_counter,
                              clock=clock, process_count=process_count, **(save_rules or {}))
    last_step = (None if last_checkpoint_step is None
                 else as_number(last_checkpoint_step, "last_checkpoint_step"))
    return ManagerOptions(keep, interval, last_step, rules)


def clock_reading(clock: Callable[[], Any]) -> float:
    """One reading of a manager's ``clock`` as a finite float; ValueError otherwise.

    A NaN or infinite timestamp in the state file would make every later
    comparison false (nothing is ever deleted, or everything looks preserved),
    so it is refused before anything is written.
    """
    value = clock()
    try:
        reading = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"clock() must return a number of seconds, got {value!r}") from e
    if not math.isfinite(reading):
        raise ValueError(f"clock() returned {reading!r}; it must give a finite number of "
                         "seconds (e.g. time.time)")
    return reading


# ------------------------------------------------------------ the interval rule


def skips(last_step: int | None, step: int, interval: int, check_interval: bool) -> bool:
    """Whether a save of ``step`` is skipped: a repeated step always, one too
    soon after the last (below ``last_step + interval``) when ``check_interval``."""
    if last_step is None:
        return False
    if step == last_step:
        return True
    return check_interval and step < last_step + interval


# ------------------------------------------------------------ retention


@dataclasses.dataclass
class Retention:
    active: list[tuple[str, float]]
    last_preserved: float


def recover(
    paths: list[str], timestamps: list[float], last_preserved: float, now: float
) -> tuple[Retention, bool]:
    """The active set from a state file; returns it and whether the clock went back.

    Checkpoints older than the last preserved one are no longer managed. If the
    clock is behind the recorded times, timestamps are capped at ``now`` so
    nothing is deleted early, as TensorFlow does. A state file without
    timestamps (older TensorFlow) leaves its checkpoints unmanaged: kept.
    A path listed twice is kept once, at its first position with its last
    timestamp (TensorFlow fills an OrderedDict keyed by path), so that it is
    never deleted twice nor named after its deletion.
    """
    went_back = now < last_preserved
    if went_back:
        last_preserved = now
    if not timestamps:
        timestamps = [last_preserved] * len(paths)
    active: dict[str, float] = {}
    for path, ts in zip(paths, timestamps):
        ts = min(ts, now)
        if ts > last_preserved:
            active[path] = ts
    return Retention(list(active.items()), last_preserved), went_back


def fresh(now: float) -> Retention:
    # Slightly in the past, so a checkpoint saved right away can be preserved.
    return Retention([], now - 1.0)


def add(r: Retention, path: str, timestamp: float) -> Retention:
    """The set with ``path`` appended as newest (moved to the end if present)."""
    active = [(p, t) for p, t in r.active if p != path] + [(path, timestamp)]
    return Retention(active, r.last_preserved)


def sweep(
    r: Retention, max_to_keep: int | None, keep_every_n_hours: float | None
) -> tuple[Retention, list[str]]:
    """Applies the rules; returns the new set and the paths to delete."""
    if max_to_keep is None:
        return r, []
    active = list(r.active)
    last_preserved = r.last_preserved
    delete = []
    while len(active) > max_to_keep:
        path, ts = active.pop(0)
        if keep_every_n_hours and ts - keep_every_n_hours * 3600.0 >= last_preserved:
            last_preserved = ts
            continue
        delete.append(path)
    return Retention(active, last_preserved), delete
