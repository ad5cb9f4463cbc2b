"""A manager's restores: after its pending save, agreed by every process, with fallback.

``jaxckpt.restore`` reads one path. A manager's restore also waits for its
own pending save of that path, makes every process of a multi-process
program restore the same checkpoint (process 0's view) and raise together,
and for ``restore_or_initialize`` falls back from a damaged or vanished
checkpoint to the next older one, with a WARNING naming it.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

from . import _api, _faults
from ._commit import state_file as _state_file
from ._directory import agree as _agree
from ._storage import location as _location
from .errors import CheckpointNotFoundError, CorruptCheckpointError

log = logging.getLogger("jaxckpt")


class ManagedRestore:
    """The restore side of one manager, given the few callables it needs."""

    def __init__(self, root: _location.Dir, agree: _agree.Agreement,
                 done_event: Callable[[str], threading.Event | None],
                 wait_all: Callable[[], None], newest_first: Callable[[], list[str]],
                 restored: Callable[[str, Any], None]):
        self._root = root
        self._agree = agree
        self._done_event = done_event  # the pending save of a path, if any
        self._wait_all = wait_all  # every pending save
        self._newest_first = newest_first  # committed checkpoints, newest first
        self._restored = restored  # (path, state): the step_counter reads it
        # The manager's max_host_bytes, for restores that pass none (set by it).
        self.default_budget: int | None = None

    def agreed(self, path: str | None) -> str | None:
        """Process 0's ``path`` (the latest checkpoint), on every process."""
        if not self._agree.multi:
            return path
        rel = self._agree.share(
            "ask which checkpoint to restore",
            lambda: "" if path is None else _state_file.relative(self._root, path))
        return _state_file.resolve(self._root, rel) if rel else None

    def here(self, path: str, target: Any, *, partial: bool = False,
             progress: bool = False, max_host_bytes: int | None = None) -> Any:
        """This process's part of a restore, once its pending save of ``path`` is done."""
        done = self._done_event(path)
        if done is not None:
            _faults.point("manager.restore_waits")
            done.wait()
        if max_host_bytes is None:
            max_host_bytes = self.default_budget
        return _api.restore_here(path, target, partial=partial, progress=progress,
                                 max_host_bytes=max_host_bytes)

    def restore(self, path: str, target: Any, *, partial: bool = False,
                progress: bool = False, max_host_bytes: int | None = None) -> Any:
        """Restores ``path`` on every process; all raise if it failed on any of them."""
        result = self._agree.together(f"restore {_agree.name(path)}", lambda: self.here(
            path, target, partial=partial, progress=progress, max_host_bytes=max_host_bytes))
        self._restored(path, result)
        return result

    def latest(self, latest: Callable[[], str | None]) -> str:
        """The ``latest()`` checkpoint once every pending save is done, as process 0 sees it.

        Raises:
            CheckpointNotFoundError: there is no committed checkpoint.
        """
        _faults.point("manager.restore_waits")
        self._wait_all()
        path = self.agreed(latest())
        if path is None:
            raise CheckpointNotFoundError(f"no committed checkpoint in {self._root}")
        return path

    def or_initialize(self, target: Any, init_fn: Callable[[], Any] | None,
                      latest: Callable[[], str | None]) -> Any:
        """``restore_or_initialize``: the newest sound checkpoint, else ``init_fn()`` or None."""
        self._wait_all()
        # In a multi-process program whether there is one is process 0's call
        # too (a reader's own view may lag or lead): newest_sound asks.
        if self._agree.multi or latest() is not None:
            if target is None and init_fn is not None:
                import jax

                target = jax.eval_shape(init_fn)
            found = self.newest_sound(target)
            if found is not None:
                return found[1]
        return init_fn() if init_fn is not None else None

    def newest_sound(self, target: Any, restore: Callable[[str], Any] | None = None
                     ) -> tuple[str, Any] | None:
        """(path, state) of the newest checkpoint that restores, after every
        pending save; None if there is no committed checkpoint. ``restore``:
        how to read one (default: ``self.restore(path, target)``).

        A damaged or vanished checkpoint is skipped with a WARNING naming it.

        Raises:
            CorruptCheckpointError: every committed checkpoint is damaged.
        """
        self._wait_all()
        damaged = []
        if self._agree.multi:  # process 0's order: every process falls back alike
            rel = lambda p: _state_file.relative(self._root, p)  # noqa: E731
            candidates = [_state_file.resolve(self._root, p) for p in json.loads(
                self._agree.share("ask which checkpoints to restore",
                                  lambda: json.dumps([rel(p) for p in self._newest_first()])))]
        else:
            candidates = self._newest_first()
        for path in candidates:
            try:
                if restore is not None:
                    return path, self._agree.together(f"restore {_agree.name(path)}",
                                                      lambda: restore(path))
                return path, self.restore(path, target)
            except (CorruptCheckpointError, CheckpointNotFoundError) as e:
                log.warning("checkpoint %s cannot be restored, falling back to an older one: %s",
                            path, e)
                damaged.append(f"{path}: {e}")
        if damaged:
            raise CorruptCheckpointError(
                f"no checkpoint in {self._root} can be restored; every one is damaged "
                "or gone:\n  " + "\n  ".join(damaged))
        return None
