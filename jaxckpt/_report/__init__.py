"""Showing what is there: listing a directory, describing one checkpoint, rendering tables
and reprs, and progress bars.

May import: every layer below it (``_format``, ``_storage``, ``_commit``, ``_directory``,
``_read``, ``_save`` for statistics), and ``errors``, ``_tree``; nothing imports it but
the public modules and ``_demo``.
"""
