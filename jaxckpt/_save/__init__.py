"""Taking and writing one save, in the order it happens: the blocking snapshot (and its
in-``jit`` form), the queue and writer thread, the background pipeline, the write of
arrays and manifest, the save's statistics, and the GC pause around it; beside them a
manager's opening of its directory and its lifecycle (open, closed, forked, read-only).

May import: ``_format``, ``_storage``, ``_commit``, ``_directory``, and ``errors``,
``_tree``, ``_faults``.
"""
