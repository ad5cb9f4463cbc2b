"""Faults as a user meets them: failing writes, vanishing directories, a full
disk, a second writer, and the manager's own concurrency (close, threads,
a number saved twice, a restore that must wait).

Every failed save must reach the caller as ``CheckpointWriteError`` with its
cause, leave earlier checkpoints intact and listed, and leave no temporary
once the manager saved again.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import jaxckpt
from jaxckpt import CheckpointError, CheckpointWriteError, _faults

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY, assert_equal_trees, leftovers, named_paths  # noqa: E402


def _tree(i: int) -> dict:
    return {"w": np.full((64, 64), i, np.float32), "big": np.full(1 << 19, i, np.int32),
            "step": i}


def _env() -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _assert_intact(m, d, numbers: list[int]) -> None:
    """Exactly ``numbers`` are listed, committed, verify and restore bit-exact."""
    want = [str(d / f"ckpt-{n}") for n in numbers]
    assert m.checkpoints == want
    assert sorted(named_paths(d)) == sorted(want)
    assert jaxckpt.latest_checkpoint(d) == want[-1]
    for n, path in zip(numbers, want):
        jaxckpt.verify(path)
        assert_equal_trees(jaxckpt.restore(path), _tree(n))


def _assert_clean(d) -> None:
    """Nothing on disk but the state file and what it names."""
    assert leftovers(d) == []
    named = [os.path.basename(p) for p in named_paths(d)]
    assert sorted(os.listdir(d)) == sorted(["checkpoint", *named])


@pytest.fixture(params=[False, True], ids=["exchange", "two-renames"])
def rename_fallback(request, monkeypatch):
    """Also on a filesystem without RENAME_EXCHANGE (NFS, FUSE): forced."""
    monkeypatch.setattr(jaxckpt._commit.atomic, "NO_RENAME_EXCHANGE", request.param)
    return request.param


# ------------------------------------------------------------ failing writes


def test_temporary_vanishing_mid_save_fails_cleanly(tmp_path, rename_fallback):
    def vanish(_point):  # someone's cleanup job removes our half-done save
        for name in os.listdir(tmp_path):  # (and the new state file's temporary)
            if ".tmp-" in name:
                if (tmp_path / name).is_dir():
                    shutil.rmtree(tmp_path / name)
                else:
                    os.unlink(tmp_path / name)

    TALLY["faults injected"] += 1
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=3) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        with _faults.armed("commit.before_publish", vanish):
            m.save(_tree(2))
            with pytest.raises(CheckpointWriteError, match="not committed") as e:
                m.wait_until_finished()
        assert isinstance(e.value.__cause__, FileNotFoundError), repr(e.value.__cause__)
        _assert_intact(m, tmp_path, [1])
        assert not (tmp_path / "ckpt-2").exists()
        # A failed save keeps its number used; saving it again is fine.
        assert m.save(_tree(2), checkpoint_number=2) == str(tmp_path / "ckpt-2")
        m.wait_until_finished()
        _assert_intact(m, tmp_path, [1, 2])
    _assert_clean(tmp_path)


def test_directory_removed_under_a_live_manager(tmp_path, caplog):
    d = tmp_path / "run"
    TALLY["faults injected"] += 1
    with jaxckpt.CheckpointManager(d, max_to_keep=3) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        shutil.rmtree(d)
        m.save(_tree(2))
        with pytest.raises(CheckpointWriteError) as e:
            m.wait_until_finished()
        assert isinstance(e.value.__cause__, FileNotFoundError), repr(e.value.__cause__)
        d.mkdir()  # the cause is gone
        m.save(_tree(3), checkpoint_number=3)
        m.wait_until_finished()
        # The vanished ckpt-1 is no longer listed, nor named by the new state file.
        _assert_intact(m, d, [3])
    assert "ckpt-1" in caplog.text and "disappeared" in caplog.text
    _assert_clean(d)


def test_state_file_write_failure_uncommits_the_new_checkpoint(tmp_path):
    TALLY["faults injected"] += 1
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
        m.save(_tree(1))
        m.save(_tree(2))
        m.wait_until_finished()
        before = (tmp_path / "checkpoint").read_bytes()
        with _faults.armed("state_file.before_replace", "raise"):
            m.save(_tree(3))
            with pytest.raises(CheckpointWriteError) as e:
                m.wait_until_finished()
        assert isinstance(e.value.__cause__, OSError)
        assert e.value.__cause__.errno == errno.EIO
        assert (tmp_path / "checkpoint").read_bytes() == before
        assert not (tmp_path / "ckpt-3").exists()  # never committed: no state file names it
        _assert_intact(m, tmp_path, [1, 2])
        assert leftovers(tmp_path) == []
        m.save(_tree(3), checkpoint_number=3)
        m.wait_until_finished()
        _assert_intact(m, tmp_path, [2, 3])
    _assert_clean(tmp_path)


@pytest.mark.parametrize("point", ["commit.before_publish", "manager.committed"])
def test_failed_commit_leaves_the_state_file_and_no_temporary(tmp_path, point,
                                                              rename_fallback):
    """The new state file is written before the commit; a failed commit drops it."""
    TALLY["faults injected"] += 1
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
        m.save(_tree(1))
        m.wait_until_finished()
        before = (tmp_path / "checkpoint").read_bytes()
        with _faults.armed(point, "raise"):
            m.save(_tree(2))
            with pytest.raises(CheckpointWriteError):
                m.wait_until_finished()
        assert (tmp_path / "checkpoint").read_bytes() == before
        assert [n for n in os.listdir(tmp_path) if n.startswith("checkpoint.")] == []
        assert jaxckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-1")
        m.save(_tree(2), checkpoint_number=2)
        m.wait_until_finished()
        _assert_intact(m, tmp_path, [1, 2])
    _assert_clean(tmp_path)


def test_failed_deletion_is_logged_and_retried_by_the_next_manager(tmp_path, caplog):
    TALLY["faults injected"] += 1
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2) as m:
        with _faults.armed("commit.remove.renamed", "raise"):
            for i in (1, 2, 3):
                m.save(_tree(i))
            m.wait_until_finished()  # the new checkpoint is committed: no error
        _assert_intact(m, tmp_path, [2, 3])
    assert "could not delete old checkpoint" in caplog.text and "ckpt-1" in caplog.text
    assert leftovers(tmp_path)  # trash and the deletion marker are still there
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=2):
        _assert_clean(tmp_path)


_FULL_DISK_SCRIPT = textwrap.dedent("""
    import errno, os, sys
    import numpy as np
    import jaxckpt
    from jaxckpt import CheckpointWriteError, _faults

    d = os.path.join(sys.argv[1], "run")
    filler = os.path.join(sys.argv[1], "filler")

    def fill(_point=None):
        with open(filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * (1 << 20))
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
            try:  # the last partial block
                while True:
                    f.write(b"x")
                    f.flush()
            except OSError:
                pass

    def tree(i):
        return {"w": np.full(1 << 20, i, np.float32), "step": i}

    def expect_enospc(m, what):
        try:
            m.wait_until_finished()
        except CheckpointWriteError as e:
            cause = e.__cause__
            assert cause is not None, f"{what}: no cause chained"
            # OSError from our own writes; tensorstore reports the OS error in its message.
            assert (getattr(cause, "errno", None) == errno.ENOSPC
                    or "No space left" in str(cause)), f"{what}: cause is {cause!r}"
            print("FAILED", what, repr(cause)[:200])
        else:
            raise SystemExit(f"{what}: no error surfaced")

    def intact(m, numbers):
        want = [os.path.join(d, f"ckpt-{n}") for n in numbers]
        assert m.checkpoints == want, m.checkpoints
        assert jaxckpt.latest_checkpoint(d) == want[-1]
        for n, p in zip(numbers, want):
            jaxckpt.verify(p)
            assert np.array_equal(jaxckpt.restore(p)["w"], tree(n)["w"])
        left = [n for n in os.listdir(d) if ".tmp-" in n or ".trash-" in n or ".deleting" in n]
        assert not left, left

    m = jaxckpt.CheckpointManager(d, max_to_keep=2)
    m.save(tree(1))
    m.wait_until_finished()

    fill()                          # the disk is full for real
    m.save(tree(2))
    expect_enospc(m, "array write")
    intact(m, [1])
    os.remove(filler)               # the cause is gone
    m.save(tree(2), checkpoint_number=2)
    m.wait_until_finished()
    intact(m, [1, 2])

    # The disk fills up once the arrays are durable: the manifest cannot be written.
    with _faults.armed("multihost.part_written", fill):
        m.save(tree(3))
        expect_enospc(m, "manifest")
    intact(m, [1, 2])
    assert not os.path.exists(os.path.join(d, "ckpt-3"))
    os.remove(filler)

    # The disk fills up right after the commit: the new state file was made
    # durable alongside the checkpoint, so the save still goes through.
    with _faults.armed("manager.committed", fill):
        m.save(tree(3), checkpoint_number=3)
        m.wait_until_finished()
    intact(m, [2, 3])
    os.remove(filler)
    m.close()
    intact(m, [2, 3])
    print("LEFT", sorted(os.listdir(d)))
""")


@pytest.mark.slow  # child processes
def test_full_disk_for_real(tmp_path):
    """A 20 MiB tmpfs, mounted in a private mount namespace so that it goes away
    with the process, filled to the last byte."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--mount",
                                                                "--map-root-user"]
    shell = (f"mount -t tmpfs -o size=20m tmpfs '{mnt}' || exit 97; "
             f"exec '{sys.executable}' -c \"$0\" '{mnt}'")
    try:
        proc = subprocess.run([*unshare, "sh", "-c", shell, _FULL_DISK_SCRIPT],
                              capture_output=True, text=True, timeout=300, env=_env())
    except FileNotFoundError:
        pytest.skip("no `unshare` here to mount a small tmpfs; the full-disk fault is untested")
    if proc.returncode == 97 or proc.stderr.startswith("unshare:"):
        pytest.skip("cannot mount a tmpfs here (needs root or unprivileged user "
                    f"namespaces); the full-disk fault is untested: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("FAILED") == 2, proc.stdout
    assert "LEFT ['checkpoint', 'ckpt-2', 'ckpt-3']" in proc.stdout, proc.stdout
    TALLY["faults injected"] += 2


# ------------------------------------------------------------ two writers


_HOLDER_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import jaxckpt
    m = jaxckpt.CheckpointManager(sys.argv[1])
    m.save({"a": np.arange(4)})
    m.wait_until_finished()
    print("ready", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.slow  # child processes
def test_second_process_gets_a_clear_error_until_the_first_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER_SCRIPT, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        # A save of the live writer in progress: the second manager must not sweep it.
        (tmp_path / ".ckpt-2.tmp-0123456789ab").mkdir()
        from _reliability import tree_bytes

        before = tree_bytes(tmp_path)
        with pytest.raises(CheckpointError, match=rf"another process \(pid {holder.pid}\)"):
            jaxckpt.CheckpointManager(tmp_path)
        with pytest.raises(CheckpointError, match="another process"):
            jaxckpt.tf_compat.CheckpointManager(jaxckpt.tf_compat.Checkpoint(), tmp_path, 3)
        assert tree_bytes(tmp_path) == before
        # Readers are welcome.
        assert np.array_equal(jaxckpt.restore(tmp_path / "ckpt-1")["a"], np.arange(4))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
        holder.stdin.close()
    with jaxckpt.CheckpointManager(tmp_path) as m:  # the lock died with its process
        assert m.save({"a": np.arange(4)}) == str(tmp_path / "ckpt-2")


_DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    rank, port, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank,
                               initialization_timeout=60)
    import jaxckpt
    m = jaxckpt.CheckpointManager(d)
    print("open", rank, m._dir_lock is not None, flush=True)
    sys.stdin.readline()  # both managers are open at once until the test says close
    m.close()
""")


@pytest.mark.slow  # child processes
def test_only_process_zero_of_a_distributed_program_takes_the_lock(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, "-c", _DISTRIBUTED_SCRIPT, str(rank), port,
                               str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env())
             for rank in (0, 1)]
    watchdogs = [threading.Timer(120, p.kill) for p in procs]  # fail, never hang
    for w in watchdogs:
        w.daemon = True
        w.start()
    try:
        # Had process 1 tried to lock too, whichever came second would have failed.
        assert procs[0].stdout.readline().strip() == "open 0 True", procs[0].stderr.read()
        assert procs[1].stdout.readline().strip() == "open 1 False", procs[1].stderr.read()
        for p in procs:
            p.stdin.write("close\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        for w in watchdogs:
            w.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                f.close()


@pytest.mark.slow  # child processes
def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A data-loader worker forked from the training process shares the open
    file of the lock; the lock must still go with the parent's manager."""
    import fcntl

    m = jaxckpt.CheckpointManager(tmp_path)
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (its fork hooks have run) says so, then waits to exit
        os.write(ready_write, b"r")
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"r"
        os.close(ready_read)
        m.close()
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child held it
        finally:
            os.close(fd)
    finally:
        os.write(write_end, b"x")
        os.close(write_end)
        os.waitpid(pid, 0)


def test_new_manager_in_the_same_process_takes_over(tmp_path):
    """A notebook cell re-run: the old manager (a save likely still in flight)
    is flushed and closed before the new one reads the directory."""
    old = jaxckpt.CheckpointManager(tmp_path, max_to_keep=3)
    old.save(_tree(1))
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path)  # the same directory by another name
    with pytest.warns(UserWarning, match="still open in this process"):
        new = jaxckpt.CheckpointManager(link, max_to_keep=3)
    with new:
        assert [os.path.basename(p) for p in new.checkpoints] == ["ckpt-1"]  # flushed first
        with pytest.raises(CheckpointError, match="took over"):
            old.save(_tree(2))
        assert new.save(_tree(2)).endswith("ckpt-2")
    old.close()  # idempotent


# ------------------------------------------------------------ concurrency


def test_close_while_saves_are_in_flight_commits_them_all(tmp_path):
    gate = threading.Event()
    m = jaxckpt.CheckpointManager(tmp_path, max_to_keep=None, max_pending=3)
    with _faults.armed("commit.before_publish", lambda _: gate.wait()):
        paths = [m.save(_tree(i)) for i in (1, 2, 3)]  # the first is held at its commit
        closer = threading.Thread(target=m.close)
        closer.start()
        gate.set()
        closer.join()
    _assert_intact(m, tmp_path, [1, 2, 3])
    assert m.checkpoints == paths
    with pytest.raises(CheckpointError, match="closed"):
        m.save(_tree(4))
    assert m.restore(2)["step"] == 2  # reading a closed manager's checkpoints is fine
    _assert_clean(tmp_path)


def test_close_racing_a_save_in_another_thread(tmp_path):
    """Each save either raises 'closed' or is committed once close() returns."""
    m = jaxckpt.CheckpointManager(tmp_path, max_to_keep=None)
    started = threading.Event()
    returned: list[str] = []
    refused: list[Exception] = []

    def saver():
        i = 0
        while True:
            i += 1
            try:
                returned.append(m.save(_tree(i)))
            except CheckpointError as e:
                refused.append(e)
                return
            started.set()

    t = threading.Thread(target=saver)
    t.start()
    started.wait()
    m.close()
    t.join()
    assert refused and "closed" in str(refused[0])
    assert m.checkpoints == returned
    for path in returned:
        jaxckpt.verify(path)


def test_saves_from_several_threads_get_distinct_numbers_and_their_own_state(tmp_path):
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=None, max_pending=2) as m:
        got: dict[int, str] = {}

        def save(i):
            got[i] = m.save(_tree(i))

        threads = [threading.Thread(target=save, args=(i,)) for i in range(1, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        m.wait_until_finished()
        assert sorted(got.values()) == sorted(m.checkpoints)
        assert len(set(got.values())) == 8
        for i, path in got.items():
            assert_equal_trees(jaxckpt.restore(path), _tree(i))


def test_the_same_number_saved_twice_in_flight(tmp_path, rename_fallback):
    gate = threading.Event()
    with jaxckpt.CheckpointManager(tmp_path, max_to_keep=3, max_pending=2) as m:
        with _faults.armed("commit.before_publish", lambda _: gate.wait()):
            first = m.save(_tree(1), checkpoint_number=5)
            second = m.save(_tree(2), checkpoint_number=5)  # queued behind the first
            gate.set()
            m.wait_until_finished()
        assert first == second == str(tmp_path / "ckpt-5")
        assert m.checkpoints == [first]
        assert_equal_trees(m.restore(5), _tree(2))
    _assert_clean(tmp_path)


@pytest.mark.parametrize("how", ["number", "path", "latest"])
def test_restore_waits_for_a_checkpoint_still_being_written(tmp_path, how):
    """The writer is held before the commit until restore starts waiting: a
    restore that did not wait would find no checkpoint."""
    gate = threading.Event()
    with jaxckpt.CheckpointManager(tmp_path) as m:
        try:
            with _faults.armed("commit.before_publish", lambda _: gate.wait()), \
                    _faults.armed("manager.restore_waits", lambda _: gate.set()):
                path = m.save(_tree(3), checkpoint_number=3)
                out = m.restore({"number": 3, "path": path, "latest": None}[how])
        finally:
            gate.set()
        assert_equal_trees(out, _tree(3))


def test_fault_points_are_named():
    with pytest.raises(ValueError, match="unknown fault point"):
        with _faults.armed("no.such.point"):
            pass
