"""A directory of checkpoints as a manager owns it: the catalog of kept checkpoints, the pure
retention and argument rules (``policy``), ownership, the lock and the per-process
registry, recovery on open, the agreement among processes, and the state file.

May import: ``_format``, ``_storage``, ``_commit``, ``_save`` (coordination), ``_read``
(the latest checkpoint), and ``errors``, ``_faults``, ``_tree``.
"""
