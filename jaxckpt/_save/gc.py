"""Pausing Python's cyclic garbage collector around a burst of allocations.

A save's snapshot and a restore's manifest decoding allocate tens of
thousands of small objects; in a program with a large heap (JAX, Flax) that
sets off full collections that cost tens of ms inside ``save()`` or
``restore()``. Nothing in those bursts creates cycles, so reference counting
frees it all the same. Nested and concurrent pauses from several threads
share one count; the collector is re-enabled by the last one out, and only
if it was enabled when the first came in.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


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
