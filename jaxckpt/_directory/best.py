"""Keeping the best checkpoints by a metric (``keep_best=(K, name, "min"|"max")``).

Pure, but for reading a checkpoint's recorded metrics when they are not known
yet (``Metrics.of``). A save may carry ``metrics`` (a dict of names to
numbers), stored in its manifest. After TensorFlow's rules (and
``permanent_every``'s) chose what to delete, the ``K`` managed checkpoints
with the best value of ``name`` are taken back out of the deletions and stay
in the managed set, so the newest ``max_to_keep`` and the best ``K`` are both
kept and a restarted manager keeps honouring them: the metrics come from the
checkpoints' own manifests (only those the state file lists, each read once),
nothing new goes into the ``checkpoint`` state file.

A checkpoint without the metric, or with NaN for it, is never best; among
equal values the newer one ranks first.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

from . import policy as _policy

MAX_METRICS = 256  # names per save
MAX_NAME = 256  # characters per name

Best = tuple[int, str, str]


def check_keep_best(keep_best: Any) -> Best | None:
    """``keep_best`` as (k, name, mode), or None; raises naming what is wrong."""
    if keep_best is None:
        return None
    if not isinstance(keep_best, (tuple, list)) or len(keep_best) != 3:
        raise TypeError("keep_best must be a tuple (k, metric name, 'min' or 'max'), got "
                        f"{keep_best!r}")
    k, name, mode = keep_best
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"keep_best's k must be a positive int, got {k!r}")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise ValueError(f"keep_best's metric name must be a non-empty str of at most "
                         f"{MAX_NAME} characters, got {name!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"keep_best's mode must be 'min' or 'max', got {mode!r}")
    return int(k), name, mode


def check_metrics(metrics: Any) -> dict[str, float] | None:
    """A save's ``metrics`` as a dict of str to float, or None; raises naming the bad entry.

    Values: Python or NumPy real numbers, or 0-d arrays of them (NaN and
    infinities are kept; NaN is never best).
    """
    if metrics is None:
        return None
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict of str to numbers, got {type(metrics).__name__}")
    if len(metrics) > MAX_METRICS:
        raise ValueError(f"metrics holds {len(metrics)} names; at most {MAX_METRICS}")
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key or len(key) > MAX_NAME:
            raise TypeError(f"metrics key {key!r}: must be a non-empty str of at most "
                            f"{MAX_NAME} characters")
        if isinstance(value, (bool, str, bytes)) or getattr(value, "dtype", None) == bool:
            raise TypeError(f"metrics[{key!r}] = {value!r}: must be a real number")
        try:
            if getattr(value, "ndim", 0) != 0:
                raise TypeError("not a scalar")
            number = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"metrics[{key!r}] = {value!r}: must be a real number "
                            f"(a Python or NumPy scalar): {e}") from e
        out[key] = number
    return out


def rank(active: list[tuple[str, float]], value_of: Callable[[str], float | None],
         best: Best) -> list[str]:
    """The paths of the best ``k`` in ``active`` (oldest first), best first."""
    k, _, mode = best
    scored = []
    for age, (path, _) in enumerate(active):
        v = value_of(path)
        if v is None or math.isnan(v):
            continue
        scored.append(((v if mode == "min" else -v), -age, path))
    scored.sort()
    return [path for _, _, path in scored[:k]]


def sweep(r: _policy.Retention, inner: Callable[[_policy.Retention],
                                                tuple[_policy.Retention, list[str]]],
          value_of: Callable[[str], float | None], best: Best
          ) -> tuple[_policy.Retention, list[str]]:
    """``inner``'s choice, less the best ``k`` of ``r``'s set, which stay in it."""
    kept, delete = inner(r)
    keep = set(rank(r.active, value_of, best)) & set(delete)
    if not keep:
        return kept, delete
    staying = {p for p, _ in kept.active} | keep
    active = [(p, t) for p, t in r.active if p in staying]
    return _policy.Retention(active, kept.last_preserved), [p for p in delete if p not in keep]


class Metrics:
    """The metrics of a manager's checkpoints: noted at save, else read from
    their manifests on first need (a restarted manager). Thread-safe."""

    def __init__(self, read: Callable[[str], Any]):
        self._read = read  # path -> its manifest's "metrics" (or None)
        self._known: dict[str, dict | None] = {}
        self._lock = threading.Lock()

    def note(self, path: str, metrics: dict | None) -> None:
        with self._lock:
            self._known[path] = metrics

    def of(self, path: str) -> dict | None:
        with self._lock:
            if path in self._known:
                return self._known[path]
        try:
            found = self._read(path)
        except Exception:  # noqa: BLE001 - unreadable: never best, never fatal here
            found = None
        found = found if isinstance(found, dict) else None
        with self._lock:
            self._known[path] = found
        return found

    def value(self, name: str) -> Callable[[str], float | None]:
        def value_of(path: str) -> float | None:
            v = (self.of(path) or {}).get(name)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        return value_of

    def forget(self, paths: list[str]) -> None:
        with self._lock:
            for p in paths:
                self._known.pop(p, None)
