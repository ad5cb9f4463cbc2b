"""TensorFlow-shaped ``Checkpoint`` and ``CheckpointManager`` over the core manager.

For code written against ``tf.train``: the holder's attributes are pytrees,
``save_counter`` numbers the saves, and the manager's properties wait for
pending saves, as TensorFlow's synchronous manager would show them.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

from . import manager as _manager, _tree
from ._directory import policy as _policy
from ._read import reader as _reader
from .errors import StructureMismatchError


class Checkpoint:
    """A mutable holder of pytrees with an int ``save_counter``.

    ``Checkpoint(model=params, opt=opt_state)``; attributes can be read and
    replaced freely. Restores replace the attributes in place.
    """

    def __init__(self, **pytrees: Any):
        self.save_counter = 0
        for name, value in pytrees.items():
            if name == "save_counter":
                raise ValueError("save_counter is reserved for the save count")
            setattr(self, name, value)

    def _state(self) -> dict:
        return dict(vars(self))

    def _load(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self.save_counter = int(self.save_counter)

    def __repr__(self) -> str:
        names = ", ".join(sorted(k for k in vars(self) if k != "save_counter"))
        return f"Checkpoint({names}; save_counter={self.save_counter})"


def _evaluate(counter: Any) -> int:
    value = counter() if callable(counter) else counter
    return int(np.asarray(value))


class CheckpointManager:
    """TensorFlow's ``tf.train.CheckpointManager`` for a ``Checkpoint`` holder."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        directory: str | os.PathLike,
        max_to_keep: int | None,
        keep_checkpoint_every_n_hours: float | None = None,
        checkpoint_name: str = "ckpt",
        step_counter: Any = None,
        checkpoint_interval: int | None = None,
        init_fn: Callable[[], Any] | None = None,
        last_checkpoint_step: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"checkpoint must be a jaxckpt.tf_compat.Checkpoint, got {checkpoint!r}")
        if checkpoint_interval is not None:
            _policy.positive_int("checkpoint_interval", checkpoint_interval)
            if step_counter is None:
                raise ValueError("checkpoint_interval needs a step_counter")
        self._checkpoint = checkpoint
        self._step_counter = step_counter
        self._interval = checkpoint_interval
        self._last_step = last_checkpoint_step
        self._init_fn = init_fn
        self._core = _manager.CheckpointManager(
            directory,
            max_to_keep=max_to_keep,
            keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
            checkpoint_name=checkpoint_name,
            clock=clock,
        )

    def save(self, checkpoint_number: Any = None, check_interval: bool = True) -> str | None:
        """Saves the holder; numbered by ``save_counter`` (always incremented)
        unless ``checkpoint_number`` is given. None if the interval skips it."""
        if self._interval is not None:
            step = _evaluate(self._step_counter)
            if _policy.skips(self._last_step, step, self._interval, check_interval):
                return None
            self._last_step = step
        number = None if checkpoint_number is None else _policy.as_number(checkpoint_number)
        self._checkpoint.save_counter += 1
        if number is None:
            number = self._checkpoint.save_counter
        try:
            return self._core.save(self._checkpoint._state(), number)
        except BaseException:
            self._checkpoint.save_counter -= 1
            raise

    def restore_or_initialize(self) -> str | None:
        """Restores the latest checkpoint into the holder and returns its path,
        or calls ``init_fn`` and returns None."""
        # The newest checkpoint that restores: damaged ones are skipped with a warning.
        found = _manager.handle(self._core).restore_newest_sound(None, self._restore_matching)
        if found is not None:
            path, state = found
            self._checkpoint._load(state)
            if self._interval is not None:
                self._last_step = _evaluate(self._step_counter)
            return path
        if self._init_fn is not None:
            self._init_fn()
        return None

    def restore(self, checkpoint: Any = None) -> str:
        """Restores ``checkpoint`` (path, number or None: latest) into the holder."""
        self._core.wait_until_finished()
        path = checkpoint if checkpoint is not None else self._core.latest_checkpoint
        if path is None:
            raise _manager.CheckpointNotFoundError(f"no checkpoint in {self.directory}")
        path = path if isinstance(path, str) else _manager.handle(self._core).path_for(path)
        self._checkpoint._load(self._restore_matching(path))
        return path

    def _restore_matching(self, path: str) -> dict:
        """The holder's attributes that ``path`` also holds, restored, as TensorFlow
        restores what matches: an eval job's ``Checkpoint(model=...)`` reads the
        model of a training checkpoint that also holds an optimizer. Attributes
        only the holder has keep their values; ones only the checkpoint has are
        not read. Within an attribute the structure must match exactly.

        Raises:
            StructureMismatchError: no attribute in common, or a shared one
                whose structure differs (naming every key path).
        """
        holder = self._checkpoint._state()
        on_disk: dict[str, set[str]] = {}
        for leaf in _reader.Reader(path).leaves:
            kind, key = (tuple(leaf["path"][0]) if leaf["path"] else (None, None))
            if kind != _tree.DICT or not isinstance(key, str):
                # Not a holder's save (a bare pytree): the whole holder must match.
                return self._core.restore(path, holder)
            on_disk.setdefault(key, set()).add(_tree.path_str(leaf["path"]))
        shared = {name: value for name, value in holder.items() if name in on_disk}
        if not set(shared) - {"save_counter"} and set(holder) - {"save_counter"}:
            raise StructureMismatchError(
                f"checkpoint {path} holds {sorted(set(on_disk) - {'save_counter'})}, the "
                f"Checkpoint holder {sorted(set(holder) - {'save_counter'})}: no attribute in "
                "common; name the holder's attributes as they were saved")
        wanted = {e.path_str for e in _tree.flatten(shared)[0]}
        extra = sorted(p for name in shared for p in on_disk[name] if p not in wanted)
        if extra:
            raise StructureMismatchError(
                f"restore target does not match checkpoint {path} at {len(extra)} key "
                "path(s):\n  " + "\n  ".join(f"{p}: on disk, not in the holder" for p in extra))
        # partial: the attributes only the checkpoint holds are not read.
        return self._core.restore(path, shared, partial=True)

    @property
    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    @property
    def checkpoints(self) -> list[str]:
        self._core.wait_until_finished()
        return self._core.checkpoints

    @property
    def latest_checkpoint(self) -> str | None:
        self._core.wait_until_finished()
        return self._core.latest_checkpoint

    @property
    def directory(self) -> str:
        return self._core.directory

    @property
    def checkpoint_interval(self) -> int | None:
        return self._interval

    def wait_until_finished(self) -> None:
        self._core.wait_until_finished()

    def close(self) -> None:
        self._core.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # What the core manager tells users (never blocks), and its reprs.

    @property
    def pending(self) -> list[str]:
        return self._core.pending

    @property
    def last_save_stats(self) -> Any:
        return self._core.last_save_stats

    @property
    def stats(self) -> Any:
        return self._core.stats

    def __str__(self) -> str:
        return str(self._core)

    def _repr_html_(self) -> str:
        return self._core._repr_html_()
