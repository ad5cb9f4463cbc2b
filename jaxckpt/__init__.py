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
from ._api import verify as verify
from ._inspect import inspect as inspect
from ._inspect import list_checkpoints as list_checkpoints
from .errors import CheckpointError as CheckpointError
from .errors import CheckpointNotFoundError as CheckpointNotFoundError
from .errors import CheckpointWriteError as CheckpointWriteError
from .errors import CorruptCheckpointError as CorruptCheckpointError
from .errors import StructureMismatchError as StructureMismatchError
from .manager import CheckpointManager as CheckpointManager

__version__ = "0.1.0"

# ``inspect`` is public as ``jaxckpt.inspect`` but left out of ``__all__``, so
# that ``from jaxckpt import *`` does not shadow the standard library's module.
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
    "verify",
]
