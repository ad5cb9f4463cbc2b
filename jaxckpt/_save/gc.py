"""Pausing Python's cyclic garbage collector around a burst of allocations,
and keeping it off the old heap during a write.

A save's snapshot and a restore's manifest decoding allocate tens of
thousands of small objects; in a program with a large heap (JAX, Flax) that
sets off full collections that cost tens of ms inside ``save()`` or
``restore()``. Nothing in those bursts creates cycles, so reference counting
frees it all the same. Nested and concurrent pauses from several threads
share one count; the collector is re-enabled by the last one out, and only
if it was enabled when the first came in.

The writer's job allocates per leaf too, but it runs for as long as the I/O
takes, so the collector stays on there: ``heap_frozen`` only moves the
objects alive when the write starts out of its reach (``gc.freeze``), so its
collections scan what the write allocates, not the program's whole heap.
Measured A/B, writer time with every leaf changed: 10,000 leaves 379 -> 267
ms, 50,000 leaves 1707 -> 1399 ms. It is released when the last write ends,
and not used at all while the program itself has frozen objects (a pre-fork
server's ``gc.freeze()`` stays as it was).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False
_frozen_depth = 0
_froze = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """The objects alive now are left out of collections until the last
    concurrent ``heap_frozen`` ends (see the module docstring)."""
    global _frozen_depth, _froze
    with _lock:
        if _frozen_depth == 0:
            _froze = gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
        _frozen_depth += 1
    try:
        yield
    finally:
        with _lock:
            _frozen_depth -= 1
            if _frozen_depth == 0 and _froze:
                gc.unfreeze()
                _froze = False
