"""Recognising directories written by Orbax (orbax-checkpoint), so that ``ls``,
``show`` and ``verify`` say what they are instead of "no checkpoints" or "an
interrupted save". Reads only names and small marker files; imports no Orbax.

Orbax's layouts: a step directory holds ``_CHECKPOINT_METADATA`` (and
``commit_success.txt`` on file systems without atomic rename) and one
subdirectory per item (``default/``, ``state/``, ...) holding ``_METADATA``
and, with OCDBT, ``manifest.ocdbt`` and ``ocdbt.process_<i>/``; a checkpointer
used alone writes an item's files in the directory itself. A run directory
(``CheckpointManager``) holds step directories named ``<N>`` (or
``<prefix>_<N>``).
"""

from __future__ import annotations

import re

from .._storage.location import Dir

_STEP_MARKERS = ("_CHECKPOINT_METADATA",)
_ITEM_MARKERS = ("_METADATA", "manifest.ocdbt")
_STEP_NAME = re.compile(r"^(?:.*_)?(\d+)$")

HINT = ("jaxckpt reads its own format only: convert it with 'jaxckpt import-orbax {path} "
        "DEST' (a run directory: every step, into a manager directory), or "
        "jaxckpt.import_orbax / jaxckpt.import_orbax_run; needs orbax-checkpoint "
        "(pip install 'jaxckpt[orbax]'); see the README, 'Importing from Orbax'")


def _has(where: Dir, name: str) -> bool:
    try:
        return where.read(name, 1, head=True) is not None
    except (OSError, ValueError):
        return False


def is_step(where: Dir) -> bool:
    """Whether ``where`` is one Orbax checkpoint (a step or a single item)."""
    if any(_has(where, m) for m in _STEP_MARKERS + _ITEM_MARKERS):
        return True
    try:
        subdirs = where.subdirs()
    except (OSError, ValueError):
        return False
    return any(_has(where.join(d), m) for d in subdirs[:16] for m in _ITEM_MARKERS)


def steps(where: Dir) -> list[int]:
    """The step numbers of the Orbax checkpoints in a run directory, sorted."""
    try:
        subdirs = where.subdirs()
    except (OSError, ValueError):
        return []
    found = []
    for d in subdirs:
        m = _STEP_NAME.match(d)
        if m and is_step(where.join(d)):
            found.append(int(m.group(1)))
    return sorted(found)


def describe(where: Dir) -> str | None:
    """A sentence saying that ``where`` is an Orbax checkpoint or run directory,
    with ``HINT``; None if it is neither."""
    if is_step(where):
        return f"{where} is an Orbax checkpoint, not a jaxckpt one. {HINT.format(path=where)}."
    found = steps(where)
    if found:
        shown = ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")
        return (f"{where} is an Orbax CheckpointManager directory ({len(found)} step(s): "
                f"{shown}), not a jaxckpt one. {HINT.format(path=where)}.")
    return None
