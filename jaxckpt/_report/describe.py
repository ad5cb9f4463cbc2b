"""What one committed checkpoint holds, from its manifest; reads no array data.

``inspect`` describes its leaves; the command line, the reprs and the
notebook share it.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from typing import Any

from . import render as _display
from .. import _tree
from .._format import manifest as _format
from .._read import reader as _reader
from .._storage import location as _location
from .listing import REPR_ROWS, disk_usage


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """One saved leaf, from the manifest.

    ``kind``: ``jax`` (a jax.Array), ``array`` (np.ndarray), ``scalar`` (a
    NumPy scalar), ``key`` (typed PRNG keys; ``dtype`` is ``key<impl>``) or
    ``py`` (a Python value, held in the manifest; ``value`` is it).
    ``stored``: ``packed``, ``array a/<n>``, ``empty`` or ``manifest``.
    ``shared``: some file holding its bytes is hard-linked with another
    checkpoint (an incremental save's), or on object stores is an earlier
    checkpoint's object its manifest references.
    """

    path: str
    kind: str
    shape: tuple[int, ...] | None
    dtype: str
    nbytes: int
    stored: str
    value: Any = None
    shared: bool = False

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"] = None if self.shape is None else list(self.shape)
        if self.kind != "py":
            del out["value"]
        return out


def _leaf_info(leaf: dict, manifest: dict | None = None, linked: frozenset | set = frozenset()
               ) -> LeafInfo:
    path = _tree.path_str(leaf["path"])
    kind = leaf["kind"]
    if kind == "py":
        value = _format.decode_py(leaf["value"])
        return LeafInfo(path, kind, None, type(value).__name__, 0, "manifest", value)
    kind_of_where = _format.where_kind(leaf)
    stored = (f"array {_format.ARRAYS}/{_format.array_name(leaf)}"
              if kind_of_where == _format.WHERE_ARRAY else kind_of_where)
    nbytes = _reader.nbytes_of(leaf)
    shared = bool(linked) and _is_shared(leaf, manifest, linked)
    if kind == "key":
        return LeafInfo(path, kind, tuple(leaf["key_shape"]), f"key<{leaf['impl']}>",
                        nbytes, stored, shared=shared)
    return LeafInfo(path, kind, tuple(leaf["shape"]), leaf["dtype"], nbytes, stored,
                    shared=shared)


def _is_shared(leaf: dict, manifest: dict, linked: set) -> bool:
    """Whether a file holding the leaf's bytes is in ``linked``."""
    kind = _format.where_kind(leaf)
    if kind == _format.WHERE_ARRAY:
        prefix = f"{_format.ARRAYS}/{_format.array_name(leaf)}/"
        return any(rel.startswith(prefix) for rel in linked)
    if kind == _format.WHERE_PACKED and "packed_inline" not in manifest:
        offset, n = _format.packed_span(leaf)
        shard = manifest.get("packed_shard") or manifest.get("packed_nbytes") or 1
        return any(f"{_format.PACKED}/c/{i}" in linked
                   for i in range(offset // shard, (offset + max(n, 1) - 1) // shard + 1))
    return False


_LEAF_HEADERS = ("key path", "shape", "dtype", "bytes")


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What one committed checkpoint holds; a table in Jupyter and in a terminal.

    Attributes:
        path: the checkpoint directory.
        version: the format version.
        created: the checkpoint's timestamp (seconds since the epoch).
        committed: when its commit record was written (file mtime).
        metadata: the ``metadata`` dict given to ``save``, or None.
        leaves: every leaf in save order.
        disk_bytes: bytes of its files on disk.
        shared_bytes: the part of ``disk_bytes`` in files hard-linked with
            another checkpoint (incremental saves; on object stores, in the
            earlier checkpoints' objects its manifest references).
    """

    path: str
    version: int
    created: float | None
    committed: float | None
    metadata: dict | None
    leaves: tuple[LeafInfo, ...]
    disk_bytes: int
    shared_bytes: int = 0

    @property
    def nbytes(self) -> int:
        """Array bytes of every leaf (what a full restore reads)."""
        return sum(leaf.nbytes for leaf in self.leaves)

    def rows(self) -> list[list[str]]:
        out = []
        for leaf in self.leaves:
            if leaf.kind == "py":
                out.append([leaf.path, "-", f"{leaf.dtype} = {_short(repr(leaf.value))}", "-"])
            else:
                out.append([leaf.path, str(leaf.shape), leaf.dtype,
                            _display.human_bytes(leaf.nbytes)])
            if self.shares:
                out[-1].append("shared" if leaf.shared else "")
        return out

    @property
    def shares(self) -> bool:
        return any(leaf.shared for leaf in self.leaves)

    @property
    def headers(self) -> tuple[str, ...]:
        return _LEAF_HEADERS + ("files",) if self.shares else _LEAF_HEADERS

    def footer(self) -> list[str]:
        return [f"total: {len(self.leaves)} leaves", "", "", _display.human_bytes(self.nbytes)
                ] + ([""] if self.shares else [])

    def fields(self) -> list[tuple[str, str]]:
        out = [
            ("created", _display.local_time(self.created)),
            ("committed", _display.local_time(self.committed)),
            ("format", f"version {self.version}"),
            ("leaves", str(len(self.leaves))),
            ("array bytes", _display.human_bytes(self.nbytes)),
            ("on disk", _display.human_bytes(self.disk_bytes)),
        ]
        if self.shared_bytes:
            how = "referenced from" if "://" in self.path else "hard-linked with"
            out.append(("shared", f"{_display.human_bytes(self.shared_bytes)} {how} "
                                  "other checkpoints"))
        if self.metadata is not None:
            out.append(("metadata", _short(json.dumps(self.metadata, sort_keys=True), 120)))
        return out

    def as_dict(self) -> dict:
        """JSON-able: what ``jaxckpt show --json`` prints."""
        return {
            "path": self.path,
            "version": self.version,
            "created": self.created,
            "committed": self.committed,
            "metadata": self.metadata,
            "nbytes": self.nbytes,
            "disk_bytes": self.disk_bytes,
            "shared_bytes": self.shared_bytes,
            "leaves": [leaf.as_dict() for leaf in self.leaves],
        }

    def __repr__(self) -> str:
        rows = self.rows()
        more = len(rows) - REPR_ROWS
        text = (f"checkpoint {self.path}\n{_display.text_fields(self.fields())}\n"
                + _display.text_table(self.headers, rows[:REPR_ROWS], right=(3,),
                                      footer=self.footer()))
        return text + (f"\n... {more} more leaves" if more > 0 else "")

    def _repr_html_(self) -> str:
        rows = self.rows()
        more = len(rows) - REPR_ROWS
        return (f"<div><strong>checkpoint</strong> <code>{html.escape(self.path)}</code>"
                + _display.html_fields(self.fields())
                + _display.html_table(self.headers, rows[:REPR_ROWS], right=(3,),
                                      footer=self.footer())
                + (f"<p>... {more} more leaves</p>" if more > 0 else "") + "</div>")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def inspect(path: str) -> CheckpointInfo:
    """Describes the committed checkpoint at ``path`` from its manifest; reads no array data.

    Raises:
        CheckpointNotFoundError: no committed checkpoint at ``path``.
        CorruptCheckpointError: its manifest is damaged.
        ValueError: ``path`` is a URL this version cannot read.
    """
    where = _location.locate(path)
    path = str(where)
    manifest = _reader.read_manifest(where)
    try:
        committed = where.mtime(_format.MANIFEST)
    except OSError:
        committed = None
    else:
        committed = manifest.get("created") if committed is None else committed
    nbytes, shared = disk_usage(path)
    linked = set()
    if shared:  # hard-linked files locally; referenced ones on object stores
        linked = (_linked_files(where, manifest) if where.is_local
                  else set(manifest.get("shared") or ()))
    leaves = tuple(_leaf_info(leaf, manifest, linked) for leaf in manifest["leaves"])
    return CheckpointInfo(
        path=path,
        version=manifest["version"],
        created=manifest.get("created"),
        committed=committed,
        metadata=manifest.get("metadata"),
        leaves=leaves,
        disk_bytes=nbytes,
        shared_bytes=shared,
    )


def _linked_files(where: Any, manifest: dict) -> set[str]:
    """Paths inside ``data`` of the files with another hard link."""
    data = os.path.join(str(where), manifest.get("data") or "")
    out = set()
    for dirpath, _dirs, files in os.walk(data):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                if os.lstat(full).st_nlink > 1:
                    out.add(os.path.relpath(full, data).replace(os.sep, "/"))
            except OSError:
                pass
    return out
