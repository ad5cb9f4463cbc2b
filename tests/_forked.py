"""Running a function in a forked child and getting its JSON-able result back."""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def in_fork(child: Callable[[], Any]) -> tuple[int, Any]:
    """(wait status, ``child()``'s result) of ``child`` run in a forked child.

    The child leaves with ``os._exit`` whatever happens (never through the
    parent's test code or exit hooks); its result comes back through a pipe,
    None if it wrote nothing.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, json.dumps(child()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return status, json.loads(b"".join(chunks)) if chunks else None
