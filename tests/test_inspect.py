"""Directory listings, one checkpoint's description, and their text and HTML reprs."""

from __future__ import annotations

import json
import os
import shutil
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from jaxckpt._read import reader as _reader
from jaxckpt._report import listing as _listing

HOUR = 3600.0


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _tree(i: int) -> dict:
    return {"w": np.full((64, 64), i, np.float32), "b": np.arange(3, dtype=np.int64), "step": i}


def _status_dir(tmp_path) -> str:
    """A directory with every status: preserved, missing, active, latest, uncommitted."""
    d = str(tmp_path / "run")
    clock = Clock(1_000_000.0)
    with jaxckpt.CheckpointManager(d, max_to_keep=3, keep_checkpoint_every_n_hours=1.0,
                                   clock=clock) as m:
        for i in range(1, 6):
            m.save(_tree(i))
            clock.now += HOUR  # ckpt-1 is deleted, ckpt-2 preserved when it leaves the active set
    assert not os.path.exists(os.path.join(d, "ckpt-1"))
    shutil.rmtree(os.path.join(d, "ckpt-3"))  # the state file still names it
    os.makedirs(os.path.join(d, ".ckpt-6.tmp-0123456789ab", "packed"))  # as a crash leaves it
    os.makedirs(os.path.join(d, "logs"))  # not a checkpoint: not listed
    return d


def test_listing_gives_every_status(tmp_path):
    d = _status_dir(tmp_path)
    listing = jaxckpt.list_checkpoints(d)
    assert [(e.name, e.number, e.status) for e in listing] == [
        ("ckpt-2", 2, "preserved"), ("ckpt-3", 3, "missing"), ("ckpt-4", 4, "active"),
        ("ckpt-5", 5, "latest"), (".ckpt-6.tmp-0123456789ab", 6, "uncommitted")]
    by_name = {e.name: e for e in listing}
    five = by_name["ckpt-5"]
    assert five.created == 1_000_000.0 + 4 * HOUR  # the manager's clock, as in the state file
    assert five.committed == pytest.approx(
        os.stat(os.path.join(d, "ckpt-5", "_CHECKPOINT")).st_mtime)
    assert five.nbytes == _listing.disk_bytes(os.path.join(d, "ckpt-5")) > 64 * 64 * 4
    assert by_name["ckpt-3"].nbytes is None
    assert by_name[".ckpt-6.tmp-0123456789ab"].nbytes == 0


def test_listing_active_and_filtered_by_name(tmp_path):
    d = str(tmp_path)
    with jaxckpt.CheckpointManager(d, max_to_keep=3) as m:
        for i in range(3):
            m.save(_tree(i))
    # A second manager on the directory shares the state file (as in TensorFlow).
    with jaxckpt.CheckpointManager(d, checkpoint_name="best") as best:
        best.save(_tree(9))
    jaxckpt.save(os.path.join(d, "one-off"), _tree(0))
    statuses = {e.name: e.status for e in jaxckpt.list_checkpoints(d)}
    assert statuses == {"ckpt-1": "active", "ckpt-2": "active", "ckpt-3": "active",
                        "best-1": "latest", "one-off": "preserved"}
    listing = jaxckpt.list_checkpoints(d, checkpoint_name="ckpt")
    assert [(e.name, e.status) for e in listing] == [
        ("ckpt-1", "active"), ("ckpt-2", "active"), ("ckpt-3", "active")]
    assert [e.name for e in jaxckpt.list_checkpoints(d, checkpoint_name="best")] == ["best-1"]


def test_listing_errors_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such"):
        jaxckpt.list_checkpoints(tmp_path / "no-such")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        jaxckpt.list_checkpoints(tmp_path / "f")
    empty = jaxckpt.list_checkpoints(tmp_path / ".." / tmp_path.name)
    assert len(empty) == 0 and "no checkpoints" in repr(empty)
    assert "no checkpoints" in empty._repr_html_()


def test_listing_text_and_html(tmp_path):
    d = _status_dir(tmp_path)
    listing = jaxckpt.list_checkpoints(d)
    text = repr(listing)
    lines = text.splitlines()
    assert lines[0] == d
    assert lines[1].split() == ["name", "number", "committed", "size", "status"]
    row = next(line for line in lines if line.startswith("ckpt-5 "))
    assert row.split()[-1] == "latest" and " KiB " in row
    assert "uncommitted (save in progress or interrupted)" in text
    html = listing._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == 1 + len(listing)
    assert "<td style=\"text-align:left\">missing (named in the state file)</td>" in html


def test_inspect_reads_the_manifest_only(tmp_path):
    tree = {"params": {"w": jnp.ones((1024, 1024), jnp.bfloat16), "b": np.zeros(3, np.float32)},
            "key": jax.random.key(0), "name": "run <7>", "step": 5}
    path = str(tmp_path / "c")
    jaxckpt.save(path, tree, metadata={"note": "before <fine-tuning>"})
    data = _reader.read_manifest(path)["data"]
    shutil.rmtree(os.path.join(path, data, "a"))  # array data gone: inspect must not need it
    info = jaxckpt.inspect(path)
    leaves = {leaf.path: leaf for leaf in info.leaves}
    assert set(leaves) == {"['params']['b']", "['params']['w']", "['key']", "['name']",
                           "['step']"}
    w = leaves["['params']['w']"]
    assert (w.kind, w.shape, w.dtype, w.nbytes, w.stored) == ("jax", (1024, 1024), "bfloat16",
                                                              2 << 20, "array a/0")
    assert leaves["['key']"].dtype == "key<threefry2x32>" and leaves["['key']"].shape == ()
    assert leaves["['step']"].value == 5 and leaves["['step']"].kind == "py"
    assert info.nbytes == (2 << 20) + 12 + 8
    assert info.metadata == {"note": "before <fine-tuning>"}
    d = info.as_dict()
    assert json.loads(json.dumps(d)) == d
    shapes = {leaf["path"]: leaf["shape"] for leaf in d["leaves"]}
    assert shapes["['params']['w']"] == [1024, 1024] and shapes["['step']"] is None

    text = repr(info)
    assert text.splitlines()[0] == f"checkpoint {path}"
    row = next(line for line in text.splitlines() if line.startswith("['params']['w'] "))
    assert row.split() == ["['params']['w']", "(1024,", "1024)", "bfloat16", "2.0", "MiB"]
    assert "int = 5" in text and "total: 5 leaves" in text
    html = info._repr_html_()
    assert "run &lt;7&gt;" in html and "run <7>" not in html  # escaped
    assert "<tfoot>" in html and "before &lt;fine-tuning&gt;" in html


def test_inspect_errors(tmp_path):
    with pytest.raises(jaxckpt.CheckpointNotFoundError):
        jaxckpt.inspect(tmp_path / "nothing")
    os.makedirs(tmp_path / "partial")
    with pytest.raises(jaxckpt.CheckpointNotFoundError, match="interrupted"):
        jaxckpt.inspect(tmp_path / "partial")


def test_manager_reprs_show_pending_saves(tmp_path):
    m = jaxckpt.CheckpointManager(tmp_path, max_to_keep=2, max_pending=2)
    release = threading.Event()
    started = threading.Event()
    try:
        m.save(_tree(1))
        m.wait_until_finished()
        # Hold the writer so that the next save stays queued.
        m._writer.submit(lambda: (started.set(), release.wait()))
        started.wait()
        path = m.save(_tree(2))
        assert m.pending == [path]
        assert repr(m).endswith("1 pending)")
        rows = {e.name: (e.status, e.note) for e in m.list_checkpoints()}
        assert rows == {"ckpt-1": ("latest", ""), "ckpt-2": ("pending", "queued")}
        text = str(m)
        assert ["pending", "saves", "1"] in [line.split() for line in text.splitlines()]
        assert "pending (queued)" in text
        assert "pending (queued)" in m._repr_html_()
        release.set()
        m.wait_until_finished()
        assert m.pending == []
        assert [e.status for e in m.list_checkpoints()] == ["active", "latest"]
        html = m._repr_html_()
        assert html.count("<table>") == 2 and "2 (2 committed, 0 failed)" in html
    finally:
        release.set()  # never leave the writer blocked, or close() would wait forever
        m.close()


def test_a_leftover_being_written_by_this_manager_is_pending(tmp_path):
    leftover = tmp_path / ".ckpt-2.tmp-00aa11bb22cc"
    with jaxckpt.CheckpointManager(tmp_path) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        os.makedirs(leftover)  # what the writer makes first for a save of ckpt-2
        listing = _listing.list_checkpoints(str(tmp_path), pending=[str(tmp_path / "ckpt-2")])
        assert [(e.name, e.status, e.note) for e in listing] == [
            ("ckpt-1", "latest", ""), (leftover.name, "pending", "being written")]
        os.rmdir(leftover)
