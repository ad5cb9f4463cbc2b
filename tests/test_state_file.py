from __future__ import annotations

import os

import pytest
from hypothesis import given

from jaxckpt import CorruptCheckpointError
from jaxckpt._commit import state_file as _state_file
from jaxckpt._commit.state_file import CheckpointState

from strategies import states  # tests/ is on sys.path under pytest


@given(states())
def test_render_parse_round_trip(state):
    assert _state_file.parse(_state_file.render(state)) == state


def test_renders_tensorflow_text_format():
    state = CheckpointState("ckpt-5", ["ckpt-4", "ckpt-5"], [1.5, 2.25], 1.0)
    assert _state_file.render(state) == (
        'model_checkpoint_path: "ckpt-5"\n'
        'all_model_checkpoint_paths: "ckpt-4"\n'
        'all_model_checkpoint_paths: "ckpt-5"\n'
        "all_model_checkpoint_timestamps: 1.5\n"
        "all_model_checkpoint_timestamps: 2.25\n"
        "last_preserved_timestamp: 1.0\n"
    )


def test_reads_tensorflow_written_absolute_paths_without_timestamps(tmp_path):
    (tmp_path / "checkpoint").write_text(
        f'model_checkpoint_path: "{tmp_path}/ckpt-2"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-1"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-2"\n'
    )
    state = _state_file.read(str(tmp_path))
    assert state.all_model_checkpoint_timestamps == []
    assert _state_file.resolve(str(tmp_path), state.model_checkpoint_path) == str(tmp_path / "ckpt-2")
    assert _state_file.resolve(str(tmp_path), "ckpt-1") == str(tmp_path / "ckpt-1")


def test_octal_escapes_as_protobuf_writes_them():
    state = _state_file.parse('model_checkpoint_path: "caf\\303\\251-1"\n')
    assert state.model_checkpoint_path == "café-1"


@pytest.mark.parametrize(
    "text",
    ["garbage", 'model_checkpoint_path: unquoted', "all_model_checkpoint_timestamps: soon",
     'bogus_field: "x"', 'model_checkpoint_path: "a\\',
     'all_model_checkpoint_paths: "a"\nall_model_checkpoint_timestamps: 1\n'
     "all_model_checkpoint_timestamps: 2\n"],
)
def test_garbage_is_corrupt_and_names_the_file(tmp_path, text):
    (tmp_path / "checkpoint").write_text(text)
    with pytest.raises(CorruptCheckpointError, match="checkpoint"):
        _state_file.read(str(tmp_path))


def test_write_replaces_atomically_and_leaves_no_temporary(tmp_path):
    _state_file.prepare(str(tmp_path), CheckpointState("ckpt-1", ["ckpt-1"], [1.0], 0.0)).install()
    _state_file.prepare(str(tmp_path), CheckpointState("ckpt-2", ["ckpt-2"], [2.0], 0.0)).install()
    assert os.listdir(tmp_path) == ["checkpoint"]
    assert _state_file.read(str(tmp_path)).model_checkpoint_path == "ckpt-2"


def test_missing_file_is_none(tmp_path):
    assert _state_file.read(str(tmp_path)) is None
