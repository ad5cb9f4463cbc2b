"""jaxckpt._format.names: every leftover name built and parsed back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxckpt._format import names as _names
from jaxckpt._format.names import DELETING, OLD, TMP, TRASH, Leftover

from strategies import checkpoint_names, quick, tokens  # tests/ is on sys.path under pytest


@quick
@given(checkpoint_names, tokens)
def test_every_built_name_parses_back(name, token):
    assert _names.parse(_names.tmp(name, token)) == Leftover(name, TMP, token)
    assert _names.parse(_names.old(name, token)) == Leftover(name, OLD, token)
    assert _names.parse(_names.deleting(name)) == Leftover(name, DELETING, None)
    trash = _names.parse(_names.trash(name))
    assert trash.base == name and trash.kind == TRASH and len(trash.token) == 12
    for built in (_names.tmp(name, token), _names.old(name, token), _names.deleting(name)):
        assert _names.base_of(built) == name
    assert _names.parse(name) is None and _names.base_of(name) == name


@quick
@given(checkpoint_names, tokens)
def test_an_earlier_versions_trash_of_a_temporary_belongs_to_its_checkpoint(name, token):
    old_style = f".{_names.tmp(name, token)}.trash-{token}"
    assert _names.parse(old_style) == Leftover(name, TRASH, token)
    # Only trash wraps a temporary; nothing wraps a deletion intent.
    assert _names.parse(f".{_names.tmp(name, token)}.tmp-{token}") is None
    assert _names.parse(f".{_names.deleting(name)}.trash-{token}") is None


@quick
@given(st.text(min_size=1, max_size=12), st.integers(0, 10**12))
def test_number_of_reads_back_the_number(prefix, n):
    assert _names.number_of(f"{prefix}-{n}", prefix) == n
    assert _names.number_of(f"{prefix}-{n}x", prefix) is None


@pytest.mark.parametrize("entry", ["ckpt-1", ".ckpt-1", ".ckpt-1.tmp-", ".ckpt-1.tmp-XYZ",
                                   ".ckpt-1.tmp-ab.extra", "ckpt-1.tmp-ab", ".ckpt-1.new-ab",
                                   "checkpoint", "_CHECKPOINT"])
def test_names_that_are_no_leftover(entry):
    assert _names.parse(entry) is None


@pytest.mark.parametrize("base, name, want", [
    ("ckpt-12", "ckpt", 12), ("ckpt-007", "ckpt", 7), ("ckpt-", "ckpt", None),
    ("ckpt-1.5", "ckpt", None), ("ckpt-٣", "ckpt", None),  # a non-ASCII digit
    ("model-3", "ckpt", None), ("ckpt-ckpt-3", "ckpt", None), ("a-b-3", "a-b", 3),
])
def test_number_of(base, name, want):
    assert _names.number_of(base, name) == want
