"""One process of a multi-process jax.distributed program, for tests/test_multihost.py.

    python _multihost_worker.py SCENARIO DIR PORT NUM_PROCESSES PROCESS_ID MESH

MESH is the device mesh shape, e.g. ``4`` or ``2x2``. Every global array's
value is a pure function of its global index, so each process can check the
shards it holds without seeing the others'. Prints ``OK <facts>`` on success.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def value(name: str, shape: tuple[int, ...], step: int) -> np.ndarray:
    seed = sum(ord(c) for c in name)
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + seed) * (step + 1)


SHAPES = {
    "big": (2048, 512),   # 4 MiB: one array, each process writes its shards
    "small": (16, 8),     # small but split across processes: an array of its own
    "repl": (5, 3),       # small and replicated: packed by process 0
    "grid": (64, 32),     # sharded over both mesh axes (or just one on a 1-d mesh)
}


def specs(mesh):
    from jax.sharding import NamedSharding, PartitionSpec as P

    names = mesh.axis_names
    two = len(names) == 2
    return {
        "big": NamedSharding(mesh, P(names)),  # rows over every device
        "small": NamedSharding(mesh, P(names)),
        "repl": NamedSharding(mesh, P()),
        "grid": NamedSharding(mesh, P(names[0], names[1]) if two else P(None, names[0])),
    }


def state(mesh, step: int) -> dict:
    import jax

    sh = specs(mesh)
    arrays = {
        name: jax.make_array_from_callback(
            SHAPES[name], sh[name], lambda idx, n=name: value(n, SHAPES[name], step)[idx])
        for name in SHAPES
    }
    return {"params": arrays, "host": np.arange(7, dtype=np.int64) * step, "step": step}


def target(mesh) -> dict:
    import jax

    sh = specs(mesh)
    return {
        "params": {n: jax.ShapeDtypeStruct(SHAPES[n], np.float32, sharding=sh[n]) for n in SHAPES},
        "host": np.zeros(7, np.int64),
        "step": 0,
    }


def check(out: dict, step: int) -> int:
    """Checks every addressable shard bit-exact; returns how many were checked."""
    n = 0
    for name, arr in out["params"].items():
        want = value(name, SHAPES[name], step)
        for shard in arr.addressable_shards:
            got = np.asarray(shard.data)
            assert got.tobytes() == want[shard.index].tobytes(), (name, shard.index)
            n += 1
    assert np.array_equal(out["host"], np.arange(7) * step)
    assert int(out["step"]) == step
    return n


# in_jit: a state sharded over every device, trained by a jitted fori_loop
# and then a scan that call save_in_jit every step. Step s holds
# value(name, shape, s): each step adds the step-0 value (exact in float32).
JIT_SHAPES = {
    "big": (2048, 512),   # 4 MiB, rows over every device: each process its half
    "wide": (3, 1 << 18), # 3 MiB, split on axis 1 (3 rows do not divide in two)
    "odd": (1025, 513),   # 2.1 MiB, no axis divides: process 0 writes it whole
    "small": (16, 8),     # packed by process 0
}


def jit_state(mesh, step: int) -> dict:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    name = mesh.axis_names[0]
    sh = {"big": P(name), "wide": P(None, name), "odd": P(), "small": P(name)}
    return {n: jax.make_array_from_callback(
                JIT_SHAPES[n], NamedSharding(mesh, sh[n]),
                lambda idx, n=n: value(n, JIT_SHAPES[n], step)[idx])
            for n in JIT_SHAPES}


def jit_check(out: dict, step: int) -> int:
    n = 0
    for name, arr in out["params"].items():
        want = value(name, JIT_SHAPES[name], step)
        for shard in arr.addressable_shards:
            assert np.asarray(shard.data).tobytes() == want[shard.index].tobytes(), name
            n += 1
    assert int(out["step"]) == step
    assert np.array_equal(out["host"], np.arange(3))
    return n


def in_jit(directory: str, mesh) -> dict:
    import jax
    import jax.numpy as jnp

    import jaxckpt

    base = jit_state(mesh, 0)
    start = {"params": base, "step": jnp.asarray(0)}
    m = jaxckpt.CheckpointManager(directory, max_to_keep=3, checkpoint_interval=4,
                                  step_counter=lambda s: s["step"])

    def step_fn(state, base):
        params = jax.tree.map(lambda p, b: p + b, state["params"], base)
        state = {**state, "params": params, "step": state["step"] + 1}
        # With a host leaf and a Python leaf, constants of the trace.
        m.save_in_jit({**state, "host": np.arange(3), "note": "in-jit"})  # steps 4, 8, 12
        return state

    @jax.jit
    def loop(state, base):
        return jax.lax.fori_loop(0, 9, lambda i, s: step_fn(s, base), state)

    @jax.jit
    def scan(state, base):
        return jax.lax.scan(lambda s, _: (step_fn(s, base), None), state, None, length=4)[0]

    state = scan(loop(start, base), base)  # steps 1-9, then 10-13
    m.wait_until_finished()
    saved = [os.path.basename(p) for p in m.checkpoints]
    m.close()
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          start)
    target.update(host=np.zeros(3, np.int64), note="")
    with jaxckpt.CheckpointManager(directory, max_to_keep=3) as again:
        latest = os.path.basename(again.latest_checkpoint)
        out = again.restore(None, target)
        checked = jit_check(out, 12)
        jit_check(again.restore(8, target), 8)
    jit_check({**state, "host": np.arange(3)}, 13)
    return {"checkpoints": saved, "latest": latest, "shards_checked": checked}


def main() -> None:
    scenario, directory, port, nproc, pid, mesh_shape = sys.argv[1:7]
    nproc, pid = int(nproc), int(pid)
    if os.environ.get("JAXCKPT_TEST_STACKS_AFTER_S"):
        import faulthandler

        faulthandler.dump_traceback_later(int(os.environ["JAXCKPT_TEST_STACKS_AFTER_S"]))
    import jax
    from jax.sharding import Mesh

    heartbeat = int(os.environ.get("JAXCKPT_TEST_HEARTBEAT_S", "120"))
    jax.distributed.initialize(f"127.0.0.1:{port}", nproc, pid,
                               heartbeat_timeout_seconds=heartbeat, initialization_timeout=60)
    dims = tuple(int(x) for x in mesh_shape.split("x"))
    mesh = Mesh(np.array(jax.devices()).reshape(dims), ("x", "y")[: len(dims)])
    import jaxckpt

    facts: dict = {"process": pid, "devices": len(jax.local_devices())}
    if scenario == "save":
        with jaxckpt.CheckpointManager(directory, max_to_keep=2) as m:
            for step in (1, 2, 3):
                m.save(state(mesh, step), checkpoint_number=step)
            m.wait_until_finished()
            facts["checkpoints"] = [os.path.basename(p) for p in m.checkpoints]
            facts["shards_checked"] = check(m.restore(None, target(mesh)), 3)
            check(m.restore(2, target(mesh)), 2)
        one_off = os.path.join(directory, "one-off")
        if directory.startswith("s3://"):
            # On an object store the path "exists" once process 0's first
            # shard landed: process 1 looks only after that (or after 3 s, if
            # process 0 cannot write before process 1 is in save() too).
            from jax._src import distributed
            from jaxckpt import _faults

            client = distributed.global_state.client
            if pid == 0:
                with _faults.armed("multihost.part_written",
                                   lambda _: client.key_value_set("test/p0-part", "1")):
                    jaxckpt.save(one_off, state(mesh, 9), coordination_timeout_s=30)
            else:
                try:
                    client.blocking_key_value_get("test/p0-part", 3_000)
                    facts["one_off_order"] = "process 0 wrote first"
                except Exception:
                    facts["one_off_order"] = "process 0 waited"
                jaxckpt.save(one_off, state(mesh, 9), coordination_timeout_s=30)
        else:
            jaxckpt.save(one_off, state(mesh, 9))
            # A save one process refuses (a leaf it cannot save) fails on every
            # process at once, none waits out the timeout for the other's part.
            bad = state(mesh, 4) if pid == 0 else {**state(mesh, 4), "host": object()}
            try:
                jaxckpt.save(os.path.join(directory, "refused"), bad, coordination_timeout_s=120)
            except Exception as e:  # noqa: BLE001 - reported
                facts["refused"] = f"{type(e).__name__}: {e}"
        check(jaxckpt.restore(one_off, target(mesh)), 9)
    elif scenario == "incremental":
        facts.update(incremental(directory, mesh, os.environ.get("INCREMENTAL", "1") == "1"))
    elif scenario == "restore":
        with jaxckpt.CheckpointManager(directory, max_to_keep=2) as m:
            out = m.restore(None, target(mesh))
            facts["step"] = int(out["step"])
            facts["shards_checked"] = check(out, facts["step"])
    elif scenario == "kill":
        m = jaxckpt.CheckpointManager(directory, max_to_keep=2, coordination_timeout_s=5)
        m.save(state(mesh, 1), checkpoint_number=1)
        m.wait_until_finished()
        # Process 1 runs with JAXCKPT_FAULT_POINT=multihost.part_written (skipping
        # one hit): it dies mid-save, its part of ckpt-2 written but not reported.
        m.save(state(mesh, 2), checkpoint_number=2)
        try:
            m.wait_until_finished()
            facts["error"] = None
        except jaxckpt.CheckpointWriteError as e:
            facts["error"] = f"{e} | cause: {e.__cause__}"
        facts["checkpoints"] = [os.path.basename(p) for p in m.checkpoints]
        print("OK " + json.dumps(facts), flush=True)
        # A peer is dead: skip jax.distributed's shutdown handshake.
        os._exit(0)
    elif scenario == "agree":
        # The rounds: save 3, wait, close, reopen, restore the latest.
        import contextlib
        import time

        from jaxckpt import _faults

        rounds = int(os.environ.get("JAXCKPT_AGREE_ROUNDS", "4"))
        facts["steps"], facts["latest"] = [], []
        # A loaded host: process 0 is slow between its commit and its state file.
        slow = (_faults.armed("manager.committed", lambda name: time.sleep(0.3))
                if pid == 0 else contextlib.nullcontext())
        with slow:
            agree_rounds(directory, mesh, rounds, facts)
    elif scenario == "absent":
        absent(directory, mesh, pid, os.environ["JAXCKPT_ABSENT_PHASE"], facts)
        print("OK " + json.dumps(facts), flush=True)
        os._exit(0)  # a peer is gone: skip jax.distributed's shutdown handshake
    elif scenario == "scale":
        import time

        with jaxckpt.CheckpointManager(directory, coordination_timeout_s=120) as m:
            t0 = time.perf_counter()
            m.save(small(mesh, 1), checkpoint_number=1)
            m.wait_until_finished()
            facts["save_s"] = time.perf_counter() - t0
            facts["write_s"] = m.last_save_stats.write_s
            t0 = time.perf_counter()
            facts["shards_checked"] = small_check(m.restore(None, small(mesh, None)))
            facts["restore_s"] = time.perf_counter() - t0
    elif scenario == "crash_loop":
        crash_loop(directory, mesh)
    elif scenario == "crash_check":
        with jaxckpt.CheckpointManager(directory, max_to_keep=3,
                                       coordination_timeout_s=60) as m:
            out = m.restore(None, small(mesh, None))
            facts["step"] = int(out["step"])
            facts["latest"] = os.path.basename(m.latest_checkpoint)
            facts["shards_checked"] = small_check(out)
    elif scenario == "exit_flush":
        # Process 1 never calls close(): its manager is closed by the exit
        # flush, with a save still pending; process 0 closes it explicitly.
        m = jaxckpt.CheckpointManager(directory, max_to_keep=2, coordination_timeout_s=30)
        for step in (1, 2):
            m.save(small(mesh, step), checkpoint_number=step)
        if pid == 0:
            m.close()
            facts["checkpoints"] = [os.path.basename(p) for p in m.checkpoints]
        print("OK " + json.dumps(facts), flush=True)
        if pid != 0 and os.environ.get("JAXCKPT_SHUTDOWN_FIRST"):
            jax.distributed.shutdown()  # with its manager still open
        if pid != 0:
            return  # to the exit hooks: jaxckpt's flush, then jax's shutdown
    elif scenario == "dead_peer":
        # Process 2 dies after the first save; the others go on saving. Which
        # comes first: jaxckpt's deadline, or jax.distributed's heartbeat?
        import signal
        import time

        timeout = float(os.environ["JAXCKPT_TEST_COORDINATION_S"])
        m = jaxckpt.CheckpointManager(directory, coordination_timeout_s=timeout)
        m.save(small(mesh, 1), checkpoint_number=1)
        m.wait_until_finished()
        if pid == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        print("SAVED 1", flush=True)
        t0 = time.monotonic()
        try:
            m.save(small(mesh, 2), checkpoint_number=2)
            m.wait_until_finished()
            facts["error"] = None
        except Exception as e:  # noqa: BLE001 - reported to the test
            facts["error"] = f"{type(e).__name__}: {e}"
        facts["after_s"] = time.monotonic() - t0
        print("OK " + json.dumps(facts), flush=True)
        os._exit(0)  # a peer is gone: skip jax.distributed's shutdown handshake
    elif scenario == "reader":
        facts.update(reader(directory, pid))
    elif scenario == "keys":
        facts.update(keys(directory, mesh, pid))
    elif scenario == "in_jit":
        facts.update(in_jit(directory, mesh))
    elif scenario == "preempt":
        facts.update(preempt(directory, mesh, pid))
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print("OK " + json.dumps(facts), flush=True)
    jax.distributed.shutdown()


def incremental(directory: str, mesh, on: bool) -> dict:
    """ckpt-2 is ckpt-1 with only "small" changed (fresh arrays of equal values,
    so each process hashes its own shards); both restore bit-exact here."""
    import jaxckpt

    one, again = state(mesh, 1), state(mesh, 1)
    two = {**again, "params": {**again["params"], "small": state(mesh, 2)["params"]["small"]}}
    checked = 0
    with jaxckpt.CheckpointManager(directory, max_to_keep=2, incremental=on) as m:
        m.save(one, checkpoint_number=1)
        m.wait_until_finished()
        first = m.last_save_stats
        m.save(two, checkpoint_number=2)
        m.wait_until_finished()
        stats = m.last_save_stats
        for number, steps in ((1, {}), (2, {"small": 2})):
            out = m.restore(number, target(mesh))
            for name, arr in out["params"].items():
                want = value(name, SHAPES[name], steps.get(name, 1))
                for shard in arr.addressable_shards:
                    assert np.asarray(shard.data).tobytes() == want[shard.index].tobytes(), (
                        number, name, shard.index)
                    checked += 1
    return {"shards_checked": checked, "bytes_written": stats.bytes_written,
            "bytes_shared": stats.bytes_shared, "first_written": first.bytes_written}


def agree_rounds(directory: str, mesh, rounds: int, facts: dict) -> None:
    import jaxckpt

    for r in range(rounds):
        d = os.path.join(directory, str(r))
        with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
            for step in (1, 2, 3):
                m.save(state(mesh, step), checkpoint_number=step)
            m.wait_until_finished()
        with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
            facts["latest"].append(os.path.basename(m.latest_checkpoint or ""))
            out = m.restore(None, target(mesh))
            step = int(out["step"])
            check(out, step)
            facts["steps"].append(step)
        facts.setdefault("module_latest", []).append(
            os.path.basename(jaxckpt.latest_checkpoint(d) or ""))


def small(mesh, step: int | None):
    """A state for any process count: rows over every device (a target if step is None)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    shape = (8 * mesh.devices.size, 4)
    sh = NamedSharding(mesh, P(mesh.axis_names))
    if step is None:
        return {"w": jax.ShapeDtypeStruct(shape, np.float32, sharding=sh), "step": 0}
    return {"w": jax.make_array_from_callback(shape, sh, lambda idx: value("w", shape, step)[idx]),
            "step": step}


def small_check(out: dict) -> int:
    step = int(out["step"])
    want = value("w", out["w"].shape, step)
    for shard in out["w"].addressable_shards:
        assert np.asarray(shard.data).tobytes() == want[shard.index].tobytes(), shard.index
    return len(out["w"].addressable_shards)


def absent(directory: str, mesh, pid: int, phase: str, facts: dict) -> None:
    """Process 2 of 3 never opens its manager, never restores, or dies before
    close (``phase``); the others must raise naming it, never hang."""
    import signal

    import jaxckpt

    facts["error"] = None
    if phase == "open" and pid == 2:
        return
    try:
        m = jaxckpt.CheckpointManager(directory, coordination_timeout_s=3)
        if phase == "open":
            return
        m.save(small(mesh, 1), checkpoint_number=1)
        m.wait_until_finished()
        if pid == 2:
            if phase == "close":
                os.kill(os.getpid(), signal.SIGKILL)
            return
        if phase == "restore":
            m.restore(None, small(mesh, None))
        m.close()
    except (TimeoutError, jaxckpt.CheckpointError) as e:
        facts["error"] = f"{type(e).__name__}: {e}"


def reader(directory: str, pid: int) -> dict:
    """Read-only managers on every process, a checkpoint appearing meanwhile:
    ``restore_or_initialize`` must take process 0's view everywhere.

    Process 1 calls first, on an empty directory; only then (or after 3 s, if
    that call waits for process 0, as it should) does process 0 put a
    committed checkpoint in place (copied from ``<directory>-src``) and call.
    """
    import shutil

    import jaxckpt
    from jaxckpt._directory import coordinate as _multihost

    client = _multihost._client()
    m = jaxckpt.CheckpointManager(directory, read_only=True, coordination_timeout_s=10,
                                  init_fn=lambda: {"step": 0, "w": np.zeros(4, np.float32)})
    if pid == 1:
        client.key_value_set("test/reader/calling", "1")
        out = m.restore_or_initialize()
        client.key_value_set("test/reader/returned", "1")
    else:
        client.blocking_key_value_get("test/reader/calling", 60_000)
        try:
            client.blocking_key_value_get("test/reader/returned", 3_000)
            returned_first = True
        except Exception:  # noqa: BLE001 - it waits for process 0: right
            returned_first = False
        src = directory + "-src"
        shutil.copytree(os.path.join(src, "ckpt-1"), os.path.join(directory, "ckpt-1"))
        shutil.copy(os.path.join(src, "checkpoint"), os.path.join(directory, "checkpoint"))
        out = m.restore_or_initialize()
    facts = {"step": int(out["step"])}
    if pid == 0:
        facts["process_1_returned_first"] = returned_first
    m.close()
    return facts


def keys(directory: str, mesh, pid: int) -> dict:
    """A loop of collective calls: the coordinator keeps only a few keys."""
    import jaxckpt
    from jaxckpt._directory import coordinate as _multihost

    for r in range(3):
        with jaxckpt.CheckpointManager(os.path.join(directory, "m"), max_to_keep=2) as m:
            for step in range(1, 5):
                m.save(small(mesh, step + 10 * r))
            m.wait_until_finished()
            m.restore(None, small(mesh, None))
        one = os.path.join(directory, f"one-{r}")
        jaxckpt.save(one, small(mesh, r))
        for _ in range(3):
            jaxckpt.restore(one, small(mesh, None))
            jaxckpt.latest_checkpoint(os.path.join(directory, "m"))
    client = _multihost._client()
    client.wait_at_barrier("test/keys/done", 60_000)
    left = [k for k, _ in client.key_value_dir_get("jaxckpt/")] if pid == 0 else []
    client.wait_at_barrier("test/keys/listed", 60_000)
    return {"keys": sorted(left)}


def crash_loop(directory: str, mesh) -> None:
    """Saves step after step; prints ``SAVED <n>`` once save n is finished."""
    import jaxckpt

    with jaxckpt.CheckpointManager(directory, max_to_keep=3, coordination_timeout_s=60) as m:
        facts = {"step": 0, "latest": None, "shards_checked": 0}
        if m.latest_checkpoint:  # what this start restored, checked bit-exact
            out = m.restore(None, small(mesh, None))
            facts = {"step": int(out["step"]), "latest": os.path.basename(m.latest_checkpoint),
                     "shards_checked": small_check(out)}
        print("START " + json.dumps(facts), flush=True)
        start = facts["step"] + 1
        for step in range(start, start + 1000):
            m.save(small(mesh, step), checkpoint_number=step)
            m.wait_until_finished()
            print(f"SAVED {step}", flush=True)


def preempt(directory: str, mesh, pid: int) -> dict:
    """save_on_preemption under jax.distributed: at step 3 both wait until process 1
    reads a line from stdin (the test SIGTERMs process 1 first), then train on; the
    manager saves at JAX's preemption sync point and the loop stops there."""
    from jax._src import distributed

    import jaxckpt

    client = distributed.global_state.client
    w = small(mesh, 1)["w"]
    facts = {"preempted": None, "last_step": None}
    with jaxckpt.CheckpointManager(directory, step_counter=lambda s: s["step"],
                                   checkpoint_interval=1000, last_checkpoint_step=0,
                                   save_on_preemption=True, coordination_timeout_s=60) as m:
        for step in range(1, 100_000):
            m.save({"w": w, "step": step}, checkpoint_number=step)
            facts["last_step"] = step
            if m.reached_preemption(step):
                facts["preempted"] = step
                break
            if step == 3:
                if pid == 1:
                    print("PAUSED", flush=True)
                    sys.stdin.readline()
                    client.key_value_set("test/go", "1")
                else:
                    client.blocking_key_value_get("test/go", 60_000)
        m.wait_until_finished()
        facts["checkpoints"] = [os.path.basename(p) for p in m.checkpoints]
    return facts


if __name__ == "__main__":
    main()
