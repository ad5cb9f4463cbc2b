"""Earlier checkpoints' pages leave the page cache before the next write.

Residency is read with ``mincore`` on a mapping of each file, which reads
nothing. Dropping is best effort (a page another thread holds stays), so a
checkpoint counts as dropped when most of its pages are gone.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pytest

import jaxckpt
from jaxckpt._storage import page_cache as _page_cache


def _files(path: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)


_libc = ctypes.CDLL(None, use_errno=True)


def _resident(name: str) -> float:
    """The fraction of file ``name``'s pages in the page cache (mincore)."""
    size = os.path.getsize(name)
    if size == 0:
        return 1.0
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    with open(name, "rb") as f:
        m = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
    try:
        view = np.frombuffer(m, np.uint8)  # mapping the file reads nothing
        rc = _libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
        del view
        if rc != 0:
            raise OSError(ctypes.get_errno(), "mincore")
    finally:
        m.close()
    return sum(v & 1 for v in vec) / pages


def _cached(name: str) -> bool:
    """Whether most of file ``name`` is in the page cache."""
    return _resident(name) > 0.5


def _data_files(ckpt: str) -> list[str]:
    files = [f for f in _files(ckpt) if os.path.getsize(f) >= 4096]
    assert files, f"no data files in {ckpt}"
    return files


@pytest.fixture
def can_observe(tmp_path):
    """Skips where this filesystem cannot drop pages or report residency (tmpfs)."""
    if not _page_cache._CAN_DROP or not hasattr(_libc, "mincore"):
        pytest.skip("needs posix_fadvise and mincore")
    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.write(b"x" * 65536)
        f.flush()
        os.fsync(f.fileno())
    try:
        _page_cache.drop(str(tmp_path))
        dropped = not _cached(str(probe))
    except OSError:
        dropped = False
    probe.unlink()
    if not dropped:
        pytest.skip("this filesystem keeps file pages cached (or cannot say)")


def _tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((512, 512)).astype(np.float32),
            "b": rng.standard_normal(4096).astype(np.float32)}


def test_earlier_pages_dropped_before_each_write_last_kept(tmp_path, can_observe,
                                                         monkeypatch):
    monkeypatch.setattr(_page_cache, "MIN_BYTES", 0)
    trees = [_tree(i) for i in range(3)]
    with jaxckpt.CheckpointManager(tmp_path / "run", max_to_keep=None) as mngr:
        paths = []
        for i, tree in enumerate(trees):
            paths.append(mngr.save(tree, checkpoint_number=i))
            mngr.wait_until_finished()
            # The checkpoint just written stays cached until the next save starts.
            assert all(_cached(f) for f in _data_files(paths[-1]))
        for path in paths[:-1]:
            assert not any(_cached(f) for f in _data_files(path)), path
        # The files are intact: dropping pages never touches the bytes.
        for path, tree in zip(paths, trees):
            got = mngr.restore(path)
            for k in tree:
                np.testing.assert_array_equal(np.asarray(got[k]), tree[k])


def test_small_checkpoints_left_alone(tmp_path, can_observe):
    tree = {"w": np.arange(256 * 256, dtype=np.float32)}  # 256 KiB, under MIN_BYTES
    assert tree["w"].nbytes < _page_cache.MIN_BYTES
    with jaxckpt.CheckpointManager(tmp_path / "run", max_to_keep=None) as mngr:
        first = mngr.save(tree, checkpoint_number=0)
        for i in (1, 2):
            mngr.save(tree, checkpoint_number=i)
        mngr.wait_until_finished()
        assert all(_cached(f) for f in _data_files(first))


def test_drop_tolerates_missing_and_unreadable(tmp_path):
    _page_cache.drop(str(tmp_path / "nowhere"))  # no error
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"abc")
    os.chmod(d / "f", 0)
    try:
        _page_cache.drop(str(d))  # a file it cannot open is skipped (root can open it)
    finally:
        os.chmod(d / "f", 0o644)
    assert (d / "f").read_bytes() == b"abc"


def test_checkpoints_found_at_open_are_dropped_too(tmp_path, can_observe):
    trees = [_tree(i) for i in range(3)]
    with jaxckpt.CheckpointManager(tmp_path / "run", max_to_keep=None) as mngr:
        old = [mngr.save(t, checkpoint_number=i) for i, t in enumerate(trees[:2])]
    with jaxckpt.CheckpointManager(tmp_path / "run", max_to_keep=None) as mngr:
        for path in old:
            mngr.restore(path)  # reading caches their pages again
        assert all(_cached(f) for path in old for f in _data_files(path))
        mngr.save(trees[2], checkpoint_number=2)
        mngr.wait_until_finished()
        for path in old:
            assert not any(_cached(f) for f in _data_files(path)), path
