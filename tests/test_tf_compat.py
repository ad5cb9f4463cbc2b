"""TensorFlow's CheckpointManager scenarios, ported to both jaxckpt managers.

Each scenario of TensorFlow's ``CheckpointManagerTest`` (checkpoint_management
tests) runs against ``jaxckpt.tf_compat.CheckpointManager`` over a
``tf_compat.Checkpoint`` holder and against ``jaxckpt.CheckpointManager`` over a
pytree. Only the public contract (shared/API.md) is used; time comes from a
``FakeClock`` passed as ``clock=``.

Two drivers, one suite (this file merges two earlier ports of the same TF tests):

- ``Harness`` (fixture ``kind``) keeps ``x`` (a float32 scalar) and ``step`` (an
  int64 scalar) and leaves waiting to the test, so it also sees a save pending.
- ``Core`` / ``TF`` (fixture ``make``) keep ``v`` (two float64s) and ``step`` (a
  Python int), build a fresh holder on each reopen, and wait after every save,
  as TensorFlow's scenarios look at the disk right after it.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from jaxckpt import tf_compat

KINDS = ("tf_compat", "core")


class FakeClock:
    """A mutable clock for ``clock=``: reads ``now`` until told otherwise."""

    def __init__(self, now: float = 0.0):
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ckpt_path(directory: str | os.PathLike, number: int, name: str = "ckpt") -> str:
    """The path the contract gives checkpoint ``number``: ``<dir>/<name>-<N>``."""
    return os.path.join(os.fspath(directory), f"{name}-{number}")


# ---------------------------------------------------------------- state file

_LINE = re.compile(r'^\s*([a-z_]+)\s*:\s*(.*?)\s*$')


def state_file_text(directory: str | os.PathLike) -> str:
    with open(os.path.join(os.fspath(directory), "checkpoint"), encoding="utf-8") as f:
        return f.read()


def read_state_file(directory: str | os.PathLike) -> dict[str, list[Any]]:
    """Parses ``<directory>/checkpoint`` (TF text format) into field -> values.

    String fields keep their raw (unresolved) text; float fields become floats.
    Absent fields are absent from the dict.
    """
    fields: dict[str, list[Any]] = {}
    for line in state_file_text(directory).splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        assert m, f"state file line is not 'field: value': {line!r}"
        key, raw = m.groups()
        if raw.startswith('"'):
            assert raw.endswith('"') and len(raw) >= 2, f"unterminated string in {line!r}"
            value: Any = raw[1:-1]
        else:
            value = float(raw)
        fields.setdefault(key, []).append(value)
    return fields


def write_tf_state_file(directory: str | os.PathLike, model: str, paths: list[str]) -> None:
    """Writes a state file the way TensorFlow's older savers did: the paths as
    given (absolute here), no timestamps, no ``last_preserved_timestamp``."""
    lines = [f'model_checkpoint_path: "{model}"']
    lines += [f'all_model_checkpoint_paths: "{p}"' for p in paths]
    with open(os.path.join(os.fspath(directory), "checkpoint"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- harness


class Harness:
    """One training "program" driving a manager of the given kind.

    ``open(**kwargs)`` (re)creates the manager on the same directory, closing
    the previous one, as a restarted TensorFlow job would; the state (and, for
    ``tf_compat``, the holder with its ``save_counter``) carries over.
    """

    def __init__(self, kind: str, directory: str | os.PathLike, *,
                 clock: FakeClock | None = None, x: float = 0.0, step: int = 0):
        assert kind in KINDS, kind
        self.kind = kind
        self.directory = directory
        self.clock = clock
        self.mngr: Any = None
        self._state = {"x": np.asarray(x, np.float32), "step": np.asarray(step, np.int64)}
        self.holder = (jaxckpt.tf_compat.Checkpoint(**self._state)
                       if kind == "tf_compat" else None)

    # -- the saved state

    @property
    def x(self) -> float:
        src = self.holder.x if self.holder is not None else self._state["x"]
        return float(np.asarray(src))

    @x.setter
    def x(self, value: float) -> None:
        self._set("x", np.asarray(value, np.float32))

    @property
    def step(self) -> int:
        src = self.holder.step if self.holder is not None else self._state["step"]
        return int(np.asarray(src))

    @step.setter
    def step(self, value: int) -> None:
        self._set("step", np.asarray(value, np.int64))

    def _set(self, name: str, value: np.ndarray) -> None:
        if self.holder is not None:
            setattr(self.holder, name, value)
        else:
            self._state = {**self._state, name: value}

    # -- the manager

    def open(self, max_to_keep: Any = 5, *, step_counter: bool = False, **kwargs: Any) -> Any:
        """(Re)creates the manager; ``step_counter=True`` wires one to ``step``.

        Other keyword arguments go to the constructor unchanged.
        """
        self.close()
        if self.clock is not None:
            kwargs.setdefault("clock", self.clock)
        if self.kind == "tf_compat":
            if step_counter:
                kwargs["step_counter"] = lambda: int(np.asarray(self.holder.step))
            self.mngr = jaxckpt.tf_compat.CheckpointManager(
                self.holder, self.directory, max_to_keep, **kwargs)
        else:
            if step_counter:
                kwargs["step_counter"] = lambda s: int(s["step"])
            self.mngr = jaxckpt.CheckpointManager(
                self.directory, max_to_keep=max_to_keep, **kwargs)
        return self.mngr

    def save(self, checkpoint_number: Any = None, check_interval: bool = True) -> str | None:
        if self.kind == "tf_compat":
            return self.mngr.save(checkpoint_number=checkpoint_number,
                                  check_interval=check_interval)
        return self.mngr.save(dict(self._state), checkpoint_number=checkpoint_number,
                              check_interval=check_interval)

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    @property
    def checkpoints(self) -> list[str]:
        # tf_compat's property waits on its own; core shows committed ones only.
        if self.kind == "core":
            self.wait()
        return self.mngr.checkpoints

    @property
    def latest(self) -> str | None:
        if self.kind == "core":
            self.wait()
        return self.mngr.latest_checkpoint

    def exists(self, path: str) -> bool:
        """Whether checkpoint ``path`` is on disk once pending work is done."""
        self.wait()
        return os.path.isdir(path)

    def restore_latest(self) -> str:
        """Restores the latest checkpoint into this harness's state; its path.

        tf_compat: ``restore_or_initialize`` (restores into the holder).
        core: ``restore()`` with the current state as the target.
        """
        if self.kind == "tf_compat":
            path = self.mngr.restore_or_initialize()
            assert path is not None, "restore_or_initialize found no checkpoint"
            return path
        latest = self.latest
        assert latest is not None, "the core manager has no latest checkpoint"
        self._state = dict(self.mngr.restore(target=dict(self._state)))
        return latest

    def close(self) -> None:
        if self.mngr is not None:
            self.mngr.close()
            self.mngr = None

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------- the second driver


class Core:
    """Drives the core manager with a TF-like surface; waits after each save."""

    name = "core"

    def __init__(self, directory, max_to_keep, **kw):
        self.value = np.zeros(2)
        self.step = 0
        if "step_counter" in kw:
            kw["step_counter"] = lambda s: s["step"]
        self.m = jaxckpt.CheckpointManager(directory, max_to_keep=max_to_keep, **kw)

    def save(self, checkpoint_number=None, check_interval=True):
        path = self.m.save({"v": self.value, "step": self.step}, checkpoint_number, check_interval)
        self.m.wait_until_finished()  # TF's scenarios look at the disk right after save
        return path

    def restore_latest(self):
        return self.m.restore_or_initialize()

    @property
    def checkpoints(self):
        self.m.wait_until_finished()
        return self.m.checkpoints

    @property
    def latest(self):
        self.m.wait_until_finished()
        return self.m.latest_checkpoint

    def close(self):
        self.m.close()


class TF:
    name = "tf"

    def __init__(self, directory, max_to_keep, **kw):
        self.ckpt = tf_compat.Checkpoint(v=np.zeros(2), step=0)
        if "step_counter" in kw:
            kw["step_counter"] = lambda: self.ckpt.step
        self.m = tf_compat.CheckpointManager(self.ckpt, directory, max_to_keep, **kw)

    value = property(lambda s: s.ckpt.v, lambda s, v: setattr(s.ckpt, "v", v))
    step = property(lambda s: s.ckpt.step, lambda s, v: setattr(s.ckpt, "step", v))

    def save(self, checkpoint_number=None, check_interval=True):
        path = self.m.save(checkpoint_number, check_interval)
        self.m.wait_until_finished()
        return path

    def restore_latest(self):
        return self.m.restore_or_initialize()

    checkpoints = property(lambda s: s.m.checkpoints)
    latest = property(lambda s: s.m.latest_checkpoint)

    def close(self):
        self.m.close()


@pytest.fixture(params=[Core, TF], ids=["core", "tf_compat"])
def make(request):
    made = []

    def _make(*a, **kw):
        m = request.param(*a, **kw)
        made.append(m)
        return m

    yield _make
    for m in made:
        m.close()


HOUR = 3600.0


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


# ---------------------------------------------------------------- retention


def test_deletion_keeps_max_to_keep_newest(kind, tmp_path):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=3)
        paths = [h.save() for _ in range(4)]
        assert paths == [ckpt_path(tmp_path, n) for n in (1, 2, 3, 4)]
        assert not h.exists(paths[0])
        assert all(h.exists(p) for p in paths[1:])
        assert h.checkpoints == paths[1:]
        assert h.latest == paths[3]
    state = read_state_file(tmp_path)
    assert state["model_checkpoint_path"] == ["ckpt-4"]
    assert state["all_model_checkpoint_paths"] == ["ckpt-2", "ckpt-3", "ckpt-4"]


def test_keep_all_survives_reopen_then_max_to_keep_applies(kind, tmp_path):
    directory = tmp_path / "run"  # not created beforehand, as in TensorFlow
    with Harness(kind, str(directory)) as h:
        h.open(max_to_keep=None)
        first, second, third = (h.save() for _ in range(3))
        assert [first, second, third] == [ckpt_path(directory, n) for n in (1, 2, 3)]
        assert all(h.exists(p) for p in (first, second, third))
        assert h.latest == third
        assert h.checkpoints == [first, second, third]

        h.open(max_to_keep=None)
        fourth = h.save()
        assert fourth == ckpt_path(directory, 4)
        assert h.checkpoints == [first, second, third, fourth]

        # Tightening max_to_keep deletes nothing until the next save.
        h.open(max_to_keep=3)
        assert h.checkpoints == [first, second, third, fourth]
        assert all(h.exists(p) for p in (first, second, third, fourth))
        fifth = h.save()
        assert h.checkpoints == [third, fourth, fifth]
        assert all(h.exists(p) for p in (third, fourth, fifth))
        assert not h.exists(first)
        assert not h.exists(second)


def test_save_restore_state_with_keep_checkpoint_every_n_hours(kind, tmp_path):
    clock = FakeClock(3.0)
    name = {n: ckpt_path(tmp_path, n) for n in range(1, 7)}
    with Harness(kind, tmp_path, clock=clock) as h:
        h.open(max_to_keep=2)
        first_time = clock.now = 10000.0
        assert h.save() == name[1]
        second_time = clock.now = first_time + 3610.0
        assert h.save() == name[2]
        h.wait()
        assert read_state_file(tmp_path)["all_model_checkpoint_timestamps"] == [
            first_time, second_time]
        assert h.checkpoints == [name[1], name[2]]
        assert h.latest == name[2]

        # A restarted job recovers the active set and the timestamps.
        h.open(max_to_keep=2, keep_checkpoint_every_n_hours=1.5)
        assert h.checkpoints == [name[1], name[2]]
        assert h.latest == name[2]
        third_time = clock.now = second_time + 0.2 * HOUR
        assert h.save() == name[3]
        # ckpt-1 is 1.5 h past the last preserved time: preserved, not listed.
        assert h.exists(name[1])
        assert h.exists(name[2])
        assert h.checkpoints == [name[2], name[3]]
        assert read_state_file(tmp_path)["last_preserved_timestamp"] == [first_time]

        fourth_time = clock.now = third_time + 0.5 * HOUR
        assert h.save() == name[4]
        assert h.exists(name[1])
        assert not h.exists(name[2])  # under 1.5 h after ckpt-1: deleted
        assert h.checkpoints == [name[3], name[4]]

        clock.now = fourth_time + 0.5 * HOUR
        assert h.save() == name[5]
        assert not h.exists(name[3])
        assert h.checkpoints == [name[4], name[5]]
        h.wait()
        assert read_state_file(tmp_path)["last_preserved_timestamp"] == [first_time]

        # Another restart: last_preserved_timestamp comes back from the file.
        h.open(max_to_keep=2, keep_checkpoint_every_n_hours=1.5)
        assert h.latest == name[5]
        clock.advance(10.0)
        assert h.save() == name[6]
        h.wait()
        assert read_state_file(tmp_path)["last_preserved_timestamp"] == [fourth_time]
        for n in (1, 4, 5, 6):
            assert h.exists(name[n]), n
        for n in (2, 3):
            assert not h.exists(name[n]), n
        assert h.checkpoints == [name[5], name[6]]


def _warned(caplog, caught) -> list[str]:
    """Messages of WARNING+ log records and Python warnings seen so far."""
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return messages + [str(w.message) for w in caught]


def test_clock_went_backwards_warns_and_keeps_everything(kind, tmp_path, caplog):
    clock = FakeClock(10000.0)
    with Harness(kind, tmp_path, clock=clock) as h:
        h.open(max_to_keep=1, keep_checkpoint_every_n_hours=1.0)
        first = h.save()
        clock.advance(HOUR)
        second = h.save()
        clock.advance(HOUR)
        third = h.save()
        assert not h.exists(first)
        assert h.exists(second)  # preserved: one hour after the start
        assert h.exists(third)
        assert h.checkpoints == [third]
        h.wait()
        assert read_state_file(tmp_path)["last_preserved_timestamp"] == [13600.0]

        clock.now = 5000.0  # the clock is set back before the restart
        h.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            h.open(max_to_keep=1)
        messages = _warned(caplog, caught)
        assert messages, "no warning that the clock is behind the last preserved timestamp"

        # Unsure what was preserved, the manager keeps every old checkpoint and
        # no longer tracks them.
        assert h.exists(second)
        assert h.latest == third
        assert h.checkpoints == []
        clock.advance(10.0)
        fourth = h.save()
        assert h.exists(second)
        assert h.exists(third)
        assert h.latest == fourth
        assert h.checkpoints == [fourth]
        clock.advance(10.0)
        fifth = h.save()
        assert h.exists(second)
        assert h.exists(third)
        assert not h.exists(fourth)
        assert h.checkpoints == [fifth]
        h.wait()
    state = read_state_file(tmp_path)
    assert state["last_preserved_timestamp"] == [5000.0]
    assert state["all_model_checkpoint_timestamps"] == [5020.0]
    assert state["all_model_checkpoint_paths"] == [os.path.basename(fifth)]


def test_continue_from_unmanaged_checkpoints(kind, tmp_path):
    """Checkpoints saved outside a manager (TF's ``Checkpoint.save``) are
    restored from but never tracked or deleted by the manager."""
    unusual = [ckpt_path(tmp_path, n, "unusual_prefix") for n in (1, 2)]
    if kind == "tf_compat":
        with Harness(kind, tmp_path) as writer:
            writer.open(max_to_keep=None, checkpoint_name="unusual_prefix")
            writer.x = 1.0
            assert writer.save() == unusual[0]
            writer.x = 2.0
            assert writer.save() == unusual[1]
    else:
        jaxckpt.save(unusual[0], {"x": np.float32(1.0), "step": np.int64(0)})
        jaxckpt.save(unusual[1], {"x": np.float32(2.0), "step": np.int64(0)})
    # What TensorFlow's Checkpoint.save leaves: only the newest, no timestamps.
    with open(tmp_path / "checkpoint", "w", encoding="utf-8") as f:
        f.write('model_checkpoint_path: "unusual_prefix-2"\n'
                'all_model_checkpoint_paths: "unusual_prefix-2"\n')

    with Harness(kind, tmp_path, x=-1.0) as h:
        h.open(max_to_keep=2)
        assert h.latest == unusual[1]
        assert h.restore_latest() == unusual[1]
        assert h.x == 2.0
        if kind == "tf_compat":
            assert h.holder.save_counter == 2
        third = h.save()
        assert h.checkpoints == [third]
        fourth = h.save()
        assert h.checkpoints == [third, fourth]
        fifth = h.save()
        assert h.checkpoints == [fourth, fifth]
        if kind == "tf_compat":
            assert [third, fourth, fifth] == [ckpt_path(tmp_path, n) for n in (3, 4, 5)]
        assert len({third, fourth, fifth} | set(unusual)) == 5
        assert all(h.exists(p) for p in unusual)
        assert not h.exists(third)
        assert h.exists(fourth)
        assert h.exists(fifth)


# ---------------------------------------------------------------- numbering


@pytest.mark.parametrize("as_array", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
def test_custom_numbering(kind, tmp_path, as_array):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=2)
        path = None
        for i in range(5):
            number = as_array(h.step)
            assert number.shape == ()
            path = h.save(checkpoint_number=number)
            assert path == ckpt_path(tmp_path, 2 * i)
            h.step += 2
        if kind == "tf_compat":
            assert h.holder.save_counter == 5  # counts saves, whatever their number
        last_path = h.save(checkpoint_number=32)
        assert last_path == ckpt_path(tmp_path, 32)
        assert h.latest == last_path
        h.wait()
        assert jaxckpt.latest_checkpoint(tmp_path) == last_path
        assert h.checkpoints == [path, last_path]
    assert read_state_file(tmp_path)["all_model_checkpoint_paths"] == ["ckpt-8", "ckpt-32"]


def test_default_numbering_continues_after_custom_numbers(kind, tmp_path):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=None)
        assert h.save() == ckpt_path(tmp_path, 1)
        assert h.save(checkpoint_number=10) == ckpt_path(tmp_path, 10)
        following = h.save()
        if kind == "tf_compat":
            assert following == ckpt_path(tmp_path, 3)  # save_counter, as TF
        else:
            assert following == ckpt_path(tmp_path, 11)  # largest saved + 1


def test_saving_an_existing_number_replaces_it_and_moves_it_last(kind, tmp_path):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=2)
        h.x = 1.0
        first = h.save(checkpoint_number=1)
        h.x = 2.0
        second = h.save(checkpoint_number=2)
        h.x = 3.0
        again = h.save(checkpoint_number=1)
        assert again == first
        assert h.checkpoints == [second, first]
        assert h.latest == first
        h.x = 0.0
        assert h.restore_latest() == first
        assert h.x == 3.0  # the replacement, not the original

        h.x = 4.0
        third = h.save(checkpoint_number=3)
        assert h.checkpoints == [first, third]
        assert not h.exists(second)
        assert h.exists(first)


def test_custom_checkpoint_name(kind, tmp_path):
    with Harness(kind, tmp_path) as h:
        h.open(max_to_keep=2, checkpoint_name="ckpt_name")
        path = h.save(checkpoint_number=5)
        assert os.path.basename(path) == "ckpt_name-5"
        assert path == ckpt_path(tmp_path, 5, "ckpt_name")
        assert h.exists(path)

        h.open(max_to_keep=2)
        path = h.save(checkpoint_number=5)
        assert os.path.basename(path) == "ckpt-5"
        assert h.exists(path)
        assert h.exists(ckpt_path(tmp_path, 5, "ckpt_name"))


# ---------------------------------------------------------------- restore


def test_restore_or_initialize_tf_compat(tmp_path):
    init_path = str(tmp_path / "init")
    jaxckpt.save(init_path, {"x": np.asarray(2.0, np.float32)})
    holder = jaxckpt.tf_compat.Checkpoint(x=np.asarray(1.0, np.float32))
    calls = []

    def init_fn():
        calls.append(1)
        holder.x = jaxckpt.restore(init_path)["x"]

    directory = tmp_path / "ckpt"
    with jaxckpt.tf_compat.CheckpointManager(
            holder, directory, max_to_keep=None, init_fn=init_fn) as mngr:
        assert mngr.restore_or_initialize() is None
        assert calls == [1]
        assert float(holder.x) == 2.0

        saved = mngr.save()
        holder.x = np.asarray(7.0, np.float32)
        assert mngr.restore_or_initialize() == saved
        assert calls == [1]  # init_fn is not called when there is a checkpoint
        assert float(holder.x) == 2.0
        assert holder.save_counter == 1


def test_restore_or_initialize_core(tmp_path):
    init_path = str(tmp_path / "init")
    jaxckpt.save(init_path, {"x": np.asarray(2.0, np.float32)})
    calls = []

    def init_fn():
        calls.append(1)
        return jaxckpt.restore(init_path)

    directory = tmp_path / "ckpt"
    with jaxckpt.CheckpointManager(directory, max_to_keep=None, init_fn=init_fn) as mngr:
        state = mngr.restore_or_initialize()
        assert calls == [1]
        assert float(state["x"]) == 2.0

        state = {"x": np.asarray(3.0, np.float32)}
        assert mngr.save(state) == ckpt_path(directory, 1)
        mngr.wait_until_finished()
        restored = mngr.restore_or_initialize()
        assert restored is not None
        assert isinstance(restored["x"], jax.Array)  # structure from eval_shape(init_fn)
        assert float(restored["x"]) == 3.0

        # An explicit target decides the types.
        restored = mngr.restore_or_initialize(target={"x": np.zeros((), np.float32)})
        assert isinstance(restored["x"], np.ndarray)
        assert float(restored["x"]) == 3.0


def test_restore_or_initialize_without_init_fn_or_checkpoint(kind, tmp_path):
    with Harness(kind, tmp_path, x=4.0) as h:
        h.open(max_to_keep=1)
        assert h.mngr.restore_or_initialize() is None
        assert h.x == 4.0
        if kind == "core":
            h.save()
            h.wait()
            assert float(h.mngr.restore_or_initialize()["x"]) == 4.0  # raw restore


def test_pathlib_directory(kind, tmp_path):
    directory = pathlib.Path(tmp_path)
    expected = str(directory / "ckpt_name-1")
    with Harness(kind, directory, x=5.0) as h:
        h.open(max_to_keep=2, checkpoint_name="ckpt_name")
        assert h.save() == expected
        assert h.mngr.directory == str(directory)
        h.x = 0.0
        assert h.restore_latest() == expected
        assert h.x == 5.0
        if kind == "tf_compat":
            assert h.mngr.restore_or_initialize() == expected
        assert jaxckpt.latest_checkpoint(directory) == expected


# ---------------------------------------------------------------- interval


def test_checkpoint_interval(kind, tmp_path):
    with Harness(kind, tmp_path, step=0) as h:
        h.open(max_to_keep=None, step_counter=True, checkpoint_interval=2)
        assert h.mngr.checkpoint_interval == 2

        saved = [h.save()]  # step 0: the first save always happens
        assert saved[0] is not None and h.exists(saved[0])
        h.step = 1
        assert h.save() is None
        h.step = 2
        saved.append(h.save())
        assert saved[1] is not None and h.exists(saved[1])
        assert h.save() is None  # same step again
        h.step = 3
        assert h.save() is None
        saved.append(h.save(check_interval=False))
        assert saved[2] is not None and h.exists(saved[2])

        # Skipped saves take no number.
        assert saved == [ckpt_path(tmp_path, n) for n in (1, 2, 3)]
        assert h.checkpoints == saved
        if kind == "tf_compat":
            assert h.holder.save_counter == 3


def test_check_interval_false_still_skips_the_same_step(kind, tmp_path):
    with Harness(kind, tmp_path, step=7) as h:
        h.open(max_to_keep=None, step_counter=True, checkpoint_interval=5)
        assert h.save() is not None
        assert h.save(check_interval=False) is None
        h.step = 8
        assert h.save(check_interval=False) is not None


def test_checkpoint_interval_with_last_checkpoint_step(kind, tmp_path):
    with Harness(kind, tmp_path, step=1) as h:
        h.open(max_to_keep=None, step_counter=True, checkpoint_interval=2,
               last_checkpoint_step=1)
        assert h.save() is None  # step 1: already checkpointed
        h.step = 2
        assert h.save() is None  # the interval counts from step 1
        h.step = 3
        path = h.save()
        assert path is not None and h.exists(path)


def test_checkpoint_interval_with_restore(kind, tmp_path):
    with Harness(kind, tmp_path, step=4) as h:
        h.open(max_to_keep=None)
        prepared = h.save()

        h.step = 0
        h.open(max_to_keep=None, step_counter=True, checkpoint_interval=2)
        assert h.restore_latest() == prepared
        assert h.step == 4
        # The restored step counts as checkpointed.
        assert h.save() is None
        h.step = 5
        assert h.save() is None
        h.step = 6
        path = h.save()
        assert path is not None and h.exists(path)
        assert h.checkpoints == [prepared, path]


def test_tf_compat_step_counter_may_be_an_int_like_object(tmp_path):
    class StepVariable:
        """Stands in for a ``tf.Variable``: not callable, ``int()`` reads it."""

        def __init__(self, value: int):
            self.value = value

        def __int__(self) -> int:
            return self.value

        __index__ = __int__

    step = StepVariable(0)
    holder = jaxckpt.tf_compat.Checkpoint(x=np.zeros(3, np.float32))
    with jaxckpt.tf_compat.CheckpointManager(
            holder, tmp_path, max_to_keep=None, step_counter=step,
            checkpoint_interval=3) as mngr:
        assert mngr.save() == ckpt_path(tmp_path, 1)
        step.value = 2
        assert mngr.save() is None
        step.value = 3
        assert mngr.save() == ckpt_path(tmp_path, 2)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("max_to_keep", [0, -1, -5, 1.5, "3"])
def test_invalid_max_to_keep_raises_value_error(kind, tmp_path, max_to_keep):
    with pytest.raises(ValueError):
        Harness(kind, tmp_path).open(max_to_keep=max_to_keep)
    assert not (tmp_path / "checkpoint").exists()


def test_checkpoint_interval_without_step_counter_raises(kind, tmp_path):
    with pytest.raises(ValueError):
        Harness(kind, tmp_path).open(max_to_keep=None, checkpoint_interval=2)
    assert not (tmp_path / "checkpoint").exists()


# ---------------------------------------------------------------- state file


def test_state_file_contents(kind, tmp_path):
    clock = FakeClock(100.0)
    with Harness(kind, tmp_path, clock=clock) as h:
        h.open(max_to_keep=2)
        for t in (100.0, 200.5, 300.25):
            clock.now = t
            h.save()
        h.wait()
    text = state_file_text(tmp_path)
    assert str(tmp_path) not in text  # paths relative to the directory
    state = read_state_file(tmp_path)
    assert state["model_checkpoint_path"] == ["ckpt-3"]
    assert state["all_model_checkpoint_paths"] == ["ckpt-2", "ckpt-3"]
    assert state["all_model_checkpoint_timestamps"] == [200.5, 300.25]
    assert len(state["last_preserved_timestamp"]) == 1
    assert state["last_preserved_timestamp"][0] <= 100.0
    # Field order of TensorFlow's text format.
    keys = [line.split(":", 1)[0].strip() for line in text.splitlines() if line.strip()]
    assert keys == ["model_checkpoint_path", "all_model_checkpoint_paths",
                    "all_model_checkpoint_paths", "all_model_checkpoint_timestamps",
                    "all_model_checkpoint_timestamps", "last_preserved_timestamp"]
    assert jaxckpt.latest_checkpoint(tmp_path) == ckpt_path(tmp_path, 3)
    assert jaxckpt.latest_checkpoint(str(tmp_path)) == ckpt_path(tmp_path, 3)


def test_reads_state_file_written_by_tensorflow(kind, tmp_path):
    """Absolute paths, no timestamps: TensorFlow treats the listed checkpoints
    as preserved, so a manager never deletes or tracks them."""
    old = [ckpt_path(tmp_path, n) for n in (1, 2)]
    if kind == "tf_compat":
        with Harness(kind, tmp_path) as writer:
            writer.open(max_to_keep=None)
            for value in (1.0, 2.0):
                writer.x = value
                writer.save()
    else:
        for path, value in zip(old, (1.0, 2.0)):
            jaxckpt.save(path, {"x": np.float32(value), "step": np.int64(0)})
    write_tf_state_file(tmp_path, old[1], old)
    assert os.path.isabs(old[1])

    assert jaxckpt.latest_checkpoint(tmp_path) == old[1]
    clock = FakeClock(50000.0)
    with Harness(kind, tmp_path, clock=clock, x=-1.0) as h:
        h.open(max_to_keep=1)
        assert h.latest == old[1]
        assert h.checkpoints == []
        assert h.restore_latest() == old[1]
        assert h.x == 2.0
        new = h.save()
        assert new == ckpt_path(tmp_path, 3)
        assert h.checkpoints == [new]
        assert h.latest == new
        clock.advance(1.0)
        newer = h.save()
        assert h.checkpoints == [newer]
        assert not h.exists(new)
        assert all(h.exists(p) for p in old)
    state = read_state_file(tmp_path)
    assert state["model_checkpoint_path"] == ["ckpt-4"]
    assert state["all_model_checkpoint_paths"] == ["ckpt-4"]
    assert state["all_model_checkpoint_timestamps"] == [50001.0]
    assert jaxckpt.latest_checkpoint(tmp_path) == newer


def test_latest_checkpoint_ignores_missing_checkpoints(tmp_path):
    """The module function answers None for a state file naming nothing real."""
    assert jaxckpt.latest_checkpoint(tmp_path) is None
    write_tf_state_file(tmp_path, ckpt_path(tmp_path, 9), [ckpt_path(tmp_path, 9)])
    assert jaxckpt.latest_checkpoint(tmp_path) is None


# ---------------------------------------------------------------- through Core / TF


def test_keep_all_across_reopen(tmp_path, make):
    m = make(tmp_path, None)
    paths = [m.save() for _ in range(3)]
    m.close()
    m2 = make(tmp_path, None)
    assert m2.checkpoints == paths
    assert m2.latest == paths[-1]
    m2.restore_latest()  # tf_compat: brings back save_counter
    more = m2.save()
    assert m2.checkpoints == paths + [more]
    assert all(os.path.exists(p) for p in paths + [more])


def test_save_restore_state_with_preservation(tmp_path, make):
    clock = FakeClock(10000.0)
    m = make(tmp_path, 2, keep_checkpoint_every_n_hours=1.5, clock=clock)
    first = m.save()
    clock.now += 3600.0
    second = m.save()
    clock.now += 3600.0
    third = m.save()  # first leaves the set: 10000 - 1.5h < last preserved (10000 - 1): deleted
    assert not os.path.exists(first)
    assert m.checkpoints == [second, third]
    clock.now += 3600.0
    fourth = m.save()  # second leaves the set: 1h after start >= 1.5h? no -> deleted
    assert not os.path.exists(second)
    clock.now += 3600.0
    fifth = m.save()  # third (2h) - 1.5h >= 9999: preserved
    assert os.path.exists(third) and m.checkpoints == [fourth, fifth]
    state_text = (tmp_path / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-5"' in state_text
    assert f"last_preserved_timestamp: {10000.0 + 2 * 3600.0!r}" in state_text
    m.close()
    # Reopen: the preserved one is not managed, the active set and timestamps are recovered.
    clock.now += 3600.0
    m2 = make(tmp_path, 2, keep_checkpoint_every_n_hours=1.5, clock=clock)
    assert m2.checkpoints == [fourth, fifth]
    sixth = m2.save()
    assert not os.path.exists(fourth) and os.path.exists(third)
    assert m2.checkpoints == [fifth, sixth]


def test_clock_reset_keeps_everything(tmp_path, make, caplog):
    clock = FakeClock(10000.0)
    m = make(tmp_path, 1, keep_checkpoint_every_n_hours=1.0, clock=clock)
    clock.now = 14000.0
    a = m.save()
    clock.now += 7200.0
    b = m.save()  # a is preserved: over 1 h newer than the manager's start
    m.close()
    clock.now = 500.0  # went backwards
    with caplog.at_level(logging.WARNING, logger="jaxckpt"):
        m2 = make(tmp_path, 1, keep_checkpoint_every_n_hours=1.0, clock=clock)
    assert any("clock" in r.message for r in caplog.records)
    m2.restore_latest()
    c = m2.save()
    d = m2.save()
    assert os.path.exists(a) and os.path.exists(b), "old checkpoints deleted after a clock reset"
    assert m2.checkpoints == [d] and not os.path.exists(c)


def test_custom_numbering_numpy_scalar_and_replace(tmp_path, make):
    m = make(tmp_path, 2)
    assert m.save(checkpoint_number=5) == ckpt_path(tmp_path, 5)
    assert m.save(checkpoint_number=np.int64(7)) == ckpt_path(tmp_path, 7)
    assert m.save(checkpoint_number=5) == ckpt_path(tmp_path, 5)  # replaced, moves to newest
    assert m.checkpoints == [ckpt_path(tmp_path, 7), ckpt_path(tmp_path, 5)]
    assert m.latest == ckpt_path(tmp_path, 5)


def test_custom_checkpoint_prefix(tmp_path, make):
    m = make(tmp_path, 2, checkpoint_name="model")
    assert m.save() == ckpt_path(tmp_path, 1, "model")
    assert os.path.isdir(tmp_path / "model-1")
    assert jaxckpt.latest_checkpoint(tmp_path) == ckpt_path(tmp_path, 1, "model")


def test_pathlib_directory_created(tmp_path, make):
    m = make(pathlib.Path(tmp_path) / "sub", 2)
    m.save()
    assert m.latest == ckpt_path(tmp_path / "sub", 1)


def test_restore_or_initialize(tmp_path, make):
    calls = []
    m = make(tmp_path, 2, init_fn=lambda: calls.append(1) or {"v": np.zeros(2), "step": 0})
    assert m.restore_latest() is None or m.name == "core"
    assert calls == [1]
    m.value = np.array([3.0, 4.0])
    m.step = 9
    path = m.save()
    m.close()
    m2 = make(tmp_path, 2, init_fn=lambda: calls.append(2))
    out = m2.restore_latest()
    if m2.name == "tf":
        assert out == path and np.array_equal(m2.value, [3.0, 4.0]) and m2.step == 9
        assert m2.ckpt.save_counter == 1
    else:
        assert np.array_equal(out["v"], [3.0, 4.0]) and out["step"] == 9
    # The core manager takes the target's structure from jax.eval_shape(init_fn),
    # which traces init_fn once; TensorFlow's does not call it.
    assert calls == ([1] if m2.name == "tf" else [1, 2])


def test_checkpoint_interval_every_other_step(tmp_path, make):
    m = make(tmp_path, None, step_counter=True, checkpoint_interval=2)
    saved = []
    for step in range(8):
        m.step = step
        saved.append(m.save() is not None)
    assert saved == [True, False, True, False, True, False, True, False]
    m.step = 7
    assert m.save(check_interval=False) is not None  # forced despite the interval
    assert m.save(check_interval=False) is None  # same step twice: skipped


def test_checkpoint_interval_with_restore_fresh_holder(tmp_path, make):
    m = make(tmp_path, None, step_counter=True, checkpoint_interval=3)
    m.step = 4
    assert m.save() is not None
    m.close()
    m2 = make(tmp_path, None, step_counter=True, checkpoint_interval=3)
    m2.restore_latest()
    m2.step = 5
    assert m2.save() is None  # 5 < 4 + 3
    m2.step = 7
    assert m2.save() is not None


def test_last_checkpoint_step(tmp_path, make):
    m = make(tmp_path, None, step_counter=True, checkpoint_interval=5, last_checkpoint_step=10)
    m.step = 12
    assert m.save() is None
    m.step = 15
    assert m.save() is not None


def test_state_file_is_relative_with_timestamps(tmp_path, make):
    clock = FakeClock(1234.5)
    m = make(tmp_path, 2, clock=clock)
    m.save()
    clock.now = 1300.25
    m.save()
    assert (tmp_path / "checkpoint").read_text() == (
        'model_checkpoint_path: "ckpt-2"\n'
        'all_model_checkpoint_paths: "ckpt-1"\n'
        'all_model_checkpoint_paths: "ckpt-2"\n'
        "all_model_checkpoint_timestamps: 1234.5\n"
        "all_model_checkpoint_timestamps: 1300.25\n"
        "last_preserved_timestamp: 1233.5\n"
    )


def test_reads_a_state_file_tensorflow_wrote(tmp_path, make):
    src = make(tmp_path, None)
    src.save()
    src.save()
    src.close()
    (tmp_path / "checkpoint").write_text(
        f'model_checkpoint_path: "{tmp_path}/ckpt-2"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-1"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-2"\n')
    m = make(tmp_path, 2)
    assert m.latest == ckpt_path(tmp_path, 2)
    assert m.save() == ckpt_path(tmp_path, 3) or m.name == "tf"
    assert jaxckpt.latest_checkpoint(tmp_path) in (ckpt_path(tmp_path, 3), ckpt_path(tmp_path, 1))
    # unmanaged: kept
    assert os.path.exists(ckpt_path(tmp_path, 1)) and os.path.exists(ckpt_path(tmp_path, 2))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_bad_max_to_keep(tmp_path, bad):
    with pytest.raises(ValueError, match="max_to_keep"):
        jaxckpt.CheckpointManager(tmp_path, max_to_keep=bad)
    with pytest.raises(ValueError, match="max_to_keep"):
        tf_compat.CheckpointManager(tf_compat.Checkpoint(), tmp_path, bad)
    assert not (tmp_path / "checkpoint").exists()


def test_interval_without_step_counter(tmp_path):
    with pytest.raises(ValueError, match="step_counter"):
        jaxckpt.CheckpointManager(tmp_path, checkpoint_interval=2)
    with pytest.raises(ValueError, match="step_counter"):
        tf_compat.CheckpointManager(tf_compat.Checkpoint(), tmp_path, 2, checkpoint_interval=2)


def test_tf_save_counter_always_increments(tmp_path):
    ckpt = tf_compat.Checkpoint(v=np.ones(1))
    with tf_compat.CheckpointManager(ckpt, tmp_path, 5) as m:
        assert m.save() == ckpt_path(tmp_path, 1)
        assert m.save(checkpoint_number=10) == ckpt_path(tmp_path, 10)
        assert m.save() == ckpt_path(tmp_path, 3)
        assert ckpt.save_counter == 3
        ckpt.save_counter = 0
        m.restore_or_initialize()
        assert ckpt.save_counter == 3
