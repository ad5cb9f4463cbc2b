"""Helpers for test_manager_tf_port.py: a fake clock, state-file text, and a
harness that drives either manager through the same TensorFlow-style steps.

The harness keeps one small state, ``x`` (a float32 scalar) and ``step`` (an
int64 scalar), and saves it with:

- ``tf_compat``: a ``jaxckpt.tf_compat.Checkpoint(x=..., step=...)`` holder and
  ``jaxckpt.tf_compat.CheckpointManager(holder, directory, max_to_keep, ...)``;
  ``step_counter`` is a zero-arg callable reading ``holder.step``.
- ``core``: ``jaxckpt.CheckpointManager(directory, ...)`` saving the pytree
  ``{"x": ..., "step": ...}``; ``step_counter`` is ``state -> int``.

Only the public contract (shared/API.md) is used.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

import jaxckpt

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
