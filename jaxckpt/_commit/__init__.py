"""Making a checkpoint visible atomically and taking it away: the commit (rename or marker)
of one checkpoint (``atomic``), the TF-format ``checkpoint`` state file and its atomic
replacement (``state_file``), the deletion protocol (``deletions``), and the sweep of what
interrupted saves left (``sweep``).

May import: ``_format``, ``_storage``, and ``errors``, ``_faults`` (tests/test_layers.py
checks the layers).
"""
