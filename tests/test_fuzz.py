"""Fuzzing the parsers of untrusted bytes: the manifest and the state file.

Mutated inputs come from Hypothesis (fixed seed, no database): byte flips and
truncations of a real manifest; structural mutations of its decoded payload
(wrong types, huge numbers, deep nesting, long lists, bad tokens) re-framed
with a correct crc32, so that the validator and not the checksum is
exercised; the whole read path (metadata, restore, verify) on a real
checkpoint whose ``_CHECKPOINT`` is replaced; mutated state-file texts.

Each input may only raise the documented exceptions, and the Python memory
it allocates (tracemalloc peak) stays under a stated bound. The figures go
into ``TALLY`` and are printed at the end of the run.
"""

from __future__ import annotations

import collections
import copy
import os
import random
import shutil
import struct
import tracemalloc
import zlib

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import jaxckpt
from jaxckpt._format import manifest as _format
from jaxckpt._commit import state_file as _state_file
from jaxckpt.errors import CheckpointNotFoundError, CorruptCheckpointError, StructureMismatchError

from _reliability import TALLY

# Slow (thousands of fuzzed inputs): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow

# Peak Python allocation per input: parsing a manifest of a few KiB (or one
# grown by a mutation to ~1 MiB) stays far below these; reading a checkpoint
# also holds its arrays (2.4 MiB here) and their copies.
PARSE_PEAK = 8 << 20
READ_PEAK = 48 << 20

FIGURES: collections.Counter = collections.Counter()


SCALE = float(os.environ.get("JAXCKPT_FUZZ_SCALE", "0.5"))  # 4 in `make torture`


def _settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck))


class _Memory:
    """tracemalloc peaks of single calls (traced only during the call: tracing
    Hypothesis's own generation would triple the run time)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def peak_of(self, fn, bound: int, what: str, allowed: tuple):
        tracemalloc.start()
        try:
            fn()
            outcome = "accepted"
        except allowed as e:
            outcome = type(e).__name__
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        FIGURES["fuzz inputs"] += 1
        FIGURES[f"fuzz {what}: {outcome}"] += 1
        key = f"fuzz {what}: peak KiB"
        FIGURES[key] = max(FIGURES[key], peak >> 10)
        assert peak < bound, f"{what}: {peak} bytes allocated for one input"


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for key, value in FIGURES.items():
        TALLY[key] = max(TALLY[key], value) if "peak" in key else TALLY[key] + value


def _tree() -> dict:
    return {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "big": np.arange(600_000, dtype=np.int32),  # an array of its own
        "empty": np.zeros((0, 3), np.float16),
        "py": [1, 2.5, "s", None, 2**70, b"b", 1j, True],
        "key": jax.random.key(0),
        "s": np.float64(1.5),
        "b": {"x": np.ones(5, bool)},
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("fuzz") / "ckpt-1")
    jaxckpt.save(path, _tree(), metadata={"step": 1, "cfg": {"lr": 0.1}})
    return path


def _manifest_bytes(path: str) -> bytes:
    with open(os.path.join(path, _format.MANIFEST), "rb") as f:
        return f.read()


# ---------------------------------------------------------------- mutations

_WORDS = ["../", "/etc/passwd", "d-../x", "d-", "d-0a", "empty", "packed", "array", "py",
          "key", "jax", "scalar", "k", "i", "a", "f", "float32", "bfloat16", "object", "<U3",
          "V4", ">f4", "threefry2x32", "rbg", "none", "int", "bigint", "float", "complex",
          "str", "bytes", "pickle", "9" * 5000, "\x00", "", "0", "-1", "1e400"]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 3, 4, 12, 63, 64, 2**31, 2**40, 2**62, 2**64 - 1, -(2**63)]),
    st.floats(), st.text(max_size=12), st.sampled_from(_WORDS), st.binary(max_size=24))
_values = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=4), c,
                                                                    max_size=4),
    max_leaves=12)


def _deep(depth: int):
    x: list = [0]
    for _ in range(depth):
        x = [x]
    return x


_special = st.sampled_from(["deep", "long", "long str", "long bytes", "pair", "token"])
_SPECIAL = {
    "deep": lambda: _deep(480),  # msgpack's packer stops at 511
    "long": lambda: [0] * 50_000,
    "long str": lambda: "x" * 200_000,
    "long bytes": lambda: b"\x00" * 200_000,
    "pair": lambda: [0, 0],
    "token": lambda: [["i", 10**15]],
}
# Special values are built when applied: Hypothesis prints drawn values, and a
# 480-deep list is more than its printer can recurse through.
_new_values = st.one_of(_values, _special.map(lambda k: ("special", k)))
_LEAF_FIELDS = ["path", "kind", "dtype", "shape", "where", "value", "impl", "key_shape",
                "xxh3", "new"]
_TOP_FIELDS = ["version", "created", "metadata", "packed_nbytes", "packed_shard",
               "packed_chunk", "packed_inline", "data", "leaves", "new"]


@st.composite
def _mutation(draw):
    """(op, location, value): one edit of the decoded manifest."""
    op = draw(st.sampled_from(["set", "set", "set", "delete", "dup leaf", "swap", "append"]))
    if draw(st.booleans()):
        loc = ("top", draw(st.sampled_from(_TOP_FIELDS)), None)
    else:
        loc = ("leaf", draw(st.integers(0, 40)), draw(st.sampled_from(_LEAF_FIELDS)),
               draw(st.one_of(st.none(), st.integers(0, 3))),
               draw(st.one_of(st.none(), st.integers(0, 2))))
    return op, loc, draw(_new_values), draw(st.integers(0, 40))


# Hypothesis costs ~10-20 ms an example on a loaded machine, so each example
# also derives a few inputs of its own from a drawn seed (same edits, random
# choices): the input count is reached in a fraction of the time.
_POOL = [None, True, False, 0, 1, -1, 3, 12, 64, 2**31, 2**62, 2**64 - 1, -(2**63), 0.5,
         float("nan"), float("inf"), "", "x", *_WORDS, b"", b"\x00" * 9, [], {}, [0], [[0]],
         ["i", 0], ["k", "w"], ["packed", 0, 48], ["array", "0", [1], [1]], ["empty"],
         {"a": [1]}, ("special", "deep"), ("special", "long"), ("special", "long str"),
         ("special", "pair"), ("special", "token")]


def _random_mutation(rng: random.Random):
    op = rng.choice(["set", "set", "set", "delete", "dup leaf", "swap", "append"])
    if rng.random() < 0.3:
        loc = ("top", rng.choice(_TOP_FIELDS), None)
    else:
        loc = ("leaf", rng.randrange(41), rng.choice(_LEAF_FIELDS),
               rng.choice([None, 0, 1, 2, 3]), rng.choice([None, 0, 1, 2]))
    return op, loc, copy.deepcopy(rng.choice(_POOL)), rng.randrange(41)


def _apply(m: dict, mutation) -> None:
    op, loc, value, other = mutation
    if isinstance(value, tuple):
        value = _SPECIAL[value[1]]()
    leaves = m["leaves"] if isinstance(m.get("leaves"), list) else []
    if op == "dup leaf" and leaves:
        leaves.insert(other % (len(leaves) + 1), copy.deepcopy(leaves[other % len(leaves)]))
        return
    if loc[0] == "top":
        container, key = m, loc[1]
    else:
        if not leaves or not isinstance(leaves[loc[1] % len(leaves)], dict):
            return
        container, key = leaves[loc[1] % len(leaves)], loc[2]
        for sub in loc[3:]:  # descend into where[i], path[i][j], shape[i], value[i]
            inner = container.get(key) if isinstance(container, dict) else (
                container[key] if isinstance(container, list) and key < len(container) else None)
            if sub is None or not isinstance(inner, list) or not inner:
                break
            container, key = inner, sub % len(inner)
    if op == "swap" and loc[0] == "leaf" and isinstance(container, dict) and leaves:
        donor = leaves[other % len(leaves)]
        if isinstance(donor, dict) and key in donor:
            value = copy.deepcopy(donor[key])
    if isinstance(container, dict):
        if op == "delete":
            container.pop(key, None)
        elif op == "append" and isinstance(container.get(key), list):
            container[key].append(value)
        else:
            container[key] = value
    elif isinstance(container, list):
        if op == "delete":
            del container[key]
        elif op == "append" and isinstance(container[key], list):
            container[key].append(value)
        else:
            container[key] = value


def _mutated(clean: dict, mutations, derived: bool = False) -> bytes | None:
    m = copy.deepcopy(clean)
    for mutation in mutations:
        _apply(m, mutation)
    try:
        return _format.pack_manifest(m)
    except (ValueError, TypeError, OverflowError):  # not representable in msgpack
        if derived:
            return None
        reject()


_PARSE_ERRORS = (CorruptCheckpointError,)


# ---------------------------------------------------------------- manifest parser


def test_fuzz_manifest_structure(base):
    """Structural mutations, re-framed with a correct crc32: the validator decides."""
    clean = _format.unpack_manifest(_manifest_bytes(base), base)

    with _Memory() as mem:
        @_settings(800)
        @given(st.lists(_mutation(), min_size=1, max_size=4), st.integers(0, 2**32))
        def run(mutations, seed):
            rng = random.Random(seed)
            inputs = [_mutated(clean, mutations)] + [
                _mutated(clean, [_random_mutation(rng) for _ in range(rng.randint(1, 4))],
                         derived=True) for _ in range(4)]
            for data in inputs:
                if data is not None:
                    mem.peak_of(lambda: _format.unpack_manifest(data, base), PARSE_PEAK,
                                "manifest structure", _PARSE_ERRORS)

        run()


_BYTE_EDITS = ["flip", "truncate", "insert", "zero", "nest"]
_byte_edit = st.tuples(st.sampled_from(_BYTE_EDITS),
                       st.integers(0, 10**6), st.integers(0, 255), st.integers(1, 3000))


def test_fuzz_manifest_bytes(base):
    """Byte flips, truncations, insertions, plain and re-framed with a correct crc32."""
    raw = _manifest_bytes(base)

    with _Memory() as mem:
        @_settings(400)
        @given(st.lists(_byte_edit, min_size=1, max_size=3), st.booleans(), st.integers(0, 2**32))
        def run(edits, reframe, seed):
            rng = random.Random(seed)
            variants = [(edits, reframe)] + [
                ([(rng.choice(_BYTE_EDITS), rng.randrange(10**6), rng.randrange(256),
                   rng.randrange(1, 3000)) for _ in range(rng.randint(1, 3))], rng.random() < 0.7)
                for _ in range(7)]
            for edit_list, again in variants:
                blob = _edit_bytes(raw, edit_list, again)
                mem.peak_of(lambda: _format.unpack_manifest(blob, base), PARSE_PEAK,
                            "manifest bytes", _PARSE_ERRORS)

        run()


def _edit_bytes(raw: bytes, edits, reframe: bool) -> bytes:
    head = len(_format.MAGIC) + 4
    data = bytearray(raw)
    for kind, at, byte, n in edits:
        at %= len(data) + 1
        if kind == "flip" and at < len(data):
            data[at] ^= byte or 1
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([byte]) * (n % 64)
        elif kind == "zero":
            data[at:at + n] = bytes(len(data[at:at + n]))
        elif kind == "nest":  # msgpack one-element arrays, nested deeper than allowed
            data[max(at, head):max(at, head)] = b"\x91" * n
    if reframe and len(data) >= head:
        payload = bytes(data[head:])
        data[len(_format.MAGIC):head] = struct.pack("<I", zlib.crc32(payload))
    return bytes(data)


def test_fuzz_read_path(base, tmp_path):
    """metadata, restore (raw and into a target) and verify on mutated manifests."""
    path = str(tmp_path / "ckpt-1")
    shutil.copytree(base, path)
    clean = _format.unpack_manifest(_manifest_bytes(base), base)
    target = _tree()
    jaxckpt.restore(path, target)  # warm up: jax compiles the key wrapping once
    jaxckpt.metadata(path)

    def read_all(data: bytes) -> None:
        with open(os.path.join(path, _format.MANIFEST), "wb") as f:
            f.write(data)
        outcomes = []
        for read, allowed in (
                (jaxckpt.metadata, (CorruptCheckpointError,)),
                (jaxckpt.restore, (CorruptCheckpointError,)),
                (jaxckpt.verify, (CorruptCheckpointError,)),
                (lambda p: jaxckpt.restore(p, target),
                 (CorruptCheckpointError, StructureMismatchError))):
            try:
                read(path)
                outcomes.append(None)
            except allowed as e:
                outcomes.append(e)
        # verify passes only what restore can read
        if outcomes[1] is not None:
            assert outcomes[2] is not None, f"verify passed; restore raised {outcomes[1]}"
        failed = [e for e in outcomes if e is not None]
        if failed:
            raise failed[0]

    with _Memory() as mem:
        @_settings(150)
        @given(st.lists(_mutation(), min_size=1, max_size=3))
        def run(mutations):
            data = _mutated(clean, mutations)
            mem.peak_of(lambda: read_all(data), READ_PEAK, "read path",
                        (CorruptCheckpointError, StructureMismatchError,
                         CheckpointNotFoundError))

        run()


# ---------------------------------------------------------------- state file

_STATE = ('model_checkpoint_path: "ckpt-3"\n'
          'all_model_checkpoint_paths: "ckpt-2"\n'
          'all_model_checkpoint_paths: "ckpt-3"\n'
          'all_model_checkpoint_timestamps: 1700000000.5\n'
          'all_model_checkpoint_timestamps: 1700000100.25\n'
          'last_preserved_timestamp: 1699999999.0\n')
_STATE_PIECES = ["\\", '"', "'", "\\x", "\\777", "\\u1234", ":", "\n", " ", "nan", "inf", "-",
                 "1e999", "0x10", "model_checkpoint_path", "all_model_checkpoint_paths",
                 "all_model_checkpoint_timestamps", "last_preserved_timestamp", "{", "}", "#",
                 "\x00", "é", "9" * 400, "../x", "/abs"]
_text_edit = st.tuples(st.sampled_from(["insert", "delete", "replace", "dup line"]),
                       st.integers(0, 10**4), st.one_of(st.sampled_from(_STATE_PIECES),
                                                        st.text(max_size=6)),
                       st.integers(0, 40))


def _edit_text(text: str, edits) -> str:
    for kind, at, piece, n in edits:
        at %= len(text) + 1
        if kind == "insert":
            text = text[:at] + piece + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + n:]
        elif kind == "replace":
            text = text[:at] + piece + text[at + len(piece):]
        else:
            lines = text.splitlines(keepends=True) or [""]
            text = "".join(lines + [lines[at % len(lines)]] * (n % 4))
    return text


def test_fuzz_state_file(tmp_path):
    """parse() and read() (the bounded file read) on mutated state files."""
    directory = str(tmp_path)
    file = os.path.join(directory, _state_file.FILENAME)

    def parse_and_read(text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        with open(file, "wb") as f:
            f.write(data)
        outcomes = []
        for call in (lambda: _state_file.parse(text, file), lambda: _state_file.read(directory)):
            try:
                call()
                outcomes.append(None)
            except CorruptCheckpointError as e:
                outcomes.append(e)
        if any(outcomes):
            raise next(e for e in outcomes if e)

    with _Memory() as mem:
        @_settings(600)
        @given(st.lists(_text_edit, min_size=1, max_size=4), st.integers(0, 2**32))
        def run(edits, seed):
            rng = random.Random(seed)
            variants = [edits] + [
                [(rng.choice(["insert", "delete", "replace", "dup line"]), rng.randrange(10**4),
                  rng.choice(_STATE_PIECES), rng.randrange(41)) for _ in range(rng.randint(1, 4))]
                for _ in range(4)]
            for edit_list in variants:
                text = _edit_text(_STATE, edit_list)
                mem.peak_of(lambda: parse_and_read(text), PARSE_PEAK, "state file",
                            (CorruptCheckpointError,))

        run()


def test_fuzz_figures_are_reported():
    """Runs last in this file: the totals it reports are in the run's summary."""
    assert FIGURES["fuzz inputs"] >= 10_000 * min(SCALE, 1), FIGURES
    print("\nfuzz figures: " + ", ".join(f"{k} {v}" for k, v in sorted(FIGURES.items())))
