"""Which checkpoints to keep: TensorFlow's CheckpointManager rules, no I/O.

The active set is an ordered list of (path, timestamp), oldest first. When it
grows past ``max_to_keep`` the oldest leave it; one of them is preserved
(kept on disk, no longer managed) if it is at least
``keep_checkpoint_every_n_hours`` newer than the last preserved one.
"""

from __future__ import annotations

import dataclasses


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
