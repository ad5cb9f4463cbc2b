"""Restoring large leaves under a host-memory budget (``max_host_bytes``), slab by slab.

A whole-leaf read holds the leaf on the host (tensorstore maps the shard file's
bytes, then copies them into the result), and a restore reads every leaf before
the first transfer. Here each region a target wants (one per distinct shard) is
read in slabs of at most half the budget, consecutive in C order (along axis 0,
or along a later axis when one row is too large), aligned to the inner chunks;
slabs in flight across all leaves never exceed the budget.

- CPU devices adopt a 64-byte-aligned host buffer without copying
  (``jax.device_put(..., may_alias=True)``), so there a region is filled in one
  such buffer slab by slab and handed over: peak = the region + the slabs in flight.
- Other devices get each slab as it arrives, written into a donated device
  buffer (a jitted ``dynamic_update_slice``): peak host memory = the slabs in flight.

The manifest's digest of each piece a region covers whole is computed
incrementally over the slabs (XXH3 of concatenated bytes is that of the whole).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Iterator

import jax
import numpy as np
import xxhash

from . import reader as _reader
from .._format import digest as _digest, manifest as _format
from .._storage import arrays as _arrays
from .. import _tree

# A smaller budget would cut a large leaf into millions of reads.
MIN_HOST_BYTES = 1 << 20

# CPU devices adopt a filled host buffer (see the module docstring); tests turn
# this off to run the accelerator path on the CPU backend.
ADOPT_ON_CPU = True


def check_budget(max_host_bytes: Any) -> int | None:
    """``max_host_bytes`` if it is None or an int of at least ``MIN_HOST_BYTES``.

    Raises:
        TypeError: it is not an int (bools and floats included).
        ValueError: it is below ``MIN_HOST_BYTES``.
    """
    if max_host_bytes is None:
        return None
    if isinstance(max_host_bytes, bool) or not isinstance(max_host_bytes, (int, np.integer)):
        raise TypeError(f"max_host_bytes must be an int (bytes) or None, not "
                        f"{type(max_host_bytes).__name__} {max_host_bytes!r}")
    if max_host_bytes < MIN_HOST_BYTES:
        raise ValueError(f"max_host_bytes={max_host_bytes} is below the minimum of "
                         f"{MIN_HOST_BYTES} bytes (1 MiB); pass a larger budget, or None for "
                         "no budget")
    return int(max_host_bytes)


class Job:
    """One region of one leaf to restore: onto each of ``dests`` (devices or
    shardings; none: a host array of ``dtype``). ``result`` is set by ``run``:
    the host array, or a ``jax.Array`` per destination, in order."""

    def __init__(self, leaf: dict, index: tuple, dtype: Any, dests: list):
        self.leaf, self.index, self.dests = leaf, index, dests
        self.dtype = np.dtype(dtype)
        self.stored = _format.dtype_from_name(leaf["dtype"])
        self.shape = tuple(s.stop - s.start for s in index)
        self.result: Any = None

    @property
    def adopts(self) -> bool:
        """Filled in one host buffer that the destinations take as is."""
        return not self.dests or (ADOPT_ON_CPU and all(_platform(d) == "cpu" for d in self.dests))


def _platform(dest: Any) -> str:
    if isinstance(dest, jax.sharding.Sharding):
        return next(iter(dest.device_set)).platform
    return dest.platform


def _slabs(shape: tuple[int, ...], itemsize: int, inner: list[int], start: tuple[int, ...],
           cap: int) -> Iterator[tuple[slice, ...]]:
    """Slices (relative to a region of ``shape`` at ``start``) of consecutive C-order
    slabs of at most ``cap`` bytes (or one row of the last axis' elements), cut at
    inner-chunk boundaries (``inner``: the inner chunk over the stored shape) when
    a chunk fits."""
    if not shape or math.prod(shape) * itemsize <= cap:
        yield tuple(slice(0, n) for n in shape)
        return
    axis = next(k for k in range(len(shape))
                if math.prod(shape[k + 1:]) * itemsize <= cap or k == len(shape) - 1)
    row = math.prod(shape[axis + 1:]) * itemsize
    step = max(1, cap // row)
    if inner[axis] <= step:
        step -= step % inner[axis]
    for lead in itertools.product(*(range(n) for n in shape[:axis])):
        pos = 0
        while pos < shape[axis]:
            # Cut at global multiples of step, so that slabs start on inner chunks.
            end = min(shape[axis], (start[axis] + pos) // step * step + step - start[axis])
            yield (tuple(slice(i, i + 1) for i in lead) + (slice(pos, end),)
                   + tuple(slice(0, n) for n in shape[axis + 1:]))
            pos = end


def _intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    out = []
    for x, y in zip(a, b):
        lo, hi = max(x.start, y.start), min(x.stop, y.stop)
        if lo >= hi:
            return None
        out.append(slice(lo, hi))
    return tuple(out)


@functools.partial(jax.jit, donate_argnums=0)
def _update(buf: jax.Array, piece: jax.Array, *starts: Any) -> jax.Array:
    return jax.lax.dynamic_update_slice(buf, piece, starts)


class _Stream:
    """One job's progress: its buffer or device buffers, and its digests."""

    def __init__(self, reader: _reader.Reader, job: Job, store: Any):
        self.reader, self.job, self.store = reader, job, store
        region = _digest.region(job.index, job.leaf["shape"])
        whole = tuple(slice(0, n) for n in job.shape)
        self.digests = [(want, tuple(rel) if rel else whole, xxhash.xxh3_128())
                        for want, rel in _digest.covered(reader.recorded_digests(job.leaf),
                                                         region)]
        self.host: np.ndarray | None = None  # adopts: the result's host buffer
        self.device: list[Any] = []  # otherwise: the result on each destination

    def start(self, local: tuple[slice, ...]) -> _arrays.Read:
        job = self.job
        src = tuple(slice(g.start + s.start, g.start + s.stop) for g, s in zip(job.index, local))
        if job.adopts:
            if self.host is None:
                self.host = _aligned(job.shape, job.dtype)
            if job.dtype == job.stored:
                return _arrays.read_into(self.store, src, _arrays.byte_view(self.host)[local])
        return _arrays.read(self.store, src)

    def finish(self, local: tuple[slice, ...], data: np.ndarray) -> None:
        """Takes the slab at ``local`` once read (``data``: its stored bytes)."""
        job = self.job
        for want, rel, hasher in self.digests:
            part = _intersect(rel, local)
            if part is not None:
                sub = tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part, local))
                hasher.update(np.ascontiguousarray(data[sub]).reshape(-1))
        slab = tuple(s.stop - s.start for s in local)
        values = _arrays.from_bytes(data, job.stored, slab)
        if job.adopts:
            if job.dtype != job.stored:
                np.copyto(self.host[local], values, casting="unsafe")
            return
        if values.dtype != job.dtype:
            values = values.astype(job.dtype)
        whole = slab == job.shape
        starts = tuple(s.start for s in local)
        for i, dest in enumerate(job.dests):
            piece = jax.device_put(values, dest)
            if whole:
                self.device.append(piece)
                continue
            if len(self.device) <= i:
                self.device.append(jax.numpy.zeros(job.shape, job.dtype, device=dest))
            self.device[i] = _update(self.device[i], piece, *starts)
            # The host slab is free once its transfer is done.
            piece.block_until_ready()

    def done(self) -> None:
        job = self.job
        for want, _, hasher in self.digests:
            if hasher.hexdigest() != want:
                raise self.reader.unless_changed(self.reader.mismatch(job.leaf))
        if job.adopts or not self.device:  # (no slabs: an empty region)
            host = self.host if self.host is not None else _aligned(job.shape, job.dtype)
            job.result = host if not job.dests else [
                jax.device_put(host, dest, may_alias=True) for dest in job.dests]
        else:
            job.result = self.device


def _aligned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return _arrays.aligned_empty((math.prod(shape) * dtype.itemsize,)).view(dtype).reshape(shape)


def run(reader: _reader.Reader, jobs: list[Job], budget: int) -> None:
    """Restores every job (``job.result``), with slabs of at most ``budget`` bytes
    in flight at once (at least one); leaves are checked as by ``Reader.read_arrays``.

    Raises:
        CorruptCheckpointError: a leaf's bytes fail their checksums or digests.
        MemoryError: the memory for a slab or a result could not be had.
    """
    stores: dict[int, Any] = {}
    cap = max(1, budget // 2)
    work: list[tuple[_Stream, tuple[slice, ...], int]] = []  # in issue order
    left: dict[int, int] = {}  # slabs not yet finished, by id(stream)
    jobs_left: dict[int, int] = {}  # jobs not yet done, by id(leaf)
    streams = []
    for job in jobs:
        if id(job.leaf) not in stores:
            stores[id(job.leaf)] = reader.open_leaf(job.leaf)
        jobs_left[id(job.leaf)] = jobs_left.get(id(job.leaf), 0) + 1
        stream = _Stream(reader, job, stores[id(job.leaf)])
        streams.append(stream)
        start = tuple(s.start for s in job.index)
        slabs = [] if 0 in job.shape else list(
            _slabs(job.shape, job.stored.itemsize, _format.array_chunks(job.leaf)[1], start, cap))
        left[id(stream)] = len(slabs)
        work += [(stream, local, math.prod(s.stop - s.start for s in local) * job.stored.itemsize)
                 for local in slabs]

    def done(stream: _Stream) -> None:
        stream.done()
        leaf = stream.job.leaf
        jobs_left[id(leaf)] -= 1
        if not jobs_left[id(leaf)] and reader.on_leaf_read is not None:
            reader.on_leaf_read(leaf)

    for stream in streams:
        if not left[id(stream)]:
            done(stream)
    inflight: list[tuple[_Stream, tuple[slice, ...], int, _arrays.Read]] = []
    used = 0

    def complete() -> None:
        nonlocal used
        stream, local, nbytes, fut = inflight.pop(0)
        try:
            data = fut.result()
        except Exception as e:
            raise reader.damaged(stream.job.leaf, e) from e
        stream.finish(local, data)
        used -= nbytes
        left[id(stream)] -= 1
        if not left[id(stream)]:
            done(stream)

    for stream, local, nbytes in work:
        while inflight and used + nbytes > budget:
            complete()
        try:
            fut = stream.start(local)
        except (MemoryError, OSError) as e:  # the buffer: mmap raises ENOMEM
            raise MemoryError(
                f"{reader.path}: leaf {_tree.path_str(stream.job.leaf['path'])} "
                f"({_reader.nbytes_of(stream.job.leaf)} bytes): cannot allocate the memory "
                f"to read it: {e}") from e
        inflight.append((stream, local, nbytes, fut))
        used += nbytes
    while inflight:
        complete()
