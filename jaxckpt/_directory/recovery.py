"""What a manager finds when it opens a directory: numbering, retention, latest.

A manager owns only ``<checkpoint_name>-<N>`` entries directly inside its
directory. The state file is the record of them; what it names that is
missing or uncommitted is ignored (with a warning). Its other entries (paths
outside the directory, other series, files TensorFlow's ``Checkpoint.save``
wrote) are never managed, numbered past or deleted: they are carried into
the next state file as they were written.

Numbering continues after the largest number on disk or named, so that no
number on disk is ever reused. A lost or stale state file never makes the
manager forget committed checkpoints: those numbered above everything the
state file names (all of them when there is no state file) are adopted with
a WARNING: they join the active set, the newest is the latest. Those below
are left alone: TensorFlow's ``keep_checkpoint_every_n_hours`` preserves
checkpoints by dropping them from the state file.

A damaged state file is never read as "no checkpoints": the manager numbers
past every checkpoint on disk, takes the newest committed one as latest and
manages none of them, so that nothing is deleted on a guess; its next save
rewrites the state file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Callable

from . import policy as _policy
from .._commit import state_file as _state_file
from .._commit import atomic as _commit, deletions as _deletions
from .._format import manifest as _format
from .._read import latest as _latest, reader as _reader
from .._storage.location import Dir
from ..errors import CorruptCheckpointError

log = logging.getLogger("jaxckpt")


@dataclasses.dataclass
class Found:
    max_number: int  # the highest checkpoint number named or on disk
    named: set[str] | None  # paths the state file names; None: unknown (it is damaged)
    retention: _policy.Retention
    latest: str | None
    # State-file entries that are not this manager's, as written, with their timestamps.
    carried: list[tuple[str, float | None]] = dataclasses.field(default_factory=list)


def recover(root: Dir, number_of: Callable[[str], int | None],
            path_of: Callable[[int], str], now: float) -> Found:
    """Reads ``root``'s state file and listing; ``number_of`` parses a checkpoint
    name (None: not of this series), ``path_of`` makes a checkpoint's path from its number."""
    listing = set(root.listdir())
    on_disk = {n: name for name in listing if (n := number_of(name)) is not None}
    try:
        state = _state_file.read(root)
    except CorruptCheckpointError as e:
        return _by_listing(root, on_disk, path_of, e, now)
    missing_file = state is None
    if state is None:
        state = _state_file.CheckpointState()
    mine = lambda p: (n := number_of(p)) is not None and path_of(n) == p  # noqa: E731

    stamps = _finite_stamps(root, state, mine)
    entries = [(raw, _state_file.resolve(root, raw), ts)
               for raw, ts in zip(state.all_model_checkpoint_paths, stamps)]
    own = [(path, ts) for _, path, ts in entries if mine(path)]
    carried = _dedupe([(raw, ts) for raw, path, ts in entries if not mine(path)])
    latest_named = (None if state.model_checkpoint_path is None
                    else _state_file.resolve(root, state.model_checkpoint_path))
    foreign = [raw for raw, _ in carried]
    if latest_named is not None and not mine(latest_named):
        foreign.append(state.model_checkpoint_path)
    if foreign:
        log.warning("state file in %s names %s, which are not this manager's checkpoints "
                    "(%s<N>): they are never managed, numbered past or deleted, and stay "
                    "named in the state file", root, sorted(set(foreign)), path_of(0)[:-1])

    last_preserved = (_policy.fresh(now).last_preserved if missing_file
                      else state.last_preserved_timestamp or 0.0)
    retention, went_back = _policy.recover(
     [p for p, _ in own],
     [ts for _, ts in own] if state.all_model_checkpoint_timestamps else [],
     last_preserved, now)
    if went_back:
        log.warning(
            "clock is behind the last preserved checkpoint time in %s (%.0f < %.0f): "
            "keeping every existing checkpoint", root, now, last_preserved)
    missing = [p for p, _ in retention.active if not _commit.is_committed(p)]
    if missing:
        log.warning("state file in %s names missing or uncommitted checkpoints %s; "
                    "ignoring them", root, missing)
        retention.active = [(p, t) for p, t in retention.active if p not in missing]

    own_named = [p for p, _ in own] + (
        [latest_named] if latest_named is not None and mine(latest_named) else [])
    top = max((number_of(p) for p in own_named), default=0)
    adopted = _adoptable(root, listing, on_disk, path_of, top, now)
    if adopted:
        log.warning("state file %s in %s: adopting %s found on disk (numbered above "
                    "everything it names); they join the active set and the newest is the latest",
                    "missing" if missing_file else "stale", root,
                    [os.path.basename(p.rstrip("/")) for p, _ in adopted])
        retention.active += adopted
        latest = adopted[-1][0]
    else:
        latest = _own_latest(latest_named if latest_named in own_named else None,
                             [p for p, _ in own])
        if latest is None:  # none of ours: the state file's (another series, TF's Checkpoint.save)
            latest = _latest.newest_named(root, state)
    # On object stores an interrupted (or in-flight) save leaves ckpt-N/d-<token>/
    # without a manifest: its data is never read and is swept after the lease,
    # so its number may be taken again (the new save writes its own d-<token>).
    numbered = on_disk if root.is_local else [
        n for n in on_disk if n > top and _commit.is_committed(path_of(n))]
    max_number = max([top, *numbered])
    named = {path for _, path, _ in entries}
    if latest_named is not None:
        named.add(latest_named)
    return Found(max_number, named, retention, latest, carried)


def _finite_stamps(root: Dir, state: _state_file.CheckpointState,
                   mine: Callable[[str], bool]) -> list[float | None]:
    """The state file's timestamps, one per path (None: it has none), with
    non-finite ones (written by someone else's clock) replaced by the
    checkpoint's own time, so that the active set survives them."""
    paths, stamps = state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps
    if not stamps:
        return [None] * len(paths)
    bad = [p for p, t in zip(paths, stamps) if not math.isfinite(t)]
    lp = state.last_preserved_timestamp
    if lp is not None and not math.isfinite(lp):
        # TensorFlow's default when the field is absent.
        log.warning("state file in %s has last_preserved_timestamp %r; reading it as 0",
                    root, lp)
        state.last_preserved_timestamp = 0.0
    if not bad:
        return list(stamps)
    log.warning("state file in %s has non-finite timestamps for %s; using each "
                "checkpoint's own save time instead", root, bad)
    out: list[float | None] = []
    for p, t in zip(paths, stamps):
        path = _state_file.resolve(root, p)
        out.append(t if math.isfinite(t) else (_saved_at(path) if mine(path) else None))
    return out


def _dedupe(entries: list[tuple[str, float | None]]) -> list[tuple[str, float | None]]:
    """First position, last timestamp: as ``_directory/policy.recover`` for our own."""
    out: dict[str, float | None] = {}
    for raw, ts in entries:
        out[raw] = ts
    return list(out.items())


def _adoptable(root: Dir, listing: set[str], on_disk: dict[int, str],
               path_of: Callable[[int], str], above: int, now: float) -> list[tuple[str, float]]:
    """Committed checkpoints of ours (``on_disk``: every ``<name>-<N>`` in the
    ``listing``, by number) numbered above ``above``, oldest first, with their
    save times: not symlinks or files (never ours to delete), not marked for
    deletion (an interrupted retention dropped them)."""
    out = []
    for n in sorted(k for k in on_disk if k > above):
        path = path_of(n)
        if _deletions.marker_name(path) in listing or not _is_real_directory(root, path):
            continue
        if _commit.is_committed(path):
            out.append((path, min(_saved_at(path), now)))
    return out


def _is_real_directory(root: Dir, path: str) -> bool:
    if not root.is_local:
        return True
    return os.path.isdir(path) and not os.path.islink(path)


def _saved_at(path: str) -> float:
    """A committed checkpoint's save time: its manifest's ``created``, else its mtime."""
    try:
        created = _reader.read_manifest(path).get("created")
        if isinstance(created, (int, float)) and math.isfinite(created):
            return float(created)
    except Exception:  # damaged: restore reports it; retention still needs a time
        pass
    try:
        return os.stat(os.path.join(path, _format.MANIFEST)).st_mtime
    except OSError:
        return 0.0


def _own_latest(latest_named: str | None, own: list[str]) -> str | None:
    """Our newest committed checkpoint that the state file names."""
    for path in ([latest_named] if latest_named else []) + own[::-1]:
        if _commit.is_committed(path):
            return path
    return None


def _by_listing(root: Dir, on_disk: dict[int, str], path_of: Callable[[int], str],
                damage: CorruptCheckpointError, now: float) -> Found:
    found = sorted((n, path_of(n)) for n in on_disk)
    max_number = max((n for n, _ in found), default=0)
    committed = [p for _, p in found if _commit.is_committed(p)]
    latest = committed[-1] if committed else None
    log.warning("%s; taking the newest committed checkpoint on disk (%s) as the latest and "
                "numbering from %d; the next save rewrites the state file",
                damage, latest, max_number + 1)
    return Found(max_number, None, _policy.fresh(now), latest)
