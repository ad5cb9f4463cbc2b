"""The newest committed checkpoint a directory's state file names.

Below ``_api`` (whose ``latest_checkpoint`` adds the multi-process
agreement), so that the manager's recovery and the listing can use it.
"""

from __future__ import annotations

import logging

from .. import _faults
from .._commit import atomic as _commit
from .._commit import state_file as _state_file
from .._format import names as _names
from .._storage import location as _location

log = logging.getLogger("jaxckpt")

# How often latest_checkpoint re-reads a state file that changed under it.
_READ_TRIES = 8


def latest_here(root: _location.Dir) -> str | None:
    """``latest_checkpoint`` in this process alone."""
    state = _state_file.read(root)
    if state is None:
        _warn_if_unrecorded(root)
        return None
    for _ in range(_READ_TRIES):
        found = newest_named(root, state)
        if found is not None:
            return found
        again = _state_file.read(root)
        if again is None or again == state:
            return None
        state = again
    return None


def newest_named(root: _location.Dir, state: _state_file.CheckpointState) -> str | None:
    """The newest committed checkpoint that ``state`` names, or None."""
    names = list(reversed(state.all_model_checkpoint_paths))
    if state.model_checkpoint_path is not None:
        names.insert(0, state.model_checkpoint_path)
    _faults.point("latest_checkpoint.read")
    for name in names:
        path = _state_file.resolve(root, name)
        if _commit.is_committed(path):
            return path
    return None


def _warn_if_unrecorded(root: _location.Dir) -> None:
    if not root.listing_is_cheap:  # a listing of an object store costs a request: not on every call
        return
    committed = sorted(n for n in root.listdir()
                       if not n.startswith(".") and _names.split_numbered(n)
                       and _commit.is_committed(root.join(n)))
    if committed:
        log.warning("%s has no state file but holds committed checkpoints %s; "
                    "jaxckpt.latest_checkpoint reads only the state file (a CheckpointManager "
                    "on the directory adopts them)", root, committed)
