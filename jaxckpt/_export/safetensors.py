"""Export a checkpoint to Hugging Face safetensors shards, and read such files back.

The export streams: a leaf at a time (small packed leaves in batches, large
leaves in slabs along their first axis), each read through the checksum-checked
reader, written, and freed, so host memory stays near ``max_host_bytes``
whatever the checkpoint's size. Everything lands in a temporary directory
beside ``out`` (files fsynced) that is renamed to ``out`` at the end: a crash
leaves either no ``out`` or a whole export.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from typing import Any

import numpy as np

from .. import _tree
from .._format import safetensors as _st
from .._read import reader as _reader
from .._storage import durable as _durable
from ..errors import StructureMismatchError

DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default ("5GB")
DEFAULT_HOST_BYTES = 256 << 20


def dotted(path: Any) -> str:
    """``params.layer_0.kernel`` from a key path (tokens or jax key entries); a
    trailing NNX ``.value`` is dropped."""
    tokens = [tuple(k) for k in path]
    if tokens and tokens[-1] == (_tree.ATTR, "value"):
        tokens = tokens[:-1]
    return ".".join(str(key) for _, key in tokens)


def _under(name: str, root: str) -> bool:
    return not root or name == root or name.startswith(root + ".")


def _plan(reader: _reader.Reader, prefix: str, select: str, skip_unsupported: bool
          ) -> tuple[list[tuple[str, dict]], dict[str, str], list[str]]:
    """(tensors: (name, leaf), metadata, skipped names), refusing before anything is written."""
    tensors, metadata, skipped, unsupported = [], {}, [], []
    seen: dict[str, str] = {}
    for leaf in reader.leaves:
        full = dotted(leaf["path"])
        if not (_under(full, select) and _under(full, prefix)):
            continue
        name = full[len(prefix) + 1:] if prefix and full != prefix else full
        if not name:
            raise ValueError(f"{reader.path}: prefix {prefix!r} is itself a leaf "
                             f"({_tree.path_str(leaf['path'])}); give a subtree")
        where = _tree.path_str(leaf["path"])
        if name in seen:
            raise ValueError(f"{reader.path}: leaves {seen[name]} and {where} both export as "
                             f"{name!r}; select one of them")
        seen[name] = where
        if leaf["kind"] == "py":
            value = leaf["value"]
            metadata[name] = json.dumps(value[1] if value[0] in ("str", "int", "bool") else value)
            continue
        if leaf["kind"] == "key" or _st.st_dtype(leaf["dtype"]) is None:
            what = (f"PRNG keys ({leaf['impl']})" if leaf["kind"] == "key"
                    else f"dtype {leaf['dtype']}")
            unsupported.append(f"{where} ({what})")
            skipped.append(name)
            continue
        tensors.append((name, leaf))
    if unsupported and not skip_unsupported:
        raise TypeError(f"{reader.path}: safetensors has no dtype for "
                        f"{len(unsupported)} leaf(s): {', '.join(unsupported)}; export "
                        "without them with skip_unsupported=True (--skip-unsupported), or "
                        "cast them before saving")
    if not tensors and not metadata:
        raise ValueError(f"{reader.path}: nothing to export"
                         + (f" under {select or prefix!r}" if select or prefix else ""))
    return tensors, metadata, skipped


def _shards(tensors: list[tuple[str, dict]], max_shard_bytes: int) -> list[list[tuple[str, dict]]]:
    shards: list[list[tuple[str, dict]]] = [[]]
    size = 0
    for name, leaf in tensors:
        n = _reader.nbytes_of(leaf)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, leaf))
        size += n
    return shards


def _slab_indices(shape: list[int], itemsize: int, budget: int) -> list[tuple]:
    """Whole leaf (``()``), or consecutive slabs along axis 0 of at most ``budget``
    bytes (one row at least)."""
    total = int(np.prod(shape)) * itemsize if shape else itemsize
    if total <= budget or not shape or shape[0] <= 1:
        return [()]
    row = total // shape[0]
    step = max(1, budget // max(row, 1))
    return [(slice(i, min(i + step, shape[0])),) + tuple(slice(0, n) for n in shape[1:])
            for i in range(0, shape[0], step)]


def _write_shard(reader: _reader.Reader, path: str, tensors: list[tuple[str, dict]],
                 metadata: dict[str, str], budget: int) -> int:
    entries = [(name, _st.st_dtype(leaf["dtype"]), leaf["shape"], _reader.nbytes_of(leaf))
               for name, leaf in tensors]
    written = 0
    with open(path, "xb") as f:
        f.write(_st.header(entries, metadata))
        batch: list[dict] = []

        def flush() -> None:
            nonlocal written
            if batch:
                for (data,) in reader.read_arrays([(leaf, [()]) for leaf in batch]):
                    written += _put(f, data)
                batch.clear()

        batch_bytes = 0
        for _, leaf in tensors:
            n = _reader.nbytes_of(leaf)
            if n * 2 <= budget and batch_bytes + n <= budget // 2:
                batch.append(leaf)  # small leaves: read together
                batch_bytes += n
                continue
            flush()
            batch_bytes = 0
            itemsize = n // max(int(np.prod(leaf["shape"])), 1) if n else 1
            for idx in _slab_indices(leaf["shape"], itemsize, budget):
                (data,), = reader.read_arrays([(leaf, [idx])])
                written += _put(f, data)
                del data
        flush()
        f.flush()
        os.fsync(f.fileno())
    return written


def _put(f: Any, data: np.ndarray) -> int:
    data = np.ascontiguousarray(data)
    if data.dtype.byteorder == ">":
        data = data.byteswap().view(data.dtype.newbyteorder("<"))
    f.write(memoryview(data.reshape(-1).view(np.uint8)))
    return data.nbytes


def export_safetensors(ckpt: str | os.PathLike, out: str | os.PathLike, *,
                       prefix: str | None = None, select: str | None = None,
                       max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                       max_host_bytes: int = DEFAULT_HOST_BYTES,
                       skip_unsupported: bool = False) -> dict:
    """Writes the checkpoint ``ckpt`` as Hugging Face safetensors files in the new
    directory ``out``: ``model-00001-of-0000N.safetensors`` shards and
    ``model.safetensors.index.json`` (``{"metadata": {"total_size"}, "weight_map"}``).

    Tensor names are the key paths joined with ``.`` (``params.layer_0.kernel``;
    a trailing NNX ``.value`` dropped). Python leaves (ints, floats, strings)
    go to every shard's ``__metadata__`` as JSON text under their name, beside
    ``"format": "flax"``.

    Args:
        ckpt: a committed checkpoint (local path or URL).
        out: a local directory that must not exist; written atomically (a
            temporary directory beside it, fsynced, renamed).
        prefix: a dotted path (``"params"``) whose subtree alone is exported,
            with the prefix and its dot stripped from the names.
        select: a dotted path whose subtree alone is exported, names kept.
        max_shard_bytes: tensors per file up to this many bytes (a larger
            tensor gets a file of its own).
        max_host_bytes: about how much of the checkpoint is held in host memory
            at once: larger leaves are read and written in slabs along their
            first axis (at least one row each).
        skip_unsupported: leave out leaves safetensors has no dtype for (PRNG
            keys, int4/uint4, float8 other than e4m3fn/e5m2, complex) instead
            of refusing; their names are in the result's ``"skipped"``.

    Returns:
        ``{"files", "tensors", "total_size", "skipped", "metadata"}``.

    Blocks until the export is durable. Thread-safe for distinct ``out``.

    Raises:
        FileExistsError: ``out`` exists. Nothing is written.
        TypeError: a selected leaf has a dtype safetensors lacks (every such key
            path is named) and ``skip_unsupported`` is false. Nothing is written.
        ValueError: nothing is selected, two leaves give one name, or a size is
            not a positive int. Nothing is written.
        CheckpointNotFoundError, CorruptCheckpointError: as ``jaxckpt.restore``;
            no ``out`` is left behind.
    """
    for arg, value in (("max_shard_bytes", max_shard_bytes), ("max_host_bytes", max_host_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{arg} must be a positive int (bytes), not {value!r}")
    out = os.path.abspath(os.fspath(out))
    if os.path.lexists(out):
        raise FileExistsError(errno.EEXIST, "export destination already exists", out)
    parent = os.path.dirname(out)
    prefix, select = (prefix or "").strip("."), (select or "").strip(".")

    def run(reader: _reader.Reader) -> dict:
        tensors, metadata, skipped = _plan(reader, prefix, select, skip_unsupported)
        metadata = {"format": "flax", **metadata}
        shards = _shards(tensors, max_shard_bytes)
        tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards, 1):
                name = _st.shard_name(i, len(shards))
                total += _write_shard(reader, os.path.join(tmp, name), shard,
                                      metadata, max_host_bytes)
                weight_map.update((t, name) for t, _ in shard)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            _durable.write_file_durably(os.path.join(tmp, _st.INDEX),
                                        json.dumps(index, indent=2).encode() + b"\n")
            _durable.fsync_dir(tmp)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _durable.fsync_dir(parent)
        return {"files": sorted(set(weight_map.values())), "tensors": len(weight_map),
                "total_size": total, "skipped": skipped, "metadata": metadata}

    os.makedirs(parent, exist_ok=True)
    return _reader.read_consistently(ckpt, run)


# ---------------------------------------------------------------- reading back


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(errno.ENOENT, "no safetensors file or directory", path)
    index = os.path.join(path, _st.INDEX)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    else:
        names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not names:
        raise FileNotFoundError(errno.ENOENT, "no .safetensors files in directory", path)
    return [os.path.join(path, n) for n in names]


def read_all(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(arrays by name, merged ``__metadata__``) of a file or an export directory;
    the arrays are read-only memory maps of the files."""
    arrays: dict[str, np.ndarray] = {}
    metadata: dict[str, str] = {}
    for file in _files(os.fspath(path)):
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) == 8:
                head += f.read(min(int.from_bytes(head, "little"), _st.MAX_HEADER_BYTES))
        tensors, meta, start = _st.parse_header(head, file)
        metadata.update(meta)
        raw = np.memmap(file, np.uint8, "r") if size > start else np.zeros(0, np.uint8)
        for name, info in tensors.items():
            dtype = _st.np_dtype(info["dtype"])
            begin, end = info["data_offsets"]
            shape = tuple(int(n) for n in info["shape"])
            if not (0 <= begin <= end and start + end <= size
                    and end - begin == int(np.prod(shape)) * dtype.itemsize):
                raise ValueError(f"{file}: tensor {name!r}: offsets {begin}..{end} do not "
                                 f"fit {info['dtype']}{list(shape)} in a {size}-byte file")
            if name in arrays:
                raise ValueError(f"{file}: tensor {name!r} is also in another file")
            arrays[name] = raw[start + begin:start + end].view(dtype).reshape(shape)
    return arrays, metadata


def nested(arrays: dict[str, np.ndarray]) -> dict:
    """Nested dicts from dotted names (``a.b.c`` -> ``{"a": {"b": {"c": ...}}}``)."""
    root: dict = {}
    for name, value in arrays.items():
        node = root
        *parents, last = name.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"tensor {name!r} lies under tensor "
                                 f"{'.'.join(parents[:i + 1])!r}; read it with target=")
        if isinstance(node.get(last), dict):
            raise ValueError(f"tensor {name!r} is also a prefix of other tensors")
        node[last] = value
    return root


def onto(arrays: dict[str, np.ndarray], target: Any, partial: bool, where: str) -> Any:
    """The target's structure with each leaf read from the tensor of its dotted name:
    a ``jax.Array`` / ``ShapeDtypeStruct`` leaf gives a ``jax.Array`` with its
    sharding and dtype, anything else a NumPy array of the target's dtype."""
    import jax

    entries, treedef = _tree.flatten(target)
    with_path = [(e.path, e.leaf) for e in entries]
    names = [dotted(path) for path, _ in with_path]
    problems = []
    for (path, leaf), name in zip(with_path, names):
        have = arrays.get(name)
        shape = getattr(leaf, "shape", None)
        if have is None:
            problems.append(f"{_tree.path_str(path)} ({name!r}): not in {where}")
        elif shape is not None and tuple(shape) != have.shape:
            problems.append(f"{_tree.path_str(path)} ({name!r}): shape {tuple(shape)} "
                            f"in the target, {have.shape} in {where}")
    if not partial:
        extra = sorted(set(arrays) - set(names))
        if extra:
            problems.append(f"in {where} but not in the target: {', '.join(extra)} "
                            "(pass partial=True to ignore them)")
    if problems:
        raise StructureMismatchError("the target does not fit the safetensors tensors:\n  "
                                     + "\n  ".join(problems))
    values = []
    for (_, leaf), name in zip(with_path, names):
        data = arrays[name]
        dtype = getattr(leaf, "dtype", data.dtype)
        if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
            sharding = getattr(leaf, "sharding", None)
            values.append(jax.device_put(np.asarray(data, dtype), sharding))
        else:
            values.append(np.array(data, dtype))
    return jax.tree_util.tree_unflatten(treedef, values)


def import_safetensors(path: str | os.PathLike, target: Any = None, *,
                       partial: bool = False) -> Any:
    """Reads safetensors files: one file, or a directory of them (the shards its
    ``model.safetensors.index.json`` names, else every ``*.safetensors``).

    Args:
        path: a ``.safetensors`` file or a directory (local).
        target: ``None`` for nested dicts of NumPy arrays from the dotted names
            (``a.b.c`` -> ``{"a": {"b": {"c": ...}}}``); else a pytree whose
            leaves are matched by dotted key path (as ``export_safetensors``
            names them): a ``jax.Array`` or ``jax.ShapeDtypeStruct`` leaf gives
            a ``jax.Array`` placed with its sharding (default device if none)
            and cast to its dtype; any other leaf a NumPy array of its dtype.
        partial: with a target, ignore tensors the target does not name.

    Blocks until every array is read (NumPy results without a target are
    read-only memory maps of the files). Thread-safe.

    Raises:
        FileNotFoundError: no such file, or a directory without safetensors files.
        ValueError: a file is not safetensors, or holds a dtype NumPy lacks.
        StructureMismatchError: the target names a tensor that is missing or of
            another shape, or (``partial=False``) the files hold tensors the
            target lacks; every one is named.
    """
    arrays, _ = read_all(path)
    if target is None:
        return nested(arrays)
    return onto(arrays, target, partial, os.fspath(path))
