"""jaxckpt._format.manifest: manifest framing (magic, crc32, msgpack, version), Python-leaf tags,
dtype names. The exact bytes a save writes are pinned in test_format_bytes.py."""

from __future__ import annotations

import math
import struct
import zlib

import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxckpt
from jaxckpt import CorruptCheckpointError
from jaxckpt._format import manifest as _format

from strategies import quick  # tests/ is on sys.path under pytest


def _real_manifest(tmp_path) -> bytes:
    jaxckpt.save(tmp_path / "c", {"a": np.arange(3, dtype=np.int32), "s": "x"})
    return (tmp_path / "c" / _format.MANIFEST).read_bytes()


def test_framing_is_magic_crc32_payload(tmp_path):
    data = _real_manifest(tmp_path)
    assert data[:8] == _format.MAGIC == b"JAXCKPT\x00"
    payload = data[12:]
    assert struct.unpack("<I", data[8:12])[0] == zlib.crc32(payload)
    manifest = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    assert manifest["version"] == _format.VERSION
    assert _format.unpack_manifest(data, "here") == manifest
    assert _format.pack_manifest(manifest) == data  # packing is deterministic


def _frame(manifest) -> bytes:
    payload = msgpack.packb(manifest, use_bin_type=True)
    return _format.MAGIC + struct.pack("<I", zlib.crc32(payload)) + payload


@pytest.mark.parametrize("damage, match", [
    (lambda d: d[:10], "bad magic or truncated"),
    (lambda d: b"NOTJAXCK" + d[8:], "bad magic or truncated"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "fails its checksum"),
    (lambda d: _frame({"version": 99}), "format version 99 is not supported"),
    (lambda d: _frame([1, 2]), "format version None"),
])
def test_damaged_frames_are_refused_naming_where(tmp_path, damage, match):
    data = damage(_real_manifest(tmp_path))
    with pytest.raises(CorruptCheckpointError, match=match) as e:
        _format.unpack_manifest(data, "ckpt-dir")
    assert str(e.value).startswith("ckpt-dir: ")


def test_a_payload_msgpack_cannot_decode():
    payload = b"\xc1"  # reserved, never valid msgpack
    data = _format.MAGIC + struct.pack("<I", zlib.crc32(payload)) + payload
    with pytest.raises(CorruptCheckpointError, match="cannot be decoded"):
        _format.unpack_manifest(data, "x")


python_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.complex_numbers(),
    st.text(st.characters(blacklist_categories=("Cs",))), st.binary())


@quick
@given(python_values)
def test_python_leaf_tags_round_trip_through_msgpack(value):
    tagged = msgpack.unpackb(msgpack.packb(_format.encode_py(value), use_bin_type=True),
                             raw=False)
    out = _format.decode_py(tagged)
    assert type(out) is type(value)
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(out)
    elif isinstance(value, complex):
        assert struct.pack("<dd", out.real, out.imag) == struct.pack("<dd", value.real,
                                                                     value.imag)
    else:
        assert out == value and (not isinstance(value, float)
                                 or math.copysign(1, out) == math.copysign(1, value))


def test_python_leaf_tags():
    assert _format.encode_py(2**64 - 1) == ["int", 2**64 - 1]
    assert _format.encode_py(2**64) == ["bigint", str(2**64)]
    assert _format.encode_py(-(2**63) - 1) == ["bigint", str(-(2**63) - 1)]
    assert _format.encode_py(True) == ["bool", True]
    with pytest.raises(TypeError, match="not a Python leaf"):
        _format.encode_py(object())
    with pytest.raises(CorruptCheckpointError, match="unknown Python leaf tag"):
        _format.decode_py(["pickle", b""])


@pytest.mark.parametrize("name", ["bool", "int8", "uint64", "float16", "float64", "complex128",
                                  "bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint4",
                                  "int2", "float4_e2m1fn"])
def test_dtype_names_round_trip(name):
    dtype = np.dtype(getattr(ml_dtypes, name, name))
    assert _format.dtype_name(dtype) == name
    assert _format.dtype_from_name(name) == dtype
