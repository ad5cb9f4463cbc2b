from __future__ import annotations

import threading

import pytest

from jaxckpt._save.writer import Writer


def test_runs_jobs_in_order_and_wait_drains():
    w = Writer("t", max_pending=3)
    seen = []
    for i in range(10):
        w.submit(lambda i=i: seen.append(i))
    w.wait()
    assert seen == list(range(10))
    w.close()


def test_error_is_stored_and_handed_back_once():
    w = Writer("t")
    w.submit(lambda: 1 / 0)
    w.wait()
    assert isinstance(w.take_error(), ZeroDivisionError)
    assert w.take_error() is None
    w.submit(lambda: None)  # still usable
    w.close()


def test_submit_blocks_while_full_and_never_drops():
    w = Writer("t", max_pending=1)
    release = threading.Event()
    started = threading.Event()
    seen = []

    def first():
        started.set()
        release.wait()
        seen.append(1)

    w.submit(first)
    started.wait()
    second_queued = threading.Event()

    def submit_second():
        w.submit(lambda: seen.append(2))
        second_queued.set()

    t = threading.Thread(target=submit_second)
    t.start()
    assert not second_queued.wait(0.2)  # blocked on the full queue
    release.set()
    t.join()
    w.close()
    assert seen == [1, 2]


def test_close_flushes_and_rejects_more():
    w = Writer("t")
    seen = []
    w.submit(lambda: seen.append(1))
    w.close()
    assert seen == [1]
    with pytest.raises(RuntimeError):
        w.submit(lambda: None)
    w.close()  # idempotent
