"""One manager save on the writer thread, start to end.

``CheckpointManager.save`` makes the snapshot on the caller's thread and
queues ``Pipeline.run`` for it; everything after that happens here, in order:

1. drop the cached pages of superseded checkpoints (``_storage/page_cache``);
2. prepare the publication: the retention decision and the new state file
   (``_directory/catalog.Catalog.prepare``), nothing visible yet;
3. write and fsync the arrays and the manifest (``_save/write.write``);
4. commit: rename into place, or the object-store marker (inside ``write``);
5. publish: replace the state file, then delete what retention dropped
   (``Catalog.publish``); in a multi-process save process 0's decision;
6. record the save's stats and mark it no longer pending.

A failure at any step leaves earlier checkpoints and the state file as they
were (``Catalog.discard`` / ``save_failed``) and is raised to the writer,
which hands it to the caller's next call.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .._directory import coordinate as _multihost
from . import gc as _gc, share as _share, snapshot as _snapshot, stats as _stats, units as _units, write as _write
from . import staging as _staging
from .. import _faults
from .._directory import agree as _agree, catalog as _catalog
from .._read import reader as _reader
from .._storage import location as _location, page_cache as _page_cache

log = logging.getLogger("jaxckpt")


class Pipeline:
    """What every save of one manager shares on the writer thread."""

    def __init__(self, root: _location.Dir, catalog: _catalog.Catalog,
                 superseded: _page_cache.Superseded, stats: _stats.StatsRecorder,
                 finish: Callable[[str, threading.Event], None], incremental: bool = True):
        self._root = root
        self._catalog = catalog
        self._superseded = superseded
        self._stats = stats
        self._finish = finish  # (path, its done event): no longer pending
        # The files of kept checkpoints a save may share (hard links locally,
        # references on object stores), and the jax.Arrays saved before (not
        # copied again: see units.Unchanged).
        self._units = (_units.Index(_manifest_or_none, by_reference=not root.is_local)
                       if incremental else None)
        self.unchanged = _units.Unchanged() if self._units is not None else None

    def run(self, snapshot: _snapshot.Snapshot, path: str, timestamp: float,
            coord: _multihost.SaveCoordinator, done: threading.Event, stats: _stats.SaveStats,
            queued: float) -> None:
        """Writes and commits ``snapshot`` as ``path``, then publishes it; sets ``done``."""
        begin = time.perf_counter()
        stats.queued_s = begin - queued
        catalog = self._catalog
        try:
            self._superseded.drop_all()
            publication = catalog.prepare(path, timestamp, snapshot.metrics)
            # Each process shares the files of the shards it writes; on object
            # stores its references reach process 0 with its part (``write``).
            sharing = _share.Sharing(self._units)
            try:
                if self._units is not None:
                    self._units.follow(catalog.checkpoints)
                with _gc.heap_frozen():  # collections skip the heap older than this write
                    manifest = _write.write(snapshot, _location.locate(path), replace=True,
                                            created=timestamp, coordinator=coord,
                                            sharing=sharing)
                stats.bytes_written, stats.bytes_shared = sharing.written, sharing.shared
                if self._units is not None:
                    if sharing.units is None and "leaves" not in manifest:
                        manifest = _manifest_or_none(path) or {}  # not process 0
                    self._units.add(path, manifest, sharing.units)
                    if not coord.multi:
                        self.unchanged.remember(snapshot.arrays)
                _faults.point("manager.committed")
                self._superseded.written(path, snapshot.nbytes)
            except BaseException:
                catalog.discard(publication)
                raise
            if coord.decision:  # not process 0: its retention decision, as published
                publication.kept, publication.delete = _agree.decode_kept(self._root,
                                                                          coord.decision)
            try:
                delete = catalog.publish(publication)
            except BaseException as e:
                coord.published(e)
                raise
            coord.published(None, _agree.encode_kept(self._root, publication.kept, delete)
                            if coord.multi else "")
            elapsed = time.perf_counter() - begin
            log.info("committed %s (%d bytes, written in %.3f s%s)", path, snapshot.nbytes,
                     elapsed, f", deleted {len(delete)} old" if delete else "")
            stats.deleted, stats.write_s = list(delete), elapsed
        except BaseException as e:
            catalog.save_failed()
            stats.error = repr(e)
            if isinstance(e, _staging.Abandoned):
                return  # save() raised the copy's failure to its caller already
            raise
        finally:
            rolling = snapshot.rolling
            if rolling is not None:
                rolling.close()
                stats.peak_host_bytes = rolling.peak
            else:
                stats.peak_host_bytes = snapshot.host_bytes
            self._stats.finished(stats)
            self._finish(path, done)


def _manifest_or_none(path: str) -> dict | None:
    """A kept checkpoint's manifest for the index; None if it cannot be read
    (its files are then simply not shared)."""
    try:
        return _reader.read_manifest(path)
    except (OSError, ValueError) as e:
        log.debug("not sharing the files of %s: %r", path, e)
        return None
