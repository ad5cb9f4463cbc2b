"""Import from Orbax (issue 19): checkpoints Orbax writes here, OCDBT and not, single
item and named items, one step and whole runs, converted bit-exact; the command line;
a jaxckpt manager continuing an imported run; bad input refused before anything is written."""

from __future__ import annotations

import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt
from jaxckpt import cli

ocp = pytest.importorskip("orbax.checkpoint")

STEPS = (0, 3, 7)


def _state(step: int) -> dict:
    """Every dtype Orbax saves: bf16, int4, a PRNG key, 0-d arrays, Python scalars."""
    return {
        "params": {"w": (jnp.arange(12, dtype=jnp.float32).reshape(3, 4) + step)
                   .astype(jnp.bfloat16),
                   "b": np.linspace(-1, 1, 5, dtype=np.float32) * step},
        "i4": jnp.array([1, -2, 3, 7], dtype=jnp.int4),
        "u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "f16": np.float16([0.5, -0.0, 65504.0]),
        "i64": np.arange(3, dtype=np.int64) - 2**40,
        "key": jax.random.key(step),
        "rbg_key": jax.random.key(step, impl="rbg"),
        "zero_d": jnp.float32(1.5 + step),
        "layers": [jnp.ones((2,)), jnp.zeros((1, 1), jnp.int32)],
        "step": step,
        "lr": 0.25,
    }


def _run(directory: str, ocdbt: bool, composite: bool = False) -> str:
    handler = ocp.StandardCheckpointHandler(use_ocdbt=ocdbt)
    # best_fn: Orbax records a step's metrics only when it ranks by them.
    options = ocp.CheckpointManagerOptions(max_to_keep=None, best_fn=lambda m: m["loss"],
                                           best_mode="min")
    if composite:
        handlers = {"state": handler, "meta": ocp.JsonCheckpointHandler()}
        with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as m:
            for step in STEPS:
                m.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_state(step)),
                    meta=ocp.args.JsonSave({"step": step, "name": "run", "tags": ["a", None]})))
            m.wait_until_finished()
    else:
        with ocp.CheckpointManager(directory, options=options, item_handlers=handler) as m:
            for step in STEPS:
                m.save(step, args=ocp.args.StandardSave(_state(step)),
                       metrics={"loss": 10.0 - step})
            m.wait_until_finished()
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("orbax")
    return {(ocdbt, composite): _run(str(root / f"run-{ocdbt}-{composite}"), ocdbt, composite)
            for ocdbt, composite in ((True, False), (False, False), (True, True))}


def _expected(step: int) -> dict:
    return _state(step)


def _assert_same(got, want):
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def, (got_def, want_def)
    for g, w in zip(got_leaves, want_leaves):
        if isinstance(w, (int, float, str)) and not isinstance(w, np.generic):
            assert type(g) is type(w) and g == w
            continue
        if jax.dtypes.issubdtype(getattr(w, "dtype", None), jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(g.dtype, jax.dtypes.prng_key)
            assert str(jax.random.key_impl(g)) == str(jax.random.key_impl(w))
            g, w = jax.random.key_data(g), jax.random.key_data(w)
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.array_equal(g.reshape(-1).view(np.uint8), w.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("ocdbt", [True, False])
def test_one_step_imports_bit_exact(runs, ocdbt, tmp_path):
    run = runs[(ocdbt, False)]
    assert ("ocdbt.process_0" in os.listdir(os.path.join(run, "3", "default"))) == ocdbt
    dest = str(tmp_path / "imported")
    assert jaxckpt.import_orbax(os.path.join(run, "3"), dest) == dest
    jaxckpt.verify(dest)
    _assert_same(jaxckpt.restore(dest), _expected(3))
    meta = jaxckpt.user_metadata(dest)
    assert meta["imported_from"] == "orbax" and meta["orbax"]["step"] == 3
    # An item's own directory is an Orbax checkpoint too (the checkpointer-alone layout).
    jaxckpt.import_orbax(os.path.join(run, "7", "default"), tmp_path / "item")
    _assert_same(jaxckpt.restore(tmp_path / "item"), _expected(7))


def test_checkpointer_used_alone(tmp_path):
    src = str(tmp_path / "alone")
    with ocp.StandardCheckpointer() as c:
        c.save(src, _state(5))
        c.wait_until_finished()
    jaxckpt.import_orbax(src, tmp_path / "out")
    _assert_same(jaxckpt.restore(tmp_path / "out"), _expected(5))


def test_named_items_become_top_level_keys(runs, tmp_path):
    run = runs[(True, True)]
    jaxckpt.import_orbax(os.path.join(run, "7"), tmp_path / "all")
    got = jaxckpt.restore(tmp_path / "all")
    assert sorted(got) == ["meta", "state"]
    _assert_same(got["state"], _expected(7))
    assert got["meta"] == {"step": 7, "name": "run", "tags": ["a", None]}
    jaxckpt.import_orbax(os.path.join(run, "7"), tmp_path / "some", items=["state"])
    assert sorted(jaxckpt.restore(tmp_path / "some")) == ["state"]
    with pytest.raises(ValueError, match="no item.*'nope'.*holds 'meta', 'state'"):
        jaxckpt.import_orbax(os.path.join(run, "7"), tmp_path / "x", items=["nope"])
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("layout", [(True, False), (False, False), (True, True)])
def test_run_import_continues_numbering_and_retention(runs, layout, tmp_path):
    run, dest = runs[layout], str(tmp_path / "mngr")
    paths = jaxckpt.import_orbax_run(run, dest)
    assert [os.path.basename(p) for p in paths] == [f"ckpt-{s}" for s in STEPS]
    with open(os.path.join(dest, "checkpoint")) as f:
        text = f.read()
    assert [line for line in text.splitlines() if line.startswith("all_model_checkpoint_paths")] \
        == [f'all_model_checkpoint_paths: "ckpt-{s}"' for s in STEPS]
    stamps = [float(line.split(":")[1]) for line in text.splitlines()
              if line.startswith("all_model_checkpoint_timestamps")]
    assert stamps == sorted(stamps) and len(stamps) == len(STEPS)
    for step in STEPS:
        got = jaxckpt.restore(os.path.join(dest, f"ckpt-{step}"))
        _assert_same(got["state"] if layout[1] else got, _expected(step))
    if not layout[1]:
        assert jaxckpt.checkpoint_metrics(os.path.join(dest, "ckpt-7")) == {"loss": 3.0}
    with jaxckpt.CheckpointManager(dest, max_to_keep=2) as mngr:
        assert mngr.latest_checkpoint == os.path.join(dest, "ckpt-7")
        _assert_same(mngr.restore()["state"] if layout[1] else mngr.restore(), _expected(7))
        assert mngr.save({"x": np.ones(2)}) == os.path.join(dest, "ckpt-8")
        mngr.wait_until_finished()
        assert [os.path.basename(p) for p in mngr.checkpoints] == ["ckpt-7", "ckpt-8"]
    assert sorted(n for n in os.listdir(dest) if n.startswith("ckpt-")) == ["ckpt-7", "ckpt-8"]


def test_run_import_uses_orbax_commit_times(runs, tmp_path):
    run = runs[(True, False)]
    jaxckpt.import_orbax_run(run, tmp_path / "m")
    listing = jaxckpt.list_checkpoints(tmp_path / "m")
    import json

    for entry in listing:
        with open(os.path.join(run, str(entry.number), "_CHECKPOINT_METADATA")) as f:
            want = json.load(f)["commit_timestamp_nsecs"] / 1e9
        assert entry.created == pytest.approx(want, abs=1e-3)


def test_run_import_into_a_manager_directory_with_lower_numbers(runs, tmp_path):
    dest = str(tmp_path / "m")
    with jaxckpt.CheckpointManager(dest, max_to_keep=None) as mngr:
        mngr.save({"x": 1}, checkpoint_number=0)
    with pytest.raises(ValueError, match="already holds ckpt-0.*start at 0"):
        jaxckpt.import_orbax_run(runs[(True, False)], dest)
    assert [os.path.basename(p) for p in jaxckpt.CheckpointManager(
        dest, read_only=True).checkpoints] == ["ckpt-0"]


def test_cli_imports_a_step_and_a_run(runs, tmp_path, capsys):
    run = runs[(False, False)]
    assert cli.main(["import-orbax", os.path.join(run, "3"), str(tmp_path / "one")]) == 0
    assert "imported Orbax checkpoint" in capsys.readouterr().out
    _assert_same(jaxckpt.restore(tmp_path / "one"), _expected(3))
    assert cli.main(["import-orbax", run, str(tmp_path / "all"), "--checkpoint-name", "s"]) == 0
    out = capsys.readouterr().out
    assert "imported 3 Orbax step(s)" in out and "s-0, s-3, s-7" in out
    assert jaxckpt.latest_checkpoint(tmp_path / "all") == str(tmp_path / "all" / "s-7")
    assert cli.main(["verify", str(tmp_path / "all")]) == 0
    capsys.readouterr()
    # ls on the Orbax run points at this very command.
    assert cli.main(["ls", run]) == 2
    assert f"jaxckpt import-orbax {run} DEST" in capsys.readouterr().err


def test_bad_input_is_refused_before_anything_is_written(runs, tmp_path, capsys):
    run = runs[(True, False)]
    step = os.path.join(run, "3")
    cases = [
        (str(tmp_path / "missing"), "no such Orbax"),
        (str(tmp_path), "not an Orbax checkpoint"),
        (run, "CheckpointManager directory, not one step"),
    ]
    for src, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            jaxckpt.import_orbax(src, tmp_path / "dest")
        assert not os.path.exists(tmp_path / "dest")
    with pytest.raises(ValueError, match="one Orbax checkpoint, not a CheckpointManager"):
        jaxckpt.import_orbax_run(step, tmp_path / "dest")
    # An unfinished save: Orbax's temporary directory.
    tmp = str(tmp_path / "9.orbax-checkpoint-tmp-1234")
    shutil.copytree(step, tmp)
    with pytest.raises(ValueError, match="unfinished Orbax save"):
        jaxckpt.import_orbax(tmp, tmp_path / "dest")
    # A jaxckpt checkpoint is not an Orbax one.
    jaxckpt.save(tmp_path / "ours", {"a": np.ones(1)})
    with pytest.raises(ValueError, match="already a jaxckpt checkpoint"):
        jaxckpt.import_orbax(tmp_path / "ours", tmp_path / "dest")
    # The destination: an existing checkpoint, a non-empty foreign directory.
    with pytest.raises(FileExistsError):
        jaxckpt.import_orbax(step, tmp_path / "ours")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and is not a jaxckpt checkpoint directory"):
        jaxckpt.import_orbax_run(run, foreign)
    assert os.listdir(foreign) == ["notes.txt"]
    assert not os.path.exists(tmp_path / "dest")
    # The command line says the same in one line, exit 2.
    assert cli.main(["import-orbax", tmp, str(tmp_path / "dest")]) == 2
    assert "unfinished Orbax save" in capsys.readouterr().err


def test_unfinished_steps_of_a_run_are_skipped(runs, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(runs[(True, False)], run)
    shutil.copytree(os.path.join(run, "7"), os.path.join(run, "8.orbax-checkpoint-tmp-99"))
    paths = jaxckpt.import_orbax_run(run, tmp_path / "m")
    assert [os.path.basename(p) for p in paths] == [f"ckpt-{s}" for s in STEPS]


def test_missing_orbax_names_the_extra(tmp_path, monkeypatch, runs):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxckpt\[orbax\]'"):
        jaxckpt.import_orbax(os.path.join(runs[(True, False)], "3"), tmp_path / "d")
    assert not os.path.exists(tmp_path / "d")
