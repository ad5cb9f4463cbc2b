"""Large accelerator leaves: save() returns with their device-to-host copies in
flight and the writer waits for them (``host_copies.FORCE_IN_FLIGHT`` runs that
path on the CPU backend, which has a pinned host memory kind like a GPU's).

What must hold: a buffer donated (or deleted) right after save() returns does not
change what is written. Donation is real here: the donating call's output takes
the donated buffer (checked by its address), so a snapshot that kept only the
caller's array would write the new values or fail on a deleted array.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from jaxckpt import _faults
from jaxckpt._save import host_copies as _host_copies, snapshot as _snapshot


@pytest.fixture
def in_flight(monkeypatch):
    monkeypatch.setattr(_host_copies, "FORCE_IN_FLIGHT", True)


def _big(seed: int, n: int = 1 << 20) -> jax.Array:  # 4 MiB: a large (unpacked) leaf
    return jnp.arange(n, dtype=jnp.float32) + seed


def test_take_leaves_large_copies_in_flight(in_flight):
    tree = {"big": _big(1), "small": jnp.ones(4)}
    snap = _snapshot.take(tree)
    big = next(a for a in snap.arrays if a.record["path"][-1][-1] == "big")
    small = next(a for a in snap.arrays if a.record["path"][-1][-1] == "small")
    assert big.shards == [] and len(snap.copying) == 1  # left to the writer
    assert small.shards  # small leaves are waited for in save()
    (_, pieces), = snap.copying
    assert pieces[0][1].sharding.memory_kind == "pinned_host"
    snap.settle()
    assert snap.copying == [] and np.array_equal(big.shards[0].data, np.asarray(tree["big"]))


def test_donation_right_after_save_does_not_change_what_is_written(tmp_path, in_flight):
    double = jax.jit(lambda t: jax.tree.map(lambda x: x * 2, t), donate_argnums=0)
    mngr = jaxckpt.CheckpointManager(tmp_path / "ck", max_to_keep=3, max_pending=2)
    release = threading.Event()
    try:
        for step in range(3):
            state = {"w": _big(step), "b": _big(10 + step, 3 << 20), "n": jnp.ones(8) * step}
            expect = jax.tree.map(np.array, state)
            address = state["w"].unsafe_buffer_pointer()
            release.clear()
            # The writer is held inside an earlier save until the state is donated,
            # so it cannot have read the state's buffers before.
            with _faults.armed("manager.committed", lambda _: release.wait()):
                mngr.save({"hold": np.zeros(1)})
                mngr.save(state)
                state = double(state)  # donated at once
                release.set()
                mngr.wait_until_finished()
            assert state["w"].unsafe_buffer_pointer() == address  # the buffer was reused
            back = mngr.restore(mngr.latest_checkpoint)
            for key in expect:
                np.testing.assert_array_equal(np.asarray(back[key]), expect[key])
    finally:
        release.set()
        mngr.close()


def test_sharded_leaves_copy_in_flight_and_restore(tmp_path, in_flight):
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    x = jax.device_put(jnp.arange(len(devices) * (1 << 19), dtype=jnp.float32), sharding)
    expect = np.array(x)
    path = tmp_path / "one"
    jaxckpt.save(path, {"x": x})
    x.delete()
    np.testing.assert_array_equal(np.asarray(jaxckpt.restore(path)["x"]), expect)
