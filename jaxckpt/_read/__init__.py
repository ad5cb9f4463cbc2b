"""Reading checkpoints back: the manifest and array reader, restore into a target tree,
finding the latest checkpoint, and a manager's restore.

May import: ``_format``, ``_storage``, ``_commit``, ``_directory``, and ``errors``,
``_faults``, ``_tree``, ``_api``.
"""
