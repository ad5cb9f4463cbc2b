"""The host-memory ceiling of saves (issue 17): ``max_host_bytes`` makes a save
larger than the budget roll through, and ``SaveStats.peak_host_bytes`` reports it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from jaxckpt import _faults
from _reliability import TALLY

MiB = 1 << 20


def _tree(n_large: int = 8, large: int = 2 * MiB, small: int = 20) -> dict:
    rng = np.random.default_rng(0)
    return {
        "large": [rng.integers(0, 255, large, dtype=np.uint8) for _ in range(n_large)],
        "small": {f"s{i}": rng.standard_normal(i + 1).astype(np.float32) for i in range(small)},
        "f64": rng.standard_normal((300, 700)),  # 1.6 MiB: a packed leaf
        "jax": jnp.arange(MiB // 4, dtype=jnp.float32),  # a host view on CPU: costs nothing
        "sharded": jax.device_put(
            jnp.arange(4 * 65536, dtype=jnp.int32).reshape(4, 65536),
            jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:4]), ("x",)),
                                       jax.sharding.PartitionSpec("x"))),
        "py": 7,
    }


def _numpy_bytes(tree: dict) -> int:
    return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree)
               if isinstance(leaf, np.ndarray))


def _assert_same(restored: dict, tree: dict) -> None:
    flat, _ = jax.tree_util.tree_flatten(tree)
    got, _ = jax.tree_util.tree_flatten(restored)
    assert len(flat) == len(got)
    for a, b in zip(flat, got):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


@pytest.mark.parametrize("budget", [2 * MiB, 3 * MiB + 12345])
def test_save_rolls_through_a_small_budget(tmp_path, budget):
    tree = _tree()
    largest = max(leaf.nbytes for leaf in tree["large"])
    packed = _numpy_bytes(tree) - sum(leaf.nbytes for leaf in tree["large"])
    assert _numpy_bytes(tree) > 4 * budget
    with jaxckpt.CheckpointManager(tmp_path / "run", max_host_bytes=budget) as mngr:
        for step in (1, 2):  # the second save shares every file with the first
            mngr.save(tree, step)
            mngr.wait_until_finished()
            stats = mngr.last_save_stats
            assert stats.committed and stats.path.endswith(f"ckpt-{step}")
            # The packed (small) leaves are copied as one lump first.
            assert largest <= stats.peak_host_bytes <= max(budget, packed)
        assert stats.bytes_shared > 0
        for step in (1, 2):
            _assert_same(mngr.restore(step, target=tree), tree)
    jaxckpt.verify(tmp_path / "run" / "ckpt-2")


def test_peak_is_reported_without_a_budget(tmp_path):
    tree = _tree()
    with jaxckpt.CheckpointManager(tmp_path / "run") as mngr:
        mngr.save(tree)
        mngr.wait_until_finished()
        # Every NumPy leaf copied at once; the jax.Arrays are views on CPU.
        assert mngr.last_save_stats.peak_host_bytes == _numpy_bytes(tree)
        _assert_same(mngr.restore(target=tree), tree)


def test_a_leaf_larger_than_the_budget_is_copied_alone(tmp_path):
    tree = {"big": np.arange(3 * MiB, dtype=np.uint8), "next": np.ones(2 * MiB, np.uint8),
            "more": np.full(4 * MiB, 3, np.uint8)}  # all larger than the budget
    with jaxckpt.CheckpointManager(tmp_path / "run", max_host_bytes=MiB) as mngr:
        mngr.save(tree)
        mngr.wait_until_finished()
        assert mngr.last_save_stats.peak_host_bytes == 4 * MiB  # one leaf at a time
        _assert_same(mngr.restore(target=tree), tree)


def test_module_save_with_a_budget(tmp_path):
    tree = _tree(n_large=6)
    jaxckpt.save(tmp_path / "one", tree, max_host_bytes=2 * MiB)
    jaxckpt.verify(tmp_path / "one")
    _assert_same(jaxckpt.restore(tmp_path / "one", target=tree), tree)


def test_leaves_overwritten_after_save_returns_are_written_as_saved(tmp_path):
    """save() returns while the writer still has to write the last leaves; the
    caller overwrites every leaf in place before the last one is written."""
    n = 8
    tree = {f"w{i}": np.full(2 * MiB, i, np.uint8) for i in range(n)}  # large leaves only
    expected = {k: v.copy() for k, v in tree.items()}
    mutated = threading.Event()
    held = threading.Event()

    def hold_last(_name):  # the writer, before it waits for the last leaf's copy
        held.set()
        assert mutated.wait(60)

    with jaxckpt.CheckpointManager(tmp_path / "run", max_host_bytes=4 * MiB) as mngr:
        with _faults.armed("staging.wait", hold_last, skip=n - 1) as fault:
            mngr.save(tree, 1)
            for leaf in tree.values():
                leaf[:] = 255
            mutated.set()
            mngr.wait_until_finished()
        assert held.is_set() and fault.hits == n
        _assert_same(mngr.restore(1), expected)


def test_a_failure_mid_roll_leaves_earlier_checkpoints_and_state_file(tmp_path):
    tree = {f"w{i}": np.full(2 * MiB, i, np.uint8) for i in range(6)}
    with jaxckpt.CheckpointManager(tmp_path / "run", max_host_bytes=4 * MiB) as mngr:
        mngr.save(tree, 1)
        mngr.wait_until_finished()
        state = (tmp_path / "run" / "checkpoint").read_bytes()
        with _faults.armed("staging.wait", "raise", skip=2):
            mngr.save({k: v + 1 for k, v in tree.items()}, 2)  # returns: the writer failed
            with pytest.raises(jaxckpt.CheckpointWriteError, match="fault injected"):
                mngr.wait_until_finished()
        assert (tmp_path / "run" / "checkpoint").read_bytes() == state
        assert mngr.checkpoints == [str(tmp_path / "run" / "ckpt-1")]
        assert not (tmp_path / "run" / "ckpt-2").exists()
        _assert_same(mngr.restore(1), tree)
        mngr.save(tree, 3)  # the budget was given back: the manager stays usable
        mngr.wait_until_finished()
        assert mngr.last_save_stats.peak_host_bytes <= 4 * MiB


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1MiB", 2.0])
def test_bad_max_host_bytes_is_refused_before_anything_is_written(tmp_path, bad):
    TALLY["bad inputs tried"] += 2
    with pytest.raises(ValueError, match="max_host_bytes must be a positive int or None"):
        jaxckpt.CheckpointManager(tmp_path / "run", max_host_bytes=bad)
    with pytest.raises(ValueError, match="max_host_bytes must be a positive int or None"):
        jaxckpt.save(tmp_path / "one", {"a": np.ones(3)}, max_host_bytes=bad)
    assert list(tmp_path.iterdir()) == []
    TALLY["bad inputs refused"] += 2


_CHILD = textwrap.dedent("""
    import os, resource, sys
    import numpy as np
    import jaxckpt

    MiB = 1 << 20
    where, budget = sys.argv[1], int(sys.argv[2])

    def vm_data():
        for line in open("/proc/self/status"):
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

    tree = {f"w{i}": np.full(8 * MiB, i, np.float32) for i in range(16)}  # 512 MiB
    # Thread pools and drivers started before the baseline is measured.
    with jaxckpt.CheckpointManager(os.path.join(where, "warm"), max_host_bytes=budget or None) as m:
        m.save({"a": np.ones(4 * MiB, np.float32), "b": np.ones(3, np.int8)}, 1)
    # Room for the budget and the writer's own buffers, far less than the tree.
    limit = vm_data() + 64 * MiB + 160 * MiB
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    try:
        with jaxckpt.CheckpointManager(os.path.join(where, "run"),
                                       max_host_bytes=budget or None) as m:
            m.save(tree, 1)
            m.wait_until_finished()
            print("peak", m.last_save_stats.peak_host_bytes)
    except MemoryError:
        print("MemoryError")
        sys.exit(3)
""")


def test_a_budget_saves_under_a_process_memory_limit_a_whole_copy_exceeds(tmp_path):
    """A child limits its data segment to its baseline + 224 MiB and saves 512 MiB
    of NumPy arrays: with a 64 MiB budget it succeeds, without one it runs out."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    children = {}
    for budget in (64 * MiB, 0):  # both at once: each limits only itself
        where = tmp_path / f"b{budget}"
        children[budget] = subprocess.Popen(
            [sys.executable, str(script), str(where), str(budget)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    results = {}
    for budget, child in children.items():
        out, err = child.communicate(timeout=300)
        results[budget] = (child.returncode, out, err)
    (ok_rc, ok_out, ok_err), (whole_rc, whole_out, whole_err) = results[64 * MiB], results[0]
    assert ok_rc == 0, ok_out + ok_err
    assert ok_out.split() == ["peak", str(64 * MiB)]
    assert whole_rc == 3 and "MemoryError" in whole_out, whole_out + whole_err
    restored = jaxckpt.restore(tmp_path / f"b{64 * MiB}" / "run" / "ckpt-1")
    assert sorted(restored) == sorted(f"w{i}" for i in range(16))
    for i in range(16):
        leaf = restored[f"w{i}"]
        assert leaf.dtype == np.float32 and leaf.shape == (8 * MiB,)
        assert (leaf == i).all()
        del leaf, restored[f"w{i}"]
