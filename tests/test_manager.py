"""The core CheckpointManager beyond TensorFlow's scenarios: async, errors, recovery."""

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
from jaxckpt import CheckpointNotFoundError, CheckpointWriteError


def _tree(i):
    return {"w": np.full((64, 64), i, np.float32), "step": i, "big": jnp.full((1024, 1024), i, jnp.float32)}


def test_save_returns_path_and_commits_in_background(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
        paths = [m.save(_tree(i)) for i in range(1, 5)]
        assert paths == [str(tmp_path / f"ckpt-{i}") for i in range(1, 5)]
        m.wait_until_finished()
        assert m.checkpoints == paths[-2:]
        assert m.latest_checkpoint == paths[-1]
        assert jaxckpt.latest_checkpoint(tmp_path) == paths[-1]
        assert not os.path.exists(paths[0]) and not os.path.exists(paths[1])
        out = m.restore()
        assert out["step"] == 4 and np.all(out["big"] == 4)
        assert m.restore(3)["step"] == 3
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-3", "ckpt-4"]


def test_numbering_continues_across_restarts_and_replaces_atomically(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        m.save(_tree(1))
        m.save(_tree(7), checkpoint_number=jnp.int32(7))
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        assert m.save(_tree(8)) == str(tmp_path / "ckpt-8")
        m.save(_tree(70), checkpoint_number=7)  # replaces ckpt-7
        m.wait_until_finished()
        assert m.checkpoints == [str(tmp_path / f"ckpt-{i}") for i in (1, 8, 7)]
        assert m.restore(7)["step"] == 70


def test_restore_waits_for_a_checkpoint_still_being_written(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path) as m:
        path = m.save(_tree(3), checkpoint_number=3)
        assert m.restore(3)["step"] == 3  # no wait_until_finished first
        assert m.restore(path)["step"] == 3


def test_restore_missing_raises_not_found(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path) as m:
        with pytest.raises(CheckpointNotFoundError, match="no committed checkpoint"):
            m.restore()
        with pytest.raises(CheckpointNotFoundError, match="ckpt-9"):
            m.restore(9)
        assert m.restore_or_initialize() is None


def test_restore_or_initialize_uses_eval_shape_of_init_fn(tmp_path):
    init = lambda: {"w": jnp.zeros((3,), jnp.float32), "step": 0}  # noqa: E731
    with jaxckpt.CheckpointManager(tmp_path, init_fn=init) as m:
        first = m.restore_or_initialize()
        assert first["step"] == 0
        m.save({"w": jnp.ones((3,), jnp.float32), "step": 5})
        again = m.restore_or_initialize()
        assert isinstance(again["w"], jax.Array)
        assert np.all(np.asarray(again["w"]) == 1) and int(again["step"]) == 5


def test_saves_from_several_threads_all_commit(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as m:
        threads = [threading.Thread(target=lambda i=i: m.save(_tree(i), checkpoint_number=i))
                   for i in range(1, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        m.wait_until_finished()
        assert sorted(m.checkpoints) == sorted(str(tmp_path / f"ckpt-{i}") for i in range(1, 7))
        for i in range(1, 7):
            assert m.restore(i)["step"] == i


def test_save_after_close_raises(tmp_path):
    m = jaxckpt.CheckpointManager(tmp_path)
    m.save(_tree(1))
    m.close()
    assert m.latest_checkpoint == str(tmp_path / "ckpt-1")
    with pytest.raises(jaxckpt.CheckpointError, match="closed"):
        m.save(_tree(2))


def test_bad_leaf_raises_type_error_and_queues_nothing(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path) as m:
        with pytest.raises(TypeError, match=r"\['opt'\]\[1\]"):
            m.save({"opt": [1, object()]})
        m.wait_until_finished()
        assert m.checkpoints == [] and os.listdir(tmp_path) == []
        assert m.save(_tree(1)) == str(tmp_path / "ckpt-1")  # number 1 not consumed


def test_leftovers_are_swept_by_the_next_manager(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path) as m:
        m.save(_tree(1))
    (tmp_path / ".ckpt-2.tmp-0123abcd").mkdir()
    (tmp_path / ".ckpt-2.tmp-0123abcd" / "junk").write_bytes(b"x")
    (tmp_path / "ckpt-3").mkdir()  # uncommitted: no manifest
    assert jaxckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-1")
    with jaxckpt.CheckpointManager(tmp_path) as m:
        assert not (tmp_path / ".ckpt-2.tmp-0123abcd").exists()
        with pytest.raises(CheckpointNotFoundError, match="not a committed checkpoint"):
            jaxckpt.restore(tmp_path / "ckpt-3")
        # Numbering continues past every number on disk, committed or not: the
        # uncommitted ckpt-3 may be a copy still arriving, never ours to replace.
        assert m.save(_tree(2)) == str(tmp_path / "ckpt-4")
    assert (tmp_path / "ckpt-3").is_dir()


_FAULT_SCRIPT = textwrap.dedent("""
    import os, resource, signal, sys
    import numpy as np
    import jaxckpt
    from jaxckpt import CheckpointWriteError
    d = sys.argv[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    small = {"a": np.arange(10, dtype=np.float32)}
    big = {"a": np.ones(4 << 20, np.float32)}
    m = jaxckpt.CheckpointManager(d, max_to_keep=3)
    m.save(small)
    m.wait_until_finished()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    m.save(big)
    try:
        m.wait_until_finished()
        raise SystemExit("no error surfaced")
    except CheckpointWriteError as e:
        assert e.__cause__ is not None, "cause not chained"
        print("CAUSE", type(e.__cause__).__name__, e.__cause__)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert m.checkpoints == [os.path.join(d, "ckpt-1")], m.checkpoints
    assert jaxckpt.latest_checkpoint(d) == os.path.join(d, "ckpt-1")
    jaxckpt.verify(os.path.join(d, "ckpt-1"))
    assert not os.path.exists(os.path.join(d, "ckpt-2"))
    p = m.save(big)
    m.close()
    assert np.array_equal(jaxckpt.restore(p)["a"], big["a"])
    print("LEFT", sorted(os.listdir(d)))
""")


@pytest.mark.slow  # child processes
def test_background_write_failure_surfaces_and_manager_recovers(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _FAULT_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CAUSE" in proc.stdout
    assert "LEFT ['checkpoint', 'ckpt-1', 'ckpt-3']" in proc.stdout, proc.stdout
