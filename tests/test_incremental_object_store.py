"""Incremental saves on object stores (issue 16): a manifest references the
objects of an earlier checkpoint (format 4's ``shared``); retention and the
sweep keep every object a committed manifest references, and collect it with
its last referrer. On a real S3-compatible server (tests/_s3_server.py) and
memory:// (the bad-input table, which needs no server)."""

from __future__ import annotations

import os
import sys
import time
import uuid

import numpy as np
import pytest

import jaxckpt
from jaxckpt import CorruptCheckpointError
from jaxckpt import _faults
from jaxckpt._commit import atomic as _commit
from jaxckpt._format import manifest as _format
from jaxckpt._read import reader as _reader
from jaxckpt._storage import location as _location

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY  # noqa: E402
from _s3_server import s3, s3_server  # noqa: E402,F401

BASE = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)  # 4 MiB, frozen


def _tree(i: int, base: np.ndarray = BASE) -> dict:
    return {
        "base": base,
        "adapter": np.full((1024, 1024), i, np.float32),  # 4 MiB, changes every save
        "small": {f"p{j}": np.arange(j + 1, dtype=np.int32) * i for j in range(8)},
        "step": i,
    }


def _same(out: dict, want: dict) -> None:
    assert out["base"].tobytes() == want["base"].tobytes()
    assert out["adapter"].tobytes() == want["adapter"].tobytes()
    for k, v in want["small"].items():
        assert out["small"][k].tobytes() == v.tobytes()
    assert out["step"] == want["step"]


def _base_file(manifest: dict) -> str:
    """The base leaf's (single) file inside the data."""
    leaf = next(x for x in manifest["leaves"] if x["path"] == [["k", "base"]])
    return f"{_format.ARRAYS}/{_format.array_name(leaf)}/c/0/0/0"


slow = pytest.mark.slow  # a local S3 server process


@slow
def test_second_save_references_the_frozen_leaf_and_restores_bit_exact(s3):
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=3) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        first = m.last_save_stats
        m.save(_tree(2))
        m.wait_until_finished()
        second = m.last_save_stats
    assert first.bytes_shared == 0
    assert second.bytes_shared == BASE.nbytes
    assert second.bytes_written <= first.bytes_written - BASE.nbytes
    one, two = (_reader.read_manifest(f"{d}/ckpt-{i}") for i in (1, 2))
    assert one["version"] == _format.VERSION and "shared" not in one
    rel = _base_file(two)
    assert two["version"] == _format.SHARED_VERSION
    assert two["shared"] == {rel: f"ckpt-1/{one['data']}/{_base_file(one)}"}
    # The second save PUT no object of the base leaf.
    own = server.keys(bucket, "exp/ckpt-2/")
    assert not [k for k in own if k.endswith(rel)], own
    assert f"exp/ckpt-1/{one['data']}/{_base_file(one)}" in server.keys(bucket, "exp/ckpt-1/")
    for i in (1, 2):
        _same(jaxckpt.restore(f"{d}/ckpt-{i}"), _tree(i))
        jaxckpt.verify(f"{d}/ckpt-{i}")
    # A partial read (one leaf, a slice) goes through the same layered store.
    meta = jaxckpt.metadata(f"{d}/ckpt-2")
    assert meta["base"].shape == BASE.shape


@slow
def test_retention_keeps_referenced_objects_and_collects_them_with_the_last_referrer(s3):
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        one = _reader.read_manifest(f"{d}/ckpt-1")
        kept = f"exp/ckpt-1/{one['data']}/{_base_file(one)}"
        m.save(_tree(2))
        m.wait_until_finished()
        # ckpt-1 is deleted (no manifest), but the object ckpt-2 references stays.
        assert m.checkpoints == [f"{d}/ckpt-2"]
        assert server.keys(bucket, "exp/ckpt-1/") == [kept]
        _same(jaxckpt.restore(f"{d}/ckpt-2"), _tree(2))
        m.save(_tree(3))
        m.wait_until_finished()
        # ckpt-3 references the original object, not ckpt-2's reference to it:
        # nothing of ckpt-2 is left.
        three = _reader.read_manifest(f"{d}/ckpt-3")
        assert list(three["shared"].values()) == [kept.split("/", 1)[1]]
        assert server.keys(bucket, "exp/ckpt-2/") == []
        assert server.keys(bucket, "exp/ckpt-1/") == [kept]
        # Whatever the data prefix's age, the sweep's rule keeps a referenced object.
        ckpt1 = _location.locate(f"{d}/ckpt-1")
        far = time.time() + 10 * _commit.LEASE_S
        assert _commit.drop_unnamed_data(ckpt1, None, now=far) == [one["data"]]
        assert server.keys(bucket, "exp/ckpt-1/") == [kept]
    # A new manager sweeps at open: nothing referenced goes.
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        assert server.keys(bucket, "exp/ckpt-1/") == [kept]
        _same(m.restore(), _tree(3))
        # The base changes: ckpt-4 writes its own; deleting ckpt-3, the last
        # referrer, collects ckpt-1's object too.
        new_base = BASE + 1
        m.save(_tree(4, new_base))
        m.wait_until_finished()
        assert "shared" not in _reader.read_manifest(f"{d}/ckpt-4")
    keys = server.keys(bucket, "exp/")
    assert not [k for k in keys if k.split("/")[1] in ("ckpt-1", "ckpt-2", "ckpt-3")], keys
    _same(jaxckpt.restore(f"{d}/ckpt-4"), _tree(4, new_base))


@slow
def test_a_failure_between_the_deletion_steps_leaves_references_intact(s3):
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        one = _reader.read_manifest(f"{d}/ckpt-1")
        before = server.keys(bucket, "exp/ckpt-1/")
        # Retention's deletion of ckpt-1 fails once its manifest is gone.
        with _faults.armed("commit.remove.unlisted", "raise"):
            m.save(_tree(2))
            m.wait_until_finished()
        assert server.keys(bucket, "exp/ckpt-1/") == [k for k in before if "_CHECKPOINT" not in k]
        _same(jaxckpt.restore(f"{d}/ckpt-2"), _tree(2))
    # The next manager finishes the marked deletion: only the referenced object stays.
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        assert server.keys(bucket, "exp/ckpt-1/") == [
            f"exp/ckpt-1/{one['data']}/{_base_file(one)}"]
        _same(m.restore(), _tree(2))
    jaxckpt.verify(f"{d}/ckpt-2")


@slow
def test_cli_ls_show_verify_and_a_hand_deleted_referenced_object(s3, capsys):
    from jaxckpt import cli

    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        for i in (1, 2, 3):
            m.save(_tree(i))
    capsys.readouterr()
    assert cli.main(["ls", d]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("ckpt-")}
    assert set(rows) == {"ckpt-1", "ckpt-3"}, out
    assert "shared" in out.splitlines()[1] and "references ckpt-1" in rows["ckpt-3"], out
    assert "referenced by ckpt-3" in rows["ckpt-1"], out
    assert "4.0 MiB" in rows["ckpt-3"].split("latest")[0].split("MiB", 1)[1], out
    assert "on disk: 8.0 MiB" in out, out  # ckpt-3's adapter + the base, once
    assert cli.main(["show", f"{d}/ckpt-3"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("['base']"))
    assert "shared" in line and "version 4" in out, out
    assert cli.main(["verify", d]) == 0
    assert "OK ckpt-3" in capsys.readouterr().out
    # A hand deletion of the referenced prefix: ckpt-3 reports the leaf damaged.
    server.client().delete_object(
        Bucket=bucket, Key=next(k for k in server.keys(bucket, "exp/ckpt-1/")))
    TALLY["corruptions tried"] += 1
    with pytest.raises(CorruptCheckpointError, match=r"\['base'\]"):
        jaxckpt.verify(f"{d}/ckpt-3")
    with pytest.raises(CorruptCheckpointError, match=r"ckpt-3: leaf \['base'\]"):
        jaxckpt.restore(f"{d}/ckpt-3")
    TALLY["corruptions caught"] += 1
    assert cli.main(["verify", d]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED ckpt-3" in out and "['base']" in out, out


@slow
def test_a_manager_directory_copied_to_a_local_disk_still_reads(s3, tmp_path):
    """References are relative to the manager's directory: a copy of it
    (``aws s3 sync``) reads the same."""
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        m.save(_tree(1))
        m.save(_tree(2))
    client = server.client()
    for key in server.keys(bucket, "exp/"):
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    local = str(tmp_path / "exp" / "ckpt-2")
    _same(jaxckpt.restore(local), _tree(2))
    jaxckpt.verify(local)


def _saved_with_references() -> tuple[str, dict]:
    d = f"memory://jaxckpt-tests/{uuid.uuid4().hex}"
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        m.save(_tree(1))
        m.save(_tree(2))
    manifest = _reader.read_manifest(f"{d}/ckpt-2")
    assert manifest.get("shared")
    return f"{d}/ckpt-2", manifest


def test_memory_store_shares_and_restores():
    path, manifest = _saved_with_references()
    _same(jaxckpt.restore(path), _tree(2))
    jaxckpt.verify(path)


def _bad_shared(manifest: dict) -> list:
    rel = _base_file(manifest)
    source = manifest["shared"][rel]
    owner, data, tail = source.split("/", 2)
    return [
        ["not", "a", "map"],
        {rel: 5},
        {rel: "../" + source},
        {rel: "/" + source},
        {rel: f"s3://bucket/{source}"},
        {rel: f"{owner}/{data}/../../x"},
        {rel: f"{owner}/x-{data}/{tail}"},
        {rel: f"{owner}/{data}/packed/c/0"},  # a packed file for an array's
        {rel: f"nonumber/{data}/{tail}"},
        {"a/999/c/0/0/0": source},  # no such array among the leaves
        {rel.replace("c/0/0/0", "c/7/0/0"): source},  # past the leaf's chunk grid
        {rel.replace("c/0/0/0", "c/0/0"): source},  # the wrong rank
        {"packed/c/0": f"{owner}/{data}/packed/c/0"},  # the packed array is inline
        {"../" + rel: source},
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_shared_references_are_refused(case):
    path, manifest = _saved_with_references()
    bad = dict(manifest, shared=_bad_shared(manifest)[case])
    where = _location.locate(path)
    where.write(_format.MANIFEST, _format.pack_manifest(bad))
    TALLY["bad inputs tried"] += 1
    for call in (jaxckpt.restore, jaxckpt.metadata, jaxckpt.verify):
        with pytest.raises(CorruptCheckpointError, match="field shared"):
            call(path)
    TALLY["bad inputs refused"] += 1


@slow
def test_saving_a_referenced_number_again_keeps_what_others_reference(s3):
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=3) as m:
        m.save(_tree(1), checkpoint_number=1)
        m.save(_tree(2), checkpoint_number=2)  # references ckpt-1's base object
        m.wait_until_finished()
        two = _reader.read_manifest(f"{d}/ckpt-2")
        m.save(_tree(5), checkpoint_number=1)  # replaces ckpt-1: its old data goes...
        m.wait_until_finished()
        keys = server.keys(bucket, "exp/ckpt-1/")
        # ... except the object ckpt-2 references.
        assert f"exp/{two['shared'][_base_file(two)]}" in keys, keys
        for number, i in ((1, 5), (2, 2)):
            _same(jaxckpt.restore(f"{d}/ckpt-{number}"), _tree(i))
            jaxckpt.verify(f"{d}/ckpt-{number}")
