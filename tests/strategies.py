"""Hypothesis strategies of the suite, in one module (attrs keeps its the same way).

- ``names``, ``stamps``, ``states``: state-file fields and whole ``CheckpointState``\\ s.
- ``dict_keys``, ``leaves``, ``trees``: pytrees of dicts, lists and tuples over Python
  and NumPy leaves, every container non-empty (an empty one has no leaf to flatten).
- ``shard_shapes``: a writer's shard as ``chunking`` sees it: leading extents, then
  the itemsize axis.
- ``save_times``, ``max_to_keeps``, ``keep_hours``: inputs of the retention rules.
- ``checkpoint_names``, ``tokens``: the parts of the on-disk names of ``_format/names``.

The fuzz mutations of ``test_fuzz.py`` stay beside the code that applies them.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from jaxckpt._commit.state_file import CheckpointState

# Text that UTF-8 can encode: no lone surrogates.
_TEXT = st.characters(blacklist_categories=("Cs",))

# ---------------------------------------------------------------- state file

names = st.text(_TEXT, min_size=1, max_size=30)
stamps = st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=4e9)


@st.composite
def states(draw):
    paths = draw(st.lists(names, max_size=6))
    ts = draw(st.lists(stamps, min_size=len(paths), max_size=len(paths)))
    return CheckpointState(
        model_checkpoint_path=draw(st.one_of(st.none(), names)),
        all_model_checkpoint_paths=paths,
        all_model_checkpoint_timestamps=ts,
        last_preserved_timestamp=draw(st.one_of(st.none(), stamps)),
    )


# ---------------------------------------------------------------- pytrees

str_keys = st.text(_TEXT, max_size=8)
# bool is an int but JAX sorts it with ints; the suite keeps keys plainly typed.
int_keys = st.integers(-(2**40), 2**40)
dict_keys = st.one_of(str_keys, int_keys)

_small_arrays = st.builds(
    lambda dtype, n, seed: np.random.default_rng(seed).integers(0, 100, n).astype(dtype),
    st.sampled_from(["int8", "int32", "float32", "float64", "bool", "uint16"]),
    st.integers(0, 4), st.integers(0, 2**32 - 1))

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(_TEXT, max_size=8),
    st.binary(max_size=8), st.floats(allow_nan=False), _small_arrays)


def _containers(children):
    # One key type per dict: JAX sorts a dict's keys, and str and int do not compare.
    return st.one_of(
        st.dictionaries(str_keys, children, min_size=1, max_size=4),
        st.dictionaries(int_keys, children, min_size=1, max_size=4),
        st.lists(children, min_size=1, max_size=4),
        st.lists(children, min_size=1, max_size=4).map(tuple),
    )


trees = st.recursive(leaves, _containers, max_leaves=16)


# ---------------------------------------------------------------- chunking

# Extents near the interesting sizes: primes, powers of two, and plain ones.
_extents = st.one_of(
    st.integers(1, 4096),
    st.sampled_from([1_000_003, 65_537, 8191, 1 << 20, 3 << 18, 1 << 24]),
)
itemsizes = st.sampled_from([1, 2, 4, 8, 16])
shard_shapes = st.builds(lambda lead, item: [*lead, item],
                         st.lists(_extents, min_size=0, max_size=3), itemsizes)


# ---------------------------------------------------------------- retention

HOUR = 3600.0
# Increasing save times: gaps from a second to a few hours.
save_times = st.lists(st.floats(1.0, 4 * HOUR), max_size=25).map(
    lambda gaps: list(itertools.accumulate(gaps)))
max_to_keeps = st.one_of(st.none(), st.integers(1, 6))
keep_hours = st.one_of(st.none(), st.floats(0.25, 6.0))


# ---------------------------------------------------------------- on-disk names

checkpoint_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}-[0-9]{1,6}", fullmatch=True)
tokens = st.from_regex(r"[0-9a-f]{1,32}", fullmatch=True)


# ---------------------------------------------------------------- settings

# The property tests' settings: a modest number of examples, no deadline (the
# machine is shared), no example database written into the checkout.
quick = settings(max_examples=75, deadline=None, database=None)
