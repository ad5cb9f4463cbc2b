"""Incremental saves: which files of a new checkpoint a kept one already holds.

A checkpoint's array bytes live in files (``FORMAT.md``): one per chunk-grid
cell of a large leaf (``a/<j>/c/<i0>/<i1>/...``) and one per shard of the
packed array (``packed/c/<i>``). A file's bytes follow from its array's
geometry and the contents of the pieces in it, and every manifest records
both (the ``xxh3`` digest of each piece). So a file of a new save whose
geometry and digests match a file of a kept checkpoint holds the same bytes:
the writer hard-links it instead of writing it. Every checkpoint stays whole
(its directory holds every file its manifest names), so deleting any other
checkpoint, by retention or by hand, only drops a link. Object stores cannot
link: there the new manifest references the earlier object (``shared``,
format 4), which retention and the sweep keep while any manifest does.

A unit's key is that geometry plus those digests (128-bit XXH3, computed on
the writer thread); ``Index`` maps the keys of the newest kept checkpoints to
their files. Pure bookkeeping: the links themselves are ``_storage.links``.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from typing import Callable, Iterable

from .._format import digest as _digest, manifest as _format

Key = tuple
Region = _digest.Region

# The newest kept checkpoints whose files a save may share: each save links
# the unchanged files of the one before, so the newest holds nearly all.
INDEX_DEPTH = 3


def cell_path(name: str, cell: tuple[int, ...]) -> str:
    """A large leaf's file: ``a/<name>/c/<i0>/<i1>/...`` (zarr3's default key encoding)."""
    return "/".join((_format.ARRAYS, name, "c", *map(str, cell)))


def packed_path(shard_index: int) -> str:
    return "/".join((_format.PACKED, "c", str(shard_index)))


def cells(stored: list[int], chunk: list[int], pieces: Iterable[tuple[Region, str]]
          ) -> dict[tuple[int, ...], list[tuple[Region, str]]]:
    """The pieces (region over the leaf's shape, digest) grouped by the cell of
    the chunk grid over ``stored`` (the leaf's shape plus its itemsize axis)
    that holds them; a piece spanning two cells puts the leaf out of reach."""
    out: dict[tuple[int, ...], list[tuple[Region, str]]] = {}
    for region, digest in pieces:
        cell = tuple(a // c for (a, _), c in zip(region, chunk)) + (0,)
        if any(b > (i + 1) * c for (_, b), i, c in zip(region, cell, chunk)):
            return {}
        out.setdefault(cell, []).append((region, digest))
    for cell, found in out.items():
        volume = math.prod(min((i + 1) * c, n) - i * c for i, c, n in zip(cell, chunk, stored))
        if sum(math.prod(b - a for a, b in r) for r, _ in found) * stored[-1] != volume:
            return {}  # a cell not covered by its recorded pieces: not a unit we can name
        found.sort()
    return out


def cell_key(stored: list[int], chunk: list[int], inner: list[int], cell: tuple[int, ...],
             pieces: list[tuple[Region, str]]) -> Key:
    return ("a", tuple(stored), tuple(chunk), tuple(inner), cell, tuple(pieces))


def packed_key(shard: int, inner: int, start: int, length: int,
               leaves: list[tuple[int, int, str]]) -> Key:
    """``leaves``: (offset, nbytes, digest) of every packed leaf overlapping the shard."""
    return ("p", shard, inner, start, length, tuple(leaves))


class Overlapping:
    """The packed leaves overlapping each shard in turn, for shards taken in
    order: leaves are (offset, nbytes, digest), appended in offset order."""

    def __init__(self, leaves: list[tuple[int, int, str]] | None = None):
        self.leaves = leaves if leaves is not None else []
        self._lo = 0

    def within(self, start: int, stop: int) -> list[tuple[int, int, str]]:
        leaves = self.leaves
        while self._lo < len(leaves) and leaves[self._lo][0] + leaves[self._lo][1] <= start:
            self._lo += 1
        out, i = [], self._lo
        while i < len(leaves) and leaves[i][0] < stop:
            out.append(leaves[i])
            i += 1
        return out


def of_manifest(manifest: dict) -> list[tuple[Key, str, int]]:
    """(key, file path inside ``data``, array bytes) of every file a manifest's
    save wrote; empty before format 3 (no digests) or without ``data``."""
    if manifest.get("version", 0) < 3 or not manifest.get("data"):
        return []
    out: list[tuple[Key, str, int]] = []
    packed: list[tuple[int, int, str]] = []
    complete = True
    for leaf in manifest["leaves"]:
        kind = _format.where_kind(leaf)
        if kind == _format.WHERE_ARRAY:
            stored = list(leaf["shape"]) + [_format.dtype_from_name(leaf["dtype"]).itemsize]
            chunk, inner = _format.array_chunks(leaf)
            name = _format.array_name(leaf)
            for cell, found in cells(stored, chunk, _digest.pieces(leaf).items()).items():
                nbytes = sum(math.prod(b - a for a, b in r) for r, _ in found) * stored[-1]
                out.append((cell_key(stored, chunk, inner, cell, found),
                            cell_path(name, cell), nbytes))
        elif kind == _format.WHERE_PACKED:
            recorded = list(_digest.pieces(leaf).values())
            offset, nbytes = _format.packed_span(leaf)
            if len(recorded) != 1:
                complete = False
            else:
                packed.append((offset, nbytes, recorded[0]))
    total = manifest.get("packed_nbytes", 0)
    if total and complete and "packed_inline" not in manifest:
        shard, inner = manifest["packed_shard"], manifest["packed_chunk"]
        packed.sort()
        overlapping = Overlapping(packed)
        for i, start in enumerate(range(0, total, shard)):
            length = min(shard, total - start)
            out.append((packed_key(shard, inner, start, length,
                                   overlapping.within(start, start + length)),
                        packed_path(i), length))
    return out


class Index:
    """The files of the newest kept checkpoints, by key.

    ``follow`` keeps it in step with the manager's kept checkpoints before
    each save (loading a manifest once, forgetting deleted checkpoints);
    ``add`` records a checkpoint just committed (replacing an older save of
    the same number). Used on the writer thread only.

    Locally a file is its path (the writer hard-links it). With
    ``by_reference`` (object stores) it is the key of the object holding its
    bytes relative to the manager's directory, ``<name>-<N>/d-<token>/<file>``:
    always the object first written, so a unit a manifest references
    (``shared``) is found where that manifest points.
    """

    def __init__(self, load: Callable[[str], dict | None], by_reference: bool = False):
        self._load = load  # checkpoint path -> its manifest, or None if unreadable
        self._by_reference = by_reference
        self._files: dict[str, dict[Key, str]] = {}  # checkpoint -> key -> file

    def follow(self, kept: list[str]) -> None:
        wanted = kept[-INDEX_DEPTH:]
        for path in list(self._files):
            if path not in wanted:
                del self._files[path]
        for path in wanted:
            if path not in self._files:
                manifest = self._load(path)
                if manifest is not None:
                    self.add(path, manifest)

    def add(self, path: str, manifest: dict, units: list[tuple[Key, str]] | None = None) -> None:
        """Records checkpoint ``path``'s files: ``units`` (key, path inside
        ``data``) as the writer found them, else every file of its manifest."""
        if units is None:
            units = [(key, rel) for key, rel, _ in of_manifest(manifest)]
        if self._by_reference:
            shared = manifest.get("shared") or {}
            data = f"{path.rstrip('/').rsplit('/', 1)[-1]}/{manifest.get('data')}/"
            self._files[path] = {key: shared.get(rel) or data + rel for key, rel in units}
            return
        data = os.path.join(path, manifest.get("data") or "")
        self._files[path] = {key: os.path.join(data, rel) for key, rel in units}

    def find(self, key: Key) -> list[str]:
        """Files holding ``key``'s bytes, newest checkpoint first."""
        return [files[key] for files in reversed(list(self._files.values())) if key in files]

    def __len__(self) -> int:
        return sum(len(files) for files in self._files.values())



class Unchanged:
    """``jax.Array`` objects a committed save wrote, with their pieces' digests.

    A ``jax.Array`` never changes its value (donating or deleting it makes it
    unusable instead), so the very object saved again has the same bytes: an
    incremental save neither copies it off the device nor hashes it, and the
    writer links its files (falling back to the array itself if they are
    gone). Entries go when their array is garbage-collected. ``get`` runs on
    the caller's thread, ``remember`` on the writer's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[weakref.ref, list[tuple[Region, str]]]] = {}

    def get(self, leaf: object) -> list[tuple[Region, str]] | None:
        found = self._seen.get(id(leaf))
        if found is not None and found[0]() is leaf:
            return found[1]
        return None

    def remember(self, arrays: Iterable, kept: bool = True) -> None:
        """Records the arrays of a committed save (``ArrayLeaf`` with ``origin``)."""
        with self._lock:
            for arr in arrays:
                if arr.origin is None or "xxh3" not in arr.record:
                    continue
                key = id(arr.origin)
                try:
                    ref = weakref.ref(arr.origin, self._forget(key))
                except TypeError:
                    continue
                self._seen[key] = (ref, [(tuple(tuple(ax) for ax in index), h)
                                         for index, h in arr.record["xxh3"]])

    def _forget(self, key: int):
        def forget(ref: weakref.ref) -> None:
            with self._lock:
                if self._seen.get(key, (None,))[0] is ref:
                    del self._seen[key]
        return forget

    def __len__(self) -> int:
        return len(self._seen)
