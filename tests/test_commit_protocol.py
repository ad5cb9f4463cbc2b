"""The commit protocol and the sweep (issue 13, items 5, 6, 8, 19).

- A replace without ``RENAME_EXCHANGE`` (forced with ``JAXCKPT_NO_RENAME_EXCHANGE=1``)
  killed between its two renames loses no checkpoint: the next manager puts
  one back, then sweeps.
- Nothing is followed through a symbolic link when marking or deleting.
- Kills during replaces leave no leftover that the next manager keeps, and
  ``ls`` never shows a leftover as ``preserved``.
- On an object store, neither a reader (``read_only=True``) nor a second
  manager sweeps a save in flight; a commit whose data vanished fails.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointError, CheckpointWriteError, _faults
from jaxckpt._commit import atomic as _commit
from jaxckpt._format import names as _names

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY, assert_equal_trees, leftovers, tree_bytes  # noqa: E402
from _s3_server import s3, s3_server  # noqa: E402,F401

WATCHDOG_S = 120


def _tree(k: int) -> dict:
    return {"big": np.arange(1 << 19, dtype=np.int32) + k,  # 2 MiB: an array of its own
            "small": {f"p{j}": np.full(j + 1, k, np.int16) for j in range(8)},
            "step": k}


# Saves number 1 again and again (each commit a replace), printing what it committed.
_REPLACER = textwrap.dedent("""
    import sys
    import numpy as np
    import jaxckpt

    def tree(k):
        return {"big": np.arange(1 << 19, dtype=np.int32) + k,
                "small": {f"p{j}": np.full(j + 1, k, np.int16) for j in range(8)},
                "step": k}

    d, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    m = jaxckpt.CheckpointManager(d, max_to_keep=2)
    print("start", flush=True)
    for k in range(first, first + count):
        m.save(tree(k), checkpoint_number=1)
        m.wait_until_finished()
        print("saved", k, flush=True)
    m.close()
    print("done", flush=True)
""")


class _Proc:
    """A subprocess running ``script``; a hung one is killed, never waited on forever."""

    def __init__(self, script: str, *args: str, **env: str):
        full = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
        full.pop("XLA_FLAGS", None)
        self.proc = subprocess.Popen([sys.executable, "-c", script, *args], env=full,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._watchdog = threading.Timer(WATCHDOG_S, self.proc.kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        self._read = ""

    def line(self) -> str:
        text = self.proc.stdout.readline()
        self._read += text
        return text.strip()

    def wait_stopped(self) -> None:
        _, status = os.waitpid(self.proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "the subprocess ended instead of stopping"

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate()
        self._watchdog.cancel()
        return self.proc.returncode, self._read + out, err  # every line, those read too


def _replace_env(point: str | None = None, action: str = "kill", skip: int = 0,
                 fallback: bool = False) -> dict:
    env = {"JAXCKPT_NO_RENAME_EXCHANGE": "1"} if fallback else {}
    if point:
        env.update(JAXCKPT_FAULT_POINT=point, JAXCKPT_FAULT_ACTION=action,
                   JAXCKPT_FAULT_SKIP=str(skip))
    return env


def _saved(out: str) -> list[int]:
    return [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved")]


def _assert_one_clean_checkpoint(d, candidates: set[int]) -> int:
    """After a new manager opened ``d``: ckpt-1 is there, verifies and restores
    bit-exact to one of ``candidates``; nothing else is on disk or listed."""
    path = str(d / "ckpt-1")
    assert leftovers(d) == [], leftovers(d)
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-1"], os.listdir(d)
    jaxckpt.verify(path)
    got = jaxckpt.restore(path)
    assert got["step"] in candidates, (got["step"], candidates)
    assert_equal_trees(got, _tree(got["step"]))
    statuses = {e.name: e.status for e in jaxckpt.list_checkpoints(d)}
    assert statuses == {"ckpt-1": "latest"}, statuses
    return got["step"]


# ------------------------------------------------------------ item 6: no RENAME_EXCHANGE


@pytest.mark.parametrize("damage_new", [False, True], ids=["roll-forward", "roll-back"])
def test_crash_between_the_fallback_renames_keeps_the_checkpoint(tmp_path, damage_new):
    """Killed after the old ckpt-1 went aside and before the new one moved in."""
    d = tmp_path / "run"
    TALLY["kill rounds run"] += 1
    TALLY["faults injected"] += 1
    p = _Proc(_REPLACER, str(d), "1", "3", **_replace_env("commit.aside", fallback=True))
    code, out, err = p.finish()
    assert code == -signal.SIGKILL, err[-3000:]
    assert _saved(out) == [1]  # the first save made ckpt-1, the second died replacing it
    names = os.listdir(d)
    assert "ckpt-1" not in names, names
    old = [n for n in names if re.match(r"^\.ckpt-1\.old-[0-9a-f]+$", n)]
    new = [n for n in names if re.match(r"^\.ckpt-1\.tmp-[0-9a-f]+$", n)]
    assert len(old) == 1 and len(new) == 1, names
    assert old[0].split("-")[-1] == new[0].split("-")[-1]  # paired by their token
    if damage_new:  # a temporary without an intact manifest is never rolled forward
        with open(d / new[0] / "_CHECKPOINT", "r+b") as f:
            f.truncate(10)
    with jaxckpt.CheckpointManager(d, max_to_keep=2) as m:
        assert m.latest_checkpoint == str(d / "ckpt-1")
    step = _assert_one_clean_checkpoint(d, {1} if damage_new else {2})
    assert step == (1 if damage_new else 2)
    TALLY["kill rounds survived"] += 1


def test_forced_fallback_replaces_without_exchange(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_commit, "NO_RENAME_EXCHANGE", True)
    monkeypatch.setattr(_commit, "_warned_no_exchange", False)
    seen = []
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
        m.save(_tree(1), checkpoint_number=1)
        m.wait_until_finished()
        with _faults.armed("commit.aside", lambda _: seen.append(sorted(os.listdir(tmp_path)))):
            for k in (2, 3):
                m.save(_tree(k), checkpoint_number=1)
                m.wait_until_finished()
    assert len(seen) == 2 and all(any(".ckpt-1.old-" in n for n in s) for s in seen), seen
    assert caplog.text.count("RENAME_EXCHANGE") == 1  # said once per process, not per save
    assert _assert_one_clean_checkpoint(tmp_path, {3}) == 3


# ------------------------------------------------------------ item 8: symbolic links


def _outside(tmp_path):
    """A committed checkpoint directory and a file outside the managed directory."""
    out = tmp_path / "outside"
    out.mkdir()
    jaxckpt.save(out / "precious", _tree(7))
    (out / "notes.txt").write_bytes(b"do not touch\n" * 100)
    return out, tree_bytes(out)


def test_a_symlink_planted_as_a_deletion_marker_is_never_written_through(tmp_path):
    out, before = _outside(tmp_path)
    d = tmp_path / "run"
    TALLY["bad inputs tried"] += 1
    with jaxckpt.CheckpointManager(d, max_to_keep=1) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        os.symlink(out / "notes.txt", d / ".ckpt-1.deleting")  # retention will mark ckpt-1
        m.save(_tree(2))
        m.wait_until_finished()
        assert m.checkpoints == [str(d / "ckpt-2")]
    assert tree_bytes(out) == before
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-2"]
    TALLY["bad inputs refused"] += 1


def test_a_planted_marker_link_deletes_nothing(tmp_path):
    out, before = _outside(tmp_path)
    d = tmp_path / "run"
    with jaxckpt.CheckpointManager(d) as m:
        m.save(_tree(1))
    jaxckpt.save(d / "ckpt-7", _tree(7))  # saved by hand, named by no state file
    TALLY["bad inputs tried"] += 1
    os.symlink(out / "notes.txt", d / ".ckpt-7.deleting")
    with jaxckpt.CheckpointManager(d):
        pass
    assert tree_bytes(out) == before
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-1", "ckpt-7"]  # the link is gone
    assert_equal_trees(jaxckpt.restore(d / "ckpt-7"), _tree(7))
    TALLY["bad inputs refused"] += 1


def test_deleting_links_and_files_named_like_checkpoints_touches_nothing_outside(tmp_path,
                                                                                caplog):
    """Marked for deletion: ckpt-2 a link to a directory outside, ckpt-3 a link to
    a file outside, ckpt-4 a plain file; also leftovers that are links."""
    out, before = _outside(tmp_path)
    d = tmp_path / "run"
    with jaxckpt.CheckpointManager(d) as m:
        m.save(_tree(1))
    os.symlink(out / "precious", d / "ckpt-2")
    os.symlink(out / "notes.txt", d / "ckpt-3")
    (d / "ckpt-4").write_bytes(b"not a checkpoint")
    for n in (2, 3, 4):
        (d / f".ckpt-{n}.deleting").write_bytes(b"")
    os.symlink(out / "precious", d / ".ckpt-5.tmp-0123456789ab")
    os.symlink(out / "notes.txt", d / ".ckpt-6.trash-0123456789ab")
    TALLY["bad inputs tried"] += 1
    with caplog.at_level(logging.WARNING, "jaxckpt"):
        with jaxckpt.CheckpointManager(d):
            pass
    assert tree_bytes(out) == before
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-1"]
    assert "could not" not in caplog.text
    # The removal itself, on a link to a directory and on a plain file.
    os.symlink(out / "precious", d / "ckpt-8")
    _commit.remove(str(d / "ckpt-8"))
    (d / "ckpt-9").write_bytes(b"x")
    _commit.remove(str(d / "ckpt-9"))
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-1"]
    assert tree_bytes(out) == before
    jaxckpt.verify(out / "precious")
    TALLY["bad inputs refused"] += 1


# ------------------------------------------------------------ item 19: kills during replaces


def test_leftover_names_are_built_and_parsed_in_one_place():
    token = _commit.new_token()
    assert re.fullmatch(r"[0-9a-f]{20}", token)
    assert _commit.token_age_s(token, time.time()) < 60
    assert _commit.token_age_s("0123456789ab", time.time()) == float("inf")  # no time in it
    for name, kind in ((_names.tmp("ckpt-3", token), "tmp"), (_names.old("ckpt-3", token), "old"),
                       (_names.trash("ckpt-3"), "trash"), (_names.deleting("ckpt-3"), "deleting")):
        found = _names.parse(name)
        assert found is not None and (found.base, found.kind) == ("ckpt-3", kind), name
    # What earlier versions left (a replaced checkpoint's trash) belongs to ckpt-3 too.
    legacy = _names.parse(f"..ckpt-3.tmp-{token}.trash-0123456789ab")
    assert legacy is not None and (legacy.base, legacy.kind) == ("ckpt-3", "trash")
    assert _names.base_of(_names.tmp("ckpt-3", token)) == "ckpt-3"
    for other in ("ckpt-3", "checkpoint.tmp-0123", ".ckpt-3", ".ckpt-3.tmp-XYZ"):
        assert _names.parse(other) is None, other
    assert _names.number_of("ckpt-12", "ckpt") == 12 and _names.number_of("ckpt-x", "ckpt") is None


def test_leftovers_of_earlier_versions_are_swept_and_never_listed_as_preserved(tmp_path):
    d = tmp_path / "run"
    with jaxckpt.CheckpointManager(d) as m:
        m.save(_tree(1))
    jaxckpt.save(d / "..ckpt-1.tmp-0123456789ab.trash-ba9876543210", _tree(0))  # a whole copy
    statuses = {e.name: e.status for e in jaxckpt.list_checkpoints(d)}
    assert statuses == {"ckpt-1": "latest", "..ckpt-1.tmp-0123456789ab.trash-ba9876543210":
                        "uncommitted"}, statuses
    with jaxckpt.CheckpointManager(d):
        pass
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-1"]


_REPLACE_KILLS = [  # (fault point, action) of each round; None: a random instant
    ("commit.remove.renamed", "kill"), ("commit.exchanged", "kill"),
    ("commit.exchanged", "stop"), (None, None), ("commit.exchanged", "stop"), (None, None),
    ("commit.remove.renamed", "stop"), (None, None),
]


@pytest.mark.slow  # child processes
@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_sigkill_during_replaces_leaves_nothing_behind(tmp_path, fallback):
    """A process replaces ckpt-1 in a loop; killed at aimed points and at random
    instants (also a few ms after a point, inside the removal of the old copy)."""
    rng = random.Random(19)
    d = tmp_path / "run"
    committed = 0  # the newest content of ckpt-1 known committed
    kills = _REPLACE_KILLS
    if fallback:  # those points are not on the fallback's path; its own is
        kills = [("commit.aside", a) if p == "commit.exchanged" else (p, a) for p, a in kills]
        kills = [(p, a) for p, a in kills if p != "commit.remove.renamed"]
    for point, action in kills:
        TALLY["kill rounds run"] += 1
        first = committed + 1
        # (The points are on the replace path: the first save of a fresh ckpt-1 passes none.)
        env = _replace_env(point, action, skip=rng.randint(0, 1), fallback=fallback)
        p = _Proc(_REPLACER, str(d), str(first), "50", **env)
        assert p.line() == "start"
        if point is None:
            for _ in range(rng.randint(1, 2)):
                assert p.line().startswith("saved")
            time.sleep(rng.uniform(0.0, 0.2))
            p.proc.send_signal(signal.SIGKILL)
        elif action == "stop":
            p.wait_stopped()
            p.proc.send_signal(signal.SIGCONT)
            time.sleep(rng.uniform(0.0, 0.01))
            p.proc.send_signal(signal.SIGKILL)
        code, out, err = p.finish()
        assert code == -signal.SIGKILL, err[-3000:]
        saved = _saved(out)
        newest = saved[-1] if saved else committed
        with jaxckpt.CheckpointManager(d, max_to_keep=2):
            pass
        committed = _assert_one_clean_checkpoint(d, {newest, newest + 1} - {0})
        TALLY["kill rounds survived"] += 1


# ------------------------------------------------------------ item 5: object stores


_TRAINER = textwrap.dedent("""
    import sys
    import numpy as np
    import jaxckpt

    def tree(k):
        return {"big": np.arange(1 << 19, dtype=np.int32) + k,
                "small": {f"p{j}": np.full(j + 1, k, np.int16) for j in range(8)},
                "step": k}

    with jaxckpt.CheckpointManager(sys.argv[1]) as m:
        m.save(tree(1))
    print("done", flush=True)
""")


def _data_keys(server, bucket: str, prefix: str) -> list[str]:
    return [k for k in server.keys(bucket, prefix) if "/d-" in k]


@pytest.mark.parametrize("read_only", [False, True], ids=["manager", "reader"])
def test_a_second_process_never_sweeps_a_save_in_flight_on_s3(s3, read_only):
    """The trainer stops (SIGSTOP) with its arrays written and no manifest yet;
    an evaluator opens a manager on the same URL; the trainer goes on and
    commits a checkpoint that restores bit-exact."""
    server, bucket = s3
    url = f"s3://{bucket}/exp"
    p = _Proc(_TRAINER, url, JAXCKPT_FAULT_POINT="multihost.part_written",
              JAXCKPT_FAULT_ACTION="stop")
    try:
        p.wait_stopped()
        staged = _data_keys(server, bucket, "exp/")
        assert staged and not server.keys(bucket, "exp/ckpt-1/_CHECKPOINT")
        with jaxckpt.CheckpointManager(url, **({"read_only": True} if read_only else {})) as m:
            assert m.latest_checkpoint is None and m.checkpoints == []
        assert _data_keys(server, bucket, "exp/") == staged
    finally:
        p.proc.send_signal(signal.SIGCONT)
    code, out, err = p.finish()
    assert code == 0 and out.strip() == "done", err[-3000:]
    assert jaxckpt.latest_checkpoint(url) == f"{url}/ckpt-1"
    jaxckpt.verify(f"{url}/ckpt-1")
    assert_equal_trees(jaxckpt.restore(f"{url}/ckpt-1"), _tree(1))


def test_a_reader_in_the_trainers_process_follows_it_and_writes_nothing(s3):
    server, bucket = s3
    url = f"s3://{bucket}/exp"
    reached, go = threading.Event(), threading.Event()

    def pause(_point):
        reached.set()
        assert go.wait(WATCHDOG_S)

    with jaxckpt.CheckpointManager(url) as trainer:
        with _faults.armed("multihost.part_written", pause):
            trainer.save(_tree(1))
            try:
                assert reached.wait(WATCHDOG_S)
                staged = server.keys(bucket, "exp/")
                reader = jaxckpt.CheckpointManager(url, read_only=True)  # no take-over
                assert reader.latest_checkpoint is None
                with pytest.raises(CheckpointError, match="read-only"):
                    reader.save(_tree(9))
                assert server.keys(bucket, "exp/") == staged
            finally:
                go.set()
            trainer.wait_until_finished()
        assert reader.latest_checkpoint == f"{url}/ckpt-1"  # it re-reads the state file
        assert_equal_trees(reader.restore(), _tree(1))
        trainer.save(_tree(2))
        trainer.wait_until_finished()
        assert reader.checkpoints == [f"{url}/ckpt-1", f"{url}/ckpt-2"]
        assert_equal_trees(reader.restore(2), _tree(2))
        reader.close()


def test_leftovers_on_s3_are_swept_only_after_the_lease(s3):
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    with jaxckpt.CheckpointManager(d) as m:
        m.save(_tree(1))
    client = server.client()
    young = _commit.new_token()
    aged = f"{int(time.time() - _commit.LEASE_S - 60):08x}0123456789ab"
    for key in (f"exp/ckpt-2/d-{young}/a/0/c/0", f"exp/ckpt-1/d-{young}/packed/c/0",
                f"exp/ckpt-3/d-{aged}/a/0/c/0", f"exp/ckpt-1/d-{aged}/packed/c/0"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    with jaxckpt.CheckpointManager(d) as m:
        keys = server.keys(bucket, "exp/")
        assert not [k for k in keys if aged in k], keys
        assert len([k for k in keys if young in k]) == 2, keys
        assert_equal_trees(m.restore(), _tree(1))


def test_a_commit_whose_staged_data_vanished_fails_on_s3(s3):
    server, bucket = s3
    d = f"s3://{bucket}/exp"
    client = server.client()

    def sweep_it(_point):  # another process (an older jaxckpt, a lifecycle rule) deletes it
        for key in server.keys(bucket, "exp/ckpt-2/"):
            client.delete_object(Bucket=bucket, Key=key)

    TALLY["faults injected"] += 1
    with jaxckpt.CheckpointManager(d) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        with _faults.armed("multihost.part_written", sweep_it):
            m.save(_tree(2))
            with pytest.raises(CheckpointWriteError) as e:
                m.wait_until_finished()
        assert "vanished before the commit" in str(e.value.__cause__)
        assert m.latest_checkpoint == f"{d}/ckpt-1"
    assert jaxckpt.latest_checkpoint(d) == f"{d}/ckpt-1"
    assert not server.keys(bucket, "exp/ckpt-2/_CHECKPOINT")


# ------------------------------------------------------------ read-only managers, locally


def test_a_read_only_manager_writes_nothing_and_leaves_the_writer_alone(tmp_path):
    d = tmp_path / "run"
    writer = jaxckpt.CheckpointManager(d, max_to_keep=2)
    writer.save(_tree(1))
    writer.wait_until_finished()
    (d / ".ckpt-2.tmp-0123456789ab").mkdir()  # as if a save were in flight
    (d / ".ckpt-1.deleting").write_bytes(b"")
    before = tree_bytes(d)
    with jaxckpt.CheckpointManager(d, read_only=True) as reader:  # the writer holds the lock
        assert reader.latest_checkpoint == str(d / "ckpt-1")
        assert_equal_trees(reader.restore(), _tree(1))
        with pytest.raises(CheckpointError, match="read-only"):
            reader.save(_tree(2))
        with pytest.raises(CheckpointError, match="read-only"):
            reader.save_in_jit(_tree(2), 2)
        assert [e.name for e in reader.list_checkpoints() if e.status == "latest"] == ["ckpt-1"]
    assert tree_bytes(d) == before
    assert writer.save(_tree(2)) == str(d / "ckpt-2")  # not taken over
    writer.close()
    with pytest.raises(TypeError, match="read_only"):
        jaxckpt.CheckpointManager(d, read_only="yes")
    missing = tmp_path / "not-yet"
    with jaxckpt.CheckpointManager(missing, read_only=True) as reader:
        assert reader.latest_checkpoint is None
    assert not missing.exists()
