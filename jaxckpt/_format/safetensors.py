"""The safetensors file format (Hugging Face), written down in one place; pure, no I/O.

A file is: 8 bytes, the little-endian unsigned length ``N`` of the header;
``N`` bytes of UTF-8 JSON, ``{name: {"dtype": "F32", "shape": [..],
"data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}`` (padded
with spaces so that the data starts at a multiple of 8); then the tensors'
raw little-endian C-order bytes back to back, offsets relative to the end of
the header. A sharded export adds ``model.safetensors.index.json``:
``{"metadata": {"total_size": bytes}, "weight_map": {name: file}}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import ml_dtypes
import numpy as np

# jaxckpt's stored dtype names (NumPy / ml_dtypes) -> safetensors' names.
DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
    "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64",
    "float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
NUMPY = {v: k for k, v in DTYPES.items()}

INDEX = "model.safetensors.index.json"
# A header larger than this is refused when reading (safetensors' own limit).
MAX_HEADER_BYTES = 100_000_000


def shard_name(i: int, n: int) -> str:
    """``model-00001-of-00003.safetensors`` (``i`` from 1), as transformers names them."""
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def st_dtype(dtype_name: str) -> str | None:
    """The safetensors name of a stored dtype, or None if safetensors has none."""
    return DTYPES.get(dtype_name)


def np_dtype(st_name: str) -> np.dtype:
    name = NUMPY.get(st_name)
    if name is None:
        raise ValueError(f"safetensors dtype {st_name!r} is not one jaxckpt reads "
                         f"(reads: {', '.join(sorted(NUMPY))})")
    extra = getattr(ml_dtypes, name, None)
    return np.dtype(extra) if extra is not None else np.dtype(name)


def header(tensors: list[tuple[str, str, list[int], int]], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and the padded JSON header for ``(name, st_dtype,
    shape, nbytes)`` tensors laid out back to back in that order."""
    doc: dict[str, Any] = {}
    if metadata:
        doc["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text


def parse_header(head: bytes, where: str) -> tuple[dict, dict[str, str], int]:
    """(tensors by name, ``__metadata__``, data start) from a file's first bytes
    (at least 8 plus the header's length).

    Raises:
        ValueError: naming ``where``, when the header is not safetensors'.
    """
    if len(head) < 8:
        raise ValueError(f"{where}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES or len(head) < 8 + n:
        raise ValueError(f"{where}: not a safetensors file (header length {n})")
    try:
        doc = json.loads(head[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: not a safetensors file (header: {e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: not a safetensors file (header is not a JSON object)")
    metadata = doc.pop("__metadata__", None) or {}
    for name, info in doc.items():
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list)
                and isinstance(info.get("data_offsets"), list)
                and len(info["data_offsets"]) == 2):
            raise ValueError(f"{where}: tensor {name!r}: malformed header entry {info!r}")
    return doc, metadata, 8 + n
