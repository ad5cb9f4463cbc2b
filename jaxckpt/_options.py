"""Checking what callers pass a CheckpointManager: now in ``_policy``.

Kept so that ``jaxckpt._options`` imports keep working until the modules move.
"""

from ._policy import (MAX_NAME_BYTES, as_number, check_manager_options,  # noqa: F401
                      clock_reading, positive_int)
