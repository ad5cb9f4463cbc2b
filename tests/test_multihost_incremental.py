"""Incremental saves by several jax.distributed processes (issue 16): each
process decides for the shards it writes, process 0 commits as before.

Two processes x 2 CPU devices save a checkpoint, then the same values again
with one leaf changed: the second checkpoint's files of the unchanged sharded
arrays are hard links of the first's (the same inode, two names), including
the shards process 1 wrote; with ``incremental=False`` none is. Every process
restores both checkpoints bit-exact. On an object store (a local S3 server)
the second manifest references ckpt-1's objects for both processes' shards.
"""

from __future__ import annotations

import os
import sys

import pytest

import jaxckpt
from jaxckpt._format import manifest as _format
from jaxckpt._read import reader as _reader
from jaxckpt._save import units as _units

sys.path.insert(0, os.path.dirname(__file__))
from _s3_server import s3, s3_server  # noqa: E402,F401
from test_multihost import run  # noqa: E402

# Slow (two processes): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow


def _files(checkpoint) -> dict[str, dict[str, os.stat_result]]:
    """Leaf path -> {file under its array's directory: stat} for every large leaf."""
    manifest = _reader.read_manifest(checkpoint)
    data = os.path.join(checkpoint, manifest["data"])
    out = {}
    for leaf in manifest["leaves"]:
        where = leaf.get("where")
        if where and where[0] == "array":
            top = os.path.join(data, "a", where[1])
            out["/".join(str(k) for _, k in leaf["path"])] = {
                os.path.relpath(os.path.join(r, n), top): os.stat(os.path.join(r, n))
                for r, _, names in os.walk(top) for n in names}
    return out


@pytest.mark.parametrize("on", [True, False], ids=["incremental", "full"])
def test_processes_link_the_unchanged_shards_they_write(tmp_path, on):
    d = tmp_path / "run"
    facts = run("incremental", d, nproc=2, devices=2, mesh="4",
                extra_env={i: {"INCREMENTAL": "1" if on else "0"} for i in range(2)})
    for f in facts:
        assert f["shards_checked"] == 16, f  # 4 arrays x 2 local devices x 2 checkpoints
    first, second = _files(str(d / "ckpt-1")), _files(str(d / "ckpt-2"))
    # "big" rows over 4 devices: 4 files, two written by each process.
    assert len(second["params/big"]) == 4, second["params/big"]
    for leaf in ("params/big", "params/grid", "params/small"):
        assert first[leaf].keys() == second[leaf].keys(), leaf
        for rel, st in second[leaf].items():
            same = st.st_ino == first[leaf][rel].st_ino
            if on and leaf != "params/small":
                assert same and st.st_nlink == 2, (leaf, rel, st.st_nlink)
            else:
                assert not same and st.st_nlink == 1, (leaf, rel, st.st_nlink)
    # The changed leaf's files were written (both processes' shards of it).
    written = {f["process"]: (f["bytes_written"], f["bytes_shared"]) for f in facts}
    if on:
        assert all(shared > 0 for _, shared in written.values()), written
    else:
        assert all(shared == 0 for _, shared in written.values()), written
    for n in (1, 2):
        jaxckpt.verify(d / f"ckpt-{n}")


def test_processes_reference_the_unchanged_shards_they_write_on_s3(s3):
    """On an object store each process references (format 4 ``shared``) the
    objects of ckpt-1 holding its unchanged shards; process 0 merges every
    process's references into the manifest."""
    server, bucket = s3
    d = f"s3://{bucket}/inc"
    facts = run("incremental", d, nproc=2, devices=2, mesh="4",
                extra_env={i: {"INCREMENTAL": "1"} for i in range(2)})
    for f in facts:  # every process restored both checkpoints bit-exact
        assert f["shards_checked"] == 16, f
        assert f["bytes_shared"] > 0 and f["bytes_written"] < f["first_written"], f
    one, two = (_reader.read_manifest(f"{d}/ckpt-{n}") for n in (1, 2))
    assert two["version"] == _format.SHARED_VERSION, two["version"]
    names = {"/".join(str(k) for _, k in leaf["path"]): _format.array_name(leaf)
             for leaf in two["leaves"] if _format.where_kind(leaf) == _format.WHERE_ARRAY}
    files = [rel for _, rel, _ in _units.of_manifest(two)]
    unchanged = {rel for rel in files
                 if rel.split("/")[1] in (names["params/big"], names["params/grid"])}
    # "big": rows over 4 devices, cells 0-1 written by process 0, 2-3 by process 1.
    big = f"{_format.ARRAYS}/{names['params/big']}/c"
    assert {f"{big}/{i}/0/0" for i in range(4)} <= unchanged, unchanged
    assert set(two["shared"]) == unchanged, sorted(two["shared"])
    for rel, source in two["shared"].items():
        assert source == f"ckpt-1/{one['data']}/{rel}", (rel, source)
    # ckpt-2 PUT no object of the files it references.
    own = server.keys(bucket, "inc/ckpt-2/")
    assert not [k for k in own if any(k.endswith("/" + rel) for rel in unchanged)], own
    for n in (1, 2):
        jaxckpt.verify(f"{d}/ckpt-{n}")
