"""Incremental saves (issue 16): unchanged files are hard-linked from a kept
checkpoint, every checkpoint stays whole on its own."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from _reliability import TALLY

BIG = (1024, 1024)  # 4 MiB of float32: a large leaf, one file


def _files(checkpoint: str) -> dict[str, os.stat_result]:
    """Array files of a checkpoint by their path inside its data directory."""
    out = {}
    for dirpath, _, names in os.walk(checkpoint):
        for name in names:
            if name == "_CHECKPOINT":
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, checkpoint).split(os.sep, 1)[1]  # past d-<token>
            out[rel] = os.stat(full)
    return out


def _state(step: int, base: np.ndarray) -> dict:
    return {"base": base, "adapter": np.full((64, 64), step, np.float32),
            "bias": np.arange(8, dtype=np.int32), "step": step}


def _base(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(BIG).astype(np.float32)


def test_an_unchanged_large_leaf_is_linked_and_a_changed_one_written(tmp_path):
    base = _base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        m.save(_state(1, base), 1)
        m.wait_until_finished()
        first = m.last_save_stats
        m.save(_state(2, base), 2)
        m.wait_until_finished()
        second = m.last_save_stats
    assert first.bytes_shared == 0 and first.bytes_written >= base.nbytes
    assert second.bytes_shared == base.nbytes
    assert second.bytes_written < 64 << 10  # the adapter's packed shard, not the base
    a, b = _files(str(tmp_path / "ckpt-1")), _files(str(tmp_path / "ckpt-2"))
    big = [rel for rel in a if rel.startswith("a/")]
    assert big and all(a[rel].st_ino == b[rel].st_ino for rel in big)
    assert all(b[rel].st_nlink == 2 for rel in big)
    assert m.stats.bytes_shared == base.nbytes


def test_deleting_the_checkpoint_a_file_came_from_leaves_the_other_whole(tmp_path):
    base = _base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        for step in (1, 2):
            m.save(_state(step, base), step)
    shutil.rmtree(tmp_path / "ckpt-1")  # by hand: the user's rm -rf
    restored = jaxckpt.restore(str(tmp_path / "ckpt-2"))
    np.testing.assert_array_equal(restored["base"], base)
    assert (restored["adapter"] == 2).all()
    assert jaxckpt.verify(str(tmp_path / "ckpt-2")).leaves == 4


def test_retention_deletes_old_checkpoints_and_the_newest_keeps_every_shared_byte(tmp_path):
    base = _base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
        for step in range(1, 7):
            m.save(_state(step, base), step)
        m.wait_until_finished()
        assert m.checkpoints == [str(tmp_path / "ckpt-5"), str(tmp_path / "ckpt-6")]
    files = _files(str(tmp_path / "ckpt-6"))
    assert all(st.st_nlink == 2 for rel, st in files.items() if rel.startswith("a/"))
    np.testing.assert_array_equal(jaxckpt.restore(str(tmp_path / "ckpt-6"))["base"], base)


def test_incremental_false_writes_every_byte(tmp_path):
    base = _base()
    with jaxckpt.CheckpointManager(tmp_path, incremental=False) as m:
        for step in (1, 2):
            m.save(_state(step, base), step)
            m.wait_until_finished()
        assert m.last_save_stats.bytes_shared == 0
        assert m.last_save_stats.bytes_written >= base.nbytes
    assert all(st.st_nlink == 1 for st in _files(str(tmp_path / "ckpt-2")).values())


def test_incremental_must_be_a_bool(tmp_path):
    TALLY["bad inputs tried"] += 1
    with pytest.raises(TypeError, match="incremental must be a bool"):
        jaxckpt.CheckpointManager(tmp_path / "x", incremental="yes")
    assert not (tmp_path / "x").exists()
    TALLY["bad inputs refused"] += 1


def test_a_damaged_shared_file_is_reported_in_every_checkpoint_using_it(tmp_path):
    base = _base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        for step in (1, 2, 3):
            m.save(_state(step, base), step)
    TALLY["corruptions tried"] += 1
    shared = next(rel for rel in _files(str(tmp_path / "ckpt-2")) if rel.startswith("a/"))
    data_dir = next(e for e in os.listdir(tmp_path / "ckpt-2") if e.startswith("d-"))
    with open(tmp_path / "ckpt-2" / data_dir / shared, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    for step in (1, 2, 3):
        with pytest.raises(jaxckpt.CorruptCheckpointError, match="base"):
            jaxckpt.verify(str(tmp_path / f"ckpt-{step}"))
    TALLY["corruptions caught"] += 1


def test_a_file_deleted_by_hand_before_the_next_save_is_written_again(tmp_path):
    base = _base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        m.save(_state(1, base), 1)
        m.wait_until_finished()
        for rel in _files(str(tmp_path / "ckpt-1")):
            if rel.startswith("a/"):
                data_dir = next(e for e in os.listdir(tmp_path / "ckpt-1") if e.startswith("d-"))
                os.remove(tmp_path / "ckpt-1" / data_dir / rel)
        m.save(_state(2, base), 2)
        m.wait_until_finished()
        assert m.last_save_stats.bytes_shared == 0
    np.testing.assert_array_equal(jaxckpt.restore(str(tmp_path / "ckpt-2"))["base"], base)


def test_saving_a_number_again_shares_with_its_new_contents_only(tmp_path):
    old, new = _base(0), _base(1)
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        m.save(_state(1, old), 1)
        m.save(_state(1, new), 1)  # replaces checkpoint 1
        m.save(_state(2, new), 2)
        m.wait_until_finished()
        assert m.last_save_stats.bytes_shared == new.nbytes
    for step in (1, 2):
        np.testing.assert_array_equal(jaxckpt.restore(str(tmp_path / f"ckpt-{step}"))["base"],
                                      new)


def test_a_new_manager_shares_with_checkpoints_saved_before_it(tmp_path):
    base = _base()
    with jaxckpt.CheckpointManager(tmp_path) as m:
        m.save(_state(1, base), 1)
    with jaxckpt.CheckpointManager(tmp_path) as m:
        m.save(_state(2, base), 2)
        m.wait_until_finished()
        assert m.last_save_stats.bytes_shared == base.nbytes


def test_packed_shard_files_of_unchanged_small_leaves_are_shared(tmp_path):
    small = {f"w{i}": np.full(100_000, i, np.float32) for i in range(30)}  # 12 MiB packed

    def state(step):
        return {"small": small, "z_changing": np.full(10, step, np.float32)}

    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        m.save(state(1), 1)
        m.save(state(2), 2)
        m.wait_until_finished()
        stats = m.last_save_stats
    # "z_changing" is packed last (keys sort): only the final shard file holds a changed byte.
    assert stats.bytes_shared >= 8 << 20 and stats.bytes_written <= 4 << 20
    a, b = _files(str(tmp_path / "ckpt-1")), _files(str(tmp_path / "ckpt-2"))
    shared = [rel for rel in b if rel.startswith("packed/") and b[rel].st_nlink == 2]
    assert len(shared) >= 2 and all(a[rel].st_ino == b[rel].st_ino for rel in shared)
    restored = jaxckpt.restore(str(tmp_path / "ckpt-2"))
    for i in range(30):
        np.testing.assert_array_equal(restored["small"][f"w{i}"], small[f"w{i}"])
    assert (restored["z_changing"] == 2).all()


def test_jax_arrays_sharded_over_devices_share_per_shard_file(tmp_path):
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    rows = 512 * len(devices)
    base = jax.device_put(jnp.arange(rows * 1024, dtype=jnp.float32).reshape(rows, 1024),
                          sharding)
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        m.save({"base": base, "step": 1}, 1)
        m.save({"base": base, "step": 2}, 2)
        m.wait_until_finished()
        assert m.last_save_stats.bytes_shared == base.nbytes
    restored = jaxckpt.restore(str(tmp_path / "ckpt-2"), {"base": base, "step": 0})
    np.testing.assert_array_equal(np.asarray(restored["base"]), np.asarray(base))
    assert restored["base"].sharding == sharding


def _jax_base(seed: int = 0) -> jax.Array:
    return jnp.asarray(_base(seed))


def test_the_same_jax_array_saved_again_is_linked_even_once_donated(tmp_path):
    base = _jax_base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        m.save({"base": base, "step": 1}, 1)
        m.wait_until_finished()
        m.save({"base": base, "step": 2}, 2)
        expected = np.asarray(base).copy()
        base.delete()  # what donating it to the next step does
        m.wait_until_finished()
        assert m.last_save_stats.bytes_shared == expected.nbytes
    np.testing.assert_array_equal(jaxckpt.restore(str(tmp_path / "ckpt-2"))["base"], expected)
    assert jaxckpt.verify(str(tmp_path / "ckpt-2")).leaves == 2


def _save_again_without_its_files(m: jaxckpt.CheckpointManager, base: jax.Array, tmp_path):
    """Saves ``base``, removes that checkpoint by hand, queues ``base`` again."""
    m.save({"base": base, "step": 1}, 1)
    m.wait_until_finished()
    shutil.rmtree(tmp_path / "ckpt-1")
    m.save({"base": base, "step": 2}, 2)


def test_the_same_jax_array_is_not_copied_again(tmp_path):
    """Its files gone by hand and the array deleted: the save cannot have a copy."""
    base = _jax_base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        _save_again_without_its_files(m, base, tmp_path)
        base.delete()
        with pytest.raises(jaxckpt.CheckpointWriteError) as raised:
            m.wait_until_finished()
        assert "['base'] was not copied by save()" in str(raised.value.__cause__)
        assert m.latest_checkpoint is None or not m.latest_checkpoint.endswith("ckpt-2")


def test_the_same_jax_array_with_its_files_gone_is_written_from_the_array(tmp_path):
    base = _jax_base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        _save_again_without_its_files(m, base, tmp_path)
        m.wait_until_finished()
        assert m.last_save_stats.bytes_shared == 0
    np.testing.assert_array_equal(jaxckpt.restore(str(tmp_path / "ckpt-2"))["base"],
                                  np.asarray(base))


def test_an_equal_but_new_jax_array_is_hashed_and_linked(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        m.save({"base": _jax_base(), "step": 1}, 1)
        m.save({"base": _jax_base(), "step": 2}, 2)  # another object, the same bytes
        m.save({"base": _jax_base(1), "step": 3}, 3)  # other bytes
        m.wait_until_finished()
        assert m.last_save_stats.bytes_shared == 0
        assert m.stats.bytes_shared == _base().nbytes
    np.testing.assert_array_equal(jaxckpt.restore(str(tmp_path / "ckpt-3"))["base"], _base(1))


def test_ls_and_show_give_own_and_shared_bytes_and_the_total_on_disk(tmp_path, capsys):
    from jaxckpt.cli import main

    base = _base()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        for step in (1, 2, 3):
            m.save(_state(step, base), step)
    listing = jaxckpt.list_checkpoints(str(tmp_path))
    assert listing.shares and [e.shared_bytes for e in listing] == [base.nbytes + 24] * 3
    own = sum(e.nbytes - e.shared_bytes for e in listing)
    assert listing.disk_bytes == own + base.nbytes + 24  # the shared file counted once
    assert main(["ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["name", "number", "committed", "size", "shared",
                                           "status"]
    assert "on disk: " in out and "counted once" in out
    info = jaxckpt.inspect(str(tmp_path / "ckpt-2"))
    assert info.shared_bytes == base.nbytes + 24
    assert {leaf.path: leaf.shared for leaf in info.leaves if leaf.kind != "py"} == {
        "['adapter']": False, "['base']": True, "['bias']": False}
    assert main(["show", str(tmp_path / "ckpt-2")]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("[")}
    assert rows["['base']"][-1] == "shared" and rows["['adapter']"][-1] != "shared"
