"""Power cuts at arbitrary instants of real saves, simulated by a FUSE file system.

``_lazyfs`` records every file-system operation of a real save sequence
(``_power_cut_worker``: new checkpoints, a replace of an existing number,
deletions by retention, state-file replacements) by inode. For a cut after
operation K the test rebuilds what a host would find after power came back:
only file data fsync'd before K, only directory entries whose directory was
fsync'd before K (the strict model: every other write, create, rename and
unlink is lost). On that image:

- the directory is sound (``check_sound``): every checkpoint the state file
  names, and every one a new manager adopts, is committed, verifies and
  restores bit-exact; nothing partial is ever restored;
- a new manager restores what ``check_sound`` resumes from, bit-exact;
- that checkpoint is the newest whose commit had returned (its
  ``wait_until_finished``) before K, or a newer one whose save had started
  by then, never an older one: a returned commit survives the cut.

The durable image changes only at an fsync, so each distinct image is checked
once and the "returned" rule per cut. Each cut is also checked with some
un-synced metadata kept (``Durable.image(rng)``: a random prefix of each
directory's un-synced entry changes, file data still only what was fsync'd),
for the orders in which a file system may write metadata out on its own. ``make torture`` (``JAXCKPT_POWER_CUTS=all``)
cuts after every operation of longer runs; ``make test`` a sample.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

import jaxckpt
from _reliability import TALLY, assert_equal_trees, check_sound

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _lazyfs  # noqa: E402
import _power_cut_worker as worker  # noqa: E402

pytestmark = pytest.mark.skipif(_lazyfs.fuse_unavailable() is not None,
                                reason=str(_lazyfs.fuse_unavailable()))
# Slow (power cuts over a FUSE file system, in child processes): `pytest -m "not slow"` leaves this file out.
pytestmark = [pytestmark, pytest.mark.slow]

TORTURE = os.environ.get("JAXCKPT_POWER_CUTS") == "all"
SAMPLE = 40  # cut points per recorded run in `make test`


def _record(tmp, saves: str, fallback: bool, break_fsync_dir: bool = False,
            refuse_links: bool = False, break_link_seal: bool = False) -> list[tuple]:
    """Runs the worker's saves on a power-cut file system; returns the operation log."""
    env = dict(os.environ, POWER_CUT_BREAK_FSYNC_DIR="1" if break_fsync_dir else "0",
               POWER_CUT_BREAK_LINK_SEAL="1" if break_link_seal else "0")
    env.pop("JAXCKPT_NO_RENAME_EXCHANGE", None)
    with _lazyfs.mounted(str(tmp), refuse_rename_flags=fallback,
                         refuse_links=refuse_links) as (mount, log):
        run = subprocess.run([sys.executable, worker.__file__, mount, saves], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr[-4000:]
    if saves != "plain":  # the intended replace path ran
        assert any(op[0] == "rename" and op[5] for op in log) != fallback
        # The incremental saves shared files by hard links (both big's and a
        # packed shard's), unless the file system refused them.
        linked = _linked_names(log)
        if refuse_links:
            assert not linked, linked[:5]
        else:
            assert any("/packed/" in p for p in linked) and any("/a/" in p for p in linked), (
                f"no packed shard and large-leaf file linked: {linked[:10]}")
            TALLY["power-cut runs with hard links"] += 1
    return log


def _linked_names(log: list[tuple]) -> list[str]:
    """The paths (at the time) of every hard link made in ``log``."""
    names: dict[int, tuple[int, str]] = {}  # inode -> (parent, name), directories only
    out = []

    def path(ino: int) -> str:
        parts = []
        while ino in names:
            ino, name = names[ino]
            parts.append(name)
        return "/".join(reversed(parts))

    for op in log:
        if op[0] == "new" and op[4] == "d":
            names[op[3]] = (op[1], op[2])
        elif op[0] == "rename":
            moved = [i for i, v in names.items() if v == (op[1], op[2])]
            for i in moved:
                names[i] = (op[3], op[4])
        elif op[0] == "link":
            out.append(path(op[1]) + "/" + op[2])
    return out


def _version_on_disk(directory: str, number: int) -> int:
    return int(jaxckpt.restore(os.path.join(directory, f"ckpt-{number}"))["b"][0]) - number * 1000


def _check_image(image: dict, where: str) -> tuple[int, int]:
    """Checks one durable image; returns the (number, version) a new manager resumes from."""
    _lazyfs.materialize(image, where)
    directory = os.path.join(where, "run")
    try:
        if not os.path.isdir(directory):
            return (0, 0)
        if any(".old-" in n for n in os.listdir(directory)):
            # A cut between a two-rename replace's renames (no RENAME_EXCHANGE),
            # with the first one on disk: checkpoint N is under a set-aside
            # name only, as after a SIGKILL there; the sweep on open puts the
            # right one back (as in test_crash's fault points).
            TALLY["power cuts inside a two-rename replace"] += 1
            jaxckpt.CheckpointManager(directory).close()
        versions: dict[int, int] = {}

        def state_of(number: int) -> dict:
            versions[number] = _version_on_disk(directory, number)
            return worker.state(number, versions[number])

        number = check_sound(directory, state_of)
        with jaxckpt.CheckpointManager(directory, max_to_keep=worker.MAX_TO_KEEP) as m:
            restored = m.restore_or_initialize()
        if number == 0:
            assert restored is None, "nothing committed, yet a checkpoint restored"
            return (0, 0)
        assert_equal_trees(restored, worker.state(number, versions[number]), f"ckpt-{number}")
        return (number, versions[number])
    finally:
        shutil.rmtree(where)


def _cut_and_check(tmp, log: list[tuple], cuts: list[int], tally: bool = True) -> None:
    """Cuts power after each of ``cuts`` (operation counts) and checks the image
    (and, with ``tally``, one with some metadata reordered; both counted)."""
    cuts = sorted(set(cuts))
    durable = _lazyfs.Durable()
    images: dict[int, tuple[int, int] | str] = {}  # fsyncs applied -> outcome
    fsyncs, started, done, applied = 0, [], None, 0
    for k in cuts:
        for op in log[applied:k]:
            durable.apply(op)
            if op[0] == "fsync":
                fsyncs += 1
            elif op[0] == "mark":
                what, number, version = op[1].split("-")
                if what == "start":
                    started.append((int(number), int(version)))
                else:
                    done = (int(number), int(version))
        applied = k
        TALLY["power cuts"] += tally
        if fsyncs not in images:
            TALLY["power-cut images checked"] += tally
            try:
                images[fsyncs] = _check_image(durable.image(), str(tmp / f"cut-{k}"))
            except (AssertionError, Exception) as e:  # noqa: BLE001 - reported with the cut
                images[fsyncs] = f"{type(e).__name__}: {e}"
        got = images[fsyncs]
        context = f"power cut after operation {k} of {len(log)} ({log[k - 1][:3] if k else 'start'})"
        assert not isinstance(got, str), f"{context}: {got}"
        results = {"": got}
        if tally:
            # The same instant with some un-synced metadata written out by the
            # file system on its own (a random prefix per directory): sound too.
            TALLY["power-cut reordered images checked"] += 1
            try:
                results[", some metadata reordered"] = _check_image(
                    durable.image(random.Random(k)), str(tmp / f"cut-{k}-r"))
            except (AssertionError, Exception) as e:  # noqa: BLE001 - reported with the cut
                raise AssertionError(f"{context}, some metadata reordered: "
                                     f"{type(e).__name__}: {e}") from e
        for how, result in results.items():
            assert result == (0, 0) or result in started, f"{context}{how}: {result} was never saved"
            if done is not None:
                # Saves run in order, so "newer" is "started later"; a replace
                # of number N is newer than N's first version.
                assert result != (0, 0) and started.index(result) >= started.index(done), (
                    f"{context}{how}: ckpt-{done[0]} (version {done[1]})'s commit had "
                    f"returned, but the directory resumes from {result} (number, version)")
        TALLY["power cuts survived"] += tally


def _cuts(log: list[tuple], seed: int) -> list[int]:
    everything = range(len(log) + 1)
    if TORTURE:
        return list(everything)
    # The instants right after each commit returned, plus a seeded sample.
    after_done = [k + 1 for k, op in enumerate(log) if op[0] == "mark" and op[1].startswith("done")]
    return after_done + random.Random(seed).sample(everything, SAMPLE - len(after_done))


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_power_cuts_keep_the_newest_returned_checkpoint(tmp_path, fallback):
    """Incremental saves (hard links, checked in ``_record``), both replace paths."""
    log = _record(tmp_path / "rec", "long" if TORTURE else "short", fallback)
    _cut_and_check(tmp_path, log, _cuts(log, seed=int(fallback)))


def test_power_cuts_where_links_are_refused(tmp_path):
    """A file system that refuses hard links: incremental saves write every
    file instead (``Linker.refused``), with the same guarantees."""
    log = _record(tmp_path / "rec", "short", fallback=False, refuse_links=True)
    _cut_and_check(tmp_path, log, _cuts(log, seed=2))


def test_harness_catches_unsealed_links(tmp_path):
    """Without the fsync of the directories links were made in, some cut after
    a commit returned loses a linked file of it (a manifest naming a file that
    is not durable): the harness must see that."""
    log = _record(tmp_path / "rec", "short", fallback=False, break_link_seal=True)
    with pytest.raises(AssertionError, match="damaged or missing"):
        _cut_and_check(tmp_path, log, _cuts(log, seed=0), tally=False)


def test_harness_catches_missing_directory_fsyncs(tmp_path):
    """With directory fsyncs disabled, some cut must lose a returned commit."""
    log = _record(tmp_path / "rec", "short", fallback=False, break_fsync_dir=True)
    with pytest.raises(AssertionError, match="commit had returned"):
        _cut_and_check(tmp_path, log, list(range(len(log) + 1)), tally=False)


def test_power_cut_after_a_plain_save_keeps_it(tmp_path):
    """``jaxckpt.save`` into directories it creates: once it returned, a cut keeps it."""
    log = _record(tmp_path / "rec", "plain", fallback=False)
    durable = _lazyfs.Durable()
    for op in log:
        durable.apply(op)
    TALLY["power cuts"] += 1
    where = str(tmp_path / "cut")
    _lazyfs.materialize(durable.image(), where)
    path = os.path.join(where, "new", "dir", "ckpt-1")
    assert os.path.isdir(path), "jaxckpt.save returned, but a power cut lost its directories"
    assert_equal_trees(jaxckpt.restore(path), worker.state(1, 1), "ckpt-1")
    TALLY["power cuts survived"] += 1
