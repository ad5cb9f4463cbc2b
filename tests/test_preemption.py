"""save_on_preemption: a real SIGTERM saves the next step, then goes where it would have gone.

In this process: the previous Python handler is called after the commit (from
``save`` and from a ``save_in_jit`` step), the option's checks. In real child
processes (slow): a training run gets SIGTERM from the test under the default
action and dies of it right after the checkpoint of its next step commits; a
second run (with its own handler) resumes from exactly that step with the
losses of an uninterrupted run, bit for bit; then two ``jax.distributed``
processes, one of them SIGTERMed, save the same step and stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt

HERE = os.path.dirname(__file__)
CHILD = os.path.join(HERE, "_preemption_child.py")


@pytest.fixture
def sigterm_calls():
    """A Python SIGTERM handler of the test's own (put back afterwards); its calls."""
    calls: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        yield calls
    finally:
        signal.signal(signal.SIGTERM, before)


def _manager(d, **kw) -> jaxckpt.CheckpointManager:
    return jaxckpt.CheckpointManager(d, step_counter=lambda s: s["step"],
                                     checkpoint_interval=1000, last_checkpoint_step=0,
                                     save_on_preemption=True, **kw)


def test_sigterm_forces_the_next_save_then_calls_the_previous_handler(tmp_path, sigterm_calls):
    mngr = _manager(tmp_path / "run")
    ours = signal.getsignal(signal.SIGTERM)
    assert ours is not None and getattr(ours, "__name__", "") != "<lambda>"
    saved = {}
    for step in range(1, 50):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
            assert sigterm_calls == []  # recorded only: the save comes first
        path = mngr.save({"w": np.full(3, step, np.float32), "step": step},
                         checkpoint_number=step)
        if path is not None:
            saved[step] = sigterm_calls[:]  # the handler's calls as save() returns
        if mngr.reached_preemption(step):
            break
    # The first save after the signal, interval 1000 notwithstanding, committed
    # before save() returned; the test's handler was called once, after it.
    (at,) = saved
    assert at in (4, 5) and step == at, (saved, step)
    assert saved[at] == [signal.SIGTERM]
    assert mngr.checkpoints == [str(tmp_path / "run" / f"ckpt-{at}")] and not mngr.pending
    assert not mngr.reached_preemption(at - 1) and mngr.reached_preemption(at + 7)
    # The handler installed before is back: a second SIGTERM goes straight to it.
    assert getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "<lambda>"
    os.kill(os.getpid(), signal.SIGTERM)
    assert sigterm_calls == [signal.SIGTERM] * 2
    assert mngr.save({"w": np.zeros(3, np.float32), "step": at + 1}) is None  # interval again
    mngr.close()
    assert int(jaxckpt.restore(tmp_path / "run" / f"ckpt-{at}")["step"]) == at


def test_save_in_jit_step_after_sigterm_saves_despite_the_interval(tmp_path, sigterm_calls):
    mngr = _manager(tmp_path / "run")

    @jax.jit
    def run(state):
        def body(s, _):
            s = {"w": s["w"] + 1.0, "step": s["step"] + 1}
            mngr.save_in_jit(s)
            return s, None
        return jax.lax.scan(body, state, None, length=5)[0]

    state = run({"w": jnp.zeros(3), "step": jnp.asarray(0)})
    jax.block_until_ready(state)
    assert not mngr.checkpoints and not mngr.reached_preemption(5)
    os.kill(os.getpid(), signal.SIGTERM)
    state = run(state)  # steps 6-10: step 6 is saved, the others skip
    jax.block_until_ready(state)
    mngr.wait_until_finished()
    assert mngr.checkpoints == [str(tmp_path / "run" / "ckpt-6")]
    assert mngr.reached_preemption(10) and not mngr.reached_preemption(5)
    # Handed on from the callback thread: the handler runs once the main thread runs Python.
    for _ in range(100):
        if sigterm_calls:
            break
    assert sigterm_calls == [signal.SIGTERM]
    mngr.close()
    out = jaxckpt.restore(tmp_path / "run" / "ckpt-6")
    assert int(out["step"]) == 6 and out["w"].tolist() == [6.0] * 3


def test_close_hands_a_recorded_sigterm_on_and_puts_the_handler_back(tmp_path, sigterm_calls):
    mngr = _manager(tmp_path / "run")
    os.kill(os.getpid(), signal.SIGTERM)
    assert sigterm_calls == []
    mngr.close()  # no save came: the signal is not lost
    assert sigterm_calls == [signal.SIGTERM]
    assert getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "<lambda>"
    with _manager(tmp_path / "quiet"):
        pass  # no signal: closing just puts the previous handler back
    assert getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "<lambda>"
    assert sigterm_calls == [signal.SIGTERM]


def test_without_the_option_nothing_is_installed(tmp_path, sigterm_calls):
    before = signal.getsignal(signal.SIGTERM)
    with jaxckpt.CheckpointManager(tmp_path / "run") as mngr:
        assert signal.getsignal(signal.SIGTERM) is before
        assert mngr.reached_preemption(10**6) is False


@pytest.mark.parametrize("value, error, words", [
    ("yes", TypeError, "save_on_preemption must be a bool"),
    (1, TypeError, "save_on_preemption must be a bool"),
])
def test_bad_option_is_refused_before_anything_is_written(tmp_path, value, error, words):
    with pytest.raises(error, match=words):
        jaxckpt.CheckpointManager(tmp_path / "run", save_on_preemption=value)
    assert not (tmp_path / "run").exists()


def test_read_only_or_off_the_main_thread_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="read-only manager never saves"):
        jaxckpt.CheckpointManager(tmp_path / "ro", read_only=True, save_on_preemption=True)
    got = []

    def make():
        try:
            jaxckpt.CheckpointManager(tmp_path / "thread", save_on_preemption=True)
        except ValueError as e:
            got.append(str(e))

    t = threading.Thread(target=make)
    t.start()
    t.join()
    assert got and "only on the main thread" in got[0] and "thread" in got[0], got
    assert not (tmp_path / "ro").exists() and not (tmp_path / "thread").exists()
    with pytest.raises(ValueError, match="step must be"):
        with jaxckpt.CheckpointManager(tmp_path / "ok") as m:
            m.reached_preemption(-1)


# ------------------------------------------------------------ real processes


def _start(directory, mode: str, steps: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen([sys.executable, CHILD, str(directory), mode, str(steps)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _sigterm_at_pause(proc: subprocess.Popen) -> list[dict]:
    """Reads events until ``paused``, sends SIGTERM, lets it go on; all its events."""
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "paused":
            proc.send_signal(signal.SIGTERM)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            break
    out, err = proc.communicate(timeout=120)
    events += [json.loads(line) for line in out.splitlines()]
    proc.stderr_text = err  # type: ignore[attr-defined]
    return events


def _losses(events) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


@pytest.mark.slow
def test_sigterm_to_a_training_process_saves_its_next_step_and_resume_is_exact(tmp_path):
    d = tmp_path / "run"
    steps = 40
    first = _start(d, "default", steps)
    ev1 = _sigterm_at_pause(first)
    # The default action, one commit later: killed by SIGTERM, right after the
    # checkpoint of the step after the pause (interval 1000: the only one).
    assert first.returncode == -signal.SIGTERM, (first.returncode, first.stderr_text[-3000:])
    assert "preemption: SIGTERM received; the checkpoint of step" in first.stderr_text
    ckpts = sorted(n for n in os.listdir(d) if n.startswith("ckpt-"))
    assert len(ckpts) == 1, ckpts
    k1 = int(ckpts[0].split("-")[1])
    losses1 = _losses(ev1)
    assert k1 in (4, 5) and max(losses1) == k1, (k1, sorted(losses1))
    assert jaxckpt.latest_checkpoint(d) == str(d / ckpts[0])

    # Resumed, with a Python handler of its own: SIGTERM again after 3 steps.
    second = _start(d, "handler", steps)
    ev2 = _sigterm_at_pause(second)
    assert second.returncode == 0, second.stderr_text[-3000:]
    start = next(e for e in ev2 if e["event"] == "start")
    assert start["step"] == k1
    saved = [e for e in ev2 if e["event"] == "saved"]
    preempted = [e for e in ev2 if e["event"] == "preempted"]
    done = next(e for e in ev2 if e["event"] == "done")
    assert len(saved) == 1 and preempted and saved[0]["step"] == preempted[0]["step"]
    k2 = saved[0]["step"]
    assert k2 in (k1 + 4, k1 + 5)
    assert saved[0]["handler_calls"] == 1 and done["handler_calls"] == 1  # called once, after
    assert done["handler_back"]
    losses2 = _losses(ev2)
    assert sorted(losses2) == list(range(k1 + 1, k2 + 1))
    reference = done["reference"]  # a fresh model, uninterrupted, in the same process
    got = [losses1[s] for s in range(1, k1 + 1)] + [losses2[s] for s in range(k1 + 1, k2 + 1)]
    print(f"\npreempted at {k1}, resumed, preempted at {k2}\n"
          f"losses (two runs): {got}\nuninterrupted:     {reference[:k2]}")
    assert got == reference[:k2]  # bit for bit (JSON round-trips a float exactly)
    out = jaxckpt.restore(d / f"ckpt-{k2}")
    assert int(out["step"]) == k2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_one_sigtermed_save_the_same_step_and_stop(tmp_path):
    d = tmp_path / "run"
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAXCKPT_TEST_STACKS_AFTER_S": "100"}
    worker = os.path.join(HERE, "_multihost_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, "preempt", str(d), str(port), "2",
                               str(i), "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    try:
        for line in procs[1].stdout:  # both wait at step 3 until process 1 reads a line
            if line.startswith("PAUSED"):
                break
        procs[1].send_signal(signal.SIGTERM)
        procs[1].stdin.write("go\n")
        procs[1].stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    facts = []
    for p, (out, err) in zip(procs, outs):
        ok = [line for line in out.splitlines() if line.startswith("OK ")]
        assert p.returncode == 0 and ok, f"rc={p.returncode}\n{out[-2000:]}\n{err[-4000:]}"
        facts.append(json.loads(ok[-1][3:]))
    # JAX's notifier kept process 1 alive; both agreed on one step, saved it, stopped there.
    assert facts[0]["preempted"] == facts[1]["preempted"] is not None, facts
    at = facts[0]["preempted"]
    assert at > 3 and facts[0]["last_step"] == facts[1]["last_step"] == at, facts
    # JAX's notifier looks for the signal about once a second: the interval saves
    # (every 1000 steps) of the steps in between, then the preemption save, the last.
    kept = facts[0]["checkpoints"]
    assert facts[1]["checkpoints"] == kept and kept[-1] == f"ckpt-{at}", facts
    assert all(int(n.split("-")[1]) % 1000 == 0 for n in kept[:-1]), kept
    assert jaxckpt.latest_checkpoint(d) == str(d / f"ckpt-{at}")
    assert int(jaxckpt.restore(d / f"ckpt-{at}")["step"]) == at


def test_readme_example_runs(tmp_path, sigterm_calls):
    import re

    with open(os.path.join(HERE, "..", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    (body,) = [b for b in re.findall(r"^```python\n(.*?)^```", readme, re.M | re.S)
               if "save_on_preemption=True" in b]
    ns: dict = {}
    try:
        exec(compile(body.replace("/tmp/", f"{tmp_path}/"), "README.md", "exec"), ns)
    finally:
        signal.signal(signal.SIGTERM, lambda signum, frame: sigterm_calls.append(signum))
    assert ns["stop_requests"] == [signal.SIGTERM]
    # ckpt-1 (the first save, as TensorFlow's rule has it), then the preemption save.
    assert ns["step"] in (42, 43) and ns["mngr"].checkpoints == [
        str(tmp_path / "preempt" / f"ckpt-{n}") for n in (1, ns["step"])]
