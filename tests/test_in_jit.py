"""CheckpointManager.save_in_jit: saving from jit, scan, fori_loop and cond.

Real callbacks, real writer, real files; the 4 CPU devices of conftest.py.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import textwrap
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import jaxckpt
from jaxckpt import CheckpointError, CheckpointWriteError


def _bits(a) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(a)).reshape(-1)
    return a.view(f"uint{8 * a.dtype.itemsize}")


def assert_bit_equal(got, want) -> None:
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def
    for g, w in zip(got_leaves, want_leaves):
        if isinstance(w, str):
            assert g == w
            continue
        if jax.dtypes.issubdtype(getattr(w, "dtype", np.float32), jax.dtypes.prng_key):
            g, w = jax.random.key_data(g), jax.random.key_data(w)
        assert np.asarray(g).dtype == np.asarray(w).dtype
        np.testing.assert_array_equal(_bits(g), _bits(w))


def _numbers(mngr: jaxckpt.CheckpointManager) -> list[int]:
    return [int(p.rsplit("-", 1)[1]) for p in mngr.checkpoints]


def _count_callbacks(caplog) -> int:
    return sum("save_in_jit callback" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- Flax/optax in one scan


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(1)(x)


def _training():
    """A small MLP with adam, its first state, one step, and 100 batches."""
    model = _MLP()
    xs = jax.random.normal(jax.random.key(1), (100, 8, 4), jnp.float32)
    ys = jnp.sum(xs, axis=-1, keepdims=True) * 0.5
    params = model.init(jax.random.key(0), xs[0])
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=optax.adam(1e-2))

    def step(state, batch):
        x, y = batch

        def loss(p):
            return jnp.mean((state.apply_fn(p, x) - y) ** 2)

        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    return state, step, (xs, ys)


def test_scanned_training_checkpoints_every_10_steps_match_a_python_loop(tmp_path, caplog):
    state0, step, (xs, ys) = _training()
    mngr = jaxckpt.CheckpointManager(tmp_path, max_to_keep=None, step_counter=lambda s: s.step,
                                     checkpoint_interval=10)

    @jax.jit
    def train(state, xs, ys):
        def body(state, batch):
            state = step(state, batch)
            mngr.save_in_jit(state)
            return state, None

        return jax.lax.scan(body, state, (xs, ys))[0]

    with caplog.at_level(logging.DEBUG, logger="jaxckpt"):
        final = train(state0, xs, ys)
        mngr.wait_until_finished()
    assert _numbers(mngr) == list(range(10, 101, 10))
    assert _count_callbacks(caplog) == 10  # the other 90 steps never reached the host

    # The same steps one Python call at a time reach exactly the saved states.
    jstep = jax.jit(step)
    state = state0
    for i in range(100):
        state = jstep(state, (xs[i], ys[i]))
        if (i + 1) % 10 == 0:
            assert_bit_equal(mngr.restore(i + 1, target=state), state)
    assert_bit_equal(final, state)
    mngr.close()


def test_max_to_keep_applies_to_saves_from_a_scan(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=3, step_counter=lambda s: s["step"],
                                   checkpoint_interval=10) as mngr:
        def body(s, _):
            s = {"w": s["w"] + 1.0, "step": s["step"] + 1}
            mngr.save_in_jit(s)
            return s, None

        run = jax.jit(lambda s: jax.lax.scan(body, s, None, length=100)[0])
        run({"w": jnp.zeros(3), "step": jnp.asarray(0)})
        mngr.wait_until_finished()
        assert _numbers(mngr) == [80, 90, 100]
        assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-100", "ckpt-80", "ckpt-90"]
        assert mngr.latest_checkpoint == str(tmp_path / "ckpt-100")
        np.testing.assert_array_equal(jaxckpt.restore(tmp_path / "ckpt-90")["w"], np.full(3, 90.0))


# ---------------------------------------------------------------- fori_loop, cond, intervals


def test_fori_loop_with_explicit_step_key_and_static_leaves(tmp_path):
    def advance(s):
        key, sub = jax.random.split(s["key"])
        return {"x": s["x"] + jax.random.normal(sub, (4,)), "key": key}

    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None, step_counter=lambda s: s["n"],
                                   checkpoint_interval=5) as mngr:
        def body(i, s):
            s = advance(s)
            # Python and NumPy leaves are constants of the trace, saved as they are.
            tree = {**s, "n": i + 1, "label": "run-a", "table": np.arange(3)}
            mngr.save_in_jit(tree, step=i + 1)
            return s

        s0 = {"x": jnp.zeros(4), "key": jax.random.key(7)}
        # A traced trip count makes fori_loop a while_loop (a static one, a scan).
        jax.jit(lambda s, n: jax.lax.fori_loop(0, n, body, s))(s0, 23)
        mngr.wait_until_finished()
        assert _numbers(mngr) == [5, 10, 15, 20]

        state = s0
        for _ in range(15):
            state = jax.jit(advance)(state)
        want = {**state, "n": jnp.asarray(15), "label": "run-a", "table": np.arange(3)}
        assert_bit_equal(mngr.restore(15, target=want), want)
        raw = jaxckpt.restore(tmp_path / "ckpt-15")
        assert raw["label"] == "run-a" and isinstance(raw["table"], np.ndarray)


def test_inside_user_cond_saves_only_the_taken_branch(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as mngr:
        def body(s, i):
            s = s + 1.0
            jax.lax.cond(i % 7 == 3, lambda: mngr.save_in_jit({"s": s}, i), lambda: None)
            return s, None

        jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(30))[0])(jnp.zeros(()))
        mngr.wait_until_finished()
        # No checkpoint_interval: every call that runs saves, numbered by its step.
        assert _numbers(mngr) == [3, 10, 17, 24]
        assert float(jaxckpt.restore(tmp_path / "ckpt-17")["s"]) == 18.0


def test_inside_grad_saves_the_primal_values(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path) as mngr:
        def loss(w, step):
            mngr.save_in_jit({"w": w}, step)
            return jnp.sum(w ** 3)

        g = jax.jit(jax.grad(loss))(jnp.arange(3.0), 2)
        np.testing.assert_array_equal(g, [0.0, 3.0, 12.0])
        mngr.wait_until_finished()
        assert _numbers(mngr) == [2]
        np.testing.assert_array_equal(jaxckpt.restore(tmp_path / "ckpt-2")["w"], [0.0, 1.0, 2.0])


def _host_save_numbers(tmp_path, steps, **kw) -> list[int]:
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None, step_counter=lambda s: s["step"],
                                   checkpoint_interval=10, **kw) as mngr:
        for s in steps:
            mngr.save({"step": s}, checkpoint_number=s)
        mngr.wait_until_finished()
        return _numbers(mngr)


@pytest.mark.parametrize("last", [None, 15, 30])
def test_interval_rules_agree_with_host_save(tmp_path, last):
    steps = [10, 20, 20, 25, 30, 40, 40, 50]
    with jaxckpt.CheckpointManager(tmp_path / "jit", max_to_keep=None,
                                   step_counter=lambda s: s["step"], checkpoint_interval=10,
                                   last_checkpoint_step=last) as mngr:
        def body(carry, step):
            mngr.save_in_jit({"step": step})
            return carry, None

        jax.jit(lambda: jax.lax.scan(body, 0, jnp.asarray(steps))[0])()
        mngr.wait_until_finished()
        in_jit = _numbers(mngr)
    # The device sends the multiples of 10 (25 never reaches the host); the host
    # applies save()'s rules to what it is sent, so the result is what save()
    # makes of the same multiples.
    expected = _host_save_numbers(tmp_path / "host", [s for s in steps if s % 10 == 0],
                                  last_checkpoint_step=last)
    assert in_jit == expected
    assert in_jit == {None: [10, 20, 30, 40, 50], 15: [30, 40, 50], 30: [40, 50]}[last]


def test_check_interval_false_sends_every_step_but_skips_a_repeated_one(tmp_path, caplog):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None, step_counter=lambda s: s["step"],
                                   checkpoint_interval=10) as mngr:
        def body(carry, xs):
            step, call = xs
            mngr.save_in_jit({"step": step, "call": call}, check_interval=False)
            return carry, None

        steps = jnp.asarray([3, 4, 4, 12])
        with caplog.at_level(logging.DEBUG, logger="jaxckpt"):
            jax.jit(lambda: jax.lax.scan(body, 0, (steps, jnp.arange(4)))[0])()
            mngr.wait_until_finished()
        assert _count_callbacks(caplog) == 4
        assert _numbers(mngr) == [3, 4, 12]
        assert int(jaxckpt.restore(tmp_path / "ckpt-4")["call"]) == 1  # the repeat was skipped


def test_checkpoint_number_and_metadata(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as mngr:
        @jax.jit
        def f(x, step):
            mngr.save_in_jit({"x": x}, step, checkpoint_number=step // 100,
                             metadata={"run": "a"})
            return x

        f(jnp.ones(2), 300)
        f(jnp.ones(2), 500)
        mngr.wait_until_finished()
        assert _numbers(mngr) == [3, 5]
        assert jaxckpt.user_metadata(tmp_path / "ckpt-5") == {"run": "a"}


# ---------------------------------------------------------------- sharded state


@pytest.mark.parametrize("axes", ["auto", "explicit"])
def test_sharded_state_in_scan_restores_into_its_shardings(tmp_path, axes):
    kind = AxisType.Auto if axes == "auto" else AxisType.Explicit
    mesh = jax.make_mesh((2, 2), ("x", "y"), axis_types=(kind, kind))
    shardings = {"rows": NamedSharding(mesh, P("x")), "grid": NamedSharding(mesh, P("x", "y")),
                 "replicated": NamedSharding(mesh, P())}
    host = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    state = {k: jax.device_put(host * (i + 1), s) for i, (k, s) in enumerate(shardings.items())}
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None) as mngr:
        def body(s, i):
            s = jax.tree_util.tree_map(lambda a: a * 1.5 - 1.0, s)
            jax.lax.cond(i % 4 == 3, lambda: mngr.save_in_jit(s, i + 1), lambda: None)
            return s, None

        final = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(8))[0])(state)
        mngr.wait_until_finished()
        assert _numbers(mngr) == [4, 8]
        restored = mngr.restore(8, target=state)
    for k, s in shardings.items():
        assert restored[k].sharding.is_equivalent_to(s, 2)
        np.testing.assert_array_equal(_bits(restored[k]), _bits(final[k]))


# ---------------------------------------------------------------- asynchrony and errors


def test_signature():
    sig = inspect.signature(jaxckpt.CheckpointManager.save_in_jit)
    assert list(sig.parameters) == ["self", "state", "step", "checkpoint_number",
                                    "check_interval", "metadata"]
    assert [p.kind for p in sig.parameters.values()][3:] == [inspect.Parameter.KEYWORD_ONLY] * 3


def test_callback_queues_the_write_without_waiting_for_it(tmp_path):
    mngr = jaxckpt.CheckpointManager(tmp_path, max_pending=2)
    release = threading.Event()
    mngr._writer.submit(release.wait)  # hold the writer: the save can only queue behind it
    finished = threading.Event()

    def compute():
        jax.jit(lambda x: mngr.save_in_jit({"x": x}, 1))(jnp.ones(3))
        finished.set()

    worker = threading.Thread(target=compute)
    worker.start()
    try:
        # A callback that waited for the write would never finish while the writer is held.
        assert finished.wait(timeout=120), "save_in_jit waited for the write"
        assert mngr.checkpoints == []
    finally:
        release.set()
        worker.join()
    mngr.wait_until_finished()
    assert _numbers(mngr) == [1]
    mngr.close()


@pytest.mark.parametrize("case", ["no_step", "float_step", "vector_step", "negative_step",
                                  "bad_leaf", "closed", "bad_metadata"])
def test_trace_time_errors_are_clear_and_save_nothing(tmp_path, case):
    mngr = jaxckpt.CheckpointManager(tmp_path)
    args: dict = {"state": {"x": jnp.ones(2)}, "step": 1}
    expect: tuple = (TypeError, "step must be an integer scalar")
    if case == "no_step":
        args["step"], expect = None, (ValueError, "needs the step")
    elif case == "float_step":
        args["step"] = jnp.asarray(1.0)
    elif case == "vector_step":
        args["step"] = jnp.arange(2)
    elif case == "negative_step":
        args["step"], expect = -1, (ValueError, "step must be >= 0")
    elif case == "bad_leaf":
        args["state"] = {"x": jnp.ones(2), "opt": {"fn": object()}}
        expect = (TypeError, r"key path \['opt'\]\['fn'\]")
    elif case == "closed":
        mngr.close()
        expect = (CheckpointError, "is closed")
    else:
        args["metadata"], expect = {"f": object()}, (TypeError, "metadata must be JSON-able")
    with pytest.raises(expect[0], match=expect[1]):
        jax.jit(lambda x: mngr.save_in_jit(**{**args, "state": {**args["state"], "x": x}}))(
            jnp.ones(2))
    mngr.close()
    assert os.listdir(tmp_path) == []


def test_callback_failures_surface_on_the_next_host_call(tmp_path):
    mngr = jaxckpt.CheckpointManager(tmp_path)
    run = jax.jit(lambda x, step: (mngr.save_in_jit({"x": x}, step), x * 2)[1])
    # A negative traced step is only known on the host: the computation still
    # finishes with its result, and the error waits for the next host call.
    out = run(jnp.ones(2), -5)
    np.testing.assert_array_equal(out, [2.0, 2.0])
    with pytest.raises(CheckpointWriteError, match="step must be >= 0, got -5") as info:
        mngr.wait_until_finished()
    assert isinstance(info.value.__cause__, CheckpointError)
    assert "save_in_jit of step -5" in str(info.value.__cause__)
    mngr.wait_until_finished()  # raised once; the manager goes on
    run(jnp.ones(2), 4)
    mngr.wait_until_finished()
    assert _numbers(mngr) == [4]
    # The compiled function outlives the manager: it finishes, the save is refused.
    mngr.close()
    np.testing.assert_array_equal(run(jnp.ones(2), 6), [2.0, 2.0])
    with pytest.raises(CheckpointWriteError, match="save_in_jit of step 6 .* is closed"):
        mngr.close()
    assert _numbers(mngr) == [4]


_FAULT_SCRIPT = textwrap.dedent("""
    import os, resource, signal, sys
    import jax, jax.numpy as jnp, numpy as np
    import jaxckpt
    from jaxckpt import CheckpointWriteError
    d = sys.argv[1]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    m = jaxckpt.CheckpointManager(d, max_to_keep=None, step_counter=lambda s: s["step"],
                                  checkpoint_interval=2)
    def body(s, _):
        s = {"w": s["w"] + 1.0, "step": s["step"] + 1}
        m.save_in_jit(s)
        return s, None
    run = jax.jit(lambda s: jax.lax.scan(body, s, None, length=4)[0])
    small = {"w": jnp.zeros(8), "step": jnp.asarray(0)}
    big = {"w": jnp.zeros(2 << 20), "step": jnp.asarray(4)}
    run(small)
    m.wait_until_finished()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    out = run(big)                      # saves steps 6 and 8; both writes fail
    assert float(out["w"][0]) == 4.0, "the computation's result was lost"
    causes = []
    for _ in range(2):
        try:
            m.wait_until_finished()
        except CheckpointWriteError as e:
            causes.append(type(e.__cause__).__name__)
    m.wait_until_finished()
    print("CAUSES", len(causes), all(c != "NoneType" for c in causes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert m.checkpoints == [os.path.join(d, "ckpt-2"), os.path.join(d, "ckpt-4")], m.checkpoints
    assert jaxckpt.latest_checkpoint(d) == os.path.join(d, "ckpt-4")
    run({"w": jnp.zeros(2 << 20), "step": jnp.asarray(8)})
    m.close()
    np.testing.assert_array_equal(jaxckpt.restore(os.path.join(d, "ckpt-12"))["w"],
                                  np.full(2 << 20, 4.0, np.float32))
    print("LEFT", sorted(os.listdir(d)))
""")


@pytest.mark.slow  # child processes
def test_write_failure_surfaces_on_the_next_host_call_and_manager_recovers(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _FAULT_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CAUSES 2 True" in proc.stdout, proc.stdout
    assert "LEFT ['checkpoint', 'ckpt-10', 'ckpt-12', 'ckpt-2', 'ckpt-4']" in proc.stdout, \
        proc.stdout


_ASYNC_SCRIPT = textwrap.dedent("""
    import os, sys, threading
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import io_callback
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxckpt
    d = sys.argv[1]
    m = jaxckpt.CheckpointManager(d, max_to_keep=None, step_counter=lambda s: s["step"],
                                  checkpoint_interval=5)
    gate = threading.Event()
    def body(s, _):
        s = {"w": s["w"] + 1.0, "step": s["step"] + 1}
        m.save_in_jit(s)
        return s, None
    def hold():
        gate.wait()
    @jax.jit
    def run(s):
        io_callback(hold, None, ordered=True)  # holds the computation until we say
        return jax.lax.scan(body, s, None, length=20)[0]
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:4]), ("x",)), P("x"))
    def start(step):
        return {"w": jax.device_put(jnp.zeros(8), sharding), "step": jnp.asarray(step)}
    def dispatch(step):
        # A multi-device CPU computation is dispatched asynchronously, as on GPU.
        # Should this one run synchronously, the timer opens the gate: skip.
        gate.clear()
        guard = threading.Timer(20, gate.set)
        guard.start()
        out = run(start(step))
        guard.cancel()
        if gate.is_set():
            print("SYNCHRONOUS"); sys.exit(0)
        return out
    gate.set(); run(start(0)); m.wait_until_finished()          # compile
    numbers = lambda: [int(p.rsplit("-", 1)[1]) for p in m.checkpoints]

    out = dispatch(100)
    gate.set()
    m.wait_until_finished()        # must wait for the callbacks still to run
    print("DRAIN", numbers()[-4:])

    out = dispatch(200)
    # No new computation on `out` here: on CPU a dispatch may wait inline for its inputs.
    later = {"w": out["w"], "step": jnp.asarray(1000)}
    entering, saved = threading.Event(), threading.Event()
    def host_save():
        entering.set()
        m.save(later, 999, check_interval=False)
        saved.set()
    threading.Thread(target=host_save, daemon=True).start()
    entering.wait()   # save() is about to wait for `later` while the computation is held
    gate.set()
    if not saved.wait(timeout=30):  # XLA aborts a stuck CPU collective after 40 s
        print("DEADLOCK", flush=True); os._exit(3)
    m.close()
    print("SAVED", numbers()[-5:])
""")


@pytest.mark.slow  # child processes
def test_host_calls_wait_for_dispatched_computations(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _ASYNC_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    if "SYNCHRONOUS" in proc.stdout:
        pytest.skip("this JAX runs multi-device CPU computations synchronously")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "DRAIN [105, 110, 115, 120]" in proc.stdout, proc.stdout
    assert "SAVED [205, 210, 215, 220, 999]" in proc.stdout, proc.stdout
