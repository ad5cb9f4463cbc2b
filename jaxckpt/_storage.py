"""The old import path of ``_arrays`` (tensorstore arrays) and ``_durable`` (fsync helpers).

A thin re-export kept until the subpackage move updates the imports.
"""

from __future__ import annotations

from ._arrays import (INNER_BYTES, PACKED_WINDOW, Read, aligned_empty, array_spec, byte_view,
                      chunking, from_bytes, open_array, read, write)
from ._durable import fsync_dir, fsync_tree, makedirs_durably, write_file_durably

__all__ = ["INNER_BYTES", "PACKED_WINDOW", "Read", "aligned_empty", "array_spec",
           "byte_view", "chunking", "from_bytes", "open_array", "read", "write",
           "fsync_dir", "fsync_tree", "makedirs_durably", "write_file_durably"]
