"""Making a checkpoint visible atomically and taking it away: the commit (rename or marker)
of one checkpoint, publication of a save's state file and deletions, and the deletion
protocol.

May import: ``_format``, ``_storage``, ``_directory`` (retention types), and ``errors``,
``_faults``.
"""
