from __future__ import annotations

import inspect

import jaxckpt
from jaxckpt import errors


def test_all_is_pinned():
    assert sorted(jaxckpt.__all__) == sorted([
        "CheckpointError", "CheckpointManager", "CheckpointNotFoundError",
        "CheckpointWriteError", "CorruptCheckpointError", "StructureMismatchError",
        "latest_checkpoint", "list_checkpoints", "metadata", "restore", "save",
        "tf_compat", "user_metadata", "verify",
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
    assert list(save.parameters) == ["self", "state", "checkpoint_number", "check_interval", "metadata"]
    restore = list(inspect.signature(jaxckpt.restore).parameters)
    assert restore[:3] == ["path", "target", "partial"]  # keywords may be added after these
    tf = inspect.signature(jaxckpt.tf_compat.CheckpointManager)
    assert list(tf.parameters) == [
        "checkpoint", "directory", "max_to_keep", "keep_checkpoint_every_n_hours",
        "checkpoint_name", "step_counter", "checkpoint_interval", "init_fn",
        "last_checkpoint_step", "clock"]
