"""Per-save statistics a CheckpointManager records for its users to log.

Each ``save`` that is not skipped gets a ``SaveStats``: filled by the caller's
thread (how long ``save`` blocked) and then by the writer (how long writing
and committing took, what retention deleted). ``StatsRecorder`` keeps running
totals of every save and the most recent ones in full. No I/O, no JAX.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

HISTORY = 1000


@dataclasses.dataclass
class SaveStats:
    """What one ``save`` cost.

    Attributes:
        path: the checkpoint's path.
        nbytes: array bytes in the snapshot (what is written, before chunk overhead).
        started: wall-clock time (``time.time()``) when ``save`` was called.
        blocked_s: seconds ``save`` blocked the caller (snapshot, and waiting
            for a writer slot when earlier saves were still in flight).
        queued_s: seconds the write waited behind earlier saves; None until it starts.
        write_s: seconds the writer spent: write, fsync, commit, state file,
            deletions. None until the save is committed or failed.
        deleted: checkpoints the retention rules removed after this commit.
        error: ``repr`` of the failure if the background write failed.
        bytes_written: array bytes this process wrote (an incremental save
            writes only what no kept checkpoint holds); None until committed.
        bytes_shared: array bytes hard-linked from kept checkpoints instead
            of written (0 with ``incremental=False``); None until committed.
        peak_host_bytes: the most bytes of host copies (NumPy leaves, device-to-host
            copies of non-CPU arrays, the operands JAX copies for ``save_in_jit``)
            this save held at once, at most about the manager's ``max_host_bytes``;
            None until done.
    """

    path: str
    nbytes: int
    started: float
    blocked_s: float = 0.0
    queued_s: float | None = None
    write_s: float | None = None
    deleted: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    bytes_written: int | None = None
    bytes_shared: int | None = None
    peak_host_bytes: int | None = None

    @property
    def done(self) -> bool:
        """True once the write committed or failed."""
        return self.write_s is not None or self.error is not None

    @property
    def committed(self) -> bool:
        return self.write_s is not None and self.error is None

    @property
    def throughput(self) -> float | None:
        """Bytes per second of the write, once committed."""
        if not self.committed or not self.write_s:
            return None
        return self.nbytes / self.write_s


@dataclasses.dataclass(frozen=True)
class SaveSummary:
    """Totals over every save a manager made (a snapshot; it does not update).

    ``bytes_written`` and ``write_s`` count committed saves; ``throughput`` is
    their ratio in bytes per second. ``bytes_written`` counts each save's
    array bytes whole; ``bytes_shared`` the part of them that incremental
    saves hard-linked from kept checkpoints instead of writing. ``recent`` holds the newest saves (up to
    1000) oldest first, pending ones included.
    """

    saves: int
    committed: int
    failed: int
    pending: int
    blocked_mean_s: float
    blocked_max_s: float
    write_mean_s: float
    write_max_s: float
    bytes_written: int
    write_s: float
    deleted: tuple[str, ...] = dataclasses.field(repr=False)
    recent: tuple[SaveStats, ...] = dataclasses.field(repr=False)
    bytes_shared: int = 0

    @property
    def throughput(self) -> float | None:
        return self.bytes_written / self.write_s if self.write_s > 0 else None

    def as_dict(self) -> dict:
        """The totals as plain numbers (no ``recent``), e.g. for a metrics logger."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("recent", "deleted")}
        out["deleted"] = list(self.deleted)
        out["throughput"] = self.throughput
        return out


class StatsRecorder:
    """Thread-safe collection of ``SaveStats``; the manager owns one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: collections.deque[SaveStats] = collections.deque(maxlen=HISTORY)
        self._saves = self._committed = self._failed = 0
        self._blocked_sum = self._blocked_max = 0.0
        self._write_sum = self._write_max = 0.0
        self._bytes = self._shared = 0
        self._deleted: list[str] = []
        self._open: set[int] = set()

    def started(self, stats: SaveStats) -> None:
        """Records a save that ``save`` has queued (``blocked_s`` is final)."""
        with self._lock:
            self._saves += 1
            self._blocked_sum += stats.blocked_s
            self._blocked_max = max(self._blocked_max, stats.blocked_s)
            self._recent.append(stats)
            if stats.done:  # the writer was faster than the caller's bookkeeping
                self._count_done(stats)
            else:
                self._open.add(id(stats))

    def finished(self, stats: SaveStats) -> None:
        """Records that the writer is done with ``stats`` (committed or failed)."""
        with self._lock:
            if id(stats) in self._open:
                self._open.discard(id(stats))
                self._count_done(stats)

    def _count_done(self, stats: SaveStats) -> None:
        if stats.committed:
            self._committed += 1
            self._bytes += stats.nbytes
            self._shared += stats.bytes_shared or 0
            self._write_sum += stats.write_s
            self._write_max = max(self._write_max, stats.write_s)
            self._deleted += stats.deleted
        else:
            self._failed += 1

    def last_finished(self) -> SaveStats | None:
        with self._lock:
            for stats in reversed(self._recent):
                if stats.done and id(stats) not in self._open:
                    return stats
        return None

    def summary(self) -> SaveSummary:
        with self._lock:
            return SaveSummary(
                saves=self._saves,
                committed=self._committed,
                failed=self._failed,
                pending=len(self._open),
                blocked_mean_s=self._blocked_sum / self._saves if self._saves else 0.0,
                blocked_max_s=self._blocked_max,
                write_mean_s=self._write_sum / self._committed if self._committed else 0.0,
                write_max_s=self._write_max,
                bytes_written=self._bytes,
                write_s=self._write_sum,
                deleted=tuple(self._deleted),
                recent=tuple(self._recent),
                bytes_shared=self._shared,
            )
