"""jaxckpt._commit.sweep: leftovers of interrupted saves, removed per checkpoint name.

Putting back a checkpoint after a crash inside a two-rename replace, and the
object-store lease, are tested end to end in test_commit_protocol.py.
"""

from __future__ import annotations

import os

from jaxckpt._commit import sweep as _sweep
from jaxckpt._format import names as _names


def test_sweep_removes_only_this_names_leftovers(tmp_path):
    leftovers = [_names.tmp("ckpt-1", "ab12"), _names.trash("ckpt-2")]
    for entry in leftovers + [_names.tmp("other-1", "cd34"), _names.deleting("ckpt-3"),
                              "ckpt-4", ".ckpt-x.tmp-ab"]:
        (tmp_path / entry).mkdir()
    removed = _sweep.sweep_leftovers(str(tmp_path), "ckpt")
    assert sorted(removed) == sorted(str(tmp_path / e) for e in leftovers)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [_names.tmp("other-1", "cd34"), _names.deleting("ckpt-3"), "ckpt-4", ".ckpt-x.tmp-ab"])
    assert _sweep.sweep_leftovers(str(tmp_path / "missing"), "ckpt") == []
