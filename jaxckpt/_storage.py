"""The old import path of ``_arrays`` (tensorstore arrays) and ``_durable`` (fsync helpers).

A thin re-export kept until the subpackage move updates the imports.
"""

from __future__ import annotations

from ._arrays import (INLINE_BYTES, INNER_BYTES, PACK_ALIGN, PACKED_INNER_BYTES,
                      PACKED_SHARD_BYTES, PACKED_WINDOW, Read, aligned_empty, array_spec,
                      byte_view, chunking, from_bytes, open_array, read, write)
from ._durable import fsync_dir, fsync_tree, makedirs_durably, write_file_durably

__all__ = ["INLINE_BYTES", "INNER_BYTES", "PACK_ALIGN", "PACKED_INNER_BYTES",
           "PACKED_SHARD_BYTES", "PACKED_WINDOW", "Read", "aligned_empty", "array_spec",
           "byte_view", "chunking", "from_bytes", "open_array", "read", "write",
           "fsync_dir", "fsync_tree", "makedirs_durably", "write_file_durably"]
