"""The saves the power-cut tests record: ``python _power_cut_worker.py MOUNT short|long|plain``.

Opens a manager (max_to_keep=2) on ``MOUNT/run`` and saves ``SAVES`` in order:
new numbers, one replacing the latest number with other contents, so that
retention deletes, a replace and state-file replacements all happen. Before
each save it stats ``MOUNT/.powercut-mark-start-N-V`` and after
``wait_until_finished`` returns ``.powercut-mark-done-N-V``: the file system
logs both, which tells the test which commits had returned at every instant.

Saves are incremental (the manager's default): "big" changes only every
second number (and not in a replace), and "frozen" never, so most saves
hard-link big's files and the packed shard files that hold only frozen
leaves (``PACKED_SHARD_BYTES`` is 32 KiB here) from a kept checkpoint.

``POWER_CUT_BREAK_FSYNC_DIR=1`` makes directory fsyncs no-ops and
``POWER_CUT_BREAK_LINK_SEAL=1`` skips the fsync of the directories links were
made in (only to show that the harness catches a missing fsync). ``plain`` is one ``jaxckpt.save``
into directories that do not exist yet.
"""

from __future__ import annotations

import os
import sys

import numpy as np

MAX_TO_KEEP = 2
# (number, version): version 2 of N replaces version 1 of N.
SAVES = {
    "short": [(1, 1), (2, 1), (3, 1), (4, 1), (4, 2), (5, 1), (6, 1)],
    "long": [(1, 1), (2, 1), (3, 1), (4, 1), (4, 2), (5, 1), (6, 1), (7, 1), (7, 2),
             (8, 1), (9, 1), (10, 1), (11, 1), (11, 2), (12, 1), (13, 1)],
}
LARGE_BYTES = 64 << 10  # so that "big" takes the large-leaf layout at a small size
# Several packed shard files at a small size: two of them hold frozen leaves only.
PACKED_SHARD_BYTES, PACKED_INNER_BYTES = 32 << 10, 16 << 10
_FROZEN = [np.arange(1024, dtype=np.uint32) * np.uint32(2246822519) + np.uint32(j)
           for j in range(24)]  # 96 KiB of packed leaves no save changes


def state(number: int, version: int) -> dict:
    """Checkpoint ``number``'s contents in ``version``: plain NumPy, as a raw restore returns."""
    k = np.uint32(number * 1000 + version)
    return {
        # 512 KiB, the same in numbers 2n and 2n+1 (shared by an incremental save)
        "big": np.arange(1 << 17, dtype=np.uint32) * np.uint32(2654435761) + np.uint32(number // 2),
        "frozen": [f.copy() for f in _FROZEN],
        "w": [np.arange(256, dtype=np.float32) + np.float32(k) + j for j in range(3)],
        "b": np.full(16, k, np.int64),
        "step": int(number),
    }


def _mark(mount: str, label: str) -> None:
    try:
        os.stat(os.path.join(mount, ".powercut-mark-" + label))
    except FileNotFoundError:
        pass


def main(mount: str, saves: str) -> None:
    import jaxckpt
    from jaxckpt._format import manifest as _format
    from jaxckpt._storage import durable as _durable

    from jaxckpt._storage import links as _links

    _format.LARGE_BYTES = LARGE_BYTES
    _format.PACKED_SHARD_BYTES, _format.PACKED_INNER_BYTES = PACKED_SHARD_BYTES, PACKED_INNER_BYTES
    if os.environ.get("POWER_CUT_BREAK_FSYNC_DIR") == "1":
        _durable.fsync_dir = lambda path: None
    if os.environ.get("POWER_CUT_BREAK_LINK_SEAL") == "1":
        _links.Linker.seal = lambda self: None
    if saves == "plain":  # jaxckpt.save into directories it creates
        jaxckpt.save(os.path.join(mount, "new", "dir", "ckpt-1"), state(1, 1))
        _mark(mount, "done-1-1")
        print("done", flush=True)
        return
    m = jaxckpt.CheckpointManager(os.path.join(mount, "run"), max_to_keep=MAX_TO_KEEP)
    for number, version in SAVES[saves]:
        _mark(mount, f"start-{number}-{version}")
        m.save(state(number, version), checkpoint_number=number)
        m.wait_until_finished()
        _mark(mount, f"done-{number}-{version}")
    m.close()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
