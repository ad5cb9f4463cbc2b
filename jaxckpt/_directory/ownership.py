"""A manager taking and giving up its directory: recovery on open, closing together.

On open, process 0 alone puts back what a crash left (leftovers, then
``_directory/recovery``) and every other process of a multi-process program takes its
view; once the catalog is known, process 0 tidies (unfinished deletions,
state-file temporaries). On close, every process waits until all have closed
their manager, and process 0 then forgets the manager's coordination keys.
The lock itself is ``_directory/lock``; the take-over in this process
``_directory/registry``; the whole opening sequence ``_save/opening``.
"""

from __future__ import annotations

import logging
from typing import Callable

from . import agree as _agree, recovery as _recovery
from .._commit import state_file as _state_file
from .._commit import deletions as _deletions, sweep as _sweep
from . import coordinate as _multihost
from .._storage import location as _location

log = logging.getLogger("jaxckpt")


def number_parser(name: str) -> Callable[[str], int | None]:
    """``path -> N`` for a path ending in ``<name>-<N>``, else None."""
    from .._format import names as _names

    def number_of(path: str) -> int | None:
        return _names.number_of(_names.basename(path), name)

    return number_of


def recover(root: _location.Dir, name: str, agree: _agree.Agreement,
            number_of: Callable[[str], int | None], path_of: Callable[[int], str],
            now: Callable[[], float], *, sweep: bool, share: bool) -> _recovery.Found:
    """The directory's checkpoints as a state file and the disk show them.

    ``sweep``: first put back what a crash inside a replace left (process 0
    opening as the writer). ``share``: process 0 alone reads the directory;
    the other processes take its view (and never read ``now``).
    """
    def here() -> _recovery.Found:
        if sweep:
            # Leftovers first: a crash inside a replace may have left checkpoint
            # N under a leftover's name only, which the sweep puts back.
            _sweep.sweep_leftovers(root, name)
        return _recovery.recover(root, number_of, path_of, now())

    if not share:
        return here()
    mine: list[_recovery.Found] = []

    def decide() -> str:
        mine.append(here())
        return _agree.encode_found(root, mine[0])

    shared = agree.share("open its manager", decide)
    return mine[0] if mine else _agree.decode_found(root, shared)


def tidy(root: _location.Dir, name: str, named: list[str] | None) -> None:
    """Process 0, on open: finishes interrupted deletions, drops state-file temporaries."""
    if named is not None:
        _deletions.sweep(root, name, named)
    _state_file.sweep_temporaries(root)


def close_together(agree: _agree.Agreement, scope: str, directory: str, quiet: bool) -> None:
    """Waits until every process closed its manager (raises unless ``quiet``)."""
    from jax._src import distributed

    if distributed.global_state.client is None:  # shut down already: nothing to wait on
        return

    def forget_keys(_: list[str]) -> str:
        """Process 0, once every process closed: nobody reads this manager's
        keys again, so they go (the close decision itself is written after)."""
        try:
            _multihost.client().key_value_delete(scope)
        except Exception:  # stale keys only cost memory in the coordinator
            pass
        return ""

    try:
        agree.exchange("close its manager", "", forget_keys)
    except Exception as e:
        if not quiet:
            raise
        log.warning("%s: closing together failed: %r", directory, e)
