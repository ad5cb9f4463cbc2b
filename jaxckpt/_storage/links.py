"""Hard links into a save's staging directory, made durable with it (references on object stores).

An incremental save shares a file with a kept checkpoint by linking it
(``_save.units`` decides which). The file's bytes were fsync'd when that
checkpoint committed; a new link is a new directory entry, so each directory
linked into is fsync'd here before the commit (tensorstore fsyncs the
directories it writes into; ``durable.fsync_tree`` those above).
"""

from __future__ import annotations

import errno
import logging
import os

from . import durable as _durable

log = logging.getLogger("jaxckpt")

# A file system that cannot link (or a source that vanished): write instead.
_CANNOT_LINK = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOENT, errno.EOPNOTSUPP,
                errno.ENOTSUP, errno.EACCES, errno.ENOSYS}


class Linker:
    """Makes hard links under one staging tree; ``seal`` makes them durable."""

    def __init__(self) -> None:
        self._dirs: set[str] = set()
        self.refused = False  # this file system refuses links: stop trying

    def link(self, sources: list[str], dest: str) -> bool:
        """Links ``dest`` to the first of ``sources`` that links; False if none
        does (the caller writes the file itself)."""
        if self.refused:
            return False
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        for source in sources:
            try:
                os.link(source, dest)
            except OSError as e:
                if e.errno not in _CANNOT_LINK:
                    raise
                if e.errno in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP,
                               errno.ENOSYS) and os.path.exists(source):
                    log.info("jaxckpt: cannot hard-link %s (%s); writing every file", source, e)
                    self.refused = True
                    return False
                continue
            self._dirs.add(parent)
            return True
        return False

    def seal(self) -> None:
        """fsyncs every directory a link was made in."""
        _durable.fsync_dirs(sorted(self._dirs))


class Referrer:
    """Object stores' stand-in for ``Linker``: nothing can be linked, so a
    file that an earlier checkpoint's object holds is recorded as a reference
    (``shared``: file inside the data -> that object's key, relative to the
    manager's directory) for the manifest to carry. No I/O: the object was
    durable when its checkpoint committed, and retention keeps it while a
    committed manifest references it (``_commit/references``)."""

    refused = False

    def __init__(self) -> None:
        self.shared: dict[str, str] = {}

    def link(self, sources: list[str], dest: str) -> bool:
        """Records ``dest`` (a file inside the data) as held by ``sources[0]``."""
        if not sources:
            return False
        self.shared[dest] = sources[0]
        return True

    def seal(self) -> None:
        """Nothing to make durable: the references go in the manifest."""
