"""A manager's directory: opening it, in order; its catalog; its checkpoints' paths.

``Directory.open``, under this process's opening lock
(``_directory/registry.opening``): take over from an older manager on the
same directory in this process, create the directory, lock it
(``_directory/lock``), recover what a crash left (``_directory/ownership``),
tidy (process 0), then start the writer thread and the save queue. The
caller registers the manager inside the same lock, in the body of ``open``.
A reader (``read_only``) does none of the writing steps; its
``Directory.catalog`` re-reads the state file each time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator

from . import lifecycle as _lifecycle, pipeline as _pipeline, queue as _queue, stats as _stats
from .._directory import (agree as _agree, best as _best, catalog as _catalog, lock as _lock,
                          ownership as _ownership, policy as _policy, registry as _registry,
                          temporary as _temporary)
from .._format import names as _names
from .._read import reader as _reader
from .._storage import durable as _durable, location as _location, page_cache as _page_cache
from .writer import Writer


@dataclasses.dataclass
class Opened:
    """What an open directory gives its manager."""

    writer: Writer
    dir_lock: _lock.DirectoryLock | None  # None: a URL, not process 0, or a reader
    life: _lifecycle.Lifecycle
    # For snapshot.take: the jax.Arrays saved before (incremental, single-process), or None.
    unchanged: Any = None


class Directory:
    """One manager's directory: read once on open, and (a reader) on every ``catalog()``."""

    def __init__(self, root: _location.Dir, name: str, agree: _agree.Agreement,
                 clock: Callable[[], float], *, max_to_keep: int | None,
                 keep_hours: float | None, primary: bool, read_only: bool,
                 permanent_every: int | None = None, keep_best: _best.Best | None = None):
        self._root = root
        self._best = keep_best
        self.metrics = _best.Metrics(lambda p: _reader.read_manifest(p).get("metrics"))
        self._name = name
        self._agree = agree
        self._queue: _queue.SaveQueue | None = None  # given by open
        self._life: _lifecycle.Lifecycle | None = None
        self._catalog: _catalog.Catalog | None = None
        self._clock = clock
        self._max_to_keep = max_to_keep
        self._keep_hours = keep_hours
        self._primary = primary  # process 0: it alone cleans up, commits and deletes
        self._read_only = read_only
        self._number_of = _ownership.number_parser(name)
        self._temporary = (None if permanent_every is None
                           else _temporary.rule(permanent_every, self._number_of))
        self._named: set[str] | None = None

    def path_of(self, number: int) -> str:
        """Checkpoint ``number``'s path: ``<directory>/<name>-<number>``."""
        return str(self._root.join(_names.numbered(self._name, number)))

    def path_for(self, checkpoint: Any) -> str:
        """A checkpoint given as a path or a number, as a path."""
        if isinstance(checkpoint, (str, os.PathLike)):
            return str(_location.locate(checkpoint))
        return self.path_of(_policy.as_number(checkpoint, "checkpoint"))

    def catalog(self) -> _catalog.Catalog:
        """The committed checkpoints; a reader first re-reads the state file
        (the writer is another manager)."""
        if self._read_only and not self._life.closed:
            with self._queue.save_lock:
                self._catalog = self.recover()
        return self._catalog

    def recover(self, opening: bool = False) -> _catalog.Catalog:
        """The catalog as the state file and the disk show it; sets the queue's numbering."""
        writer = opening and not self._read_only
        found = _ownership.recover(
            self._root, self._name, self._agree, self._number_of, self.path_of,
            lambda: _policy.clock_reading(self._clock), sweep=writer and self._primary,
            share=writer and self._agree.multi)
        self._queue.max_number, self._named = found.max_number, found.named
        return _catalog.Catalog(
            self._root, found.retention, found.latest, max_to_keep=self._max_to_keep,
            keep_hours=self._keep_hours, primary=self._primary, carried=found.carried,
            temporary=self._temporary, best=self._best, metrics=self.metrics)

    @contextlib.contextmanager
    def open(self, queue: _queue.SaveQueue, stats: _stats.StatsRecorder,
             max_pending: int, incremental: bool = True) -> Iterator[Opened]:
        """Opens the directory and starts ``queue``; the body runs under the same lock.

        Raises:
            DirectoryLockedError: another process's manager holds the directory.
        """
        root, read_only = self._root, self._read_only
        directory = str(root)
        self._queue = queue
        with _registry.opening:
            if not read_only:  # a reader leaves a writer in this process alone
                _registry.take_over(directory)
            if root.is_local and not read_only:
                _durable.makedirs_durably(directory)
            dir_lock = None if read_only else _lock.acquire(directory)
            try:
                self._catalog = catalog = self.recover(opening=True)
                if self._primary and not read_only:
                    _ownership.tidy(root, self._name, self._named)
                superseded = _page_cache.Superseded(root.is_local, catalog.checkpoints)
                # The writer thread releases the lock as it stops: even a close()
                # interrupted by Ctrl-C cannot leave this process holding it.
                writer = Writer(f"jaxckpt-writer:{directory}", max_pending,
                                dir_lock.release if dir_lock else None)
                self._life = life = _lifecycle.Lifecycle(directory, read_only, writer,
                                                         dir_lock, queue.save_lock)
                pipeline = _pipeline.Pipeline(root, catalog, superseded, stats, queue.finish,
                                              incremental)
                queue.start(catalog, writer, pipeline, life.check_open)
            except BaseException:
                if dir_lock is not None:
                    dir_lock.release()
                raise
            # Single-process only: each process holds other pieces of a sharded array.
            yield Opened(writer, dir_lock, life,
                         None if self._agree.multi else pipeline.unchanged)
