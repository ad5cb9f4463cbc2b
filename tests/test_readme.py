"""Every snippet in README.md runs: the Python blocks in order, and the jaxckpt side of each
side-by-side migration block (the other library's side too where it is installed)."""

from __future__ import annotations

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    README = f.read()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.M | re.S)


def _exec(code: str, ns: dict, tmp_path) -> dict:
    exec(compile(code.replace("/tmp/", f"{tmp_path}/"), "README.md", "exec"), ns)
    return ns


def test_python_snippets_run_in_order(tmp_path):
    # Blocks that need a cloud bucket or a cluster are shown, not run here
    # (tests/test_object_store.py and tests/test_multihost.py cover them; tests/test_in_jit.py the compiled loop;
    # tests/test_save_rules.py runs the save policies' block).
    python = [body for lang, body in BLOCKS if lang == "python"
              and not any(s in body for s in ("s3://", "gs://", "jax.distributed",
                                                  "save_in_jit", "save_on_preemption",
                                                  "save_interval_s=", "keep_best=",
                                                  "export_safetensors", "import_orbax"))]
    assert len(python) == 3
    ns = _exec(python[0], {}, tmp_path)  # the Flax training loop
    run = str(tmp_path / "run")
    assert jaxckpt.latest_checkpoint(run) == os.path.join(run, "ckpt-300")
    assert [os.path.basename(p) for p in ns["mngr"].checkpoints] == [
        "ckpt-100", "ckpt-200", "ckpt-300"]
    assert ns["mngr"].stats.committed == 3
    # Run again: it resumes from ckpt-300 and saves nothing new.
    ns = _exec(python[0], {}, tmp_path)
    assert ns["start"] == 300 and ns["mngr"].stats.saves == 0
    _exec(python[1], {}, tmp_path)  # the one-off checkpoints
    assert jaxckpt.user_metadata(tmp_path / "one") == {"note": "before fine-tuning"}
    ns = _exec(python[2], {}, tmp_path)  # incremental saves
    assert ns["mngr"].last_save_stats.bytes_shared == ns["base"].nbytes


def _columns(block: str) -> tuple[str, str]:
    lines = block.splitlines()
    col = lines[0].index("# jaxckpt")
    left = "\n".join(line[:col].rstrip() for line in lines)
    right = "\n".join(line[col:] for line in lines)
    return left, right


def _side_by_side(title: str) -> str:
    found = [body for lang, body in BLOCKS if lang == "text" and body.startswith(f"# {title} ")]
    assert len(found) == 1, title
    return found[0]


@pytest.fixture
def given(tmp_path) -> dict:
    """The names the snippets take from the reader's program."""
    state = {"params": {"w": jnp.ones((4, 4))}, "step": 100}
    return {"jax": jax, "jnp": jnp, "np": np, "jaxckpt": jaxckpt, "state": state, "step": 100,
            "params": {"w": np.arange(3.0)}, "abstract_state": jax.eval_shape(lambda: state),
            "d": str(tmp_path / "ckpts")}


@pytest.mark.parametrize("title,other", [("TensorFlow", "tensorflow"), ("Orbax", "orbax"),
                                         ("flax.training.checkpoints", "flax")])
def test_migration_snippets_run(title, other, given, tmp_path):
    left, right = _columns(_side_by_side(title))
    ns = dict(given)
    try:
        exec(compile(right, f"README.md ({title}, jaxckpt side)", "exec"), ns)
    finally:
        for name in ("mngr", "m"):
            if hasattr(ns.get(name), "close"):
                ns[name].close()
    latest = jaxckpt.latest_checkpoint(given["d"])
    assert latest is not None
    if title != "TensorFlow":
        assert np.array_equal(np.asarray(ns["state"]["params"]["w"]), np.ones((4, 4)))
        assert int(ns["state"]["step"]) == 100
        assert os.path.basename(latest) == "ckpt-100"
    if importlib.util.find_spec(other) is None:
        return  # e.g. TensorFlow: not installed here
    ns = dict(given, d=str(tmp_path / "other"))
    if title == "Orbax":
        import orbax.checkpoint as ocp

        ns["ocp"] = ocp
    elif title == "flax.training.checkpoints":
        from flax.training import checkpoints

        ns["checkpoints"] = checkpoints
    exec(compile(left, f"README.md ({title}, {other} side)", "exec"), ns)
    assert np.array_equal(np.asarray(ns["state"]["params"]["w"]), np.ones((4, 4)))


def test_safetensors_snippet_runs(tmp_path):
    pytest.importorskip("safetensors")
    found = [body for lang, body in BLOCKS if lang == "python" and "export_safetensors" in body]
    assert len(found) == 1
    ns = _exec(found[0], {}, tmp_path)
    assert ns["done"]["tensors"] == 2 and str(ns["jaxckpt"].verify(tmp_path / "export-me")).startswith("OK")


def test_orbax_import_snippet_runs(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    found = [body for lang, body in BLOCKS if lang == "python" and "import_orbax" in body]
    assert len(found) == 1
    ns = _exec(found[0], {}, tmp_path)
    assert [os.path.basename(p) for p in ns["mngr"].checkpoints] == ["ckpt-300", "ckpt-301"]
