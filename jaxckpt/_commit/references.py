"""Object stores: which objects the committed manifests of a directory reference.

An incremental save on an object store cannot link a file it shares, so its
manifest references the earlier object instead (format 4's ``shared``: file
-> ``<name>-<N>/d-<token>/<file>``, relative to the manager's directory).
Deleting a checkpoint (retention, a deletion marker, a replaced save's old
data, the sweep) must therefore keep every object that another committed
manifest still references: ``scan`` reads the manifests of the numbered
checkpoints beside it. Objects kept this way stay under their checkpoint's
prefix without a manifest; deleting their last referrer collects them
(``atomic.ObjectStoreCommit.remove``).
"""

from __future__ import annotations

import dataclasses
import logging

from .._format import check as _check, manifest as _format, names as _names
from .._storage.location import KvDir

log = logging.getLogger("jaxckpt")


@dataclasses.dataclass
class Scan:
    """The committed manifests of one directory, as deletion needs them."""

    referenced: set[str]  # keys (relative to the directory) some manifest references
    data: dict[str, str]  # checkpoint name -> the data prefix its manifest names
    damaged: set[str] = dataclasses.field(default_factory=set)  # names whose manifest is damaged
    # checkpoint name -> the checkpoints whose objects its manifest references
    uses: dict[str, set[str]] = dataclasses.field(default_factory=dict)

    def users_of(self, name: str) -> list[str]:
        """The checkpoints whose manifests reference objects under ``name``."""
        return sorted(user for user, owners in self.uses.items() if name in owners)

    def kept_under(self, prefix: str) -> set[str]:
        """The referenced keys under ``prefix`` (``<name>/`` or ``<name>/d-<t>/``),
        relative to it."""
        return {key[len(prefix):] for key in self.referenced if key.startswith(prefix)}


def shared_of(raw: bytes | None, where: str) -> dict[str, str]:
    """The ``shared`` map of a manifest's bytes; empty if none (or damaged:
    a damaged manifest is reported by restore, and references nothing)."""
    if raw is None:
        return {}
    try:
        return _format.unpack_manifest(raw, where).get("shared") or {}
    except ValueError:
        return {}


def scan(directory: KvDir) -> Scan:
    """Reads the manifest of every ``<name>-<N>`` checkpoint in ``directory``.

    A damaged manifest references nothing and names no data (restore reports
    it). A store that cannot be read raises ``OSError``: deleting without
    knowing the references could break a checkpoint.
    """
    out = Scan(set(), {})
    # subdirs() lists every key below: a checkpoint whose objects are all
    # kept for referrers (no manifest) is listed too, and skipped.
    for name in directory.subdirs():
        if _names.split_numbered(name) is None:
            continue
        where = directory.join(name)
        try:
            raw = where.read(_format.MANIFEST, _check.MAX_MANIFEST_BYTES)
            if raw is None:
                continue
            manifest = _format.unpack_manifest(raw, str(where))
        except ValueError as e:
            log.debug("%s: damaged manifest, references nothing: %r", where, e)
            out.damaged.add(name)
            continue
        if manifest.get("data"):
            out.data[name] = manifest["data"]
        sources = (manifest.get("shared") or {}).values()
        out.referenced.update(sources)
        if sources:
            out.uses[name] = {source.split("/", 1)[0] for source in sources}
    return out
