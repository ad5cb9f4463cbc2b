"""Helpers shared by the reliability tests (crash, faults, corruption, bad input).

``TALLY`` counts what they tried and what held; ``conftest.py`` prints it at
the end of a run (``make torture`` reports its rounds from it).
"""

from __future__ import annotations

import collections
import os
import re

import numpy as np

import jaxckpt
from jaxckpt._commit import atomic as _commit
from jaxckpt._storage import location as _location
from jaxckpt._commit import state_file as _state_file

TALLY: collections.Counter = collections.Counter()

_LEFTOVER = re.compile(r"(\.tmp-|\.trash-|\.old-|\.deleting$)")


def leftovers(directory) -> list[str]:
    """Temporaries, trash, set-aside copies and deletion markers in ``directory``."""
    return sorted(n for n in os.listdir(directory) if _LEFTOVER.search(n))


def tree_bytes(root) -> dict[str, bytes | None]:
    """Every directory (None) and file (its bytes) under ``root``, by relative path."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel] = None
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.join(rel, name)] = f.read()
    return out


def assert_equal_trees(got, want, where: str = "") -> None:
    """Bit-exact equality of two raw-restored trees (dicts, lists, arrays, scalars)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for k in want:
            assert_equal_trees(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_equal_trees(g, w, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        g = np.asarray(got)
        assert g.dtype == want.dtype and g.shape == want.shape, where
        assert g.tobytes() == want.tobytes(), f"bytes differ at {where}"
    else:
        assert got == want and type(got) is type(want), where


def named_paths(directory) -> list[str]:
    """Absolute paths of every checkpoint the state file names (latest first)."""
    st = _state_file.read(str(directory))
    if st is None:
        return []
    names = ([st.model_checkpoint_path] if st.model_checkpoint_path else [])
    names += [p for p in st.all_model_checkpoint_paths if p != st.model_checkpoint_path]
    return [_state_file.resolve(str(directory), p) for p in names]


def adoptable(directory, name: str = "ckpt") -> list[str]:
    """Committed ``<name>-N`` checkpoints numbered above everything the state
    file names and not marked for deletion: what a new manager adopts (a crash
    between a commit and the state-file replacement leaves one), oldest first."""
    where = _location.locate(str(directory))
    names = set(where.listdir())
    top = max((int(p.rsplit("-", 1)[1]) for p in named_paths(directory)
               if re.fullmatch(rf"{re.escape(name)}-\d+", p.rsplit("/", 1)[-1])), default=0)
    found = sorted(int(n.rsplit("-", 1)[1]) for n in names
                   if re.fullmatch(rf"{re.escape(name)}-\d+", n))
    return [str(where.join(f"{name}-{n}")) for n in found
            if n > top and f".{name}-{n}.deleting" not in names
            and _commit.is_committed(where.join(f"{name}-{n}"))]


def check_sound(directory, state_of) -> int:
    """The directory after a crash: every checkpoint the state file names is
    committed, verifies, and restores bit-exact to ``state_of(number)``, and
    ``latest_checkpoint`` is the one it records as latest; so does each one a
    new manager adopts (committed after the state file was last replaced).
    Returns the number a new manager resumes from: the newest adopted one,
    else the recorded latest (0 when nothing was ever committed)."""
    directory = str(directory)
    latest = jaxckpt.latest_checkpoint(directory)
    named = named_paths(directory)
    adopted = adoptable(directory)
    for path in adopted:
        jaxckpt.verify(path)
        assert_equal_trees(jaxckpt.restore(path), state_of(int(path.rsplit("-", 1)[1])),
                           os.path.basename(path))
    if latest is None:
        assert named == [], f"state file names {named} but none is committed"
        return int(adopted[-1].rsplit("-", 1)[1]) if adopted else 0
    assert named[0] == latest, (named, latest)
    jaxckpt.verify(latest)
    for path in named:
        number = int(path.rsplit("-", 1)[1])
        assert_equal_trees(jaxckpt.restore(path), state_of(number), os.path.basename(path))
    return int((adopted[-1] if adopted else latest).rsplit("-", 1)[1])
