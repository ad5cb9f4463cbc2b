"""The packed array of small leaves: shard files, staging-buffer reuse, damage.

Small leaves are packed back to back into 4 MiB shard files, a few staged
at a time; these tests cross shard boundaries with leaves, save different
values in turn, and damage one shard file.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import jaxckpt
from jaxckpt import CorruptCheckpointError
from jaxckpt._read import reader as _reader
from jaxckpt._storage import arrays as _arrays

SHARD = jaxckpt._format.manifest.PACKED_SHARD_BYTES


def _tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    # 1.5 MiB leaves (under the 2 MiB packing threshold): many straddle a shard boundary.
    return {
        "w": [rng.integers(0, 2**31, (1536 * 1024 // 4,), dtype=np.int32) for _ in range(9)],
        "odd": rng.standard_normal(777).astype(np.float16),  # padding after it
        "tail": np.arange(5, dtype=np.uint8),
    }


def _shard_files(path) -> list[str]:
    data = _reader.read_manifest(str(path)).get("data", "")
    d = os.path.join(path, data, "packed", "c")
    return sorted(os.path.join(d, f) for f in os.listdir(d))


def test_leaves_across_shard_files_restore_bit_exact(tmp_path):
    tree = _tree(0)
    jaxckpt.save(tmp_path / "c", tree)
    manifest = _reader.read_manifest(str(tmp_path / "c"))
    total = manifest["packed_nbytes"]
    assert manifest["packed_shard"] == SHARD and total > 3 * SHARD
    assert len(_shard_files(tmp_path / "c")) == -(-total // SHARD)
    straddling = [leaf for leaf in manifest["leaves"] if leaf["where"][0] == "packed"
                  and leaf["where"][1] // SHARD != (leaf["where"][1] + leaf["where"][2] - 1) // SHARD]
    assert straddling, "no leaf crosses a shard boundary; the test lost its point"
    out = jaxckpt.restore(tmp_path / "c")
    for a, b in zip(out["w"], tree["w"]):
        assert a.tobytes() == b.tobytes()
    assert out["odd"].tobytes() == tree["odd"].tobytes()
    assert out["tail"].tobytes() == tree["tail"].tobytes()


def test_saves_in_turn_hold_their_own_bytes_and_zero_padding(tmp_path):
    first, second = _tree(1), _tree(2)
    mngr = jaxckpt.CheckpointManager(tmp_path, max_to_keep=None)
    p1 = mngr.save(first)
    p2 = mngr.save(second)
    mngr.close()
    for path, want in ((p1, first), (p2, second)):
        out = jaxckpt.restore(path)
        for a, b in zip(out["w"], want["w"]):
            assert a.tobytes() == b.tobytes()
        assert out["odd"].tobytes() == want["odd"].tobytes()
    # Padding between leaves is written as zeros, never as whatever memory held.
    manifest = _reader.read_manifest(p2)
    odd = next(leaf for leaf in manifest["leaves"] if leaf["path"] == [["k", "odd"]])
    _, off, nbytes = odd["where"]
    align = jaxckpt._format.manifest.PACK_ALIGN
    end = -(-(off + nbytes) // align) * align
    spec = _arrays.array_spec({"driver": "file",
                               "path": os.path.join(p2, manifest["data"], "packed")},
                              [manifest["packed_nbytes"]], [manifest["packed_shard"]],
                              [manifest["packed_chunk"]], create=False)
    store = _arrays.open_array(spec).result()
    assert not store[off + nbytes : end].read().result().any()


def test_damage_in_one_shard_file_names_its_leaves_only(tmp_path):
    tree = _tree(3)
    path = tmp_path / "c"
    jaxckpt.save(path, tree)
    manifest = _reader.read_manifest(str(path))
    files = _shard_files(path)
    third = next(f for f in files if os.path.basename(f) == "2")
    with open(third, "r+b") as f:
        f.seek(10)
        b = f.read(1)
        f.seek(10)
        f.write(bytes([b[0] ^ 0x01]))
    # The flipped byte lies in the first inner chunk of shard 2.
    lo, hi = 2 * SHARD, 2 * SHARD + manifest["packed_chunk"]
    hit = {leaf["path"][-1][1] for leaf in manifest["leaves"]
           if leaf["path"][0][1] == "w" and leaf["where"][1] < hi
           and leaf["where"][1] + leaf["where"][2] > lo}
    assert hit
    with pytest.raises(CorruptCheckpointError) as e:
        jaxckpt.verify(path)
    named = {i for i in range(9) if f"['w'][{i}]" in str(e.value)}
    assert named == hit, str(e.value)
    with pytest.raises(CorruptCheckpointError):
        jaxckpt.restore(path)
    spared = min(set(range(9)) - hit)
    ok = jaxckpt.restore(path, {"w": {spared: np.zeros_like(tree["w"][spared])},
                                "tail": np.zeros(5, np.uint8)}, partial=True)
    assert ok["w"][spared].tobytes() == tree["w"][spared].tobytes()
    assert ok["tail"].tobytes() == tree["tail"].tobytes()


def test_unknown_format_version_asks_for_an_upgrade(tmp_path):
    from jaxckpt._format import manifest as _format

    jaxckpt.save(tmp_path / "c", {"x": np.arange(3)})
    manifest = _reader.read_manifest(str(tmp_path / "c"))
    manifest["version"] = 99
    with open(tmp_path / "c" / _format.MANIFEST, "wb") as f:
        f.write(_format.pack_manifest(manifest))
    with pytest.raises(CorruptCheckpointError, match="version 99 .*reads versions 1, 2.*upgrade"):
        jaxckpt.restore(tmp_path / "c")


def test_a_tiny_packed_array_lives_in_the_manifest(tmp_path):
    from jaxckpt._format import manifest as _format

    tree = {f"v{i}": np.full(256, i, np.float32) for i in range(10)}  # 10 KiB
    tree["k"] = np.arange(3, dtype=np.int8)
    path = tmp_path / "c"
    jaxckpt.save(path, tree)
    assert sorted(os.listdir(path)) == [_format.MANIFEST]  # no packed/ files, no a/
    jaxckpt.verify(path)
    out = jaxckpt.restore(path)
    for key, value in tree.items():
        assert out[key].tobytes() == value.tobytes() and out[key].dtype == value.dtype
    data = bytearray((path / _format.MANIFEST).read_bytes())
    data[-100] ^= 0x01  # inside the packed bytes at the end of the manifest
    (path / _format.MANIFEST).write_bytes(bytes(data))
    for call in (jaxckpt.verify, jaxckpt.restore):
        with pytest.raises(CorruptCheckpointError, match="checksum"):
            call(path)
