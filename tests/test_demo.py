"""``jaxckpt demo``: a real training process is SIGKILLed and the resumed one continues."""

from __future__ import annotations

import io
import os
import sys

import pytest
from rich.console import Console

import jaxckpt
from jaxckpt import _demo
from jaxckpt.cli import main

# Slow (the demo's processes): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow


def test_demo_resumes_where_the_killed_process_stopped(tmp_path):
    directory = _demo.prepare_directory(str(tmp_path / "demo"))
    out = io.StringIO()
    r = _demo.run(directory, steps=40, every=5, kill_at=10, keep=2,
                  console=Console(file=out, width=100))
    text = out.getvalue()
    assert r.ok, (r.problems, text)
    assert r.first.returncode == -9  # really killed, not finished
    assert r.killed_after < 40 and r.first.saves and r.first.saves[-1]["step"] >= 10

    # Resumed from the newest checkpoint committed at the kill, and the steps continue.
    at_kill = int(os.path.basename(r.latest_at_kill).split("-")[1])
    assert r.resumed_step == at_kill and at_kill % 5 == 0 and at_kill <= r.killed_after
    assert sorted(r.second.losses) == list(range(at_kill + 1, 41))
    assert sorted(r.first.losses) == list(range(1, r.killed_after + 1))
    # Steps done twice (after the checkpoint, before the kill) give the same losses.
    replayed = sorted(set(r.first.losses) & set(r.second.losses))
    assert replayed == list(range(at_kill + 1, r.killed_after + 1))
    for step in replayed:
        assert r.second.losses[step] == pytest.approx(r.first.losses[step], rel=1e-6)
    assert r.second.losses[40] < r.first.losses[1]  # it did learn

    # The directory ends at step 40 with max_to_keep checkpoints, all sound.
    latest = jaxckpt.latest_checkpoint(directory)
    assert latest == os.path.join(directory, "ckpt-40")
    assert jaxckpt.restore(latest)["step"] == 40
    assert [os.path.basename(p) for p in r.second.done["kept"]] == ["ckpt-35", "ckpt-40"]
    for p in r.second.done["kept"]:
        jaxckpt.verify(p)
    assert not [e for e in jaxckpt.list_checkpoints(directory) if e.status == "uncommitted"]

    assert "SIGKILL" in text and "OK: training continued" in text
    assert f"at step {at_kill + 1}; steps" in text or not replayed


def test_demo_refuses_a_directory_it_did_not_make(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    assert main(["demo", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to clear it" in err and len(err.splitlines()) == 1
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_demo_clears_its_own_previous_directory(tmp_path):
    d = _demo.prepare_directory(str(tmp_path / "demo"))
    (tmp_path / "demo" / "ckpt-1").mkdir()
    assert _demo.prepare_directory(d) == d
    assert os.listdir(d) == [_demo.MARKER]


def test_demo_without_optax_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optax", None)  # makes `import optax` fail
    assert main(["demo", "--dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err == ("jaxckpt demo: error: jaxckpt demo needs optax, which is not installed; "
                   "install the demo extra: pip install 'jaxckpt[demo]'\n")
    assert not (tmp_path / "d").exists()  # nothing was written
