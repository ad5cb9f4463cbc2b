"""jaxckpt._commit.atomic, unit by unit: tokens, the commit check, stage/commit/remove.

The crash-safety of the whole protocol (fault points, replaces without
RENAME_EXCHANGE, object stores) is tested end to end in test_commit_protocol.py.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from jaxckpt._commit import atomic as _commit, sweep as _sweep
from jaxckpt._format import manifest as _format, names as _names
from jaxckpt._storage import location as _location


def test_new_token_carries_its_time():
    token = _commit.new_token()
    assert len(token) == 20 and int(token, 16) >= 0 and token == token.lower()
    assert 0 <= _commit.token_age_s(token, time.time()) < 3600
    assert _commit.new_token() != token


@pytest.mark.parametrize("token, age", [
    ("00000064" + "0" * 12, 900.0),  # made at t=100, now t=1000
    ("abc123", float("inf")),  # an older token, without a time
    ("ffffffff" + "0" * 12, float("inf")),  # implausibly far ahead
])
def test_token_age(token, age):
    assert _commit.token_age_s(token, 1000.0) == age


def test_is_committed_reads_only_the_magic(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / _format.MANIFEST).write_bytes(_format.MAGIC + b"anything")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / _format.MANIFEST).write_bytes(b"not a manifest")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / _format.MANIFEST)
    (tmp_path / "empty").mkdir()
    assert _commit.is_committed(tmp_path / "good")
    for name in ("bad", "fifo", "empty", "missing"):
        assert not _commit.is_committed(tmp_path / name), name


def _manifest(data_key: str, value: bytes) -> bytes:
    """A valid manifest holding one Python leaf and naming ``data_key``."""
    return _format.pack_manifest({
        "version": _format.VERSION, "created": 0.0, "metadata": None, "packed_nbytes": 0,
        "packed_shard": 1 << 20, "packed_chunk": 1 << 18, "data": data_key,
        "leaves": [{"path": [["k", "v"]], "kind": "py", "value": ["bytes", value]}]})


def _stage_and_commit(final, payload: bytes, *, replace: bool = False):
    token = _commit.new_token()
    staging = _commit.stage(final, token, create=True)
    if final.is_local:
        os.makedirs(staging.arrays.path)
    staging.arrays.write("bytes", payload)
    _commit.seal_part(staging)
    _commit.commit(staging, _manifest(staging.data_key, payload), replace=replace)
    return staging


def test_local_stage_commit_replace_and_remove(tmp_path):
    final = _location.locate(tmp_path / "ckpt-1")
    staging = _stage_and_commit(final, b"one")
    assert staging.data.name.startswith(".ckpt-1.tmp-") and staging.data_key.startswith("d-")
    assert _commit.is_committed(final) and sorted(os.listdir(tmp_path)) == ["ckpt-1"]
    assert (tmp_path / "ckpt-1" / staging.data_key / "bytes").read_bytes() == b"one"

    with pytest.raises(FileExistsError):
        _stage_and_commit(final, b"two")
    _sweep.sweep_leftovers(tmp_path, "ckpt")  # the refused save's temporary
    second = _stage_and_commit(final, b"two", replace=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-1"]  # the old one is gone, no leftovers
    assert os.listdir(tmp_path / "ckpt-1" / second.data_key) == ["bytes"]
    assert not (tmp_path / "ckpt-1" / staging.data_key).exists()

    _commit.remove(final)
    assert os.listdir(tmp_path) == []
    _commit.remove(final)  # already gone: fine


def test_abort_removes_what_was_staged(tmp_path):
    staging = _commit.stage(_location.locate(tmp_path / "ckpt-1"), _commit.new_token(),
                            create=True)
    _commit.abort(staging)
    assert os.listdir(tmp_path) == []


def test_remove_unlinks_a_link_and_leaves_its_target(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f").write_text("keep")
    os.symlink(tmp_path / "elsewhere", tmp_path / "ckpt-1")
    _commit.remove(str(tmp_path / "ckpt-1"))
    assert not os.path.lexists(tmp_path / "ckpt-1")
    assert (tmp_path / "elsewhere" / "f").read_text() == "keep"


def test_delete_entry(tmp_path):
    assert _commit.delete_entry(str(tmp_path / "missing")) is None
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "f").write_text("x")
    assert _commit.delete_entry(str(tmp_path / "d")) is None
    assert _commit.delete_entry(str(tmp_path / "f")) is None
    assert os.listdir(tmp_path) == []


def test_object_store_stage_commit_and_remove():
    final = _location.locate(f"memory://jaxckpt-tests/{uuid.uuid4().hex}/ckpt-1")
    staging = _stage_and_commit(final, b"one")
    assert staging.data == final.join(staging.data_key)  # no rename: data under its token
    assert _commit.is_committed(final)
    assert final.read(_format.MANIFEST) == _manifest(staging.data_key, b"one")
    with pytest.raises(FileExistsError):
        _stage_and_commit(final, b"two")
    _commit.remove(final)
    assert not _commit.is_committed(final) and not final.exists()
