"""Temporary checkpoints (``permanent_every``): kept only until a newer one commits.

Pure. With ``permanent_every=N`` a checkpoint whose number is a multiple of
``N`` is permanent and every other one is temporary (Levanter's pattern: save
often, keep rarely). Which is which follows from the checkpoint's number,
i.e. its path, so a restarted manager knows it without anything new in the
state file. The managed set after a commit is:

- the permanent checkpoints, under TensorFlow's rules (``policy.sweep``):
  the newest ``max_to_keep`` of them, plus those ``keep_checkpoint_every_n_hours``
  preserves; with ``max_to_keep=None``, all of them;
- plus the newest checkpoint if it is temporary.

Every other temporary checkpoint is deleted with that commit, so at most one
temporary exists once a save has committed (a restarted manager deletes the
older ones at its first commit).
"""

from __future__ import annotations

from typing import Callable

from . import policy as _policy


def rule(permanent_every: int, number_of: Callable[[str], int | None]) -> Callable[[str], bool]:
    """``path -> whether it is temporary``; a path without a number is permanent."""
    def temporary(path: str) -> bool:
        number = number_of(path)
        return number is not None and number % permanent_every != 0

    return temporary


def sweep(r: _policy.Retention, temporary: Callable[[str], bool],
          permanent_sweep: Callable[[_policy.Retention], tuple[_policy.Retention, list[str]]]
          ) -> tuple[_policy.Retention, list[str]]:
    """``r``'s newest entry stays; older temporaries go; ``permanent_sweep``
    (TensorFlow's rules) decides among the permanent ones. Returns the new set
    (oldest first) and the paths to delete."""
    if not r.active:
        return r, []
    newest = r.active[-1]
    keep_newest = temporary(newest[0])
    permanent = [e for e in r.active if not temporary(e[0])]
    drop = [p for p, _ in r.active if temporary(p) and (p, _) != newest]
    kept, delete = permanent_sweep(_policy.Retention(permanent, r.last_preserved))
    active = kept.active + ([newest] if keep_newest else [])
    return _policy.Retention(active, kept.last_preserved), drop + delete
