"""What a new user met at the terminal and in Jupyter (issue 19): verify's summary
and its damage report grouped by file, Orbax directories recognised, a bar that
is not drawn on Jupyter's red stderr."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import jaxckpt
from jaxckpt.cli import main
from jaxckpt._read import reader as _reader


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _many_small(path: str) -> None:
    # 40 small leaves of 16 KiB share the packed array's first shard file.
    jaxckpt.save(path, {f"layer_{i:02d}": {"kernel": np.full((64, 64), i, np.float32)}
                        for i in range(40)})


def test_verify_returns_a_summary(tmp_path):
    path = str(tmp_path / "c")
    _many_small(path)
    summary = jaxckpt.verify(path)
    assert isinstance(summary, jaxckpt.VerifySummary)
    assert (summary.path, summary.leaves, summary.nbytes) == (path, 40, 40 * 64 * 64 * 4)
    assert summary.seconds >= 0
    assert str(summary).startswith(f"OK {path}: 40 leaves, 640.0 KiB checked in ")
    assert "nbytes=655360 (640.0 KiB)" in repr(summary)
    assert "<b>OK</b>" in summary._repr_html_()


def test_one_flipped_byte_is_one_line_per_damaged_file(tmp_path, capsys):
    path = str(tmp_path / "c")
    _many_small(path)
    data = _reader.read_manifest(path)["data"]
    shard = os.path.join(path, data, "packed", "c", "0")
    with open(shard, "r+b") as f:
        f.seek(os.path.getsize(shard) // 3)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(jaxckpt.CorruptCheckpointError) as e:
        jaxckpt.verify(path)
    lines = str(e.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"file {data}/packed/c/0 is damaged (")
    assert "['kernel']" in lines[0] and "leaves: ['layer_" in lines[0]
    rc, out, _ = _run(capsys, "verify", path)
    assert rc == 1
    assert out.splitlines()[0] == f"DAMAGED {path}:" and len(out.splitlines()) == 2, out


@pytest.fixture(scope="module")
def orbax_run(tmp_path_factory) -> str:
    ocp = pytest.importorskip("orbax.checkpoint")
    run = str(tmp_path_factory.mktemp("orbax") / "run")
    with ocp.CheckpointManager(run) as m:
        for step in (1, 2):
            m.save(step, args=ocp.args.StandardSave({"w": np.arange(4.0) + step}))
        m.wait_until_finished()
    return run


@pytest.mark.parametrize("command", ["ls", "show", "verify"])
def test_orbax_directories_are_recognised(orbax_run, command, capsys):
    for path, what in ((orbax_run, "is an Orbax CheckpointManager directory (2 step(s): 1, 2)"),
                       (os.path.join(orbax_run, "2"), "is an Orbax checkpoint"),
                       (os.path.join(orbax_run, "2", "default"), "is an Orbax checkpoint")):
        rc, out, err = _run(capsys, command, path)
        assert rc == 2 and out == "", (command, path, out)
        assert what in err and f"jaxckpt import-orbax {path} DEST" in err, err
        assert "no checkpoints" not in err and "interrupted" not in err


def test_restore_of_an_orbax_checkpoint_says_so(orbax_run):
    with pytest.raises(jaxckpt.CheckpointNotFoundError, match="is an Orbax checkpoint"):
        jaxckpt.restore(os.path.join(orbax_run, "1"))


def test_progress_bar_in_jupyter_is_on_the_cells_output():
    from jaxckpt._report import progress

    jupyter = progress._console(jupyter=True)
    assert getattr(jupyter.file, "name", None) != "<stderr>"
    assert jupyter.file is sys.stdout or jupyter.is_jupyter
    assert progress._console(jupyter=False).stderr
