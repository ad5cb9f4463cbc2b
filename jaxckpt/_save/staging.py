"""Host staging under a byte budget: a save larger than the budget rolls through.

``CheckpointManager(max_host_bytes=N)`` bounds the host memory that saves
hold in staging: the copies of NumPy leaves and the device-to-host copies
of non-CPU ``jax.Array`` shards (on the CPU backend a shard's host view is
its device buffer: no new memory, nothing counted). ``take`` makes the
snapshot without copies (``snapshot.take(defer=True)``), then copies leaves
in writing order while the budget allows; ``save()`` queues the write and
copies the rest (``Rolling.stage_rest``) as the writer frees budget: it
releases a leaf's copy once that leaf is written and hashed. ``save()``
returns once the last leaf is copied, so donating or overwriting any leaf
afterwards changes nothing that is written.

Order, so that staging never waits on a write that waits on staging: the
packed (small) leaves are copied first, as one lump, and with a budget the
writer writes the packed array first (``_save/write``); then every large
leaf in the order the writer writes them. One piece larger than the whole
budget is copied alone, once nothing else is held: the budget is then
exceeded by that piece (leaves are not split into chunks).

Without a budget (``None``) the snapshot is taken as before (``take``); the
peak is reported all the same (``SaveStats.peak_host_bytes``).
The budget is per manager (shared by its pending saves) and, in a
multi-process program, per process.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from . import snapshot as _snapshot
from .. import _faults
from .._directory import policy as _policy


class Abandoned(Exception):
    """The caller's thread failed while copying (raised to it); the write stops quietly."""


class HostBudget:
    """Bytes of host staging in use, at most ``limit`` (None: unbounded). Thread-safe.

    Raises:
        ValueError: ``limit`` is not a positive int or None (names ``max_host_bytes``).
    """

    def __init__(self, limit: Any = None):
        self.limit = _policy.positive_int("max_host_bytes", limit)
        self.cond = threading.Condition(threading.Lock())
        self.used = 0

    def fits(self, n: int) -> bool:
        """Under ``cond``: whether ``n`` more bytes may be taken now. A piece
        larger than the whole budget fits once nothing else is held."""
        return self.limit is None or self.used + n <= self.limit or self.used == 0


class _Group:
    """Leaves staged and released together: the packed ones, or one large leaf."""

    __slots__ = ("items", "cost", "pos", "started", "staged", "held")

    def __init__(self, items: list, cost: int, pos: int):
        self.items = items  # (ArrayLeaf, jax pieces or None for NumPy)
        self.cost = cost
        self.pos = pos  # in staging order
        self.started = self.staged = self.held = False


def _cost(arr: _snapshot.ArrayLeaf, pieces: list | None) -> int:
    """New host bytes the copy of one unstaged leaf allocates."""
    if pieces is None:
        return arr.nbytes
    return sum(data.nbytes for _, data in pieces
               if next(iter(data.devices())).platform != "cpu")


def _start(group: _Group) -> None:
    for _, pieces in group.items:
        if pieces is not None:
            for _, data in pieces:
                if next(iter(data.devices())).platform != "cpu":
                    data.copy_to_host_async()


def _finish(group: _Group) -> None:
    for arr, pieces in group.items:
        if pieces is None:  # as leaf_record copies: C order, the caller's array untouched
            for shard in arr.shards:
                shard.data = np.array(shard.data, copy=True, order="C")
        else:
            arr.shards = [_snapshot.Shard(index, np.asarray(data)) for index, data in pieces]


class Rolling:
    """One save's copies under a ``HostBudget``: made by the caller's thread
    (``stage_prefix``, ``stage_rest``), or, ``lazy``, by the writer as it
    needs each leaf (a synchronous save); awaited and released by the writer.

    Thread-safe. ``peak`` is the most bytes this save held at once.
    """

    def __init__(self, budget: HostBudget, snapshot: _snapshot.Snapshot, lazy: bool = False):
        self._budget = budget
        self._cond = budget.cond
        self._lazy = lazy
        self.bounded = budget.limit is not None
        unstaged = snapshot.unstaged or []
        packed = [(arr, p) for arr, p in unstaged if arr.packed]
        groups = [_Group(packed, sum(_cost(a, p) for a, p in packed), 0)] if packed else []
        self._of: dict[int, _Group] = {}
        for arr, pieces in unstaged:
            if not arr.packed and (pieces is None or pieces):
                group = _Group([(arr, pieces)], _cost(arr, pieces), len(groups))
                groups.append(group)
                self._of[id(arr)] = group
        self._packed = groups[0] if packed else None
        self._groups = groups
        self._next = 0  # first group not staged
        self._ahead = 0  # first group whose copy was not started
        self._held = 0
        self.peak = 0
        self._closed = False
        self._error: BaseException | None = None
        snapshot.unstaged = None
        snapshot.rolling = self

    # ------------------------------------------------------------ staging side

    def _take_bytes(self, group: _Group, wait: bool) -> bool:
        """Takes ``group``'s bytes (waiting for them if ``wait``); False if
        they do not fit now, or the save was closed meanwhile."""
        with self._cond:
            while not self._closed and not self._budget.fits(group.cost):
                if not wait:
                    return False
                self._cond.wait()
            if self._closed:
                return False
            self._budget.used += group.cost
            self._held += group.cost
            self.peak = max(self.peak, self._held)
            group.held = True
            return True

    def _stage(self, upto: int, wait: bool) -> None:
        """Copies groups until ``upto`` are staged (``wait``: as budget frees),
        starting later groups' transfers ahead while they fit."""
        groups = self._groups
        while self._next < upto:
            group = groups[self._next]
            if not group.started:
                if not self._take_bytes(group, wait):
                    return
                _start(group)
                group.started = True
                self._ahead = max(self._ahead, self._next + 1)
            while self._ahead < len(groups) and self._take_bytes(groups[self._ahead], False):
                _start(groups[self._ahead])
                groups[self._ahead].started = True
                self._ahead += 1
            _finish(group)
            with self._cond:
                group.staged = True
                self._next += 1
                self._cond.notify_all()

    def stage_prefix(self) -> None:
        """Copies, without waiting, the leading leaves that fit (all of them without a budget)."""
        self._guarded(lambda: self._stage(len(self._groups), wait=False))

    def stage_rest(self) -> None:
        """Copies every leaf not yet copied, waiting as the writer frees budget.
        Returns early if the write failed (its error reaches the caller as any
        background failure); raises what copying raised (the write then stops)."""
        if not self._lazy:
            self._guarded(lambda: self._stage(len(self._groups), wait=True))

    def _guarded(self, stage: Callable[[], None]) -> None:
        try:
            stage()
        except BaseException as e:
            with self._cond:
                self._error = e
                self._cond.notify_all()
            self.close()
            raise

    # ------------------------------------------------------------ writer side

    def _await(self, group: _Group | None) -> None:
        if group is None:
            return
        _faults.point("staging.wait")
        if self._lazy:
            self._stage(group.pos + 1, wait=True)
        with self._cond:
            while not group.staged and self._error is None and not self._closed:
                self._cond.wait()
            if not group.staged:
                raise Abandoned(f"the copy to host failed in save(): {self._error!r}")

    def wait_packed(self) -> None:
        """Blocks until the packed leaves are on the host."""
        self._await(self._packed)

    def wait(self, arr: _snapshot.ArrayLeaf) -> None:
        """Blocks until ``arr``'s pieces are on the host."""
        self._await(self._of.get(id(arr)))

    def pending(self, arr: _snapshot.ArrayLeaf) -> bool:
        """Whether ``arr`` will have pieces to write once staged."""
        return id(arr) in self._of

    def _release(self, group: _Group) -> None:
        with self._cond:
            if group.held:
                group.held = False
                self._budget.used -= group.cost
                self._held -= group.cost
                self._cond.notify_all()

    def packed_written(self) -> None:
        """The packed array is written: its leaves' copies are released."""
        if self._packed is not None:
            for arr, _ in self._packed.items:
                arr.shards = []
            self._release(self._packed)

    def release_when(self, arr: _snapshot.ArrayLeaf, futures: list) -> None:
        """Releases ``arr``'s copy once every write in ``futures`` (of its
        pieces, already hashed) is done; drops this save's reference to it."""
        group = self._of.get(id(arr))
        if group is None:
            return
        arr.shards = []
        left = [len(futures)]
        lock = threading.Lock()

        def one_done(_: Any) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._release(group)

        if not futures:
            self._release(group)
        for future in futures:
            future.add_done_callback(one_done)

    def close(self) -> None:
        """The save is over (or failed): releases what it still holds and
        stops any copying still waiting. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for group in self._groups:
            self._release(group)


def take(tree: Any, metadata: dict | None, unchanged: Any, budget: HostBudget,
         lazy: bool = False) -> _snapshot.Snapshot:
    """A snapshot whose host copies are made under ``budget``: those that fit
    now are made here (all of them without a budget); ``Rolling.stage_rest``
    makes the rest once the write is queued.

    Without a budget the plain snapshot is taken: every copy made or started
    in save() (large accelerator leaves' left in flight, ``_save/host_copies``),
    its host bytes counted as the peak (``Snapshot.host_bytes``)."""
    if budget.limit is None and not lazy:
        return _snapshot.take(tree, metadata, unchanged)
    snapshot = _snapshot.take(tree, metadata, unchanged, defer=True)
    rolling = Rolling(budget, snapshot, lazy)
    if not lazy:
        rolling.stage_prefix()
    return snapshot
