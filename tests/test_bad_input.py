"""Bad input across the public API, table-driven.

Each row calls one public function or constructor with one bad argument and
names the exception type it must raise and a pattern its message must
contain (what was wrong and where: the argument, path or key path). Around
each call the test snapshots every byte under its scratch directory: a bad
call writes nothing, and nothing already saved changes. A live manager owns
``root`` throughout; no bad constructor call may take it over.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointError, CheckpointNotFoundError, StructureMismatchError, tf_compat

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY, tree_bytes  # noqa: E402


@dataclasses.dataclass
class Ctx:
    base: str  # the scratch directory whose bytes must not change
    root: str  # a live manager's directory, with ckpt-1 and ckpt-2
    single: str  # a checkpoint saved with jaxckpt.save
    afile: str  # a regular file
    fresh: str  # a path that does not exist (and must not be created)
    m: jaxckpt.CheckpointManager
    tm: Any = None  # a live tf_compat manager on <base>/tfroot

    @property
    def tree(self) -> dict:
        return _tree()


def _tree() -> dict:
    return {"w": np.arange(16, dtype=np.float32).reshape(4, 4), "step": 3, "name": "x"}


class Same:
    """A dict key type whose values all print alike."""

    def __init__(self, v):
        self.v = v

    def __str__(self):
        return "k"

    def __lt__(self, other):
        return self.v < other.v

    def __eq__(self, other):
        return isinstance(other, Same) and self.v == other.v

    def __hash__(self):
        return hash(self.v)


def _deleted_array():
    x = jnp.ones(3)
    x.delete()
    return x


def _mgr(c: Ctx, **kw):
    return jaxckpt.CheckpointManager(c.fresh, **kw)


def _structured():
    return np.zeros(2, dtype=[("a", np.int32), ("b", np.float32)])


# (id, call, exception type, regex the message must match)
Row = tuple[str, Callable[[Ctx], Any], type, str]
ROWS: list[Row] = [
    # --- jaxckpt.save
    ("save: path exists", lambda c: jaxckpt.save(c.single, c.tree), FileExistsError, "single"),
    ("save: parent is a file", lambda c: jaxckpt.save(os.path.join(c.afile, "x"), c.tree),
     NotADirectoryError, "afile"),
    ("save: path is an int", lambda c: jaxckpt.save(123, c.tree), TypeError,
     "checkpoint path.*123"),
    ("save: path is bytes", lambda c: jaxckpt.save(c.fresh.encode(), c.tree), TypeError,
     "checkpoint path"),
    ("save: path is empty", lambda c: jaxckpt.save("", c.tree), ValueError, "path is empty"),
    ("save: unknown URL scheme", lambda c: jaxckpt.save("ftp://host/x", c.tree), ValueError,
     "ftp://host/x.*unknown URL scheme 'ftp'"),
    ("save: object leaf", lambda c: jaxckpt.save(c.fresh, {"a": {"b": object()}}), TypeError,
     r"key path \['a'\]\['b'\]"),
    ("save: string array leaf", lambda c: jaxckpt.save(c.fresh, {"s": np.array(["x"])}),
     TypeError, r"\['s'\].*dtype <U1"),
    ("save: object array leaf", lambda c: jaxckpt.save(c.fresh, [np.array([object()])]),
     TypeError, r"\[0\].*dtype object"),
    ("save: structured array leaf", lambda c: jaxckpt.save(c.fresh, {"r": _structured()}),
     TypeError, r"\['r'\]"),
    ("save: deleted jax.Array", lambda c: jaxckpt.save(c.fresh, {"x": _deleted_array()}),
     TypeError, r"\['x'\].*deleted or donated"),
    ("save: a set as a leaf", lambda c: jaxckpt.save(c.fresh, {"x": {1, 2}}), TypeError,
     r"builtins\.set.*\['x'\]"),
    ("save: a function as a leaf", lambda c: jaxckpt.save(c.fresh, {"f": print}), TypeError,
     r"\['f'\]"),
    ("save: keys that print alike",
     lambda c: jaxckpt.save(c.fresh, {Same(1): np.ones(1), Same(2): np.ones(1)}), ValueError,
     r"key path \['k'\]"),
    ("save: metadata not a dict", lambda c: jaxckpt.save(c.fresh, c.tree, metadata=[1]),
     TypeError, "metadata must be a dict"),
    ("save: metadata not JSON-able",
     lambda c: jaxckpt.save(c.fresh, c.tree, metadata={"k": object()}), TypeError,
     "metadata must be JSON-able"),
    ("save: str leaf with a lone surrogate",
     lambda c: jaxckpt.save(c.fresh, {"a": ["ok", "x\ud800"]}), ValueError,
     r"\['a'\]\[1\].*lone surrogate"),
    ("save: dict key with a lone surrogate",
     lambda c: jaxckpt.save(c.fresh, {"a": {"\udc00": np.ones(2)}}), ValueError,
     r"key path \['a'\].*lone surrogate"),
    ("save: metadata string with a lone surrogate",
     lambda c: jaxckpt.save(c.fresh, c.tree, metadata={"run": ["\ud800"]}), ValueError,
     r"metadata\['run'\]\[0\].*lone surrogate"),
    # --- jaxckpt.restore / metadata / verify / latest_checkpoint
    ("restore: missing path", lambda c: jaxckpt.restore(c.fresh), CheckpointNotFoundError,
     "fresh"),
    ("restore: path is a file", lambda c: jaxckpt.restore(c.afile), CheckpointNotFoundError,
     "afile is a file"),
    ("restore: a manager directory", lambda c: jaxckpt.restore(c.root),
     CheckpointNotFoundError, "root is a CheckpointManager directory"),
    ("restore: target shape differs",
     lambda c: jaxckpt.restore(c.single, {**c.tree, "w": np.zeros((2, 2), np.float32)}),
     StructureMismatchError, r"\['w'\]: shape \(2, 2\) in the target, \(4, 4\) on disk"),
    ("restore: target lacks a leaf",
     lambda c: jaxckpt.restore(c.single, {"w": np.zeros((4, 4), np.float32)}),
     StructureMismatchError, r"\['step'\]: on disk, not in the target"),
    ("restore: target has an extra leaf",
     lambda c: jaxckpt.restore(c.single, {**c.tree, "extra": np.zeros(1)}, partial=True),
     StructureMismatchError, r"\['extra'\]: in the target, not on disk"),
    ("restore: unsupported target leaf",
     lambda c: jaxckpt.restore(c.single, {**c.tree, "w": object()}), TypeError,
     r"target leaf.*\['w'\]"),
    ("restore: a float target for an array",
     lambda c: jaxckpt.restore(c.single, {**c.tree, "w": 1.0}), StructureMismatchError,
     r"\['w'\].*float32\(4, 4\) on disk"),
    ("restore: unknown URL scheme", lambda c: jaxckpt.restore("gopher://x/y"), ValueError,
     "unknown URL scheme 'gopher'"),
    ("metadata: missing path", lambda c: jaxckpt.metadata(c.fresh), CheckpointNotFoundError,
     "fresh"),
    ("verify: missing path", lambda c: jaxckpt.verify(c.fresh), CheckpointNotFoundError,
     "fresh"),
    ("verify: path is a file", lambda c: jaxckpt.verify(c.afile), CheckpointNotFoundError,
     "afile"),
    ("user_metadata: a manager directory", lambda c: jaxckpt.user_metadata(c.root),
     CheckpointNotFoundError, "root"),
    ("latest_checkpoint: a file", lambda c: jaxckpt.latest_checkpoint(c.afile),
     NotADirectoryError, "afile"),
    ("latest_checkpoint: None", lambda c: jaxckpt.latest_checkpoint(None), TypeError,
     "checkpoint path.*None"),
    ("latest_checkpoint: unknown URL scheme", lambda c: jaxckpt.latest_checkpoint("hdfs://n/d"),
     ValueError, "unknown URL scheme 'hdfs'"),
    # --- CheckpointManager(...): on the live manager's directory too, which must survive
    ("manager: max_to_keep=0", lambda c: jaxckpt.CheckpointManager(c.root, max_to_keep=0),
     ValueError, "max_to_keep.*0"),
    ("manager: max_to_keep=-1", lambda c: _mgr(c, max_to_keep=-1), ValueError, "max_to_keep"),
    ("manager: max_to_keep=2.5", lambda c: _mgr(c, max_to_keep=2.5), ValueError, "max_to_keep"),
    ("manager: max_to_keep=True", lambda c: _mgr(c, max_to_keep=True), ValueError,
     "max_to_keep"),
    ("manager: max_to_keep='3'", lambda c: _mgr(c, max_to_keep="3"), ValueError, "max_to_keep"),
    ("manager: keep hours=0", lambda c: _mgr(c, keep_checkpoint_every_n_hours=0), ValueError,
     "keep_checkpoint_every_n_hours"),
    ("manager: keep hours='1'", lambda c: _mgr(c, keep_checkpoint_every_n_hours="1"),
     ValueError, "keep_checkpoint_every_n_hours"),
    ("manager: keep hours=nan", lambda c: _mgr(c, keep_checkpoint_every_n_hours=float("nan")),
     ValueError, "keep_checkpoint_every_n_hours"),
    ("manager: name with a slash", lambda c: _mgr(c, checkpoint_name="a/b"), ValueError,
     "checkpoint_name.*'a/b'"),
    ("manager: name going up", lambda c: _mgr(c, checkpoint_name="../up"), ValueError,
     "checkpoint_name"),
    ("manager: name with a backslash", lambda c: _mgr(c, checkpoint_name="a\\b"), ValueError,
     "checkpoint_name"),
    ("manager: empty name", lambda c: jaxckpt.CheckpointManager(c.root, checkpoint_name=""),
     ValueError, "checkpoint_name"),
    ("manager: hidden name", lambda c: _mgr(c, checkpoint_name=".ckpt"), ValueError,
     "checkpoint_name.*'.ckpt'"),
    ("manager: name not a str", lambda c: _mgr(c, checkpoint_name=5), ValueError,
     "checkpoint_name.*5"),
    ("manager: name too long for a file name",
     lambda c: jaxckpt.CheckpointManager(c.root, checkpoint_name="n" * 300), ValueError,
     "checkpoint_name is 300 bytes.*at most 162"),
    ("manager: name of multi-byte characters too long",
     lambda c: _mgr(c, checkpoint_name="\u00e9" * 82), ValueError, "164 bytes"),
    ("manager: name with a lone surrogate", lambda c: _mgr(c, checkpoint_name="a\ud800"),
     ValueError, "checkpoint_name.*not valid Unicode"),
    ("manager: step_counter not callable", lambda c: _mgr(c, step_counter=5), ValueError,
     "step_counter must be callable"),
    ("manager: interval=0", lambda c: _mgr(c, step_counter=len, checkpoint_interval=0),
     ValueError, "checkpoint_interval"),
    ("manager: interval without step_counter", lambda c: _mgr(c, checkpoint_interval=3),
     ValueError, "checkpoint_interval needs a step_counter"),
    ("manager: init_fn not callable", lambda c: _mgr(c, init_fn="x"), ValueError, "init_fn"),
    ("manager: last_checkpoint_step=-1", lambda c: _mgr(c, last_checkpoint_step=-1),
     ValueError, "last_checkpoint_step"),
    ("manager: clock not callable", lambda c: _mgr(c, clock=1.0), ValueError, "clock"),
    # save policies (save_interval_s, permanent_every, checkpoint_interval="auto")
    ("manager: save_interval_s=0", lambda c: _mgr(c, save_interval_s=0), ValueError,
     "save_interval_s must be a positive, finite number of seconds"),
    ("manager: save_interval_s=-5", lambda c: _mgr(c, save_interval_s=-5), ValueError,
     "save_interval_s"),
    ("manager: save_interval_s=inf", lambda c: _mgr(c, save_interval_s=float("inf")),
     ValueError, "save_interval_s.*inf"),
    ("manager: save_interval_s='60'", lambda c: _mgr(c, save_interval_s="60"), ValueError,
     "save_interval_s.*'60'"),
    ("manager: save_interval_s=True", lambda c: _mgr(c, save_interval_s=True), ValueError,
     "save_interval_s"),
    ("manager: save_interval_s, clock gives a str",
     lambda c: _mgr(c, save_interval_s=60, clock=lambda: "noon"), ValueError,
     "save_interval_s needs a clock giving seconds"),
    ("manager: save_interval_s, clock raises",
     lambda c: _mgr(c, save_interval_s=60, clock=lambda: 1 / 0), ValueError,
     "save_interval_s needs a clock.*ZeroDivisionError"),
    ("manager: save_interval_s, clock gives nan",
     lambda c: _mgr(c, save_interval_s=60, clock=lambda: float("nan")), ValueError,
     "finite seconds.*nan"),
    ("manager: checkpoint_interval='often'",
     lambda c: _mgr(c, step_counter=len, checkpoint_interval="often"), ValueError,
     "checkpoint_interval must be a positive int, 'auto' or None, got 'often'"),
    ("manager: auto without mtbf_s",
     lambda c: _mgr(c, step_counter=len, checkpoint_interval="auto"), ValueError,
     "checkpoint_interval='auto' needs mtbf_s"),
    ("manager: auto without step_counter",
     lambda c: _mgr(c, checkpoint_interval="auto", mtbf_s=3600), ValueError,
     "'auto' needs a step_counter"),
    ("manager: auto, mtbf_s=0",
     lambda c: _mgr(c, step_counter=len, checkpoint_interval="auto", mtbf_s=0), ValueError,
     "mtbf_s must be a positive"),
    ("manager: auto, mtbf_s=nan",
     lambda c: _mgr(c, step_counter=len, checkpoint_interval="auto", mtbf_s=float("nan")),
     ValueError, "mtbf_s"),
    ("manager: auto, max_overhead=0",
     lambda c: _mgr(c, step_counter=len, checkpoint_interval="auto", mtbf_s=60,
                    max_overhead=0), ValueError, r"max_overhead must be a fraction.*\(0, 1\]"),
    ("manager: auto, max_overhead=1.5",
     lambda c: _mgr(c, step_counter=len, checkpoint_interval="auto", mtbf_s=60,
                    max_overhead=1.5), ValueError, "max_overhead.*1.5"),
    ("manager: auto, max_overhead='2%'",
     lambda c: _mgr(c, step_counter=len, checkpoint_interval="auto", mtbf_s=60,
                    max_overhead="2%"), ValueError, "max_overhead"),
    ("manager: mtbf_s without auto",
     lambda c: _mgr(c, step_counter=len, checkpoint_interval=5, mtbf_s=60), ValueError,
     "mtbf_s is used only with checkpoint_interval='auto'"),
    ("manager: max_overhead without auto", lambda c: _mgr(c, max_overhead=0.1), ValueError,
     "max_overhead is used only with checkpoint_interval='auto'"),
    ("manager: permanent_every=0", lambda c: _mgr(c, permanent_every=0), ValueError,
     "permanent_every must be a positive int"),
    ("manager: permanent_every=2.5", lambda c: _mgr(c, permanent_every=2.5), ValueError,
     "permanent_every.*2.5"),
    ("manager: permanent_every=True", lambda c: _mgr(c, permanent_every=True), ValueError,
     "permanent_every"),
    ("manager: max_pending=0", lambda c: jaxckpt.CheckpointManager(c.root, max_pending=0),
     ValueError, "max_pending"),
    ("manager: directory is a file", lambda c: jaxckpt.CheckpointManager(c.afile),
     NotADirectoryError, "afile is a file"),
    ("manager: directory under a file",
     lambda c: jaxckpt.CheckpointManager(os.path.join(c.afile, "sub")), NotADirectoryError,
     "afile"),
    ("manager: unknown URL scheme", lambda c: jaxckpt.CheckpointManager("gs3://b/p"),
     ValueError, "unknown URL scheme 'gs3'"),
    ("manager: directory None", lambda c: jaxckpt.CheckpointManager(None), TypeError,
     "checkpoint path.*None"),
    # --- mngr.save / mngr.restore
    ("mngr.save: number -1", lambda c: c.m.save(c.tree, -1), ValueError,
     "checkpoint_number must be >= 0"),
    ("mngr.save: number 1.5", lambda c: c.m.save(c.tree, 1.5), ValueError,
     "checkpoint_number.*1.5"),
    ("mngr.save: number '3'", lambda c: c.m.save(c.tree, "3"), ValueError, "checkpoint_number"),
    ("mngr.save: number True", lambda c: c.m.save(c.tree, True), ValueError,
     "checkpoint_number"),
    ("mngr.save: number array of 2", lambda c: c.m.save(c.tree, np.array([1, 2])), ValueError,
     "checkpoint_number"),
    ("mngr.save: number float32", lambda c: c.m.save(c.tree, np.float32(3)), ValueError,
     "checkpoint_number"),
    ("mngr.save: object leaf", lambda c: c.m.save({"opt": [1, object()]}), TypeError,
     r"\['opt'\]\[1\]"),
    ("mngr.save: str leaf with a lone surrogate", lambda c: c.m.save({"s": "\udfff"}),
     ValueError, r"\['s'\].*lone surrogate"),
    ("mngr.save: metadata key with a lone surrogate",
     lambda c: c.m.save(c.tree, metadata={"\ud800": 1}), ValueError, "metadata has the key"),
    ("mngr.save: metadata not a dict", lambda c: c.m.save(c.tree, metadata="m"), TypeError,
     "metadata"),
    ("mngr.restore: number -1", lambda c: c.m.restore(-1), ValueError, "checkpoint must be"),
    ("mngr.restore: number 1.5", lambda c: c.m.restore(1.5), ValueError, "checkpoint"),
    ("mngr.restore: no such number", lambda c: c.m.restore(99), CheckpointNotFoundError,
     "ckpt-99"),
    ("mngr.restore: target mismatch", lambda c: c.m.restore(1, {"w": np.zeros(3)}),
     StructureMismatchError, r"\['w'\]"),
    # A mismatch is the caller's error, not damage: no falling back to older checkpoints.
    ("mngr.restore_or_initialize: target mismatch",
     lambda c: c.m.restore_or_initialize({"w": np.zeros(3)}), StructureMismatchError,
     r"(?s)ckpt-2.*\['w'\]"),
    # --- tf_compat
    ("tf Checkpoint: save_counter given", lambda c: tf_compat.Checkpoint(save_counter=1),
     ValueError, "save_counter"),
    ("tf manager: not a Checkpoint",
     lambda c: tf_compat.CheckpointManager({"a": 1}, c.root, 3), TypeError,
     "tf_compat.Checkpoint"),
    ("tf manager: max_to_keep=0",
     lambda c: tf_compat.CheckpointManager(tf_compat.Checkpoint(), c.root, 0), ValueError,
     "max_to_keep"),
    ("tf manager.save: number -1", lambda c: c.tm.save(checkpoint_number=-1), ValueError,
     "checkpoint_number must be >= 0"),
    ("tf manager.save: number 'x'", lambda c: c.tm.save(checkpoint_number="x"), ValueError,
     "checkpoint_number"),
    ("tf manager: interval without step_counter",
     lambda c: tf_compat.CheckpointManager(tf_compat.Checkpoint(), c.fresh, 3,
                                           checkpoint_interval=2),
     ValueError, "step_counter"),
]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    c = Ctx(str(base), str(base / "root"), str(base / "single"), str(base / "afile"),
            str(base / "fresh"), None)
    jaxckpt.save(c.single, _tree())
    with open(c.afile, "w") as f:
        f.write("not a checkpoint")
    c.m = jaxckpt.CheckpointManager(c.root, max_to_keep=3)
    c.m.save(_tree())
    c.m.save(_tree())
    c.m.wait_until_finished()
    c.tm = tf_compat.CheckpointManager(tf_compat.Checkpoint(x=np.ones(2)), base / "tfroot", 3)
    c.tm.save()
    c.tm.wait_until_finished()
    yield c
    c.m.close()
    assert c.tm.checkpoint.save_counter == 1  # bad saves did not count
    c.tm.close()


def test_the_table_is_large_enough():
    assert len(ROWS) >= 30
    assert len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_before_anything_is_written(ctx, row):
    _, call, exc, pattern = row
    TALLY["bad inputs tried"] += 1
    before = tree_bytes(ctx.base)
    with pytest.raises(exc, match=pattern):
        call(ctx)
    ctx.m.wait_until_finished()  # a bad save must not have queued anything either
    assert tree_bytes(ctx.base) == before
    TALLY["bad inputs refused"] += 1


def test_the_live_manager_survived_every_bad_call(ctx):
    assert not ctx.m._closed  # no bad constructor call took the directory over
    assert [os.path.basename(p) for p in ctx.m.checkpoints] == ["ckpt-1", "ckpt-2"]
    np.testing.assert_array_equal(ctx.m.restore()["w"], _tree()["w"])
    assert issubclass(CheckpointNotFoundError, CheckpointError)
    assert jax.tree_util.tree_structure(ctx.m.restore(2, _tree())) == \
        jax.tree_util.tree_structure(_tree())


def test_a_deleted_array_after_a_large_leaf_is_named_by_a_managers_save(tmp_path):
    # A large leaf is tracked for incremental saves; the check of a later
    # deleted leaf once looked its key path up in a name that tracking reused
    # (AttributeError: 'NoneType' object has no attribute 'paths').
    with jaxckpt.CheckpointManager(tmp_path / "run") as m:
        with pytest.raises(TypeError, match=r"\['b'\].*deleted or donated"):
            m.save({"a": jnp.ones(1 << 20), "b": _deleted_array()})
        assert not m.pending and not m.checkpoints
