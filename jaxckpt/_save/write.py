"""The write side of one checkpoint: lay out a snapshot, write it, commit it.

Small leaves are packed back to back into one array (4 MiB shard files, written
concurrently, for thousands of leaves); leaves of ``_format/manifest.LARGE_BYTES`` or
more get an array each, chunked along their sharding so that each writer owns
whole files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from .._directory import coordinate as _multihost
from . import snapshot as _snapshot, units as _units
from .. import _faults, _tree
from .._commit import atomic as _commit
from .._format import check as _check, digest as _digest, manifest as _format, names as _names
from .._storage import arrays as _arrays, links as _links
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


def _layout(snapshot: _snapshot.Snapshot) -> tuple[int, int, int]:
    """Assigns each array leaf its place; returns the packed array's
    (bytes, shard file size, inner chunk size).

    Depends only on what every process knows (shapes, dtypes, shardings), so
    all processes of a multi-process save compute the same layout.
    """
    offset = 0
    n_large = 0
    for arr in snapshot.arrays:
        if arr.nbytes == 0:
            arr.record["where"] = _format.where_empty()
        elif arr.packed:
            arr.record["where"] = _format.where_packed(offset, arr.nbytes)
            offset = _format.packed_after(offset, arr.nbytes)
        else:
            outer, inner = _arrays.chunking(list(arr.shard_shape) + [arr.dtype.itemsize],
                                            exact=arr.exact)
            arr.record["where"] = _format.where_array(_names.array(n_large), outer, inner)
            n_large += 1
    return _format.packed_geometry(offset)


def _packed_bytes(arr: _snapshot.ArrayLeaf) -> np.ndarray:
    """A packed leaf's bytes, flat (assembled first if this process holds it in pieces)."""
    if len(arr.shards) == 1 and arr.shards[0].data.shape == arr.shape:
        data = np.ascontiguousarray(arr.shards[0].data)
    else:
        data = np.empty(arr.shape, arr.dtype)
        for shard in arr.shards:
            data[tuple(slice(a, b) for a, b in shard.index)] = shard.data
    return data.reshape(-1).view(np.uint8)


def _fill(buf: np.ndarray, start: int, placed: list[tuple[int, np.ndarray, int]]) -> None:
    """Copies the leaves' bytes that fall in ``[start, start + len(buf))`` into
    ``buf`` and zeroes the padding between them (``placed`` is sorted by offset)."""
    end = start + len(buf)
    at = start
    for off, data, _ in placed:
        stop = off + len(data)
        if stop <= start or off >= end:
            continue
        lo, hi = max(off, start), min(stop, end)
        if lo > at:
            buf[at - start : lo - start] = 0
        buf[lo - start : hi - start] = data[lo - off : hi - off]
        at = hi
    if at < end:
        buf[at - start :] = 0


def write(
    snapshot: _snapshot.Snapshot,
    final: Dir,
    *,
    replace: bool,
    created: float,
    coordinator: _multihost.SaveCoordinator,
    sharing: Sharing | None = None,
) -> dict:
    """Writes ``snapshot`` as the committed checkpoint ``final``; returns its
    manifest on process 0 (on the others, only its ``data``).

    With ``sharing``, files whose bytes a kept checkpoint already holds are
    hard-linked from it instead of written (``_units``; on object stores the
    manifest references the earlier object instead, format 4's ``shared``),
    and the bytes written and shared are counted in it.

    Blocks until the bytes are durable and the checkpoint is committed. In a
    multi-process save every process writes its part and process 0 commits
    once all parts are durable; the others return once it has.
    On failure nothing is committed and the staged bytes are removed.
    """
    coord = coordinator
    token = coord.share_token(lambda: _stage_token(final))
    staging = _commit.stage(final, token, create=False)
    packed = _layout(snapshot)
    inline = None
    digests: list = []
    sharing = sharing or Sharing()
    try:
        inline = _write_part(snapshot, staging.arrays, packed, coord.primary, digests,
                             sharing)
        _commit.seal_part(staging)
    except BaseException as e:
        coord.part_done(e)
        if coord.primary:
            coord.announce(e)
            _commit.abort(staging)
        raise
    _faults.point("multihost.part_written")
    coord.part_done(None, _part_payload(digests, sharing.references)
                    if coord.multi and not coord.primary else "")
    if not coord.primary:
        coord.wait_commit()
        # All this process knows of the manifest: its data, the references it made.
        return {"data": staging.data_key, **({"shared": dict(sharing.references)}
                                             if sharing.references else {})}
    try:
        shared = dict(sharing.references)
        for i, payload in enumerate(coord.wait_parts(), start=1):
            _merge_part(payload, i, digests, shared, coord.what)
        _digest.record(snapshot.arrays, digests)
        manifest = {
            "version": _format.VERSION,
            "created": created,
            "metadata": snapshot.metadata,
            "packed_nbytes": packed[0],
            "packed_shard": packed[1],
            "packed_chunk": packed[2],
            "leaves": snapshot.records,
        }
        if inline is not None:
            manifest["packed_inline"] = inline
        manifest["data"] = staging.data_key
        if shared:
            manifest["version"] = _format.SHARED_VERSION
            manifest["shared"] = dict(sorted(shared.items()))
        raw = _format.pack_manifest(manifest)
        if len(shared) > len(sharing.references):
            _check_merged(raw, coord.what)
        _commit.commit(staging, raw, replace=replace)
    except BaseException as e:
        coord.announce(e)
        _commit.abort(staging)
        raise
    coord.announce(None)
    return manifest


def _part_payload(digests: list, references: dict[str, str]) -> str:
    """What a process sends process 0 with its part: the digests of the
    pieces it wrote, then (object stores, incremental) a line with the files
    of its shards it references (``shared``)."""
    text = _digest.encode(digests)  # JSON: a newline only separates the two
    return text + "\n" + json.dumps(references, separators=(",", ":")) if references else text


def _merge_part(payload: str, process: int, digests: list, shared: dict[str, str],
                what: str) -> None:
    """Process 0: adds process ``process``'s digests and references (see
    ``_part_payload``) to its own, refusing a payload that is not well formed,
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


def _check_merged(manifest: bytes, what: str) -> None:
    """Process 0: the manifest with the other processes' references must be
    one that readers accept (each reference a file of this checkpoint's
    leaves, held by another checkpoint's object), before it is committed."""
    try:
        _format.unpack_manifest(manifest, what)  # checks it as a reader does
    except CorruptCheckpointError as e:
        raise CoordinationError(f"{what}: not committed; the references the other processes "
                                f"sent do not make a valid manifest: {e}") from e


def _stage_token(final: Dir) -> str:
    """Process 0: names and creates the staging area."""
    token = _commit.new_token()
    _commit.stage(final, token, create=True)
    return token


def _write_part(snapshot: _snapshot.Snapshot, root: Dir, packed: tuple[int, int, int],
                primary: bool, digests: list, sharing: Sharing) -> bytes | None:
    """Writes this process's shards and, on process 0, the packed array; returns
    the packed bytes instead when they are small enough to go in the manifest.

    Appends to ``digests`` (position in ``snapshot.arrays``, region, xxh3) of
    every piece written, hashed while tensorstore writes. With kept files to
    share (``sharing.index``), each piece is hashed first instead, and a file
    whose key a kept checkpoint holds is linked, not written.
    """
    total, shard, inner = packed
    index = sharing.index if sharing.index is not None and len(sharing.index) else None
    linker = None
    if index is not None:
        linker = _links.Linker() if root.is_local else _links.Referrer()
        sharing.units = []
    inline = None
    if total and primary and total <= _format.INLINE_BYTES:
        # A file of its own would cost 3 directories, 3 fsyncs and a rename
        # (over a third of a small save); the manifest's checksum covers them.
        buf = np.empty(total, np.uint8)
        placed = _placed(snapshot)
        _fill(buf, 0, placed)
        inline, total = buf.tobytes(), 0
        _hash_placed(snapshot, placed, digests)
        sharing.written += sum(len(data) for _, data, _ in placed)
    for pos, arr in enumerate(snapshot.arrays):
        if arr.known is not None:
            _link_known(pos, arr, root, index, linker, digests, sharing)
    opened = []
    for pos, arr in enumerate(snapshot.arrays):
        rec = arr.record
        if _format.where_kind(rec) == _format.WHERE_ARRAY and arr.shards:
            name = _format.array_name(rec)
            spec = _arrays.array_spec(root.join(_format.ARRAYS, name).kvstore(),
                                      list(arr.shape) + [arr.dtype.itemsize],
                                      *_format.array_chunks(rec), create=True)
            opened.append((pos, arr, _arrays.open_array(spec)))
    packed_future = None
    if total and primary:
        spec = _arrays.array_spec(root.join(_format.PACKED).kvstore(), [total], [shard],
                                   [inner], create=True)
        packed_future = _arrays.open_array(spec)
    commits = []
    errors: list[BaseException] = []
    try:
        for pos, arr, fut in opened:
            pieces = arr.shards
            if index is not None:
                pieces = _share_cells(pos, arr, root, index, linker, digests, sharing)
            if pieces:
                store = fut.result()
            for piece in pieces:
                index_ = tuple(slice(a, b) for a, b in piece.index)
                commits.append(_arrays.write(store, index_, _arrays.byte_view(piece.data)))
                sharing.written += piece.data.nbytes
        if index is None:
            # Hashed here, while tensorstore's threads write the same (unchanging) bytes.
            for pos, arr, _ in opened:
                digests += [(pos, piece.index, _digest.of(piece.data)) for piece in arr.shards]
        if packed_future is not None:
            _write_packed(snapshot, packed_future, packed, errors, digests, sharing,
                          index, linker, root)
        if linker is not None:
            _faults.point("write.linked")
            linker.seal()
            if isinstance(linker, _links.Referrer):
                sharing.references.update(linker.shared)
    finally:
        # Await every write, even after one failed: a write still running would
        # recreate its files after the failed temporary is removed.
        for c in commits:
            try:
                c.result()
            except Exception as e:
                errors.append(e)
    if errors:
        raise errors[0]
    return inline


def _link_known(pos: int, arr: _snapshot.ArrayLeaf, root: Dir, index: _units.Index | None,
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
        dest = _dest(root, rel)
        sources = index.find(key) if index is not None else []
        if sources and linker is not None and linker.link(sources, dest):
            digests += [(pos, region, h) for region, h in in_cell]
            sharing.shared += sum(_nbytes(region) for region, _ in in_cell) * stored[-1]
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


def _dest(root: Dir, rel: str) -> str:
    """Where a shared file goes: its path (a hard link), or on object stores
    its name inside the data (a reference in the manifest)."""
    return os.path.join(root.path, rel) if root.is_local else rel


def _nbytes(region: tuple) -> int:
    n = 1
    for a, b in region:
        n *= b - a
    return n


def _share_cells(pos: int, arr: _snapshot.ArrayLeaf, root: Dir, index: _units.Index,
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
        if sources and linker.link(sources, _dest(root, rel)):
            linked.update(region for region, _ in in_cell)
    rest = [piece for piece in arr.shards if piece.index not in linked]
    sharing.shared += sum(piece.data.nbytes for piece in arr.shards) - sum(
        piece.data.nbytes for piece in rest)
    return rest


def _placed(snapshot: _snapshot.Snapshot) -> list[tuple[int, np.ndarray, int]]:
    """(offset, flat bytes, position in ``snapshot.arrays``) of the packed
    leaves this process holds, by offset."""
    return [(_format.packed_span(arr.record)[0], _packed_bytes(arr), pos)
            for pos, arr in enumerate(snapshot.arrays)
            if _format.where_kind(arr.record) == _format.WHERE_PACKED and arr.shards]


def _hash_placed(snapshot: _snapshot.Snapshot, placed: list[tuple[int, np.ndarray, int]],
                 digests: list) -> None:
    """Digests of packed leaves: one piece each, the whole leaf."""
    for _, data, pos in placed:
        shape = snapshot.arrays[pos].shape
        digests.append((pos, tuple((0, n) for n in shape), _digest.of(data)))


def _write_packed(snapshot: _snapshot.Snapshot, opening: Any, packed: tuple[int, int, int],
                  errors: list[BaseException], digests: list, sharing: Sharing,
                  index: _units.Index | None, linker: _links.Linker | None, root: Dir) -> None:
    """Writes the packed array one shard file at a time, at most
    ``PACKED_WINDOW`` staged at once: memory stays bounded (no copy of all the
    small leaves at once) while tensorstore writes and fsyncs several files
    concurrently. Each staging buffer is fresh: tensorstore may keep
    referencing what it was given after the write commits.

    With ``index``, the leaves in a shard are hashed before it is staged, and
    a shard file a kept checkpoint holds is linked instead."""
    total, shard, inner = packed
    placed = _placed(snapshot)
    inflight: list[Any] = []
    store = None

    def settle_oldest() -> None:
        try:
            inflight.pop(0).result()
        except Exception as e:
            errors.append(e)

    hashed = 0
    spans = _units.Overlapping()  # (offset, nbytes, digest) of the leaves hashed
    try:
        for i, start in enumerate(range(0, total, shard)):
            length = min(shard, total - start)
            if index is not None:
                # Every leaf that starts in this shard, hashed before it is staged.
                upto = hashed
                while upto < len(placed) and placed[upto][0] < start + length:
                    upto += 1
                before = len(digests)
                _hash_placed(snapshot, placed[hashed:upto], digests)
                spans.leaves += [(off, len(data), h) for (off, data, _), (_, _, h)
                          in zip(placed[hashed:upto], digests[before:])]
                hashed = upto
                key = _units.packed_key(shard, inner, start, length,
                                        spans.within(start, start + length))
                sharing.units.append((key, _units.packed_path(i)))
                sources = index.find(key)
                if sources and linker.link(sources, _dest(root, _units.packed_path(i))):
                    sharing.shared += length
                    continue
            if len(inflight) >= _arrays.PACKED_WINDOW:
                settle_oldest()
            if errors:
                return
            if store is None:
                store = opening.result()
            buf = np.empty(length, np.uint8)
            _fill(buf, start, placed)
            inflight.append(_arrays.write(store, (slice(start, start + len(buf)),), buf))
            sharing.written += length
            if index is None:
                # The leaves staged whole by now are hashed while that file is written.
                upto = hashed
                while upto < len(placed) and placed[upto][0] + len(placed[upto][1]) <= start + len(buf):
                    upto += 1
                _hash_placed(snapshot, placed[hashed:upto], digests)
                hashed = upto
        _hash_placed(snapshot, placed[hashed:], digests)
    finally:
        while inflight:
            settle_oldest()
