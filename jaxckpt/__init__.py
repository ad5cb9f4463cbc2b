"""jaxckpt: asynchronous, crash-safe checkpoints of JAX pytrees on tensorstore."""

from __future__ import annotations

import typing as _typing

# Nothing heavy at import: ``jaxckpt --help`` (which imports this package first)
# answers without loading jax. The first public name asked for loads them all,
# jax first: importing numpy, tensorstore and msgpack before it makes jax's own
# import set off extra full garbage collections (measured: +0.25 s).
if _typing.TYPE_CHECKING:
    from . import tf_compat as tf_compat
    from ._report.listing import CheckpointEntry as CheckpointEntry
    from .errors import CheckpointError as CheckpointError
    from ._report.describe import CheckpointInfo as CheckpointInfo
    from ._report.listing import CheckpointList as CheckpointList
    from .manager import CheckpointManager as CheckpointManager
    from .errors import CheckpointNotFoundError as CheckpointNotFoundError
    from .errors import CheckpointWriteError as CheckpointWriteError
    from .errors import CoordinationError as CoordinationError
    from .errors import CoordinationTimeoutError as CoordinationTimeoutError
    from .errors import CorruptCheckpointError as CorruptCheckpointError
    from .errors import DirectoryLockedError as DirectoryLockedError
    from ._export.safetensors import export_safetensors as export_safetensors
    from .errors import ForkedManagerError as ForkedManagerError
    from ._export.safetensors import import_safetensors as import_safetensors
    from ._import.orbax import import_orbax as import_orbax
    from ._import.orbax import import_orbax_run as import_orbax_run
    from ._report.describe import inspect as inspect
    from ._api import latest_checkpoint as latest_checkpoint
    from ._report.describe import LeafInfo as LeafInfo
    from ._report.listing import list_checkpoints as list_checkpoints
    from .errors import ManagerClosedError as ManagerClosedError
    from ._api import metadata as metadata
    from .errors import ReadOnlyManagerError as ReadOnlyManagerError
    from ._api import restore as restore
    from ._api import save as save
    from ._save.stats import SaveStats as SaveStats
    from ._save.stats import SaveSummary as SaveSummary
    from .errors import StructureMismatchError as StructureMismatchError
    from ._api import user_metadata as user_metadata
    from ._api import checkpoint_metrics as checkpoint_metrics
    from ._directory.auto_interval import IntervalChoice as IntervalChoice
    from ._api import verify as verify
    from ._api import VerifySummary as VerifySummary

_PUBLIC = {
    "tf_compat": "",
    "CheckpointEntry": "._report.listing",
    "CheckpointError": ".errors",
    "CheckpointInfo": "._report.describe",
    "CheckpointList": "._report.listing",
    "CheckpointManager": ".manager",
    "CheckpointNotFoundError": ".errors",
    "CheckpointWriteError": ".errors",
    "CoordinationError": ".errors",
    "CoordinationTimeoutError": ".errors",
    "CorruptCheckpointError": ".errors",
    "DirectoryLockedError": ".errors",
    "export_safetensors": "._export.safetensors",
    "ForkedManagerError": ".errors",
    "import_safetensors": "._export.safetensors",
    "import_orbax": "._import.orbax",
    "import_orbax_run": "._import.orbax",
    "inspect": "._report.describe",
    "latest_checkpoint": "._api",
    "LeafInfo": "._report.describe",
    "list_checkpoints": "._report.listing",
    "ManagerClosedError": ".errors",
    "metadata": "._api",
    "ReadOnlyManagerError": ".errors",
    "restore": "._api",
    "save": "._api",
    "SaveStats": "._save.stats",
    "SaveSummary": "._save.stats",
    "StructureMismatchError": ".errors",
    "user_metadata": "._api",
    "checkpoint_metrics": "._api",
    "IntervalChoice": "._directory.auto_interval",
    "verify": "._api",
    "VerifySummary": "._api",
}


def _load_public() -> None:
    import importlib

    import jax  # noqa: F401  (first: see above)

    here = globals()
    for name, module in _PUBLIC.items():
        if module:
            here[name] = getattr(importlib.import_module(module, __name__), name)
        else:
            here[name] = importlib.import_module("." + name, __name__)


def __getattr__(name: str) -> _typing.Any:
    if name in _PUBLIC:
        _load_public()
        return globals()[name]
    raise AttributeError(f"module 'jaxckpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


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
