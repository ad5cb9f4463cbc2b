"""The on-disk format: the manifest's framing and fields, the names of every file and
leftover a checkpoint or directory holds, the manifest's structural check, and the per-
piece digests. Pure data in, data out: nothing here touches storage.

May import: ``errors`` and ``_tree`` only.
"""
