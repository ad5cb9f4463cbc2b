"""save()'s snapshot and restore pause the cyclic GC; the pause must end right.

Nested and concurrent pauses share one count: the collector comes back once
the last one ends, and only if it was on when the first began.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import jaxckpt
from jaxckpt._save import gc as _gc


def test_nested_and_concurrent_pauses_end_with_the_last():
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def other():
        with _gc.paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with _gc.paused():
        t.start()
        assert inside.wait(10)
        with _gc.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread's pause is still on
    release.set()
    t.join()
    assert gc.isenabled()


def test_a_collector_the_caller_turned_off_stays_off(tmp_path):
    gc.disable()
    try:
        jaxckpt.save(tmp_path / "c", {"x": np.arange(3)})
        jaxckpt.restore(tmp_path / "c")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_failed_save_or_restore_turns_the_collector_back_on(tmp_path):
    with pytest.raises(TypeError):
        jaxckpt.save(tmp_path / "c", {"x": object()})
    assert gc.isenabled()
    with pytest.raises(jaxckpt.CheckpointNotFoundError):
        jaxckpt.restore(tmp_path / "missing")
    assert gc.isenabled()


def test_a_write_keeps_the_old_heap_out_of_collections_and_releases_it(tmp_path):
    from jaxckpt import _faults

    seen = []
    # multihost.part_written: inside the write, its part durable, before the commit.
    with _faults.armed("multihost.part_written", lambda _name: seen.append(gc.get_freeze_count())):
        with jaxckpt.CheckpointManager(tmp_path) as m:
            m.save({"x": np.arange(3)}, 1)
            m.wait_until_finished()
    assert len(seen) == 1 and seen[0] > 0  # frozen during the write
    assert gc.get_freeze_count() == 0  # and released after it


def test_a_programs_own_frozen_heap_stays_frozen(tmp_path):
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        assert before > 0
        with jaxckpt.CheckpointManager(tmp_path) as m:
            m.save({"x": np.arange(3)}, 1)
            m.wait_until_finished()
        # Still frozen (objects freed meanwhile leave it), none added: had the
        # write frozen and then unfrozen, the program's own freeze would be gone.
        assert 0 < gc.get_freeze_count() <= before
    finally:
        gc.unfreeze()
