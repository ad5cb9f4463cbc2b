"""jaxckpt: asynchronous, crash-safe checkpoints of JAX pytrees on tensorstore."""

from __future__ import annotations

# jax first: importing numpy, tensorstore and msgpack before it makes jax's own
# import set off extra full garbage collections (measured: +0.25 s).
import jax as _jax  # noqa: F401

from . import tf_compat as tf_compat
from ._api import latest_checkpoint as latest_checkpoint
from ._api import metadata as metadata
from ._api import restore as restore
from ._api import save as save
from ._api import user_metadata as user_metadata
from ._api import checkpoint_metrics as checkpoint_metrics
from ._api import verify as verify
from ._directory.auto_interval import IntervalChoice as IntervalChoice
from ._report.listing import CheckpointEntry as CheckpointEntry
from ._report.describe import CheckpointInfo as CheckpointInfo
from ._report.listing import CheckpointList as CheckpointList
from ._report.describe import LeafInfo as LeafInfo
from ._report.describe import inspect as inspect
from ._report.listing import list_checkpoints as list_checkpoints
from ._save.stats import SaveStats as SaveStats
from ._save.stats import SaveSummary as SaveSummary
from .errors import CheckpointError as CheckpointError
from .errors import CheckpointNotFoundError as CheckpointNotFoundError
from .errors import CheckpointWriteError as CheckpointWriteError
from .errors import CoordinationError as CoordinationError
from .errors import CoordinationTimeoutError as CoordinationTimeoutError
from .errors import CorruptCheckpointError as CorruptCheckpointError
from .errors import DirectoryLockedError as DirectoryLockedError
from .errors import ForkedManagerError as ForkedManagerError
from .errors import ManagerClosedError as ManagerClosedError
from .errors import ReadOnlyManagerError as ReadOnlyManagerError
from .errors import StructureMismatchError as StructureMismatchError
from .manager import CheckpointManager as CheckpointManager

__version__ = "0.1.0"

# ``inspect`` is public as ``jaxckpt.inspect`` but left out of ``__all__``, so
# that ``from jaxckpt import *`` does not shadow the standard library's module.
# The result types (``SaveStats``: ``mngr.last_save_stats``; ``SaveSummary``:
# ``mngr.stats``; ``IntervalChoice``: ``mngr.interval_choice``; ``CheckpointList``
# of ``CheckpointEntry``: ``list_checkpoints``; ``CheckpointInfo`` of
# ``LeafInfo``: ``inspect``) and the narrower errors are
# public too (REFERENCE.md), for annotations and ``except``; the star-import
# surface stays the one API.md fixed (tests/test_public_api.py pins both lists).
__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "StructureMismatchError",
    "latest_checkpoint",
    "list_checkpoints",
    "metadata",
    "restore",
    "save",
    "tf_compat",
    "user_metadata",
    "checkpoint_metrics",
    "verify",
]
