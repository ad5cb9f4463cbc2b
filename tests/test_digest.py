"""jaxckpt._format.digest: per-piece XXH3 digests, their regions, and which pieces a read checks."""

from __future__ import annotations

import types

import numpy as np
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from jaxckpt._format import digest as _digest

from strategies import quick  # tests/ is on sys.path under pytest


def test_of_hashes_c_order_bytes_even_of_a_strided_view():
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert _digest.of(a) == xxhash.xxh3_128_hexdigest(a.tobytes())
    assert _digest.of(a[:, ::2]) == xxhash.xxh3_128_hexdigest(a[:, ::2].copy().tobytes())
    assert len(_digest.of(a)) == 32 and _digest.of(a) != _digest.of(a + 1)


def test_region():
    assert _digest.region((), (3, 4)) == ((0, 3), (0, 4))
    assert _digest.region((slice(1, None), slice(None, 2)), (3, 4)) == ((1, 3), (0, 2))


def test_covered_gives_the_whole_pieces_inside_a_read():
    recorded = {((0, 2), (0, 4)): "top", ((2, 4), (0, 4)): "bottom"}
    assert _digest.covered(recorded, ((0, 2), (0, 4))) == [("top", ())]  # exactly a piece
    assert sorted(_digest.covered(recorded, ((0, 4), (0, 4)))) == [
        ("bottom", (slice(2, 4), slice(0, 4))), ("top", (slice(0, 2), slice(0, 4)))]
    assert _digest.covered(recorded, ((1, 3), (0, 4))) == []  # parts of pieces: none whole


def test_record_and_pieces_round_trip_in_index_order():
    arrays = [types.SimpleNamespace(record={}), types.SimpleNamespace(record={})]
    _digest.record(arrays, [(1, ((2, 4),), "b"), (1, ((0, 2),), "a"), (0, ((0, 1),), "z")])
    assert arrays[1].record["xxh3"] == [[[[0, 2]], "a"], [[[2, 4]], "b"]]
    assert _digest.pieces(arrays[1].record) == {((0, 2),): "a", ((2, 4),): "b"}
    assert _digest.pieces({}) == {}  # before format 3


_regions = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)).map(
    lambda ab: (min(ab), max(ab))), max_size=3).map(tuple)
_found = st.lists(st.tuples(st.integers(0, 50), _regions,
                            st.text("0123456789abcdef", min_size=32, max_size=32)), max_size=6)


@quick
@given(_found)
def test_encode_decode_round_trip(found):
    assert _digest.decode(_digest.encode(found)) == found
