"""Checking what callers pass a CheckpointManager: clear errors before anything happens."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

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
