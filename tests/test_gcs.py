"""Checkpoints on GCS: a real GCS-compatible server on 127.0.0.1 (tests/_gcs_server.py),
reached through tensorstore's ``gcs`` driver the way a user reaches an emulator or a
private endpoint (``STORAGE_EMULATOR_HOST``)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointNotFoundError, CorruptCheckpointError
from jaxckpt._commit import atomic as _commit
from jaxckpt._commit import state_file as _state_file
from jaxckpt._storage import context as _context

sys.path.insert(0, os.path.dirname(__file__))
from _crash_worker import state as crash_state  # noqa: E402
from _gcs_server import ENV_KEYS, gcs, gcs_server  # noqa: E402,F401
from _reliability import assert_equal_trees, check_sound  # noqa: E402


def _tree(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "big": rng.standard_normal((512, 1024), np.float32),  # 2 MiB: an array of its own
        "bf16": rng.standard_normal((64, 33)).astype(ml_dtypes.bfloat16),
        "i8": rng.integers(-128, 127, (1000,), dtype=np.int8),
        "u64": rng.integers(0, 2**63, (17,), dtype=np.uint64),
        "c64": (rng.standard_normal(9) + 1j * rng.standard_normal(9)).astype(np.complex64),
        "mask": rng.random((5, 7)) > 0.5,
        "jax": jnp.arange(12.0).reshape(3, 4) * i,
        "step": i,
        "name": f"run-{i}",
    }


def _same(out: dict, i: int) -> None:
    want = _tree(i)
    want["jax"] = np.asarray(want["jax"])
    out = {**out, "jax": np.asarray(out["jax"])}
    assert_equal_trees(out, want)


@pytest.mark.slow
def test_save_restore_bit_exact_metadata_verify_on_gcs(gcs):
    server, bucket = gcs
    url = f"gs://{bucket}/runs/one"
    assert jaxckpt.save(url, _tree(3), metadata={"note": "gcs"}) == url
    _same(jaxckpt.restore(url), 3)
    meta = jaxckpt.metadata(url)
    assert meta["bf16"].dtype == ml_dtypes.bfloat16 and meta["big"].shape == (512, 1024)
    assert jaxckpt.user_metadata(url) == {"note": "gcs"}
    jaxckpt.verify(url)
    keys = server.keys(bucket, "runs/one/")
    assert "runs/one/_CHECKPOINT" in keys
    assert all(k == "runs/one/_CHECKPOINT" or k.startswith("runs/one/d-") for k in keys), keys
    with pytest.raises(FileExistsError):
        jaxckpt.save(url, _tree(4))
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        jaxckpt.restore(f"gs://{bucket}/runs/none")
    # One flipped byte in an array's object is caught by verify and restore.
    key = next(k for k in keys if "/a/" in k)
    body = bytearray(server.get(bucket, key))
    body[len(body) // 2] ^= 0x40
    server.put(bucket, key, bytes(body))
    with pytest.raises(CorruptCheckpointError):
        jaxckpt.verify(url)
    with pytest.raises(CorruptCheckpointError):
        jaxckpt.restore(url)


@pytest.mark.slow
def test_manager_on_gcs_retention_and_restart(gcs):
    server, bucket = gcs
    d = f"gs://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        paths = [m.save(_tree(i)) for i in range(1, 5)]
        assert paths == [f"{d}/ckpt-{i}" for i in range(1, 5)]
        m.wait_until_finished()
        assert m.checkpoints == paths[-2:]
        _same(m.restore(), 4)
    st = _state_file.read(d)
    assert st.model_checkpoint_path == "ckpt-4"
    assert st.all_model_checkpoint_paths == ["ckpt-3", "ckpt-4"]
    # Retention deleted the old checkpoints' objects, all of them.
    assert {k.split("/")[1] for k in server.keys(bucket, "exp/")} == {
        "checkpoint", "ckpt-3", "ckpt-4"}
    # A restarted job (a new manager on the same URL) sees the same checkpoints
    # and goes on numbering and retaining from them.
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        assert m.checkpoints == [f"{d}/ckpt-3", f"{d}/ckpt-4"]
        assert m.latest_checkpoint == f"{d}/ckpt-4"
        _same(m.restore(3), 3)
        assert m.save(_tree(5)) == f"{d}/ckpt-5"
        m.wait_until_finished()
        assert m.checkpoints == [f"{d}/ckpt-4", f"{d}/ckpt-5"]
    assert jaxckpt.latest_checkpoint(d) == f"{d}/ckpt-5"
    _same(jaxckpt.restore(f"{d}/ckpt-5"), 5)


@pytest.mark.slow
def test_cli_ls_show_verify_on_gcs(gcs, capsys):
    from jaxckpt import cli

    server, bucket = gcs
    d = f"gs://{bucket}/exp"
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        for i in range(1, 4):
            m.save(_tree(i))
    server.put(bucket, "exp/ckpt-9/d-0123456789ab/packed/c/0", b"interrupted")
    capsys.readouterr()
    assert cli.main(["ls", d]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("ckpt-")}
    assert set(rows) == {"ckpt-2", "ckpt-3", "ckpt-9"}, out
    assert "latest" in rows["ckpt-3"] and "uncommitted" in rows["ckpt-9"]
    assert cli.main(["show", f"{d}/ckpt-3", "--json"]) == 0
    assert "['bf16']" in capsys.readouterr().out
    assert cli.main(["verify", d]) == 0
    out = capsys.readouterr().out
    assert "OK ckpt-2" in out and "OK ckpt-3" in out and "skipped ckpt-9" in out, out
    key = next(k for k in server.keys(bucket, "exp/ckpt-2/") if "/a/" in k)
    body = bytearray(server.get(bucket, key))
    body[50] ^= 0x01
    server.put(bucket, key, bytes(body))
    assert cli.main(["verify", d]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED ckpt-2" in out and "OK ckpt-3" in out, out


@pytest.mark.slow
def test_writer_killed_mid_save_on_gcs_leaves_previous_checkpoint_latest(gcs):
    server, bucket = gcs
    d = f"gs://{bucket}/crash"
    worker = os.path.join(os.path.dirname(__file__), "_crash_worker.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # STORAGE_EMULATOR_HOST included
    env.pop("XLA_FLAGS", None)
    rng = random.Random(11)
    proc = subprocess.Popen([sys.executable, worker, d, "1000"], stdout=subprocess.PIPE,
                            text=True, env=env, stderr=subprocess.DEVNULL)
    try:
        want_saves, saves = rng.randint(2, 3), 0
        for line in proc.stdout:
            if line.startswith("saved"):
                saves += 1
                if saves >= want_saves:
                    break
        time.sleep(rng.uniform(0.0, 0.3))  # lands the kill somewhere in a save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    last = check_sound(d, crash_state)
    assert last > 0, "no save committed before the kill"
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        # What the killed save (or a retirement it cut short) left has no
        # manifest: readers ignore it, and it is young, so the manager keeps it
        # for the lease instead of sweeping it.
        assert m.latest_checkpoint == f"{d}/ckpt-{last}"
        for name in {k.split("/")[1] for k in server.keys(bucket, "crash/")} - {"checkpoint"}:
            if not server.keys(bucket, f"crash/{name}/_CHECKPOINT"):
                tokens = {k.split("/")[2][2:] for k in server.keys(bucket, f"crash/{name}/")}
                assert all(_commit.token_age_s(t, time.time()) < _commit.LEASE_S
                           for t in tokens), (name, tokens)
        assert m.save(crash_state(last + 1)) == f"{d}/ckpt-{last + 1}"
    assert check_sound(d, crash_state) == last + 1


@pytest.mark.slow
def test_readme_emulator_snippet_runs(gcs):
    server, bucket = gcs
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "README.md")
    with open(readme, encoding="utf-8") as f:
        blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.M | re.S)
    (code,) = [b for b in blocks if 'os.environ["STORAGE_EMULATOR_HOST"]' in b]
    code = code.replace("localhost:4443", server.env["STORAGE_EMULATOR_HOST"])
    exec(compile(code.replace("test-bucket", bucket), "README.md", "exec"),
         {"np": np, "jaxckpt": jaxckpt})
    assert {k.split("/")[2] for k in server.keys(bucket, "runs/exp1/")} == {
        "checkpoint", "ckpt-2", "ckpt-3"}


@pytest.mark.parametrize("value, want", [
    ("127.0.0.1:9023", "http://127.0.0.1:9023"),
    ("http://localhost:4443/", "http://localhost:4443"),
    ("https://gcs.internal", "https://gcs.internal"),
])
def test_storage_emulator_host_sets_tensorstore_endpoint(monkeypatch, value, want):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", value)
    _context.point_gcs_at_emulator()
    assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == want
    assert os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"]  # no real credentials sent there


def test_tensorstore_endpoint_set_by_the_user_wins(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:1")
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", "http://proxy.internal:8080")
    _context.point_gcs_at_emulator()
    assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == "http://proxy.internal:8080"
    assert "GOOGLE_AUTH_TOKEN_FOR_TESTING" not in os.environ  # its credentials as usual


@pytest.mark.parametrize("value", ["http://", "ftp://host:1", "host name:1"])
def test_bad_storage_emulator_host_is_refused_before_anything_is_written(monkeypatch, value):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", value)
    with pytest.raises(ValueError, match="STORAGE_EMULATOR_HOST"):
        jaxckpt.save("gs://bucket/x", {"a": np.ones(3)})
    assert "TENSORSTORE_GCS_HTTP_URL" not in os.environ
