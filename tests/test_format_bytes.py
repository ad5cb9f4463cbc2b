"""The exact bytes a save writes today (format 3), pinned, as safetensors pins its own.

A tiny tree is saved twice: with the default thresholds (everything small:
the packed array goes in the manifest, ``packed_inline``) and with them
lowered so that there is a packed file and an array file of a large leaf.
Every file written must equal, byte for byte, its copy under
``tests/golden/bytes-v3/``, after only the per-save values are normalised:
the manifest's ``created`` time (its 8 float64 bytes zeroed), its ``data``
token (``d-`` and 20 hex digits, zeroed; also in the data directory's name)
and, since both change with them, the manifest's crc32 header (recomputed).
A manager's ``checkpoint`` state file is pinned with its timestamps replaced.
A dependency upgrade that changes these bytes (tensorstore's shard files,
msgpack's encoding) fails it too, on purpose: the format is what is on disk.

If the writer's output changes on purpose, bump ``_format/manifest.VERSION``, add a
golden checkpoint (tests/golden/make_golden.py) and regenerate these files:

    python tests/test_format_bytes.py --regen
"""

from __future__ import annotations

import os
import re
import struct
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

import jaxckpt
from jaxckpt._format import manifest as _format

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "bytes-v3")
TOKEN = re.compile(r"d-[0-9a-f]{20}")
ZERO_TOKEN = "d-" + "0" * 20
# msgpack: fixstr "created", then a float64 (0xcb) of 8 bytes; fixstr "data",
# then a fixstr of 22 bytes (0xb6), "d-" and the 20 hex digits of the token.
CREATED = b"\xa7created\xcb"
DATA = b"\xa4data\xb6d-"
STATE_TIMES = re.compile(r"^(all_model_checkpoint_timestamps|last_preserved_timestamp): (\S+)$",
                         re.MULTILINE)


def tiny_tree() -> dict:
    return {
        "b": np.array([True, False]),
        "big": np.arange(600, dtype=np.int16),  # 1200 bytes: its own array when "files"
        "e": np.zeros((0, 3), np.int8),
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "h": jnp.asarray([1.5, -2.0, 0.0], jnp.bfloat16),
        "key": jax.random.key(7, impl="threefry2x32"),
        "n": 3,
        "none": None,
        "s": "hi",
        "sc": np.float64(1.5),
        "x": 0.25,
    }


METADATA = {"step": 7, "note": "tiny"}


def _thresholds(layout: str):
    """(LARGE_BYTES, INLINE_BYTES) for each layout pinned."""
    return {"inline": (_format.LARGE_BYTES, _format.INLINE_BYTES), "files": (1024, 0)}[layout]


def normalise_manifest(raw: bytes) -> bytes:
    """``raw`` with its ``created`` and ``data`` values zeroed and its crc
    recomputed; checks that nothing else differs from what was read."""
    head = len(_format.MAGIC) + 4
    assert raw[: len(_format.MAGIC)] == _format.MAGIC
    (crc,) = struct.unpack("<I", raw[len(_format.MAGIC):head])
    payload = raw[head:]
    assert zlib.crc32(payload) == crc
    assert payload.count(CREATED) == 1 and payload.count(DATA) == 1
    at = payload.index(CREATED) + len(CREATED)
    payload = payload[:at] + bytes(8) + payload[at + 8:]
    at = payload.index(DATA) + len(DATA)
    assert re.fullmatch(rb"[0-9a-f]{20}", payload[at:at + 20])
    payload = payload[:at] + b"0" * 20 + payload[at + 20:]
    before = msgpack.unpackb(raw[head:], raw=False, strict_map_key=False)
    after = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    assert after["created"] == 0.0 and after["data"] == ZERO_TOKEN
    assert {**before, "created": 0.0, "data": ZERO_TOKEN} == after
    return _format.MAGIC + struct.pack("<I", zlib.crc32(payload)) + payload


def files_of(root: str) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (data token zeroed), normalised."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames.sort()
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            rel = TOKEN.sub(ZERO_TOKEN, os.path.relpath(path, root))
            with open(path, "rb") as f:
                data = f.read()
            out[rel] = normalise_manifest(data) if name == _format.MANIFEST else data
    return out


def normalise_state_file(text: str) -> str:
    for _, value in STATE_TIMES.findall(text):
        float(value)
    return STATE_TIMES.sub(lambda m: f"{m[1]}: 0.0", text)


def write(tmp: str, layout: str) -> str:
    """Saves the tiny tree at ``tmp/<layout>`` with that layout's thresholds."""
    large, inline = _thresholds(layout)
    saved = _format.LARGE_BYTES, _format.INLINE_BYTES
    _format.LARGE_BYTES, _format.INLINE_BYTES = large, inline
    try:
        path = os.path.join(tmp, layout)
        jaxckpt.save(path, tiny_tree(), metadata=METADATA)
    finally:
        _format.LARGE_BYTES, _format.INLINE_BYTES = saved
    return path


def write_managed(tmp: str) -> str:
    directory = os.path.join(tmp, "managed")
    with jaxckpt.CheckpointManager(directory, max_to_keep=1) as m:
        m.save(tiny_tree(), metadata=METADATA)
        m.save(tiny_tree(), metadata=METADATA)
    return directory


def expected(layout: str) -> dict[str, bytes]:
    return files_of(os.path.join(HERE, layout))


@pytest.mark.parametrize("layout", ["inline", "files"])
def test_a_tiny_checkpoint_is_written_byte_for_byte_as_pinned(layout, tmp_path):
    got = files_of(write(str(tmp_path), layout))
    want = expected(layout)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], f"{layout}/{rel} differs from tests/golden/bytes-v3"


def test_the_pinned_layouts_hold_what_they_are_meant_to():
    inline, files = expected("inline"), expected("files")
    assert sorted(inline) == [_format.MANIFEST]
    assert sorted(files) == [_format.MANIFEST, f"{ZERO_TOKEN}/a/0/c/0/0",
                             f"{ZERO_TOKEN}/packed/c/0"]
    manifest = _format.unpack_manifest(inline[_format.MANIFEST], "inline")
    assert "packed_inline" in manifest and manifest["version"] == 3
    kinds = {leaf["kind"] for leaf in manifest["leaves"]}
    assert kinds == {"array", "jax", "key", "py", "scalar"}


@pytest.mark.parametrize("layout", ["inline", "files"])
def test_the_pinned_bytes_restore(layout):
    """The pinned files (token and time zeroed) are a whole checkpoint."""
    raw = jaxckpt.restore(os.path.join(HERE, layout))
    want = tiny_tree()
    assert sorted(raw) == sorted(want)
    for k in ("b", "big", "e", "f", "h", "sc"):
        a, b = np.asarray(raw[k]), np.asarray(want[k])
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), k
    assert np.array_equal(jax.random.key_data(raw["key"]), jax.random.key_data(want["key"]))
    assert [raw[k] for k in ("n", "none", "s", "x")] == [3, None, "hi", 0.25]
    assert jaxckpt.user_metadata(os.path.join(HERE, layout)) == METADATA


def test_a_managers_state_file_and_checkpoint_are_written_as_pinned(tmp_path):
    directory = write_managed(str(tmp_path))
    assert sorted(os.listdir(directory)) == ["checkpoint", "ckpt-2"]
    with open(os.path.join(directory, "checkpoint"), encoding="utf-8") as f:
        state = normalise_state_file(f.read())
    with open(os.path.join(HERE, "checkpoint"), encoding="utf-8", newline="") as f:
        assert state == f.read()
    assert files_of(os.path.join(directory, "ckpt-2")) == expected("inline")


def test_every_name_is_built_and_parsed_by_names():
    from jaxckpt._format import names as _names

    assert _names.numbered("ckpt", 12) == "ckpt-12"
    assert _names.number_of("ckpt-12", "ckpt") == 12
    assert _names.split_numbered("my-run-7") == ("my-run", 7)
    for other in ("ckpt-", "ckpt-1a", "-3", "ckpt-\u0663", "ckpt-3\n"):
        assert _names.split_numbered(other) is None, other
    token = _names.new_token()
    assert _names.data_token(_names.data(token)) == token and _names.is_data(_names.data(token))
    assert abs(_names.token_time(token) - time.time()) < 120
    assert _names.token_time("cb43538f28f1") is None  # before tokens carried a time
    assert not _names.is_data("d-../x") and _names.data_token("packed") is None
    assert _names.is_array(_names.array(3)) and not _names.is_array("../0")
    tmp = _names.state_file_tmp()
    assert re.fullmatch(r"checkpoint\.tmp-[0-9a-f]{12}", tmp) and _names.is_state_file_tmp(tmp)
    assert not _names.is_state_file_tmp("checkpoint") and _names.parse(tmp) is None
    assert _names.basename("gs://b/run/ckpt-3/") == "ckpt-3"
    assert (_names.MANIFEST, _names.STATE_FILE) == ("_CHECKPOINT", "checkpoint")


def _regen() -> None:
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shutil.rmtree(HERE, ignore_errors=True)
        for layout in ("inline", "files"):
            for rel, data in files_of(write(tmp, layout)).items():
                path = os.path.join(HERE, layout, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
        with open(os.path.join(write_managed(tmp), "checkpoint"), encoding="utf-8") as f:
            state = normalise_state_file(f.read())
        with open(os.path.join(HERE, "checkpoint"), "w", encoding="utf-8", newline="") as f:
            f.write(state)
    print("wrote", HERE)


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        sys.exit(__doc__)
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    _regen()
