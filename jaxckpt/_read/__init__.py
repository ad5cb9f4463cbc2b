"""Reading checkpoints back: the manifest and array reader, restore into a target tree,
and finding the latest checkpoint (a manager's restore is ``jaxckpt._managed_restore``).

May import: ``_format``, ``_storage``, ``_commit``, and ``errors``, ``_faults``, ``_tree``.
"""
