"""The contenders: raw file writes, Orbax's CheckpointManager, jaxckpt's.

Each saver owns one fresh directory, keeps every checkpoint it writes until
``close`` (``max_to_keep=None``, so no deletion falls inside a timing), and
exposes the same three calls, so that the harness can interleave them:

- ``save(n, tree)`` -> (seconds ``save`` blocked, seconds until committed);
  ``tree`` is the state to save (the harness passes fresh arrays each save,
  the same to every contender; ``None`` saves the tree given at setup);
- ``restore()`` -> seconds to restore the newest checkpoint into the target
  (ShapeDtypeStructs with the leaves' shardings), arrays ready;
- ``files()`` -> files in the newest checkpoint, ``disk_bytes()`` their size;
  ``du()`` -> bytes allocated under the saver's directory, each inode once.
"""

from __future__ import annotations

import concurrent.futures
import gc
import mmap
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np


def close_all(savers: dict, directory: str, quiet_s: float) -> None:
    """Closes every contender (reporting, not raising, a failure), deletes the
    workload's files, flushes the writeback now (so that it does not land in
    the next workload's fsyncs: W3's five ordered fsyncs took 4-6 ms right
    after W2's cleanup, 2.2-2.9 ms on a quiet disk) and idles ``quiet_s``."""
    import sys

    for saver in savers.values():
        try:
            saver.close()
        except Exception as e:
            print(f"closing {saver.name}: {type(e).__name__}: {e}", file=sys.stderr)
    shutil.rmtree(directory, ignore_errors=True)
    os.sync()
    time.sleep(quiet_s)


def _files(path: str) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]


def du(path: str) -> int:
    """Allocated bytes under ``path`` as ``du`` counts them: each inode once
    (a hard-linked file counts once), its blocks, directories included."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for d, dirs, names in os.walk(path):
        for name in [d] + [os.path.join(d, n) for n in names]:
            st = os.lstat(name)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def evict(path: str) -> None:
    """Drops ``path``'s (clean, fsync'd) file pages from the page cache."""
    for name in _files(path):
        fd = os.open(name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed_restore(restore: Callable[[], Any]) -> float:
    """Seconds until ``restore()``'s arrays are ready; the result is then dropped.

    JAX frees a dropped array's buffers at its next call, so the frees of the
    previous restore's result (~35 ms for W1's 512 MiB) are run first, untimed.
    """
    gc.collect()
    jax.device_put(np.zeros(1)).block_until_ready()
    t = time.perf_counter()
    jax.block_until_ready(restore())
    return time.perf_counter() - t


class Saver:
    name = "?"
    kind = "library"

    def __init__(self, directory: str, tree: Any, target: Any):
        self.dir = directory
        self.tree = tree
        self.target = target
        os.makedirs(directory)
        self.latest: str | None = None

    def files(self) -> int:
        return len(_files(self.latest)) if self.latest else 0

    def disk_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in _files(self.latest)) if self.latest else 0

    def du(self) -> int:
        return du(self.dir)

    def use(self, tree: Any) -> Any:
        """The tree to save: ``tree``, or the setup's when None."""
        if tree is not None:
            self.tree = tree
        return self.tree

    def evict_latest(self) -> None:
        if self.latest:
            evict(self.latest)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class RawFiles(Saver):
    """Plain ``write`` + ``fsync`` of every leaf's bytes, then the directory's.

    ``packed``: all leaves back to back in one file (one fsync), else one
    file per leaf, written (write + fsync each) by ``threads`` threads.
    Synchronous: it "blocks" for the whole write. Restore reads each file into
    a fresh NumPy buffer (no device transfer), with the same threads.
    """

    kind = "raw"

    def __init__(self, directory: str, tree: Any, target: Any, packed: bool, threads: int = 1):
        super().__init__(directory, tree, target)
        self.packed = packed
        self.threads = threads
        self.name = ("raw, one packed file" if packed else
                     f"raw, file per leaf{f', {threads} threads' if threads > 1 else ''}")
        self.host = [np.asarray(x) for x in jax.tree.leaves(tree)]
        self.pool = (concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None)

    def _map(self, fn: Any, items: list) -> list:
        if self.pool is None:
            return [fn(x) for x in items]
        return list(self.pool.map(fn, items))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        super().close()

    def save(self, n: int, tree: Any = None) -> tuple[float, float]:
        if tree is not None:
            self.host = [np.asarray(x) for x in jax.tree.leaves(tree)]
        path = os.path.join(self.dir, str(n))
        t = time.perf_counter()
        os.mkdir(path)
        if self.packed:
            with open(os.path.join(path, "packed"), "wb") as f:
                for x in self.host:
                    f.write(memoryview(x).cast("B"))
                f.flush()
                os.fsync(f.fileno())
        else:
            def one(item: tuple[int, np.ndarray]) -> None:
                i, x = item
                with open(os.path.join(path, str(i)), "wb") as f:
                    f.write(memoryview(x).cast("B"))
                    f.flush()
                    os.fsync(f.fileno())
            self._map(one, list(enumerate(self.host)))
        _fsync_dir(path)
        _fsync_dir(self.dir)
        elapsed = time.perf_counter() - t
        self.latest = path
        return elapsed, elapsed

    def restore(self) -> float:
        assert self.latest is not None
        t = time.perf_counter()
        if self.packed:
            total = sum(x.nbytes for x in self.host)
            buf = np.empty(total, np.uint8)
            with open(os.path.join(self.latest, "packed"), "rb", buffering=0) as f:
                f.readinto(buf)
            out, off = [], 0
            for x in self.host:
                out.append(buf[off:off + x.nbytes].view(x.dtype).reshape(x.shape))
                off += x.nbytes
        else:
            def one(item: tuple[int, np.ndarray]) -> np.ndarray:
                i, x = item
                buf = np.empty(x.shape, x.dtype)
                with open(os.path.join(self.latest, str(i)), "rb", buffering=0) as f:
                    f.readinto(memoryview(buf).cast("B"))
                return buf
            out = self._map(one, list(enumerate(self.host)))
        elapsed = time.perf_counter() - t
        del out
        return elapsed


_ALIGN = 4096  # O_DIRECT: buffer address, offset and length in whole blocks
_PIECE = 64 << 20


def _aligned(nbytes: int) -> mmap.mmap:
    """Page-aligned private anonymous memory, huge pages as NumPy asks for them."""
    region = mmap.mmap(-1, max(_ALIGN, nbytes), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    return region


class RawDirect(Saver):
    """One packed file written with O_DIRECT (no page cache), then fsync.

    The leaves are copied into a staging buffer that is allocated once and
    reused (the copy is timed). Restore reads with O_DIRECT into fresh aligned
    memory. The physical limit of the disk, free of page-cache allocation.
    """

    kind = "raw"
    name = "raw, packed, O_DIRECT"

    def __init__(self, directory: str, tree: Any, target: Any):
        super().__init__(directory, tree, target)
        if not hasattr(os, "O_DIRECT"):
            raise OSError("O_DIRECT is not available on this platform")
        self.host = [np.asarray(x) for x in jax.tree.leaves(tree)]
        self.nbytes = sum(x.nbytes for x in self.host)
        self.padded = -(-self.nbytes // _ALIGN) * _ALIGN
        self.staging = _aligned(self.padded)
        np.frombuffer(self.staging, np.uint8).fill(0)  # touched once, outside timings

    def save(self, n: int, tree: Any = None) -> tuple[float, float]:
        if tree is not None:
            self.host = [np.asarray(x) for x in jax.tree.leaves(tree)]
        path = os.path.join(self.dir, str(n))
        t = time.perf_counter()
        os.mkdir(path)
        view = np.frombuffer(self.staging, np.uint8)
        off = 0
        for x in self.host:
            view[off:off + x.nbytes] = memoryview(x).cast("B")
            off += x.nbytes
        del view
        name = os.path.join(path, "packed")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        try:
            mv = memoryview(self.staging)
            for start in range(0, self.padded, _PIECE):
                os.pwrite(fd, mv[start:min(start + _PIECE, self.padded)], start)
            mv.release()
            os.ftruncate(fd, self.nbytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path)
        _fsync_dir(self.dir)
        elapsed = time.perf_counter() - t
        self.latest = path
        return elapsed, elapsed

    def restore(self) -> float:
        assert self.latest is not None
        t = time.perf_counter()
        region = _aligned(self.padded)
        fd = os.open(os.path.join(self.latest, "packed"), os.O_RDONLY | os.O_DIRECT)
        try:
            mv = memoryview(region)
            for start in range(0, self.padded, _PIECE):
                os.preadv(fd, [mv[start:min(start + _PIECE, self.padded)]], start)
            mv.release()
        finally:
            os.close(fd)
        elapsed = time.perf_counter() - t
        region.close()
        return elapsed

    def close(self) -> None:
        self.staging.close()
        super().close()


class OrbaxSaver(Saver):
    """Orbax ``CheckpointManager``, async, ``StandardSave``/``StandardRestore``."""

    name = "orbax"

    def __init__(self, directory: str, tree: Any, target: Any):
        super().__init__(directory, tree, target)
        import orbax.checkpoint as ocp

        self.ocp = ocp
        opts = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=True)
        self.mngr = ocp.CheckpointManager(os.path.join(directory, "run"), options=opts)

    def save(self, n: int, tree: Any = None) -> tuple[float, float]:
        tree = self.use(tree)
        t = time.perf_counter()
        self.mngr.save(n, args=self.ocp.args.StandardSave(tree))
        blocked = time.perf_counter() - t
        self.mngr.wait_until_finished()
        committed = time.perf_counter() - t
        self.latest = os.path.join(self.dir, "run", str(n))
        self.step = n
        return blocked, committed

    def restore(self) -> float:
        return _timed_restore(
            lambda: self.mngr.restore(self.step, args=self.ocp.args.StandardRestore(self.target)))

    def close(self) -> None:
        try:
            self.mngr.close()
        finally:
            super().close()


class JaxckptSaver(Saver):
    """jaxckpt ``CheckpointManager``; restore with a ShapeDtypeStruct target.

    ``incremental``: the manager's option (True, its default, shares the
    files a kept checkpoint holds). ``stats`` is the last save's
    ``last_save_stats``."""

    name = "jaxckpt"

    def __init__(self, directory: str, tree: Any, target: Any, incremental: bool = True):
        super().__init__(directory, tree, target)
        import jaxckpt

        self.name = "jaxckpt" if incremental else "jaxckpt, incremental=False"
        self.mngr = jaxckpt.CheckpointManager(os.path.join(directory, "run"), max_to_keep=None,
                                              incremental=incremental)
        self.stats: Any = None

    def save(self, n: int, tree: Any = None) -> tuple[float, float]:
        tree = self.use(tree)
        t = time.perf_counter()
        path = self.mngr.save(tree, checkpoint_number=n)
        blocked = time.perf_counter() - t
        self.mngr.wait_until_finished()
        committed = time.perf_counter() - t
        self.latest = path
        self.stats = self.mngr.last_save_stats
        return blocked, committed

    def manifest_bytes(self) -> int:
        from jaxckpt._format import names

        return os.path.getsize(os.path.join(self.latest, names.MANIFEST)) if self.latest else 0

    def restore(self) -> float:
        return _timed_restore(lambda: self.mngr.restore(self.latest, self.target))

    def close(self) -> None:
        try:
            self.mngr.close()
        finally:
            super().close()


SAVERS = {
    "raw_per_leaf": lambda d, tree, target: RawFiles(d, tree, target, packed=False),
    "raw_threads": lambda d, tree, target: RawFiles(d, tree, target, packed=False, threads=8),
    "raw_packed": lambda d, tree, target: RawFiles(d, tree, target, packed=True),
    "raw_direct": RawDirect,
    "orbax": OrbaxSaver,
    "jaxckpt": JaxckptSaver,
    "jaxckpt_full": lambda d, tree, target: JaxckptSaver(d, tree, target, incremental=False),
}
