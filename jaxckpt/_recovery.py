"""What a manager finds when it opens a directory: numbering, retention, latest.

The state file is the record; checkpoints it names that are missing or
uncommitted are ignored (with a warning). A damaged state file is never read
as "no checkpoints": the manager numbers past every checkpoint on disk,
takes the newest committed one as latest and manages none of them, so that
nothing is deleted on a guess; its next save rewrites the state file.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from . import _api, _commit, _retention, _state_file
from ._location import Dir
from .errors import CorruptCheckpointError

log = logging.getLogger("jaxckpt")


@dataclasses.dataclass
class Found:
    max_number: int  # the highest checkpoint number named or (state file damaged) on disk
    named: set[str] | None  # paths the state file names; None: unknown (it is damaged)
    retention: _retention.Retention
    latest: str | None


def recover(root: Dir, number_of: Callable[[str], int | None],
            path_of: Callable[[int], str], now: float) -> Found:
    """Reads ``root``'s state file; ``number_of`` parses a checkpoint name,
    ``path_of`` makes a checkpoint's path from its number."""
    try:
        state = _state_file.read(root)
    except CorruptCheckpointError as e:
        return _by_listing(root, number_of, path_of, e, now)
    if state is None:
        return Found(0, set(), _retention.fresh(now), None)
    paths = [_state_file.resolve(root, p) for p in state.all_model_checkpoint_paths]
    retention, went_back = _retention.recover(
        paths, state.all_model_checkpoint_timestamps,
        state.last_preserved_timestamp or 0.0, now)
    if went_back:
        log.warning(
            "clock is behind the last preserved checkpoint time in %s (%.0f < %.0f): "
            "keeping every existing checkpoint", root, now, state.last_preserved_timestamp)
    missing = [p for p, _ in retention.active if not _commit.is_committed(p)]
    if missing:
        log.warning("state file in %s names missing or uncommitted checkpoints %s; "
                    "ignoring them", root, missing)
        retention.active = [(p, t) for p, t in retention.active if p not in missing]
    names = paths + ([state.model_checkpoint_path] if state.model_checkpoint_path else [])
    numbers = [n for p in names if (n := number_of(p)) is not None]
    return Found(max(numbers, default=0), {_state_file.resolve(root, p) for p in names},
                 retention, _api.latest_checkpoint(root))


def _by_listing(root: Dir, number_of: Callable[[str], int | None],
                path_of: Callable[[int], str], damage: CorruptCheckpointError,
                now: float) -> Found:
    found = sorted((n, path_of(n)) for name in root.listdir()
                   if (n := number_of(name)) is not None)
    max_number = max((n for n, _ in found), default=0)
    committed = [p for _, p in found if _commit.is_committed(p)]
    latest = committed[-1] if committed else None
    log.warning("%s; taking the newest committed checkpoint on disk (%s) as the latest and "
                "numbering from %d; the next save rewrites the state file",
                damage, latest, max_number + 1)
    return Found(max_number, None, _retention.fresh(now), latest)
