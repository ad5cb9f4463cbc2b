"""The exceptions jaxckpt raises.

    CheckpointError
     ├── CheckpointNotFoundError      (also FileNotFoundError)
     ├── CorruptCheckpointError       (also ValueError)
     ├── StructureMismatchError       (also ValueError)
     ├── CheckpointWriteError
     ├── DirectoryLockedError         (also BlockingIOError)
     ├── ManagerClosedError           (also RuntimeError)
     ├── ReadOnlyManagerError         (also RuntimeError)
     ├── ForkedManagerError           (also RuntimeError)
     └── CoordinationError
          └── CoordinationTimeoutError (also TimeoutError)

Each class also subclasses the built-in a caller would already catch for
that situation, so that ``except CheckpointError``, ``except TimeoutError``
or ``except FileNotFoundError`` written against an earlier version keeps
working. Unsupported leaves and bad arguments raise the built-in
``TypeError`` / ``ValueError`` naming the key path or argument.
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


class DirectoryLockedError(CheckpointError, BlockingIOError):
    """Another process's ``CheckpointManager`` holds the directory's writer lock.

    Two writers on one directory would number over and delete each other's
    checkpoints, so the second manager refuses to open (the message names the
    holder's pid when the system tells). Close that manager or stop that
    process (the lock dies with it, however it dies), use another directory,
    or open this one with ``read_only=True`` to restore and list beside the
    writer. A ``BlockingIOError``: the kernel's non-blocking ``flock`` refused.
    """


class ManagerClosedError(CheckpointError, RuntimeError):
    """The ``CheckpointManager`` was closed (by ``close()``, at exit, or because a
    newer manager on the same directory in this process took over).

    The message says which. Make a new ``CheckpointManager`` to save or
    restore. A ``RuntimeError``, as ``concurrent.futures`` raises for work
    submitted after shutdown.
    """


class ReadOnlyManagerError(CheckpointError, RuntimeError):
    """A save was asked of a manager opened with ``read_only=True``.

    A reader restores and lists but never writes, so that it can run beside
    the directory's writer. Make a manager without ``read_only`` to save.
    """


class ForkedManagerError(CheckpointError, RuntimeError):
    """A manager was used in a child process forked from the one that made it.

    Its writer thread stayed in the parent, so the child's copy cannot save
    or wait. Make a new ``CheckpointManager`` in the child (on another
    directory, or after the parent's manager is closed).
    """


class CoordinationError(CheckpointError):
    """A multi-process save, restore or close could not be agreed on.

    Another process of the ``jax.distributed`` program failed its part (its
    error is quoted, naming the process), process 0 did not commit, or
    jax.distributed's key-value store failed or is not initialized. Nothing
    was committed; earlier checkpoints are intact. Fix the named process's
    error (or call ``jax.distributed.initialize()`` first) and save again.
    """


class CoordinationTimeoutError(CoordinationError, TimeoutError):
    """Another process did not reach the same jaxckpt call within the timeout.

    The message names the late processes and what they did not do. They
    failed, died, are slow, or made different jaxckpt calls: every process
    must make the same ``CheckpointManager``, ``save`` and ``restore`` calls.
    Raise ``coordination_timeout_s`` if they are merely slow.
    """
