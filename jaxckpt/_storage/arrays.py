"""Tensorstore array specs, and the array reads and writes.

Every array is stored as zarr3 ``uint8`` with a trailing ``itemsize`` axis,
one shard file per chunk-grid cell (``sharding_indexed`` codec), inner chunks
of about ``INNER_BYTES`` each checksummed with ``crc32c``. The zarr metadata
lives in our manifest (``assume_metadata``), so an array costs one file and
one fsync. Reads use ``fill_missing_data_reads=False``: a missing file is an
error, never zeros.
"""

from __future__ import annotations

import math
import mmap
from typing import Any, Sequence

import numpy as np

from . import context as _context
from .context import ts

INNER_BYTES = 4 << 20
# The packed array's shard files staged at once (the packing constants are
# in _format/manifest, beside the layout they define).
PACKED_WINDOW = 4

_CRC = [{"name": "bytes"}, {"name": "crc32c"}]
_INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def chunking(shard: Sequence[int], exact: bool = False) -> tuple[list[int], list[int]]:
    """(outer, inner) chunk shapes for an array whose writers each own ``shard``.

    ``shard`` ends with the itemsize axis, kept whole. Inner chunks hold about
    ``INNER_BYTES``: leading axes shrink, from the first on, to a divisor of
    their extent when one is at least half the wanted size; otherwise the
    outer chunk is rounded up to a multiple of the inner one (zarr allows edge
    chunks past the array's end), so no extent gives millions of tiny chunks.
    With ``exact`` (the shards belong to several processes, which must never
    share a file) the outer chunk stays ``shard`` and the inner one takes the
    smallest divisor above the wanted size instead.
    """
    outer, inner = list(shard), list(shard)
    for axis in range(len(inner) - 1):
        rest = math.prod(inner[axis + 1 :])
        if inner[axis] * rest <= INNER_BYTES:
            break
        cap = max(1, INNER_BYTES // rest)
        best = max(_divisors_upto(outer[axis], cap))
        if best * 2 >= cap:
            inner[axis] = best
        elif exact:
            inner[axis] = min(d for d in _divisors_upto(outer[axis], outer[axis]) if d >= cap)
        else:
            inner[axis] = cap
            outer[axis] = -(-outer[axis] // cap) * cap
    return outer, inner


def _divisors_upto(n: int, cap: int) -> list[int]:
    out = [1]
    i = 1
    while i * i <= n:
        if n % i == 0:
            for d in (i, n // i):
                if d <= cap:
                    out.append(d)
        i += 1
    return out


def array_spec(
    kvstore: dict, shape: Sequence[int], chunk: Sequence[int], inner: Sequence[int], *, create: bool
) -> dict:
    spec: dict[str, Any] = {
        "driver": "zarr3",
        "kvstore": kvstore,
        "metadata": {
            "shape": list(shape),
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
            "chunk_key_encoding": {"name": "default"},
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": list(inner),
                        "codecs": _CRC,
                        "index_codecs": _INDEX_CODECS,
                        "index_location": "end",
                    },
                }
            ],
            "fill_value": 0,
        },
        "assume_metadata": True,
        "open": True,
        # Chunks equal to the fill value must still be written: reads treat a
        # missing chunk as damage, and all-zero leaves (fresh optimizer moments) are common.
        "store_data_equal_to_fill_value": True,
    }
    if not create:
        spec["fill_missing_data_reads"] = False
    return spec


def open_array(spec: dict) -> ts.Future:
    return ts.open(spec, context=_context.context())


def write(store: ts.TensorStore, index: tuple, data: np.ndarray) -> ts.Future:
    """Starts writing ``data`` (which stays unchanged until commit) at ``index``."""
    target = store[index] if index else store
    return target.write(data, can_reference_source_data_indefinitely=True).commit


# XLA's CPU client adopts a host buffer without copying only when it is
# 64-byte aligned; tensorstore's own read buffers are 16-byte aligned.
_ALIGN = 64


# Buffers this large come straight from mmap, in 4 KiB pages (see aligned_empty).
_OWN_MAPPING_BYTES = 4 << 20


def aligned_empty(shape: Sequence[int]) -> np.ndarray:
    """An uninitialised ``uint8`` array of ``shape`` whose data is 64-byte aligned.

    Large ones are anonymous mappings advised against transparent huge pages:
    restored arrays are used where they are read (XLA's CPU client adopts
    them, and its own buffers are 4 KiB pages too), and on VMs that hand free
    memory back to the hypervisor a first touch of huge pages measured 4x
    slower than of 4 KiB ones (W1's 512 MiB restore: ~0.9 s vs ~0.3 s).
    """
    n = math.prod(shape)
    if n >= _OWN_MAPPING_BYTES and hasattr(mmap, "MADV_NOHUGEPAGE"):
        region = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        # (Faulting it all in at once, MADV_POPULATE_WRITE, measured slower:
        # it is serial, while tensorstore's threads fault pages in as they copy.)
        region.madvise(mmap.MADV_NOHUGEPAGE)
        return np.frombuffer(region, np.uint8).reshape(tuple(shape))
    raw = np.empty(n + _ALIGN, np.uint8)
    start = (-raw.ctypes.data) % _ALIGN
    return raw[start : start + n].reshape(tuple(shape))


class Read:
    """A read in flight into an aligned host buffer; ``result()`` gives the buffer."""

    def __init__(self, future: Any, out: np.ndarray):
        self._future, self._out = future, out

    def result(self) -> np.ndarray:
        self._future.result()
        return self._out


def read(store: ts.TensorStore, index: tuple) -> Read:
    """Starts reading ``store[index]`` into a fresh 64-byte-aligned buffer, so that
    restored arrays become ``jax.Array``s on the CPU without another copy."""
    target = store[index] if index else store
    out = aligned_empty(target.shape)
    return Read(ts.array(out, copy=False, write=True).write(target), out)


def read_into(store: ts.TensorStore, index: tuple, out: np.ndarray) -> Read:
    """Starts reading ``store[index]`` into ``out`` (a writable array of its shape)."""
    target = store[index] if index else store
    return Read(ts.array(out, copy=False, write=True).write(target), out)


def byte_view(array: np.ndarray) -> np.ndarray:
    """``array``'s bytes as ``uint8`` of shape ``(*shape, itemsize)``, no copy."""
    array = np.ascontiguousarray(array)
    return array.reshape(array.shape + (1,)).view(np.uint8)


def from_bytes(data: np.ndarray, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """Inverse of ``byte_view``: reinterpret stored bytes as ``dtype``."""
    data = np.ascontiguousarray(data)
    return data.view(dtype).reshape(tuple(shape))
