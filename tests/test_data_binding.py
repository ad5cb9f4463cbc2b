"""A checkpoint's data is bound to its manifest (issue 13 items 12, 13, 15).

A read that meets a replace in progress gives the whole old or the whole new
checkpoint, never a mix; array files swapped between leaves or copied from
another save are refused by name; a checkpoint deleted while being read is
"not found", not "damaged".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointNotFoundError, CorruptCheckpointError
from jaxckpt._commit import atomic as _commit
from jaxckpt._read import restore as _restore
from jaxckpt._save import write as _write
from jaxckpt._read import reader as _reader

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY  # noqa: E402

# ---------------------------------------------------------------- torn reads

_N_LARGE = 3
_LARGE = (2 << 20) // 4  # int32 elements: each large leaf gets an array file of its own


def _generation(g: int) -> dict:
    """A tree in which every leaf, the manifest's Python scalar included, encodes ``g``."""
    return {
        "large": [np.full(_LARGE, g * 10 + i, np.int32) for i in range(_N_LARGE)],
        "small": [np.full(3000, g, np.int32) for _ in range(30)],  # a packed file, not inline
        "g": g,
    }


def _generation_of(out: dict) -> set[int]:
    """Every generation a restored tree's leaves encode (one, unless torn)."""
    seen = {int(out["g"])}
    for i, a in enumerate(out["large"]):
        seen |= {(int(a[0]) - i) // 10, (int(a[-1]) - i) // 10}
    for a in out["small"]:
        seen |= {int(a[0]), int(a[-1])}
    return seen


# Replaces number 1 again and again through the same path a manager's save
# takes (``_save/write.write(replace=True)``), until its stdin closes.
_REPLACER = textwrap.dedent("""
    import os, sys, threading, time
    sys.path.insert(0, {tests!r})
    from test_data_binding import _generation
    from jaxckpt._storage import location as _location
    from jaxckpt._directory import coordinate as _multihost
    from jaxckpt._save import snapshot as _snapshot
    from jaxckpt._save import write as _write
    final = _location.locate({path!r})
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    g = 1
    while not stop.is_set():
        coord = _multihost.SaveCoordinator("replacer", g, str(final), 60)
        _write.write(_snapshot.take(_generation(g)), final, replace=True,
                     created=time.time(), coordinator=coord)
        if g == 1:
            print("replacing", flush=True)
        g += 1
    print(g - 1, flush=True)
""")


@pytest.mark.slow  # child processes
def test_restore_racing_a_replace_returns_one_whole_generation(tmp_path):
    """Item 12: restore (and verify) while number 1 is replaced in a loop by
    another process: every result is one generation, and nothing fails."""
    path = str(tmp_path / "ckpt-1")
    jaxckpt.save(path, _generation(0))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _REPLACER.format(tests=os.path.dirname(__file__), path=path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    torn, errors, changes, last = [], [], 0, None
    try:
        assert proc.stdout.readline().strip() == "replacing"
        for i in range(1000):
            try:
                if i % 10 == 9:
                    jaxckpt.verify(path)
                    continue
                seen = _generation_of(jaxckpt.restore(path))
            except Exception as e:  # a spurious error is a failure too
                errors.append(repr(e)[:300])
                continue
            if len(seen) > 1:
                torn.append(sorted(seen))
            changes += seen != last
            last = seen
    finally:
        proc.stdin.close()
        with proc.stdout:
            replaced = int(proc.stdout.read().split()[-1])
        assert proc.wait(60) == 0
    assert not torn, f"{len(torn)} torn restores of 900, e.g. {torn[:5]}"
    assert not errors, f"{len(errors)} failed reads, e.g. {errors[:3]}"
    # The race was run: the restores saw many generations go by.
    assert replaced > 20 and changes > 20, (replaced, changes)


def test_a_replace_after_the_manifest_was_read_starts_over_with_the_new_one(tmp_path):
    """Item 12, deterministically: the data is replaced between reading the
    manifest and reading the arrays; the read starts over and gives all of
    the new save."""
    path = str(tmp_path / "ckpt-1")
    jaxckpt.save(path, _generation(0))
    attempts = []

    def read(reader):
        attempts.append(reader.manifest["leaves"])
        if len(attempts) == 1:
            jaxckpt.save(str(tmp_path / "new"), _generation(1))
            _commit.publish(str(tmp_path / "new"), path, replace=True)
        return _restore.restore_raw(reader)

    assert _generation_of(_reader.read_consistently(path, read)) == {1}
    assert len(attempts) == 2


# ------------------------------------------------- swapped and copied files


def _data(path) -> str:
    """The checkpoint's arrays: its ``data`` subdirectory (format 3), else beside the manifest."""
    return os.path.join(path, _reader.read_manifest(str(path)).get("data", ""))


def _large_pair(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"x": rng.standard_normal((1024, 1024)).astype(np.float32),
            "y": rng.standard_normal((1024, 1024)).astype(np.float32),
            "small": [np.full(4000, step * 100 + i, np.int32) for i in range(40)],  # a packed file
            "step": step}


def _array_dir(path, key: str) -> str:
    leaf = next(leaf for leaf in _reader.read_manifest(str(path))["leaves"]
                if leaf["path"] == [["k", key]])
    assert leaf["where"][0] == "array"
    return os.path.join(_data(path), "a", leaf["where"][1])


def _refused_by_name(path, names: list[str], target=None) -> None:
    """verify and restore (raw, and onto ``target``) refuse ``path``, naming one of ``names``."""
    TALLY["corruptions tried"] += 1
    calls = [("verify", lambda: jaxckpt.verify(path)), ("restore", lambda: jaxckpt.restore(path))]
    if target is not None:
        calls.append(("restore onto a target", lambda: jaxckpt.restore(path, target)))
    for what, call in calls:
        with pytest.raises(CorruptCheckpointError) as e:
            call()
        msg = str(e.value)
        assert str(path) in msg and any(n in msg for n in names), (what, msg)
        assert "do not match the manifest's digest" in msg, (what, msg)
    TALLY["corruptions caught"] += 1


def _numpy_target(tree):
    return {k: (np.zeros_like(v) if isinstance(v, np.ndarray) else
                [np.zeros_like(a) for a in v] if isinstance(v, list) else 0)
            for k, v in tree.items()}


def test_array_files_swapped_between_two_leaves_are_refused(tmp_path):
    path = tmp_path / "c"
    tree = _large_pair(1)
    jaxckpt.save(path, tree)
    x, y = _array_dir(path, "x"), _array_dir(path, "y")
    os.rename(x, x + ".swap")
    os.rename(y, x)
    os.rename(x + ".swap", y)
    _refused_by_name(path, ["['x']", "['y']"], _numpy_target(tree))


def test_an_array_file_copied_from_an_older_save_is_refused(tmp_path):
    old, new = tmp_path / "ckpt-1", tmp_path / "ckpt-2"
    jaxckpt.save(old, _large_pair(1))
    jaxckpt.save(new, _large_pair(2))
    shutil.rmtree(_array_dir(new, "y"))
    shutil.copytree(_array_dir(old, "y"), _array_dir(new, "y"))
    _refused_by_name(new, ["['y']"], _numpy_target(_large_pair(2)))


def test_packed_shard_files_copied_from_another_save_are_refused(tmp_path):
    old, new = tmp_path / "ckpt-1", tmp_path / "ckpt-2"
    jaxckpt.save(old, _large_pair(1))
    jaxckpt.save(new, _large_pair(2))
    packed_new = os.path.join(_data(new), "packed")
    shutil.rmtree(packed_new)
    shutil.copytree(os.path.join(_data(old), "packed"), packed_new)
    _refused_by_name(new, ["['small'][0]"], _numpy_target(_large_pair(2)))


def test_one_shard_file_of_a_sharded_leaf_copied_from_an_older_save_is_refused(tmp_path):
    """Each device's piece has its own digest: a read of that piece (same
    sharding) or of the whole leaf (a raw restore) checks it."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    sharding = NamedSharding(Mesh(np.array(jax.devices()[:4]), ("d",)), P("d"))

    def tree(step):
        return {"w": jax.device_put(np.full((2048, 512), step, np.float32), sharding)}

    old, new = tmp_path / "ckpt-1", tmp_path / "ckpt-2"
    jaxckpt.save(old, tree(1))
    jaxckpt.save(new, tree(2))
    leaf = _reader.read_manifest(str(new))["leaves"][0]
    assert len(leaf["xxh3"]) == 4
    chunk = os.path.join("c", "2", "0", "0")  # rows 1024-1535: the third device's piece
    shutil.copyfile(os.path.join(_array_dir(old, "w"), chunk),
                    os.path.join(_array_dir(new, "w"), chunk))
    _refused_by_name(new, ["['w']"], {"w": jax.ShapeDtypeStruct((2048, 512), np.float32,
                                                               sharding=sharding)})
    assert np.array_equal(jaxckpt.restore(old)["w"], np.full((2048, 512), 1, np.float32))


# ------------------------------------------------- deleted while being read


def _delete_by_retention(path):
    _commit.remove(str(path))


def _delete_by_hand(path):
    shutil.rmtree(path)


@pytest.mark.parametrize("delete", [_delete_by_retention, _delete_by_hand])
def test_a_checkpoint_deleted_during_verify_is_not_found_not_damaged(tmp_path, delete):
    """Item 15: the directory goes after the first leaf is read."""
    path = tmp_path / "ckpt-1"
    jaxckpt.save(path, _large_pair(1))
    reader = _reader.Reader(path)
    reader.on_leaf_read = lambda leaf: os.path.exists(path) and delete(path)
    with pytest.raises(CheckpointNotFoundError, match="deleted while being read"):
        reader.verify()


@pytest.mark.parametrize("delete", [_delete_by_retention, _delete_by_hand])
def test_a_checkpoint_deleted_during_restore_is_not_found_not_damaged(tmp_path, delete):
    path = tmp_path / "ckpt-1"
    jaxckpt.save(path, _large_pair(1))
    reader = _reader.Reader(path)  # the manifest is read; then the files go
    delete(path)
    with pytest.raises(CheckpointNotFoundError, match="deleted while being read"):
        _restore.restore_raw(reader)
