from __future__ import annotations

import inspect

import jaxckpt
from jaxckpt import errors


def test_all_is_pinned():
    assert sorted(jaxckpt.__all__) == sorted([
        "CheckpointError", "CheckpointManager", "CheckpointNotFoundError",
        "CheckpointWriteError", "CorruptCheckpointError", "StructureMismatchError",
        "latest_checkpoint", "list_checkpoints", "metadata", "restore", "save",
        "tf_compat", "user_metadata", "verify", "checkpoint_metrics",
    ])
    for name in jaxckpt.__all__:
        assert hasattr(jaxckpt, name)
    assert callable(jaxckpt.inspect)  # public, but not star-exported


def test_star_import_keeps_the_standard_inspect_module():
    ns: dict = {"inspect": inspect}
    exec("from jaxckpt import *", ns)
    assert ns["inspect"] is inspect
    assert "CheckpointManager" in ns


def test_error_hierarchy():
    assert issubclass(errors.CheckpointNotFoundError, (errors.CheckpointError, FileNotFoundError))
    assert issubclass(errors.CorruptCheckpointError, (errors.CheckpointError, ValueError))
    assert issubclass(errors.StructureMismatchError, (errors.CheckpointError, ValueError))
    assert issubclass(errors.CheckpointWriteError, errors.CheckpointError)
    assert str(errors.CheckpointNotFoundError("no checkpoint at x")) == "no checkpoint at x"


def test_contract_signatures():
    sig = inspect.signature(jaxckpt.CheckpointManager)
    assert list(sig.parameters)[:10] == [
        "directory", "max_to_keep", "keep_checkpoint_every_n_hours", "checkpoint_name",
        "step_counter", "checkpoint_interval", "init_fn", "last_checkpoint_step", "clock",
        "max_pending"]
    assert sig.parameters["max_to_keep"].default == 5
    save = inspect.signature(jaxckpt.CheckpointManager.save)
    assert list(save.parameters) == ["self", "state", "checkpoint_number", "check_interval", "metadata",
                                     "metrics"]
    restore = list(inspect.signature(jaxckpt.restore).parameters)
    assert restore[:3] == ["path", "target", "partial"]  # keywords may be added after these
    tf = inspect.signature(jaxckpt.tf_compat.CheckpointManager)
    assert list(tf.parameters) == [
        "checkpoint", "directory", "max_to_keep", "keep_checkpoint_every_n_hours",
        "checkpoint_name", "step_counter", "checkpoint_interval", "init_fn",
        "last_checkpoint_step", "clock"]


# Public names beyond ``__all__``: reachable as ``jaxckpt.X``, kept out of the
# star import (``inspect`` would shadow the standard library's module).
NOT_STAR_EXPORTED = sorted([
    "inspect",
    # result types of public calls
    "CheckpointEntry", "CheckpointInfo", "CheckpointList", "LeafInfo", "SaveStats",
    "SaveSummary", "IntervalChoice", "VerifySummary",
    # leaving for other libraries' formats (issue 19)
    "export_safetensors", "import_safetensors", "import_orbax", "import_orbax_run",
    # narrower errors (each also a CheckpointError and a built-in)
    "CoordinationError", "CoordinationTimeoutError", "DirectoryLockedError",
    "ForkedManagerError", "ManagerClosedError", "ReadOnlyManagerError",
])


def test_every_public_attribute_is_pinned():
    # As httpx's tests/test_exported_members.py: a new public name is a choice,
    # made here, never an accident of an import in __init__.py.
    import __future__
    import types

    jaxckpt.save  # the first public name asked for loads them all (jaxckpt/__init__.py)
    public = sorted(name for name, value in vars(jaxckpt).items()
                    if not name.startswith("_") and value is not __future__.annotations
                    and not (isinstance(value, types.ModuleType) and name != "tf_compat"))
    assert public == sorted(jaxckpt.__all__ + NOT_STAR_EXPORTED)
    assert not set(jaxckpt.__all__) & set(NOT_STAR_EXPORTED)


def test_result_types_are_what_public_calls_return(tmp_path):
    import numpy as np

    with jaxckpt.CheckpointManager(tmp_path) as m:
        path = m.save({"a": np.arange(3)})
        m.wait_until_finished()
        assert isinstance(m.last_save_stats, jaxckpt.SaveStats)
        assert isinstance(m.stats, jaxckpt.SaveSummary)
        listing = m.list_checkpoints()
        assert isinstance(listing, jaxckpt.CheckpointList)
        assert all(isinstance(e, jaxckpt.CheckpointEntry) for e in listing)
    assert isinstance(jaxckpt.list_checkpoints(tmp_path), jaxckpt.CheckpointList)
    info = jaxckpt.inspect(path)
    assert isinstance(info, jaxckpt.CheckpointInfo)
    assert all(isinstance(leaf, jaxckpt.LeafInfo) for leaf in info.leaves)
    for name in NOT_STAR_EXPORTED:
        obj = getattr(jaxckpt, name)
        if isinstance(obj, type):
            assert obj.__module__.startswith("jaxckpt."), name


def test_the_package_ships_py_typed():
    import pathlib
    import tomllib

    root = pathlib.Path(jaxckpt.__file__).parent
    assert (root / "py.typed").is_file()
    pyproject = root.parent / "pyproject.toml"
    if pyproject.is_file():  # a source checkout: the wheel includes it
        config = tomllib.loads(pyproject.read_text())
        assert "py.typed" in config["tool"]["setuptools"]["package-data"]["jaxckpt"]


def test_the_reference_page_lists_every_public_name():
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "REFERENCE.md"), encoding="utf-8") as f:
        reference = f.read()
    names = set(jaxckpt.__all__) | set(NOT_STAR_EXPORTED)
    for cls in (jaxckpt.CheckpointManager, jaxckpt.tf_compat.CheckpointManager):
        names |= {n for n in vars(cls) if not n.startswith("_")}
    for name in sorted(names):
        assert re.search(rf"`(jaxckpt\.|\.)?{name}\b", reference), f"REFERENCE.md lacks {name}"
    # Every keyword of the manager is documented.
    for param in inspect.signature(jaxckpt.CheckpointManager).parameters:
        assert f"{param}=" in reference or f"{param}," in reference, param
    for doc in ("README.md", "REFERENCE.md", os.path.join("benchmarks", "README.md")):
        with open(os.path.join(root, doc), encoding="utf-8") as f:
            text = f.read()
        # Links stay inside the repository (benchmarks/README.md may point up to ../README.md).
        for target in re.findall(r"\]\(([^)#]+)", text):
            if "://" in target:
                continue
            assert os.path.exists(os.path.join(root, os.path.dirname(doc), target)), (doc, target)
            assert os.path.realpath(os.path.join(root, os.path.dirname(doc), target)).startswith(
                os.path.realpath(root) + os.sep), (doc, target)
        assert "../shared" not in text, doc
