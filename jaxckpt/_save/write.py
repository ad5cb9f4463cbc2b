"""The write side of one checkpoint: lay out a snapshot, write it, commit it.

Small leaves are packed back to back into one array (4 MiB shard files, written
concurrently, for thousands of leaves); leaves of ``_format/manifest.LARGE_BYTES`` or
more get an array each, chunked along their sharding so that each writer owns
whole files.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._directory import coordinate as _multihost
from . import share as _share, snapshot as _snapshot, units as _units
from .. import _faults
from .._commit import atomic as _commit
from .._format import digest as _digest, manifest as _format, names as _names
from .._storage import arrays as _arrays, links as _links
from .._storage.location import Dir


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
    sharing: _share.Sharing | None = None,
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
    sharing = sharing or _share.Sharing()
    try:
        snapshot.settle()  # device-to-host copies save() only started
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
    coord.part_done(None, _share.part_payload(digests, sharing.references)
                    if coord.multi and not coord.primary else "")
    if not coord.primary:
        coord.wait_commit()
        # All this process knows of the manifest: its data, the references it made.
        return {"data": staging.data_key, **({"shared": dict(sharing.references)}
                                             if sharing.references else {})}
    try:
        shared = dict(sharing.references)
        for i, payload in enumerate(coord.wait_parts(), start=1):
            _share.merge_part(payload, i, digests, shared, coord.what)
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
        if snapshot.metrics is not None:
            manifest["metrics"] = snapshot.metrics
        if inline is not None:
            manifest["packed_inline"] = inline
        manifest["data"] = staging.data_key
        if shared:
            manifest["version"] = _format.SHARED_VERSION
            manifest["shared"] = dict(sorted(shared.items()))
        raw = _format.pack_manifest(manifest)
        if len(shared) > len(sharing.references):
            _share.check_merged(raw, coord.what)
        _commit.commit(staging, raw, replace=replace)
    except BaseException as e:
        coord.announce(e)
        _commit.abort(staging)
        raise
    coord.announce(None)
    return manifest


def _stage_token(final: Dir) -> str:
    """Process 0: names and creates the staging area."""
    token = _commit.new_token()
    _commit.stage(final, token, create=True)
    return token


def _write_part(snapshot: _snapshot.Snapshot, root: Dir, packed: tuple[int, int, int],
                primary: bool, digests: list, sharing: _share.Sharing) -> bytes | None:
    """Writes this process's shards and, on process 0, the packed array; returns
    the packed bytes instead when they are small enough to go in the manifest.

    Appends to ``digests`` (position in ``snapshot.arrays``, region, xxh3) of
    every piece written, hashed while tensorstore writes. With kept files to
    share (``sharing.index``), each piece is hashed first instead, and a file
    whose key a kept checkpoint holds is linked, not written.
    """
    total, shard, inner = packed
    index = sharing.index if sharing.index is not None and len(sharing.index) else None
    # Copies still being made under a host budget (``_save/staging``): each leaf
    # is awaited before it is written; with a budget the packed leaves, copied
    # first, are written first, and each large leaf's copy is released once written.
    rolling = snapshot.rolling
    if rolling is not None:
        rolling.wait_packed()
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
            _share.link_known(pos, arr, root, index, linker, digests, sharing)
    opened = []
    for pos, arr in enumerate(snapshot.arrays):
        rec = arr.record
        if _format.where_kind(rec) == _format.WHERE_ARRAY and (
                arr.shards or (rolling is not None and rolling.pending(arr))):
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
    bounded = rolling is not None and rolling.bounded
    try:
        if bounded:
            if packed_future is not None:
                _write_packed(snapshot, packed_future, packed, errors, digests, sharing,
                              index, linker, root)
                packed_future = None
            rolling.packed_written()
        for pos, arr, fut in opened:
            if rolling is not None:
                rolling.wait(arr)
            first = len(commits)
            pieces = arr.shards
            if index is not None:
                pieces = _share.share_cells(pos, arr, root, index, linker, digests, sharing)
            if pieces:
                store = fut.result()
            for piece in pieces:
                index_ = tuple(slice(a, b) for a, b in piece.index)
                commits.append(_arrays.write(store, index_, _arrays.byte_view(piece.data)))
                sharing.written += piece.data.nbytes
            if bounded:
                if index is None:
                    digests += [(pos, piece.index, _digest.of(piece.data)) for piece in pieces]
                rolling.release_when(arr, commits[first:])
        if index is None and not bounded:
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
                  errors: list[BaseException], digests: list, sharing: _share.Sharing,
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
                if sources and linker.link(sources, _share.destination(root, _units.packed_path(i))):
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
