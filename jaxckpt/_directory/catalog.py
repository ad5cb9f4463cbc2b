"""The committed checkpoints of one managed directory: which are kept, which is latest.

Bookkeeping only: what the retention rules keep and drop, and the state file
that names them; ``_directory/publish`` does the I/O of publishing a commit (mark
deletions, replace the state file, delete). Process 0 alone writes the state
file and deletes; the other processes of a multi-process program keep the
same bookkeeping.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from . import best as _best, policy as _policy, temporary as _temporary
from .._commit import state_file as _state_file
from .._commit import atomic as _commit
from . import publish as _publish
from .._storage.location import Dir

log = logging.getLogger("jaxckpt")


class Catalog:
    """Which checkpoints are managed (oldest first) and which is the latest.

    Thread-safe; ``publish`` runs on the writer thread.
    """

    def __init__(self, root: Dir, retention: _policy.Retention, latest: str | None, *,
                 max_to_keep: int | None, keep_hours: float | None, primary: bool,
                 carried: list[tuple[str, float | None]] = (),
                 temporary: Callable[[str], bool] | None = None,
                 best: _best.Best | None = None, metrics: _best.Metrics | None = None):
        self._root, self._dir = root, str(root)
        self._carried = list(carried)  # state-file entries of others: kept, never managed
        self._max_to_keep, self._keep_hours = max_to_keep, keep_hours
        self._primary = primary
        self._temporary = temporary  # permanent_every: path -> whether it is temporary
        self._best, self._metrics = best, metrics  # keep_best, and each checkpoint's metrics
        self._lock = threading.Lock()
        self._retention, self._latest = retention, latest
        self._recheck = False  # after a failed save: re-check the active set on disk

    @property
    def checkpoints(self) -> list[str]:
        with self._lock:
            return [p for p, _ in self._retention.active]

    @property
    def latest(self) -> str | None:
        with self._lock:
            return self._latest

    def newest_timestamp(self) -> float | None:
        """The newest managed checkpoint's timestamp (the state file's), or None."""
        with self._lock:
            return self._retention.active[-1][1] if self._retention.active else None

    def newest_first(self) -> list[str]:
        """The latest checkpoint, then the managed ones, newest first."""
        with self._lock:
            out = [self._latest] if self._latest else []
            return out + [p for p, _ in reversed(self._retention.active) if p not in out]

    def save_failed(self) -> None:
        """A save failed: maybe because the directory vanished under us."""
        self._recheck = True

    def warn_if_clock_went_back(self, timestamp: float) -> None:
        with self._lock:
            newest = self._retention.active[-1][1] if self._retention.active else None
        if newest is not None and timestamp < newest:
            log.warning("clock went backwards in %s: this save is stamped %.3f, before the "
                        "newest checkpoint's %.3f; retention by time may keep or drop "
                        "checkpoints out of order", self._dir, timestamp, newest)

    def prepare(self, path: str, timestamp: float,
                metrics: dict | None = None) -> _publish.Publication:
        """Before ``path`` is committed: what the retention rules will keep and
        delete, and (process 0) the state file naming it, written in the background."""
        with self._lock:
            grown = _policy.add(self._present(), path, timestamp)
        sweep = lambda r: _policy.sweep(r, self._max_to_keep, self._keep_hours)  # noqa: E731
        if self._metrics is not None:
            self._metrics.note(path, metrics)
        rules = sweep if self._temporary is None else (  # noqa: E731
            lambda r: _temporary.sweep(r, self._temporary, sweep))
        if self._best is None or self._metrics is None:
            kept, delete = rules(grown)
        else:
            kept, delete = _best.sweep(grown, rules, self._metrics.value(self._best[1]),
                                       self._best)
        state_file = None
        if self._primary:
            state_file = _publish.in_background(_state_file.prepare, self._root,
                                        self._render(kept, path))
        return _publish.Publication(path, kept, delete, state_file)

    def discard(self, pub: _publish.Publication) -> None:
        """The checkpoint of ``pub`` was not committed: drops its state file."""
        _publish.discard(pub)

    def publish(self, pub: _publish.Publication) -> list[str]:
        """Makes the committed checkpoint ``pub.path`` the latest: replaces the
        state file, then deletes what the retention rules drop. Returns those paths.

        Raises: the state file's write failure, after removing ``pub.path`` (it
        is then not committed as far as any reader of the state file knows).
        """
        with self._lock:
            if self._primary:
                try:
                    _publish.install(self._root, pub)
                except BaseException:
                    _publish.discard(pub)
                    _publish.unpublish(self._root, pub.path, pub.delete,
                                       still_named=self._names(pub.path))
                    raise
            self._retention, self._latest = pub.kept, pub.path
        if self._primary:
            _publish.delete_dropped(self._root, pub.delete)
        return pub.delete

    def _present(self) -> _policy.Retention:
        """The active set; after a failed save, less the checkpoints that vanished
        from disk (a directory removed under a live manager), so that the state
        file never names them. Costs one read per checkpoint, so only then."""
        if not self._recheck:
            return self._retention
        self._recheck = False
        present, gone = [], []
        for p, t in self._retention.active:
            if _commit.is_committed(p):
                present.append((p, t))
            else:
                gone.append(p)
        if gone:
            log.warning("checkpoints %s disappeared from %s; no longer listing them", gone,
                        self._dir)
        return _policy.Retention(present, self._retention.last_preserved)

    def _names(self, path: str) -> bool:
        """Whether the current state file names ``path`` (a replaced number)."""
        return path == self._latest or any(p == path for p, _ in self._retention.active)

    def _render(self, r: _policy.Retention, latest: str) -> _state_file.CheckpointState:
        rel = lambda p: _state_file.relative(self._root, p)  # noqa: E731
        # Entries that are not ours stay as written, oldest; one without a
        # timestamp gets the last preserved time: unmanaged, as it was.
        carried = [(raw, r.last_preserved if t is None else t) for raw, t in self._carried]
        return _state_file.CheckpointState(
            model_checkpoint_path=rel(latest),
            all_model_checkpoint_paths=[raw for raw, _ in carried] + [rel(p) for p, _ in r.active],
            all_model_checkpoint_timestamps=[t for _, t in carried] + [t for _, t in r.active],
            last_preserved_timestamp=r.last_preserved,
        )
