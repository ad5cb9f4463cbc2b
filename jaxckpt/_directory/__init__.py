"""A directory of checkpoints as a manager owns it: the catalog of kept checkpoints, the pure
retention and argument rules (``policy``), ownership, the lock and the per-process
registry, recovery on open, the signals and agreement among the processes of a
multi-process program (``coordinate``, ``agree``), and publishing a save (``publish``).

May import: ``_format``, ``_storage``, ``_commit``, ``_read`` (the latest checkpoint), and
``errors``, ``_faults``, ``_tree``.
"""
