"""The on-disk layout of one checkpoint, written down in one place.

``FORMAT.md`` at the top of the repository is the full specification (names:
``_format/names``); ``tests/test_format_bytes.py`` pins the bytes a save writes.

A checkpoint is a directory (or object prefix) holding:

    _CHECKPOINT     the manifest; its presence is the commit record
    d-<token>/      this save's arrays (``data`` in the manifest; version 1
                    and 2 local checkpoints: the arrays sit beside the manifest)
      packed/       one zarr3 uint8 array: small leaves' bytes back to back, in
                    shard files of ``packed_shard`` bytes (version 1: one file)
      a/<n>/        one zarr3 array per large leaf, shape (*shape, itemsize) uint8

The manifest is ``MAGIC + crc32(payload) as 4 little-endian bytes + payload``
where the payload is msgpack of::

    {"version": 3, "created": float, "metadata": user dict or None,
     "packed_nbytes": int, "packed_shard": int, "packed_chunk": int,
     "leaves": [ {"path": [[kind, key], ...], "kind": ..., ...}, ... ],
     "data": "d-<token>"   (always from version 3; before, object stores only),
     "packed_inline": bytes  (optional: the packed array itself, when it is
                              at most 64 KiB; then there is no packed/),
     "shared": {file: key}   (optional, version 4: files of this checkpoint's
                              data held by an earlier checkpoint's objects)}

The arrays live under the ``data`` subdirectory, named after the save (a
lowercase hex token). On object stores, which cannot rename, saving a number
again writes new data beside the old and swaps them by overwriting the
manifest (one atomic PUT); locally the whole directory is swapped. Either
way a reader that still holds the old manifest finds no files under the old
name, instead of reading the new save's bytes as the old one's (it then
starts over with the new manifest). Without ``data`` (version 1 and 2 local
checkpoints) the arrays sit beside the manifest.

Leaf kinds: ``"array"`` (``np.ndarray``), ``"jax"`` (``jax.Array``),
``"scalar"`` (NumPy scalar), ``"key"`` (typed PRNG key; its key data is the
stored array, ``impl`` names the PRNG), ``"py"`` (a Python value held in the
manifest itself). Array leaves carry ``dtype`` (NumPy/ml_dtypes name),
``shape`` and ``where``: ``["packed", offset, nbytes]``, ``["array", name,
chunk_shape, inner_shape]`` or ``["empty"]`` for zero-size arrays. Every
array is stored as raw bytes, so every dtype is bit-exact; zarr's ``crc32c``
codec checksums each stored chunk and tensorstore checks it on every read.

From version 3 each array leaf with stored bytes also carries ``"xxh3":
[[index, hexdigest], ...]``: one entry per piece its writer wrote (a packed
leaf: one entry, the whole leaf), ``index`` a ``[start, stop]`` per axis of
the stored shape (the key data's for PRNG keys), ``hexdigest`` 32 lowercase
hex digits of ``xxhash.xxh3_128`` of the piece's C-contiguous bytes. The
chunk checksums show a file is intact, the digests that it is the file this
manifest wrote (not another leaf's, not another save's). A read checks every
recorded piece it covers whole: a read of exactly the pieces written (the
same sharding, one device, packed leaves, ``verify``) or of the whole leaf.
A read of part of a piece (a restore onto another sharding) cannot be
checked by digest; the chunk checksums still apply.

Version 4 (object stores' incremental saves) adds ``"shared"``: for each file
of this checkpoint's data (``a/<j>/c/<i0>/...`` or ``packed/c/<i>``, relative
to ``data``) that an earlier save of the same manager already wrote, the key
of that object relative to the manager's directory
(``<name>-<N>/d-<token>/a/<j>/c/...``). Readers layer those objects over the
checkpoint's own (``_read/reader``); retention and the sweep never delete an
object a committed manifest references (``_commit/references``).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

from . import check as _manifest_check, names as _names
from ..errors import CorruptCheckpointError

MAGIC = b"JAXCKPT\x00"
VERSION = 3
# A manifest that references files of an earlier checkpoint ("shared", object
# stores' incremental saves) says version 4; every other save stays version 3.
SHARED_VERSION = 4
# Version 1 stored the packed array as one file (no "packed_shard"); versions 1
# and 2 keep local arrays beside the manifest (no "data") and have no digests.
READABLE_VERSIONS = (1, 2, 3, 4)
MANIFEST = _names.MANIFEST
PACKED = _names.PACKED
ARRAYS = _names.ARRAYS

# ---------------------------------------------------------------- packing
# Leaves smaller than this share the packed array; larger ones get their own.
LARGE_BYTES = 2 << 20
# Each packed leaf starts at a multiple of this (readers check it).
PACK_ALIGN = 64
# Small leaves share chunks; a damaged chunk implicates every leaf in it.
PACKED_INNER_BYTES = 256 << 10
# The packed array is split into shard files of this size: tensorstore writes
# them concurrently (256 MiB as one file: ~1.5 s here; as 4 MiB files: ~0.3 s),
# and the writer stages at most _storage/arrays.PACKED_WINDOW of them at a time, so a
# save never holds a second copy of all the small leaves.
PACKED_SHARD_BYTES = 4 << 20
# A packed array this small is stored in the manifest, not in a file of its own.
INLINE_BYTES = 64 << 10


def packed_after(offset: int, nbytes: int) -> int:
    """Where the next packed leaf starts after one of ``nbytes`` at ``offset``."""
    return offset + -(-nbytes // PACK_ALIGN) * PACK_ALIGN


def packed_geometry(end: int) -> tuple[int, int, int]:
    """(``packed_nbytes``, ``packed_shard``, ``packed_chunk``) of a packed array
    whose leaves end at ``end`` (all 0 when no leaf is packed): whole inner
    chunks of at most ``PACKED_INNER_BYTES``, shard files of at most
    ``PACKED_SHARD_BYTES``."""
    if not end:
        return 0, 0, 0
    inner = min(PACKED_INNER_BYTES, end)
    total = -(-end // inner) * inner
    return total, min(total, PACKED_SHARD_BYTES), inner


# ---------------------------------------------------------------- leaf records
# A leaf record's "where" is a list whose first item is its kind; these build
# and read it, so that no other module indexes it by position.
WHERE_EMPTY, WHERE_PACKED, WHERE_ARRAY = "empty", "packed", "array"


def where_empty() -> list:
    return [WHERE_EMPTY]


def where_packed(offset: int, nbytes: int) -> list:
    return [WHERE_PACKED, offset, nbytes]


def where_array(name: str, chunk: list[int], inner: list[int]) -> list:
    return [WHERE_ARRAY, name, chunk, inner]


def where_kind(rec: dict) -> str | None:
    """``"empty"``, ``"packed"`` or ``"array"``; None for a Python leaf (no bytes)."""
    where = rec.get("where")
    return where[0] if where else None


def packed_span(rec: dict) -> tuple[int, int]:
    """(offset, nbytes) of a packed leaf in the packed array."""
    _, offset, nbytes = rec["where"]
    return offset, nbytes


def packed_slice(rec: dict) -> slice:
    """A packed leaf's bytes in the packed array, as a slice."""
    _, offset, nbytes = rec["where"]
    return slice(offset, offset + nbytes)


def array_name(rec: dict) -> str:
    """A large leaf's array name: its directory is ``a/<name>``."""
    return rec["where"][1]


def array_chunks(rec: dict) -> tuple[list[int], list[int]]:
    """A large leaf's (chunk, inner chunk) shapes over its stored shape
    ``(*shape, itemsize)``: one shard file per chunk, checksummed inner chunks."""
    _, _, chunk, inner = rec["where"]
    return chunk, inner


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def dtype_from_name(name: str) -> np.dtype:
    extra = getattr(ml_dtypes, name, None)
    return np.dtype(extra) if extra is not None else np.dtype(name)


def encode_py(value: Any) -> list:
    """Tags a Python leaf for msgpack: bool/int/float/str/bytes/None/complex."""
    if value is None:
        return ["none", None]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return ["int", value]
        return ["bigint", str(value)]
    if isinstance(value, float):
        return ["float", value]
    if isinstance(value, complex):
        return ["complex", [value.real, value.imag]]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, bytes):
        return ["bytes", value]
    raise TypeError(f"not a Python leaf: {type(value)!r}")


_PY_TAGS = frozenset({"none", "bool", "int", "bigint", "float", "complex", "str", "bytes"})


def decode_py(tagged: list) -> Any:
    tag, value = tagged
    if tag == "bigint":
        return int(value)
    if tag == "complex":
        return complex(value[0], value[1])
    if tag == "float":
        return float(value)
    if tag not in _PY_TAGS:  # never raw data: unpack_manifest refuses these first
        raise CorruptCheckpointError(f"unknown Python leaf tag {tag!r}")
    return value


def pack_manifest(manifest: dict) -> bytes:
    payload = msgpack.packb(manifest, use_bin_type=True)
    return MAGIC + struct.pack("<I", zlib.crc32(payload)) + payload


def unpack_manifest(data: bytes, where: str) -> dict:
    """Parses a manifest, raising ``CorruptCheckpointError`` naming ``where``."""
    head = len(MAGIC) + 4
    if len(data) < head or data[: len(MAGIC)] != MAGIC:
        raise CorruptCheckpointError(
            f"{where}: {MANIFEST} is not a jaxckpt manifest (bad magic or truncated)."
        )
    (crc,) = struct.unpack("<I", data[len(MAGIC) : head])
    payload = data[head:]
    if zlib.crc32(payload) != crc:
        raise CorruptCheckpointError(f"{where}: {MANIFEST} fails its checksum; it is damaged.")
    try:
        manifest = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise CorruptCheckpointError(f"{where}: {MANIFEST} cannot be decoded: {e}") from e
    version = manifest.get("version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        raise CorruptCheckpointError(
            f"{where}: format version {version!r} is not supported by this jaxckpt "
            f"(reads versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade jaxckpt."
        )
    _manifest_check.check(manifest, where)
    return manifest
