"""Incremental saves on the writer: which files a save shares, and how.

``_save/units`` says which files of a kept checkpoint hold the same bytes as
a file of this save; this module acts on it while ``_save/write`` writes:
hashes a large leaf's pieces first and links (locally: hard links) or
references (object stores: the manifest's ``shared``) every file a kept
checkpoint holds, links the files of a ``jax.Array`` that ``save`` did not
copy (``units.Unchanged``), and carries each process's references to
process 0 with its part of a multi-process save.
"""

from __future__ import annotations

import dataclasses
import json
import os

from . import snapshot as _snapshot, units as _units
from .. import _tree
from .._format import check as _check, digest as _digest, manifest as _format
from .._storage import links as _links
from .._storage.location import Dir
from ..errors import CheckpointError, CoordinationError, CorruptCheckpointError


@dataclasses.dataclass
class Sharing:
    """An incremental save on this process: what it may share, what it did.

    ``index`` holds the files of kept checkpoints; None writes everything.
    """

    index: _units.Index | None = None
    written: int = 0  # array bytes this process wrote
    shared: int = 0  # array bytes this process linked or referenced from kept checkpoints
    # Object stores: file inside the data -> the earlier object holding it
    # (the manifest's "shared"), filled by the write.
    references: dict = dataclasses.field(default_factory=dict)
    # (key, path inside the data directory) of every file this process wrote
    # or linked, when their keys were computed (None: not computed).
    units: list | None = None


def part_payload(digests: list, references: dict[str, str]) -> str:
    """What a process sends process 0 with its part: the digests of the
    pieces it wrote, then (object stores, incremental) a line with the files
    of its shards it references (``shared``)."""
    text = _digest.encode(digests)  # JSON: a newline only separates the two
    return text + "\n" + json.dumps(references, separators=(",", ":")) if references else text


def merge_part(payload: str, process: int, digests: list, shared: dict[str, str],
                what: str) -> None:
    """Process 0: adds process ``process``'s digests and references (see
    ``part_payload``) to its own, refusing a payload that is not well formed,
    too large, or names a file another process already references."""
    text, _, refs = payload.partition("\n")
    try:
        digests += _digest.decode(text)
        found = json.loads(refs) if refs else {}
    except (ValueError, TypeError) as e:
        raise CoordinationError(f"{what}: not committed; process {process} sent a part that "
                                f"cannot be decoded ({e}); is every process running the same "
                                "jaxckpt?") from e
    if type(found) is not dict or len(shared) + len(found) > _check.MAX_SHARED or not all(
            type(k) is str and type(v) is str and k not in shared for k, v in found.items()):
        raise CoordinationError(
            f"{what}: not committed; process {process} sent references that are not a map of "
            f"distinct file -> key strings (at most {_check.MAX_SHARED} in all)")
    shared.update(found)


def check_merged(manifest: bytes, what: str) -> None:
    """Process 0: the manifest with the other processes' references must be
    one that readers accept (each reference a file of this checkpoint's
    leaves, held by another checkpoint's object), before it is committed."""
    try:
        _format.unpack_manifest(manifest, what)  # checks it as a reader does
    except CorruptCheckpointError as e:
        raise CoordinationError(f"{what}: not committed; the references the other processes "
                                f"sent do not make a valid manifest: {e}") from e


def link_known(pos: int, arr: _snapshot.ArrayLeaf, root: Dir, index: _units.Index | None,
                linker: _links.Linker | None, digests: list, sharing: Sharing) -> None:
    """Links the files of a leaf that ``save`` did not copy (the same
    ``jax.Array`` a committed save wrote). A file no kept checkpoint holds any
    more is written from the array itself, which must still exist."""
    rec = arr.record
    stored = list(arr.shape) + [arr.dtype.itemsize]
    chunk, inner = _format.array_chunks(rec)
    missing: set[tuple] = set()
    grouped = _units.cells(stored, chunk, arr.known)
    if not grouped:
        missing = {region for region, _ in arr.known}
    for cell, in_cell in grouped.items():
        key = _units.cell_key(stored, chunk, inner, cell, in_cell)
        rel = _units.cell_path(_format.array_name(rec), cell)
        if sharing.units is not None:
            sharing.units.append((key, rel))
        dest = destination(root, rel)
        sources = index.find(key) if index is not None else []
        if sources and linker is not None and linker.link(sources, dest):
            digests += [(pos, region, h) for region, h in in_cell]
            sharing.shared += sum(nbytes(region) for region, _ in in_cell) * stored[-1]
        else:
            missing.update(region for region, _ in in_cell)
    arr.known = None
    if not missing:
        return
    source = arr.origin
    if source.is_deleted():
        raise CheckpointError(
            f"the leaf {_tree.path_str(rec['path'])} was not copied by save(): it is the same "
            "jax.Array that an earlier save of this manager wrote, but no kept checkpoint "
            "holds its files any more (deleted by hand?) and the array has since been "
            "deleted or donated; save it again")
    arr.shards = [piece for piece in _snapshot.host_pieces(source) if piece.index in missing]


def destination(root: Dir, rel: str) -> str:
    """Where a shared file goes: its path (a hard link), or on object stores
    its name inside the data (a reference in the manifest)."""
    return os.path.join(root.path, rel) if root.is_local else rel


def nbytes(region: tuple) -> int:
    n = 1
    for a, b in region:
        n *= b - a
    return n


def share_cells(pos: int, arr: _snapshot.ArrayLeaf, root: Dir, index: _units.Index,
                 linker: _links.Linker, digests: list, sharing: Sharing) -> list:
    """Hashes a large leaf's pieces, links the files a kept checkpoint holds;
    returns the pieces still to write."""
    found = [(piece.index, _digest.of(piece.data)) for piece in arr.shards]
    digests += [(pos, region, h) for region, h in found]
    rec = arr.record
    stored = list(arr.shape) + [arr.dtype.itemsize]
    chunk, inner = _format.array_chunks(rec)
    linked: set[tuple] = set()
    for cell, in_cell in _units.cells(stored, chunk, found).items():
        key = _units.cell_key(stored, chunk, inner, cell, in_cell)
        rel = _units.cell_path(_format.array_name(rec), cell)
        sharing.units.append((key, rel))
        sources = index.find(key)
        if sources and linker.link(sources, destination(root, rel)):
            linked.update(region for region, _ in in_cell)
    rest = [piece for piece in arr.shards if piece.index not in linked]
    sharing.shared += sum(piece.data.nbytes for piece in arr.shards) - sum(
        piece.data.nbytes for piece in rest)
    return rest
