"""What one committed checkpoint holds, from its manifest; reads no array data.

``inspect`` describes its leaves; the command line, the reprs and the
notebook share it.
"""

from __future__ import annotations

import dataclasses
import html
import json
from typing import Any

from . import render as _display
from .. import _tree
from .._format import manifest as _format
from .._read import reader as _reader
from .._storage import location as _location
from .listing import REPR_ROWS, disk_bytes


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """One saved leaf, from the manifest.

    ``kind``: ``jax`` (a jax.Array), ``array`` (np.ndarray), ``scalar`` (a
    NumPy scalar), ``key`` (typed PRNG keys; ``dtype`` is ``key<impl>``) or
    ``py`` (a Python value, held in the manifest; ``value`` is it).
    ``stored``: ``packed``, ``array a/<n>``, ``empty`` or ``manifest``.
    """

    path: str
    kind: str
    shape: tuple[int, ...] | None
    dtype: str
    nbytes: int
    stored: str
    value: Any = None

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"] = None if self.shape is None else list(self.shape)
        if self.kind != "py":
            del out["value"]
        return out


def _leaf_info(leaf: dict) -> LeafInfo:
    path = _tree.path_str(leaf["path"])
    kind = leaf["kind"]
    if kind == "py":
        value = _format.decode_py(leaf["value"])
        return LeafInfo(path, kind, None, type(value).__name__, 0, "manifest", value)
    kind_of_where = _format.where_kind(leaf)
    stored = (f"array {_format.ARRAYS}/{_format.array_name(leaf)}"
              if kind_of_where == _format.WHERE_ARRAY else kind_of_where)
    nbytes = _reader.nbytes_of(leaf)
    if kind == "key":
        return LeafInfo(path, kind, tuple(leaf["key_shape"]), f"key<{leaf['impl']}>",
                        nbytes, stored)
    return LeafInfo(path, kind, tuple(leaf["shape"]), leaf["dtype"], nbytes, stored)


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
    """

    path: str
    version: int
    created: float | None
    committed: float | None
    metadata: dict | None
    leaves: tuple[LeafInfo, ...]
    disk_bytes: int

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
        return out

    def footer(self) -> list[str]:
        return [f"total: {len(self.leaves)} leaves", "", "", _display.human_bytes(self.nbytes)]

    def fields(self) -> list[tuple[str, str]]:
        out = [
            ("created", _display.local_time(self.created)),
            ("committed", _display.local_time(self.committed)),
            ("format", f"version {self.version}"),
            ("leaves", str(len(self.leaves))),
            ("array bytes", _display.human_bytes(self.nbytes)),
            ("on disk", _display.human_bytes(self.disk_bytes)),
        ]
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
            "leaves": [leaf.as_dict() for leaf in self.leaves],
        }

    def __repr__(self) -> str:
        rows = self.rows()
        more = len(rows) - REPR_ROWS
        text = (f"checkpoint {self.path}\n{_display.text_fields(self.fields())}\n"
                + _display.text_table(_LEAF_HEADERS, rows[:REPR_ROWS], right=(3,),
                                      footer=self.footer()))
        return text + (f"\n... {more} more leaves" if more > 0 else "")

    def _repr_html_(self) -> str:
        rows = self.rows()
        more = len(rows) - REPR_ROWS
        return (f"<div><strong>checkpoint</strong> <code>{html.escape(self.path)}</code>"
                + _display.html_fields(self.fields())
                + _display.html_table(_LEAF_HEADERS, rows[:REPR_ROWS], right=(3,),
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
    return CheckpointInfo(
        path=path,
        version=manifest["version"],
        created=manifest.get("created"),
        committed=committed,
        metadata=manifest.get("metadata"),
        leaves=tuple(_leaf_info(leaf) for leaf in manifest["leaves"]),
        disk_bytes=disk_bytes(path),
    )
