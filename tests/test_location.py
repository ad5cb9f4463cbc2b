"""jaxckpt._storage.location: paths and URLs to directories, bounded reads, the request limits."""

from __future__ import annotations

import os
import uuid

import pytest

from jaxckpt import CorruptCheckpointError
from jaxckpt._storage import context as _context, location as _location
from jaxckpt._storage.location import KvDir, LocalDir


# ---------------------------------------------------------------- locate


@pytest.mark.parametrize("given, want", [
    ("rel/dir", LocalDir(os.path.abspath("rel/dir"))),
    ("/abs/dir", LocalDir("/abs/dir")),
    ("file:///abs/with%20space", LocalDir("/abs/with space")),
    ("C:/x", LocalDir(os.path.abspath("C:/x"))),  # a drive letter, not a scheme
])
def test_locate_local_paths(given, want):
    where = _location.locate(given)
    assert where == want and where.is_local
    assert _location.locate(where) is where


def test_locate_object_store_urls():
    mem = _location.locate("memory://bucket/a/b/")
    assert isinstance(mem, KvDir) and not mem.is_local
    assert str(mem) == "memory://bucket/a/b" and mem.spec == {"driver": "memory",
                                                              "path": "bucket/a/b/"}
    gs = _location.locate("gs://bkt/run")
    assert gs.kvstore() == {"driver": "gcs", "bucket": "bkt", "path": "run/"}
    s3 = _location.locate("s3://bkt")
    assert str(s3) == "s3://bkt" and s3.spec["bucket"] == "bkt" and s3.spec["path"] == ""


@pytest.mark.parametrize("bad, error, match", [
    ("", ValueError, "empty"),
    ("a\0b", ValueError, "NUL"),
    ("https://host/x", ValueError, "read-only"),
    ("ftp://host/x", ValueError, "unknown URL scheme"),
    ("s3://bkt/x?versionId=1", ValueError, "no query"),
    ("s3://bkt/a/../b", ValueError, r"'\.\.'"),
    ("s3:///prefix", ValueError, "no bucket"),
    (b"/bytes/path", TypeError, "str"),
    (3, TypeError, "str or os.PathLike"),
])
def test_locate_refuses(bad, error, match):
    with pytest.raises(error, match=match):
        _location.locate(bad)


def test_join_parent_and_name_agree_for_both_kinds():
    for root in (LocalDir("/r/run"), _location.locate("memory://b/run")):
        child = root.join("ckpt-1", "d-0")
        assert child.name == "d-0"
        assert child.parent() == root.join("ckpt-1") and child.parent().parent() == root
    kv = _location.locate("memory://b/run").join("ckpt-1")
    assert kv.spec["path"] == "b/run/ckpt-1/" and kv.parent().spec["path"] == "b/run/"


# ---------------------------------------------------------------- reads and writes


def test_local_read_write_and_bounds(tmp_path):
    d = LocalDir(str(tmp_path))
    assert d.read("missing") is None and d.read("missing/deeper") is None
    d.write("f", b"0123456789")
    assert d.read("f") == b"0123456789"
    assert d.read("f", 10) == b"0123456789"
    assert d.read("f", 4, head=True) == b"0123"
    with pytest.raises(CorruptCheckpointError, match="larger than the 4 bytes"):
        d.read("f", 4)
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        d.read("sub")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(CorruptCheckpointError, match="FIFO"):
        d.read("fifo")  # never blocks waiting for a writer
    os.symlink(tmp_path / "sub", tmp_path / "link")
    assert d.subdirs() == ["sub"]  # links are not followed
    assert sorted(d.listdir()) == ["f", "fifo", "link", "sub"]
    assert LocalDir(str(tmp_path / "nope")).listdir() == []


def test_memory_read_write_list_delete():
    d = _location.locate(f"memory://jaxckpt-tests/{uuid.uuid4().hex}")
    assert not d.exists() and d.read("k") is None
    d.write("a/x", b"1")
    d.write("b", b"22")
    assert d.exists() and d.read("b") == b"22" and d.read("b", 1, head=True) == b"2"
    with pytest.raises(CorruptCheckpointError, match="larger"):
        d.read("b", 1)
    assert d.listdir() == ["a", "b"] and d.subdirs() == ["a"]
    d.delete("b")
    assert d.read("b") is None and d.keys() == ["a/x"]
    d.delete_all()
    assert not d.exists()


def test_the_local_and_object_store_differences_as_methods(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "g").write_bytes(b"abc")
    os.symlink(tmp_path / "f", tmp_path / "d" / "link")  # links are not followed
    local, file = _location.locate(tmp_path / "d"), _location.locate(tmp_path / "f")
    assert local.is_dir() and not file.is_dir() and local.listing_is_cheap
    assert local.mtime("e/g") == os.stat(tmp_path / "d" / "e" / "g").st_mtime
    with pytest.raises(FileNotFoundError):
        local.mtime("missing")
    assert local.file_bytes() == 3 + len(os.readlink(tmp_path / "d" / "link"))
    local.check_is_not_a_file()
    _location.locate(tmp_path / "missing").check_is_not_a_file()
    with pytest.raises(NotADirectoryError, match=r"f is a file, not a checkpoint directory"):
        file.check_is_not_a_file()
    with pytest.raises(KeyError, match="custom"):
        file.check_is_not_a_file(KeyError, "custom")
    kv = _location.locate("memory://methods/x")
    kv.write("a/b", b"12")
    assert kv.is_dir() and not kv.listing_is_cheap and kv.file_bytes() is None
    assert kv.mtime("a/b") is None
    kv.check_is_not_a_file()


# ------------------------------------------------- request limits (from test_lifecycle.py)


def test_request_limits_fit_the_stated_timeout():
    for timeout in (12.0, 60.0, 120.0, 600.0):
        retries, stall = _context._request_limits(timeout)
        delays, d = [], float(retries["initial_delay"][:-1])
        for _ in range(retries["max_retries"]):
            delays.append(min(d, float(retries["max_delay"][:-1])))
            d *= 2
        worst = (retries["max_retries"] + 1) * stall + sum(delays)
        assert stall >= 1 and worst <= 0.92 * timeout, (timeout, worst)


@pytest.mark.parametrize("raw", ["5", "x", "nan", "inf", "-20"])
def test_a_bad_timeout_setting_is_refused(monkeypatch, raw):
    monkeypatch.setenv(_context.TIMEOUT_ENV, raw)
    with pytest.raises(ValueError, match="JAXCKPT_OBJECT_STORE_TIMEOUT_S"):
        _context.timeout_s()
