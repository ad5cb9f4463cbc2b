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
