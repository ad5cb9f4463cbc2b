"""The old import path of ``_listing`` (a directory), ``_describe`` (one checkpoint)
and ``_display.manager_fields`` (a manager's repr).

A thin re-export kept until the subpackage move updates the imports.
"""

from __future__ import annotations

from ._describe import CheckpointInfo, LeafInfo, inspect
from ._display import manager_fields
from ._listing import (ACTIVE, LATEST, MISSING, PENDING, PRESERVED, REPR_ROWS, UNCOMMITTED,
                       CheckpointEntry, CheckpointList, disk_bytes, list_checkpoints)

__all__ = ["CheckpointInfo", "LeafInfo", "inspect", "manager_fields", "ACTIVE", "LATEST",
           "MISSING", "PENDING", "PRESERVED", "REPR_ROWS", "UNCOMMITTED", "CheckpointEntry",
           "CheckpointList", "disk_bytes", "list_checkpoints"]
