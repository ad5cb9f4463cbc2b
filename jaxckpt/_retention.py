"""Which checkpoints to keep: now in ``_policy`` (the manager's pure rules).

Kept so that ``jaxckpt._retention`` imports keep working until the modules move.
"""

from ._policy import Retention, add, fresh, recover, sweep  # noqa: F401
