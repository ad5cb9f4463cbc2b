"""Checkpoints on object stores: a real S3-compatible server on 127.0.0.1, and memory://."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointNotFoundError, CorruptCheckpointError
from jaxckpt._commit import atomic as _commit
from jaxckpt._commit import state_file as _state_file

sys.path.insert(0, os.path.dirname(__file__))
from _crash_worker import state as crash_state  # noqa: E402
from _reliability import check_sound  # noqa: E402
from _s3_server import s3, s3_server  # noqa: E402,F401

# Slow (a local S3 server process): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow


def _tree(i: int) -> dict:
    return {
        "big": np.full((1024, 1024), i, np.float32),  # 4 MiB: an array of its own
        "small": {f"p{j}": np.arange(j + 1, dtype=np.int32) * i for j in range(20)},
        "jax": jnp.arange(12.0).reshape(3, 4) * i,
        "step": i,
        "name": f"run-{i}",
    }


def _same(out: dict, i: int) -> None:
    want = _tree(i)
    assert np.array_equal(out["big"], want["big"])
    for k, v in want["small"].items():
        assert out["small"][k].tobytes() == v.tobytes()
    assert np.array_equal(np.asarray(out["jax"]), np.asarray(want["jax"]))
    assert out["step"] == i and out["name"] == f"run-{i}"


def test_save_restore_metadata_verify_on_s3(s3):
    server, bucket = s3
    url = f"s3://{bucket}/runs/one"
    assert jaxckpt.save(url, _tree(3), metadata={"note": "s3"}) == url
    _same(jaxckpt.restore(url), 3)
    target = jax.tree.map(lambda x: x, _tree(0))
    _same(jaxckpt.restore(url, target), 3)
    meta = jaxckpt.metadata(url)
    assert meta["big"].shape == (1024, 1024) and meta["big"].dtype == np.float32
    assert jaxckpt.user_metadata(url) == {"note": "s3"}
    jaxckpt.verify(url)
    keys = server.keys(bucket, "runs/one/")
    assert "runs/one/_CHECKPOINT" in keys
    # The arrays live under the data prefix the manifest names.
    assert all(k == "runs/one/_CHECKPOINT" or k.startswith("runs/one/d-") for k in keys), keys
    with pytest.raises(FileExistsError):
        jaxckpt.save(url, _tree(4))
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        jaxckpt.restore(f"s3://{bucket}/runs/none")


def test_manager_on_s3_retention_state_file_and_restart(s3):
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        paths = [m.save(_tree(i)) for i in range(1, 5)]
        assert paths == [f"{d}/ckpt-{i}" for i in range(1, 5)]
        m.wait_until_finished()
        assert m.checkpoints == paths[-2:]
        assert m.latest_checkpoint == paths[-1]
        _same(m.restore(), 4)
    assert jaxckpt.latest_checkpoint(d) == f"{d}/ckpt-4"
    st = _state_file.read(d)
    assert st.model_checkpoint_path == "ckpt-4"
    assert st.all_model_checkpoint_paths == ["ckpt-3", "ckpt-4"]
    # Deleted checkpoints left nothing behind.
    assert {k.split("/")[1] for k in server.keys(bucket, "exp/")} == {
        "checkpoint", "ckpt-3", "ckpt-4"}
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        assert m.checkpoints == [f"{d}/ckpt-3", f"{d}/ckpt-4"]
        assert m.save(_tree(5)) == f"{d}/ckpt-5"
        m.save(_tree(50), checkpoint_number=5)  # replaces it: new data, one manifest PUT
        m.wait_until_finished()
        _same(m.restore(5), 50)
        assert m.checkpoints == [f"{d}/ckpt-4", f"{d}/ckpt-5"]
    data = {k.split("/")[2] for k in server.keys(bucket, "exp/ckpt-5/")} - {"_CHECKPOINT"}
    assert len(data) == 1 and data.pop().startswith("d-")  # the old data is gone
    jaxckpt.verify(f"{d}/ckpt-5")


def test_leftovers_on_s3_are_ignored_then_swept(s3):
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d) as m:
        m.save(_tree(1))
    client = server.client()
    # An interrupted save of ckpt-2 (no manifest) and stray data beside ckpt-1's.
    client.put_object(Bucket=bucket, Key="exp/ckpt-2/d-0123456789ab/a/0/c/0", Body=b"x")
    client.put_object(Bucket=bucket, Key="exp/ckpt-1/d-ffffffffffff/packed/c/0", Body=b"y")
    assert jaxckpt.latest_checkpoint(d) == f"{d}/ckpt-1"
    with pytest.raises(CheckpointNotFoundError, match="not a committed checkpoint"):
        jaxckpt.restore(f"{d}/ckpt-2")
    with jaxckpt.CheckpointManager(d) as m:
        keys = server.keys(bucket, "exp/")
        assert not [k for k in keys if k.startswith("exp/ckpt-2/")]
        assert not [k for k in keys if "d-ffffffffffff" in k]
        _same(m.restore(), 1)
        # The interrupted ckpt-2 was past its lease (an old-style token), so the
        # sweep at open removed it before numbering: number 2 is free again.
        assert m.save(_tree(2)) == f"{d}/ckpt-2"


def test_damaged_object_is_caught(s3):
    server, bucket = s3
    url = f"s3://{bucket}/c"
    jaxckpt.save(url, _tree(2))
    client = server.client()
    key = next(k for k in server.keys(bucket, "c/") if "/a/" in k)
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[100] ^= 0x40
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(CorruptCheckpointError, match=r"\['big'\]"):
        jaxckpt.verify(url)
    with pytest.raises(CorruptCheckpointError, match=r"\['big'\]"):
        jaxckpt.restore(url)
    client.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(CorruptCheckpointError, match=r"\['big'\]"):
        jaxckpt.restore(url)


def test_writer_killed_mid_save_on_s3_leaves_previous_checkpoint_latest(s3):
    server, bucket = s3
    d = f"s3://{bucket}/crash"
    worker = os.path.join(os.path.dirname(__file__), "_crash_worker.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    rng = random.Random(7)
    last = 0
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, worker, d, "1000"], stdout=subprocess.PIPE,
                                text=True, env=env, stderr=subprocess.DEVNULL)
        want_saves, saves = rng.randint(2, 4), 0
        for line in proc.stdout:
            if line.startswith("saved"):
                saves += 1
                if saves >= want_saves:
                    break
        time.sleep(rng.uniform(0.0, 0.3))  # lands the kill somewhere in a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        i = check_sound(d, crash_state)
        assert i >= last
        last = i
    assert last > 0, "no save committed before the kills"
    # The next number follows the newest committed one: an interrupted save's
    # prefix (no manifest) holds nothing a reader uses, and the new save writes
    # its own data prefix beside it.
    after = last + 1
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        # What a killed save left is young: kept for the lease (a save in flight
        # elsewhere looks the same), ignored by readers.
        for name in {k.split("/")[1] for k in server.keys(bucket, "crash/")} - {"checkpoint"}:
            if not server.keys(bucket, f"crash/{name}/_CHECKPOINT"):
                tokens = {k.split("/")[2][2:] for k in server.keys(bucket, f"crash/{name}/")}
                assert all(_commit.token_age_s(t, time.time()) < _commit.LEASE_S
                           for t in tokens), (name, tokens)
        assert m.save(crash_state(last + 1)) == f"{d}/ckpt-{after}"
    assert check_sound(d, crash_state) == after


def test_cli_ls_show_verify_on_s3(s3, capsys):
    from jaxckpt import cli

    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        for i in range(1, 4):
            m.save(_tree(i))
    server.client().put_object(Bucket=bucket, Key="exp/ckpt-9/d-0123456789ab/packed/c/0",
                               Body=b"interrupted")
    capsys.readouterr()
    assert cli.main(["ls", d]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("ckpt-")}
    assert set(rows) == {"ckpt-2", "ckpt-3", "ckpt-9"}, out
    assert "latest" in rows["ckpt-3"] and "active" in rows["ckpt-2"]
    assert "uncommitted" in rows["ckpt-9"]
    assert cli.main(["show", f"{d}/ckpt-3", "--json"]) == 0
    assert "['big']" in capsys.readouterr().out
    assert cli.main(["verify", d]) == 0
    out = capsys.readouterr().out
    assert "OK ckpt-2" in out and "OK ckpt-3" in out and "skipped ckpt-9" in out, out
    client = server.client()
    key = next(k for k in server.keys(bucket, "exp/ckpt-2/") if "/a/" in k)
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[50] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    assert cli.main(["verify", d]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED ckpt-2" in out and "['big']" in out and "OK ckpt-3" in out, out


def test_memory_urls_with_a_manager():
    d = f"memory://jaxckpt-tests/{uuid.uuid4().hex}"
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        m.save(_tree(1))
        m.save(_tree(2))
        m.wait_until_finished()
        assert m.checkpoints == [f"{d}/ckpt-2"]
        assert not jaxckpt._commit.atomic.is_committed(f"{d}/ckpt-1")
    assert jaxckpt.latest_checkpoint(d) == f"{d}/ckpt-2"
    _same(jaxckpt.restore(f"{d}/ckpt-2"), 2)


@pytest.mark.parametrize("url,match", [
    ("s3://", "no bucket"),
    ("s3:///prefix", "no bucket"),
    ("http://example.com/x", "read-only"),
    ("ftp://host/x", "unknown URL scheme"),
    ("s3://bucket/a/../b", r"'\.\.'"),
    ("s3://bucket/p?versionId=3", "no query"),
])
def test_bad_urls_are_refused_before_anything_is_written(url, match):
    with pytest.raises(ValueError, match=match):
        jaxckpt.save(url, {"a": np.ones(3)})
    with pytest.raises(ValueError, match=match):
        jaxckpt.CheckpointManager(url)
