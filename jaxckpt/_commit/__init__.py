"""Making a checkpoint visible atomically and taking it away: the commit (rename or marker)
of one checkpoint, the TF-format ``checkpoint`` state file and its atomic replacement, and
the deletion protocol.

May import: ``_format``, ``_storage``, and ``errors``, ``_faults`` (tests/test_layers.py
checks the layers).
"""
