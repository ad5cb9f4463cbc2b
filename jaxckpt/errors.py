"""The exceptions jaxckpt raises.

    CheckpointError
     ├── CheckpointNotFoundError   (also FileNotFoundError)
     ├── CorruptCheckpointError    (also ValueError)
     ├── StructureMismatchError    (also ValueError)
     └── CheckpointWriteError

Unsupported leaves raise the built-in ``TypeError`` naming the key path.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every error jaxckpt raises about a checkpoint."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No committed checkpoint exists where one was asked for.

    The path is missing, holds no commit record, or names a checkpoint that
    was never committed (a leftover of a crash). Check the path, or use
    ``latest_checkpoint(directory)`` to find the newest committed one.
    """


class CorruptCheckpointError(CheckpointError, ValueError):
    """Stored bytes do not match the checksums recorded when they were saved.

    The message names the checkpoint and the damaged leaf. The data cannot be
    trusted; restore an earlier checkpoint.
    """


class StructureMismatchError(CheckpointError, ValueError):
    """A restore target does not fit what the checkpoint holds.

    The message names every offending key path with what the target has and
    what is on disk. Fix the target, or pass ``partial=True`` to restore a
    subset of the saved leaves.
    """


class CheckpointWriteError(CheckpointError):
    """A background save failed; the cause is chained as ``__cause__``.

    The failed checkpoint was not committed, earlier checkpoints are intact,
    and the manager accepts new saves.
    """
