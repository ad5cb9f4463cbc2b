"""One checkpoint: the old import path of ``_write`` (writing) and ``_reader`` (reading).

A thin re-export kept until the subpackage move updates the imports.
"""

from __future__ import annotations

from ._reader import (REPLACED_RETRIES, Reader, ReplacedWhileReading, leaf_paths, nbytes_of,
                      read_consistently, read_manifest)
from ._write import write

__all__ = ["REPLACED_RETRIES", "Reader", "ReplacedWhileReading", "leaf_paths", "nbytes_of",
           "read_consistently", "read_manifest", "write"]
