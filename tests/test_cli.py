"""The command line: ``main(argv)`` for most cases, real subprocesses for a few."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import jaxckpt
from jaxckpt.cli import main
from jaxckpt._read import reader as _reader

HOUR = 3600.0


def _tree(i: int) -> dict:
    return {"params": {"w": np.full((1024, 1024), i, np.float32),
                       "b": np.arange(8, dtype=np.int32)}, "step": i}


def _flip(file: str, offset: int = 100) -> None:
    with open(file, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def _array_file(ckpt: str, sub: str = "a") -> str:
    """The first data file under ``ckpt/sub`` (``a`` for large leaves, ``packed``)."""
    data = _reader.read_manifest(ckpt).get("data", "")
    for root, _, files in sorted(os.walk(os.path.join(ckpt, data, sub))):
        if files:
            return os.path.join(root, sorted(files)[0])
    raise AssertionError(f"no data file under {ckpt}/{sub}")


@pytest.fixture(autouse=True)
def _packed_in_files(monkeypatch):
    """These small trees' packed leaves go in a file (not the manifest), so
    that damage to them is a file to flip."""
    monkeypatch.setattr(jaxckpt._format.manifest, "INLINE_BYTES", 0)


@pytest.fixture
def run_dir(tmp_path) -> str:
    """ckpt-2, ckpt-3 preserved, ckpt-4 active, ckpt-5 latest, a leftover of an interrupted
    ckpt-6 (ckpt-1 was deleted: it was not an hour newer than the start)."""
    d = str(tmp_path / "run")
    now = [1_000_000.0]
    # incremental=False: each checkpoint has files of its own, so that damage
    # to one stays in one (test_incremental covers files shared by several).
    with jaxckpt.CheckpointManager(d, max_to_keep=2, keep_checkpoint_every_n_hours=1.0,
                                   clock=lambda: now[0], incremental=False) as m:
        for i in range(1, 6):
            m.save(_tree(i))
            now[0] += HOUR
    os.makedirs(os.path.join(d, ".ckpt-6.tmp-0123456789ab", "packed"))
    return d


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_everywhere(capsys):
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0 and "usage: jaxckpt" in out
    for command in ("ls", "show", "verify", "demo"):
        assert command in out
        rc, out_cmd, _ = _run(capsys, command, "--help")
        assert rc == 0 and out_cmd.startswith(f"usage: jaxckpt {command}"), out_cmd


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["ls"], ["ls", "{tmp}/missing"], ["ls", "{ckpt}"], ["show", "{tmp}/missing"],
    ["verify", "{tmp}/missing"], ["verify", "{tmp}/empty"], ["demo", "--steps", "0"],
    ["show", "{ckpt}", "--bogus"], ["ls", "memory://jaxckpt-cli-tests/none"], ["verify", "ftp://host/c"],
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, argv):
    ckpt = str(tmp_path / "c")
    jaxckpt.save(ckpt, {"a": 1})
    os.makedirs(tmp_path / "empty")
    argv = [a.format(tmp=tmp_path, ckpt=ckpt) for a in argv]
    rc, out, err = _run(capsys, *argv)
    assert rc == 2, (argv, out, err)
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("jaxckpt"), err


def test_ls_table(run_dir, capsys):
    rc, out, err = _run(capsys, "ls", run_dir)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == run_dir
    assert lines[1].split() == ["name", "number", "committed", "size", "status"]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert list(rows) == ["ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5", ".ckpt-6.tmp-0123456789ab"]
    assert rows["ckpt-2"][-1] == rows["ckpt-3"][-1] == "preserved"
    assert rows["ckpt-4"][-1] == "active"
    assert rows["ckpt-5"][-1] == "latest" and rows["ckpt-5"][1] == "5"
    assert rows["ckpt-5"][4:6] == ["4.0", "MiB"]
    assert rows[".ckpt-6.tmp-0123456789ab"][4:] == [
        "B", "uncommitted", "(save", "in", "progress", "or", "interrupted)"]


def test_ls_json_and_empty(run_dir, tmp_path, capsys):
    rc, out, _ = _run(capsys, "ls", run_dir, "--json")
    assert rc == 0
    entries = json.loads(out)
    assert [(e["name"], e["status"]) for e in entries] == [
        ("ckpt-2", "preserved"), ("ckpt-3", "preserved"), ("ckpt-4", "active"),
        ("ckpt-5", "latest"),
        (".ckpt-6.tmp-0123456789ab", "uncommitted")]
    assert entries[3]["created"] == 1_000_000.0 + 4 * HOUR
    rc, out_url, _ = _run(capsys, "ls", f"file://{run_dir}", "--json")
    assert rc == 0 and json.loads(out_url) == entries
    os.makedirs(tmp_path / "nothing")
    rc, out, _ = _run(capsys, "ls", str(tmp_path / "nothing"))
    assert rc == 0 and out.startswith("no checkpoints in")


def test_show_table_json_and_directory(run_dir, capsys):
    ckpt = os.path.join(run_dir, "ckpt-4")
    rc, out, _ = _run(capsys, "show", ckpt)
    assert rc == 0
    assert out.splitlines()[0] == f"checkpoint {ckpt}"
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("[")}
    assert rows["['params']['w']"] == ["['params']['w']", "(1024,", "1024)", "float32", "4.0",
                                       "MiB"]
    assert rows["['params']['b']"][-3:] == ["int32", "32", "B"]
    assert rows["['step']"][-4:] == ["int", "=", "4", "-"]
    assert out.splitlines()[-1].split() == ["total:", "3", "leaves", "4.0", "MiB"]

    rc, out, _ = _run(capsys, "show", ckpt, "--json")
    info = json.loads(out)
    assert info["path"] == ckpt and info["nbytes"] == (1 << 22) + 32
    assert {leaf["path"]: leaf.get("value") for leaf in info["leaves"]}["['step']"] == 4

    rc, out, _ = _run(capsys, "show", run_dir)  # a directory: its latest checkpoint
    assert rc == 0 and out.splitlines()[0] == (
        f"checkpoint {os.path.join(run_dir, 'ckpt-5')}  (latest checkpoint in {run_dir})")


def test_show_damaged_or_uncommitted(run_dir, capsys):
    manifest = os.path.join(run_dir, "ckpt-4", "_CHECKPOINT")
    _flip(manifest, os.path.getsize(manifest) - 3)
    rc, out, err = _run(capsys, "show", os.path.join(run_dir, "ckpt-4"))
    assert rc == 1 and "ckpt-4" in err and "checksum" in err
    rc, _, err = _run(capsys, "show", os.path.join(run_dir, ".ckpt-6.tmp-0123456789ab"))
    assert rc == 2 and "not a committed checkpoint" in err


def test_verify_checkpoint_and_directory(run_dir, capsys):
    rc, out, err = _run(capsys, "verify", os.path.join(run_dir, "ckpt-5"))
    assert rc == 0 and err == ""
    assert out == f"OK {os.path.join(run_dir, 'ckpt-5')} (3 leaves, 4.0 MiB)\n"
    rc, out, err = _run(capsys, "verify", run_dir)
    assert rc == 0 and err == ""
    assert out.splitlines() == [
        "skipped .ckpt-6.tmp-0123456789ab: uncommitted (save in progress or interrupted); "
        "readers ignore it",
        "OK ckpt-2 (3 leaves, 4.0 MiB)", "OK ckpt-3 (3 leaves, 4.0 MiB)",
        "OK ckpt-4 (3 leaves, 4.0 MiB)",
        "OK ckpt-5 (3 leaves, 4.0 MiB)"]


def test_verify_names_each_damaged_leaf_and_checkpoint(run_dir, capsys):
    _flip(_array_file(os.path.join(run_dir, "ckpt-4")))
    _flip(_array_file(os.path.join(run_dir, "ckpt-5"), "packed"), 10)
    rc, out, err = _run(capsys, "verify", run_dir)
    assert rc == 1
    lines = out.splitlines()
    assert "OK ckpt-2 (3 leaves, 4.0 MiB)" in lines
    assert lines.index("DAMAGED ckpt-4:") + 1 == next(
        i for i, line in enumerate(lines) if "leaf ['params']['w'] is damaged" in line)
    assert "DAMAGED ckpt-5:" in lines
    assert any("ckpt-5: leaf ['params']['b'] is damaged" in line for line in lines)
    assert err.splitlines() == [f"jaxckpt verify: 2 damaged in {run_dir} (4 checkpoint(s) read)"]


def test_verify_state_file_naming_missing_or_uncommitted(run_dir, capsys):
    shutil.rmtree(os.path.join(run_dir, "ckpt-4"))
    os.remove(os.path.join(run_dir, "ckpt-5", "_CHECKPOINT"))
    rc, out, _ = _run(capsys, "verify", run_dir)
    assert rc == 1
    assert "MISSING ckpt-4: the state file names it but it is not on disk" in out
    assert "UNCOMMITTED ckpt-5: the state file names it but it has no commit record" in out
    assert "OK ckpt-2 (3 leaves, 4.0 MiB)" in out
    rc, out, _ = _run(capsys, "verify", os.path.join(run_dir, "ckpt-5"))
    assert rc == 1 and out.startswith(f"UNCOMMITTED {os.path.join(run_dir, 'ckpt-5')}")


def test_verify_progress_flag(run_dir, capsys):
    ckpt = os.path.join(run_dir, "ckpt-5")
    rc, _, err = _run(capsys, "verify", ckpt)  # stderr is not a terminal here: no bar
    assert rc == 0 and err == ""
    rc, _, err = _run(capsys, "verify", "--progress", ckpt)
    assert rc == 0 and "verify ckpt-5" in err and "4.0/4.0 MiB" in err


def _python(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


@pytest.mark.slow  # child processes
def test_subprocess_python_m_jaxckpt(run_dir):
    _flip(_array_file(os.path.join(run_dir, "ckpt-4")))
    proc = _python("-m", "jaxckpt", "verify", run_dir)
    assert proc.returncode == 1, proc.stderr
    assert "DAMAGED ckpt-4:" in proc.stdout and "['params']['w']" in proc.stdout
    assert "OK ckpt-5 (3 leaves, 4.0 MiB)" in proc.stdout
    proc = _python("-m", "jaxckpt")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "jaxckpt: error: the following arguments are required: COMMAND (see 'jaxckpt --help')"]


@pytest.mark.slow  # child processes
def test_subprocess_console_script(run_dir):
    script = os.path.join(os.path.dirname(sys.executable), "jaxckpt")
    if not os.path.exists(script):
        pytest.skip("the jaxckpt console script is not installed next to this python")
    proc = subprocess.run([script, "ls", run_dir], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[-1] for line in proc.stdout.splitlines()[3:7]] == [
        "preserved", "preserved", "active", "latest"]


@pytest.mark.slow  # child processes
def test_import_stays_cheap(run_dir):
    code = ("import sys, jaxckpt\n"
            f"p = {os.path.join(run_dir, 'ckpt-5')!r}\n"
            "jaxckpt.restore(p); jaxckpt.verify(p); jaxckpt.inspect(p)\n"
            "repr(jaxckpt.list_checkpoints(p + '/..'))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'rich', 'optax', 'matplotlib', 'IPython'}))\n")
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
