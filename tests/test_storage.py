"""jaxckpt._storage.arrays and .durable: chunk shapes, byte views, aligned buffers, tensorstore
arrays, fsync."""

from __future__ import annotations

import math
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxckpt
from jaxckpt._storage import arrays as _arrays
from jaxckpt._storage import durable as _durable

from strategies import quick, shard_shapes  # tests/ is on sys.path under pytest


# ---------------------------------------------------------------- chunking


@quick
@given(shard_shapes, st.booleans())
def test_chunking_invariants(shard, exact):
    outer, inner = _arrays.chunking(shard, exact)
    assert len(outer) == len(inner) == len(shard)
    assert outer[-1] == inner[-1] == shard[-1]  # the itemsize axis stays whole
    for axis, (o, i, s) in enumerate(zip(outer, inner, shard)):
        assert 1 <= i <= o and o % i == 0, (axis, outer, inner)
        if exact:  # several processes' shards never share a file
            assert o == s and s % i == 0, (axis, outer, inner)
        else:  # rounded up by less than one inner chunk
            assert s <= o < s + i, (axis, outer, inner)
    if not exact:
        assert math.prod(inner) <= _arrays.INNER_BYTES
    # No extent gives tiny chunks: each holds a good part of the wanted size.
    assert math.prod(inner) >= min(math.prod(shard), _arrays.INNER_BYTES // 4)
    if math.prod(shard) <= _arrays.INNER_BYTES:
        assert outer == inner == list(shard)


@quick
@given(shard_shapes, st.booleans())
def test_chunking_is_a_pure_function_of_its_input(shard, exact):
    before = list(shard)
    assert _arrays.chunking(shard, exact) == _arrays.chunking(tuple(shard), exact)
    assert shard == before


def test_awkward_extents_keep_chunks_large(tmp_path):
    from jaxckpt._storage import arrays as _arrays

    prime = 1_000_003  # no divisor near the wanted chunk size
    outer, inner = _arrays.chunking([prime, 4])
    assert inner[0] * 4 >= _arrays.INNER_BYTES // 2 and outer[0] % inner[0] == 0
    assert outer[0] >= prime
    x = np.arange(prime, dtype=np.float32)
    jaxckpt.save(tmp_path / "c", {"x": x})
    assert np.array_equal(jaxckpt.restore(tmp_path / "c")["x"], x)
    assert _arrays.chunking([1024, 1024, 4]) == ([1024, 1024, 4], [1024, 1024, 4])


def test_exact_chunking_takes_the_smallest_divisor_above_the_wanted_size():
    prime = 1_000_003
    assert _arrays.chunking([prime, 4], exact=True) == ([prime, 4], [prime, 4])
    outer, inner = _arrays.chunking([2 * prime, 4], exact=True)
    assert outer == [2 * prime, 4] and inner == [prime, 4]


def test_divisors_upto():
    assert sorted(set(_arrays._divisors_upto(36, 10))) == [1, 2, 3, 4, 6, 9]
    assert sorted(set(_arrays._divisors_upto(13, 100))) == [1, 13]


# ---------------------------------------------------------------- bytes and buffers


@pytest.mark.parametrize("dtype", ["float32", "int64", "complex128", "bool", "bfloat16",
                                   "float8_e4m3fn", "int4"])
def test_byte_view_and_from_bytes_are_inverse(dtype):
    dt = np.dtype(getattr(ml_dtypes, dtype, dtype))
    raw = np.random.default_rng(0).integers(0, 2, size=24 * dt.itemsize, dtype=np.uint8)
    a = raw.view(dt).reshape(4, 6)[:, ::2]  # not contiguous
    view = _arrays.byte_view(a)
    assert view.dtype == np.uint8 and view.shape == (4, 3, dt.itemsize)
    back = _arrays.from_bytes(view, dt, a.shape)
    assert back.dtype == dt and back.shape == a.shape and back.tobytes() == a.tobytes()


def test_byte_view_of_a_contiguous_array_is_no_copy():
    a = np.arange(6, dtype=np.float32)
    assert np.shares_memory(_arrays.byte_view(a), a)


@pytest.mark.parametrize("shape", [(3,), (1000, 7), (5 << 20,)])
def test_aligned_empty_is_64_byte_aligned(shape):
    out = _arrays.aligned_empty(shape)
    assert out.dtype == np.uint8 and out.shape == shape and out.ctypes.data % 64 == 0
    out[...] = 1  # writable
    assert out.min() == 1


# ---------------------------------------------------------------- tensorstore arrays


def test_array_spec_reads_refuse_missing_chunks():
    spec = _arrays.array_spec({"driver": "memory"}, [4, 2], [4, 2], [2, 2], create=True)
    assert "fill_missing_data_reads" not in spec and spec["assume_metadata"] is True
    codec = spec["metadata"]["codecs"][0]
    assert codec["name"] == "sharding_indexed"
    assert codec["configuration"]["chunk_shape"] == [2, 2]
    read_spec = _arrays.array_spec({"driver": "memory"}, [4, 2], [4, 2], [2, 2], create=False)
    assert read_spec["fill_missing_data_reads"] is False


def test_write_then_read_through_tensorstore(tmp_path):
    data = np.arange(4 * 6 * 4, dtype=np.uint8).reshape(4, 6, 4)
    outer, inner = _arrays.chunking(list(data.shape))
    kv = {"driver": "file", "path": str(tmp_path / "arr") + "/"}
    store = _arrays.open_array(
        _arrays.array_spec(kv, data.shape, outer, inner, create=True)).result()
    _arrays.write(store, (), data).result()
    again = _arrays.open_array(
        _arrays.array_spec(kv, data.shape, outer, inner, create=False)).result()
    assert np.array_equal(_arrays.read(again, ()).result(), data)
    part = _arrays.read(again, (slice(1, 3),)).result()
    assert np.array_equal(part, data[1:3]) and part.ctypes.data % 64 == 0


# ---------------------------------------------------------------- durable files


def test_makedirs_durably_and_write_file_durably(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    _durable.makedirs_durably(str(deep))
    _durable.makedirs_durably(str(deep))  # exists already: fine
    assert deep.is_dir()
    _durable.write_file_durably(str(deep / "f"), b"payload")
    assert (deep / "f").read_bytes() == b"payload"
    _durable.write_file_durably(str(deep / "f"), b"new")  # replaces
    assert (deep / "f").read_bytes() == b"new"
    _durable.fsync_tree(str(tmp_path))
    _durable.fsync_dir(str(deep))
    assert sorted(os.listdir(deep)) == ["f"]  # no temporary left beside it
