"""Import checkpoints written by Orbax (orbax-checkpoint) into jaxckpt's format.

Orbax reads its own files (it is an optional extra: ``pip install
'jaxckpt[orbax]'``), onto the host as NumPy arrays of the dtypes its metadata
records; jaxckpt's own ``save`` / ``CheckpointManager.save`` writes them, so
every imported checkpoint is committed the way any other is. Layouts:

- a step of a ``CheckpointManager`` run: ``<step>/_CHECKPOINT_METADATA`` and
  one directory per item. The single item ``default`` becomes the tree
  itself; named items (``state``, ``metadata``, ...) become its top-level
  keys. PyTree items (``StandardSave``, ``PyTreeSave``; OCDBT or not) and
  JSON items (``JsonSave``) are read; other handlers are refused by name.
- a checkpointer's directory used alone (``StandardCheckpointer().save(d,
  tree)``), or one item's directory: the item's files in the directory itself.
- a run directory: every finished step ``<N>`` (or ``<prefix>_<N>``) becomes
  ``<checkpoint_name>-<N>`` of a jaxckpt manager directory, oldest step first,
  stamped with Orbax's commit time, so that a ``CheckpointManager`` opened on
  it continues the numbering and applies its retention.

Orbax restores a whole item at once: the host holds one step's tree while it
is written (jaxckpt's own copies stay under ``max_host_bytes``).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
from typing import Any, Sequence

import numpy as np

from .. import _api
from .._commit import atomic as _commit
from .._read import orbax as _recognise
from .._report import listing as _listing
from .._storage import location as _location
from ..manager import CheckpointManager

log = logging.getLogger("jaxckpt")

EXTRA = "pip install 'jaxckpt[orbax]'"
DEFAULT_HOST_BYTES = 256 << 20
_TMP = ".orbax-checkpoint-tmp"
_STEP_META = "_CHECKPOINT_METADATA"
_ITEM_META = "_METADATA"
_JSON_FILE = "metadata"  # JsonCheckpointHandler's default file name
_METRICS = "metrics"  # the item Orbax's CheckpointManager keeps save(metrics=) in
_COMMIT_FILE = "commit_success.txt"
_MAX_META_BYTES = 64 << 20
_STEP_NAME = re.compile(r"^(?:.*_)?(\d+)$")
_PYTHON_SCALARS = (np.dtype(np.int64), np.dtype(np.float64), np.dtype(np.bool_))


def _ocp() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError("importing an Orbax checkpoint reads it with Orbax itself, which "
                          f"is not installed: {EXTRA} (or pip install orbax-checkpoint)") from e
    return ocp


def _read_json(path: str, what: str) -> Any:
    """A small JSON file (at most 64 MiB), or ValueError naming it."""
    size = os.path.getsize(path)
    if size > _MAX_META_BYTES:
        raise ValueError(f"{path}: {what} is {size} bytes, more than an Orbax metadata file "
                         f"holds ({_MAX_META_BYTES}); not an Orbax checkpoint?")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {what} is not valid JSON ({e}); a damaged Orbax "
                         "checkpoint?") from None


class Step:
    """One Orbax checkpoint on disk: its items, step number and timestamps."""

    def __init__(self, path: str, items: list[tuple[str | None, str, str]], meta: dict):
        self.path = path
        self.items = items  # (name or None for "the tree itself", "pytree" | "json", dir)
        self.meta = meta
        self.metrics_dir: str | None = None  # Orbax's reserved "metrics" item, if any

    @property
    def number(self) -> int | None:
        m = _STEP_NAME.match(os.path.basename(self.path))
        return int(m.group(1)) if m else None

    @property
    def timestamp(self) -> float:
        """Orbax's commit time (else its start time, else the directory's mtime)."""
        for key in ("commit_timestamp_nsecs", "init_timestamp_nsecs"):
            value = self.meta.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return float(value) / 1e9
        return os.path.getmtime(self.path)

    @property
    def metrics(self) -> dict | None:
        """Orbax's per-step metrics that are real numbers (what ``keep_best`` ranks)."""
        found = self.meta.get("metrics")
        if not found and self.metrics_dir is not None:
            found = _read_json_item(_ocp(), self.metrics_dir)
        if not isinstance(found, dict):
            return None
        real = {str(k): float(v) for k, v in found.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        return real or None

    def provenance(self) -> dict:
        """The jaxckpt ``metadata`` recorded with the import: where it came from."""
        orbax: dict = {"source": self.path, "step": self.number,
                       "items": [name or "default" for name, _, _ in self.items]}
        for key in ("custom_metadata", "metrics"):
            if self.meta.get(key):
                orbax[key] = self.meta[key]
        try:
            json.dumps(orbax)
        except (TypeError, ValueError):
            orbax.pop("custom_metadata", None)
            orbax.pop("metrics", None)
        return {"imported_from": "orbax", "orbax": orbax}


def _refuse_unfinished(path: str) -> None:
    if _TMP in os.path.basename(path):
        raise ValueError(f"{path} is an unfinished Orbax save (a temporary '{_TMP}' "
                         "directory: its writer was interrupted or is still writing); import "
                         "a finished step instead")


def _item_kind(path: str, handler: Any, name: str, step: str) -> str:
    handler = handler if isinstance(handler, str) else ""
    if "Json" in handler:
        return "json"
    if os.path.isfile(os.path.join(path, _ITEM_META)):
        return "pytree"
    if not handler and _json_file(path) is not None:
        return "json"
    what = f"its handler {handler}" if handler else "no _METADATA"
    raise ValueError(f"{step}: item {name!r} is not one jaxckpt can import ({what}); "
                     "PyTree items (StandardSave, PyTreeSave) and JSON items (JsonSave) can "
                     "be: pass items= (--items) naming the others")


def inspect_step(src: str | os.PathLike, items: Sequence[str] | None = None) -> Step:
    """The layout of the Orbax checkpoint ``src``, read from names and small files.

    Raises:
        FileNotFoundError, NotADirectoryError: ``src`` is missing or a file.
        ValueError: ``src`` is not an Orbax checkpoint (a run directory, a jaxckpt
            checkpoint, an unfinished save, an unknown item), naming what it is.
    """
    path = os.path.abspath(os.fspath(src))
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such Orbax checkpoint", path)
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "an Orbax checkpoint is a directory", path)
    _refuse_unfinished(path)
    if _commit.is_committed(path):
        raise ValueError(f"{path} is already a jaxckpt checkpoint")
    meta_file = os.path.join(path, _STEP_META)
    meta = _read_json(meta_file, _STEP_META) if os.path.isfile(meta_file) else {}
    meta = meta if isinstance(meta, dict) else {}
    if os.path.isfile(os.path.join(path, _ITEM_META)):
        found: list[tuple[str | None, str, str]] = [(None, "pytree", path)]
    else:
        handlers = meta.get("item_handlers")
        names = (sorted(handlers) if isinstance(handlers, dict) else
                 [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))])
        handlers = handlers if isinstance(handlers, dict) else {}
        found = []
        metrics_dir = None
        for name in names:
            item = os.path.join(path, name)
            if _TMP in name:
                _refuse_unfinished(item)
            if not os.path.isdir(item):
                raise ValueError(f"{path}: {_STEP_META} names item {name!r} but there is no "
                                 f"directory {item}; a damaged or unfinished Orbax checkpoint")
            if name == _METRICS:
                metrics_dir = item
            elif name in handlers or os.path.isfile(os.path.join(item, _ITEM_META)) \
                    or _json_file(item) is not None:
                found.append((name, "", item))
        if not found:
            where = _location.locate(path)
            if _recognise.steps(where):
                raise ValueError(f"{path} is an Orbax CheckpointManager directory, not one "
                                 "step: import every step with import_orbax_run (the command "
                                 "line's import-orbax does so for a run directory)")
            raise ValueError(f"{path} is not an Orbax checkpoint (no {_STEP_META}, "
                             f"{_ITEM_META} or item directories)")
        if items is not None:
            wanted = [str(i) for i in items]
            unknown = sorted(set(wanted) - {n for n, _, _ in found})
            if unknown:
                raise ValueError(f"{path}: no item(s) {', '.join(map(repr, unknown))}; it "
                                 f"holds {', '.join(repr(n) for n, _, _ in found)}")
            found = [f for f in found if f[0] in wanted]
        found = [(n, _item_kind(d, handlers.get(n), str(n), path), d) for n, _, d in found]
        if [n for n, _, _ in found] == ["default"]:
            found = [(None, found[0][1], found[0][2])]  # the single-item layout
        step = Step(path, found, meta)
        step.metrics_dir = metrics_dir
        return step
    return Step(path, found, meta)


def _json_file(item: str) -> str | None:
    """The one file a JSON item's directory holds (JsonCheckpointHandler's ``filename``)."""
    names = [n for n in os.listdir(item) if n != _COMMIT_FILE
             and os.path.isfile(os.path.join(item, n))]
    if _JSON_FILE in names:
        return _JSON_FILE
    return names[0] if len(names) == 1 and not names[0].startswith("_") else None


def _read_json_item(ocp: Any, item: str) -> Any:
    name = _json_file(item)
    if name is None:
        raise ValueError(f"{item}: a JSON item without its file")
    return ocp.Checkpointer(ocp.JsonCheckpointHandler(filename=name)).restore(item)


def _key_impls(item: str) -> dict[str, str]:
    """Dotted parameter name -> PRNG implementation, from Orbax's array metadata."""
    impls: dict[str, str] = {}
    where = os.path.join(item, "array_metadatas")
    if not os.path.isdir(where):
        return impls
    for name in sorted(os.listdir(where)):
        data = _read_json(os.path.join(where, name), "array metadata")
        for entry in (data.get("array_metadatas") or []) if isinstance(data, dict) else []:
            meta = entry.get("array_metadata") if isinstance(entry, dict) else None
            if not isinstance(meta, dict):
                continue
            ext = meta.get("ext_metadata")
            if isinstance(ext, dict) and ext.get("random_key_impl"):
                impls[str(meta.get("param_name"))] = str(ext["random_key_impl"])
    return impls


def _dotted(path: Any) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in path)


def _read_pytree(ocp: Any, item: str) -> Any:
    import jax

    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(item)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    array_meta = ocp.metadata.ArrayMetadata
    args = jax.tree_util.tree_map(
        lambda m: ocp.RestoreArgs(restore_type=np.ndarray) if isinstance(m, array_meta)
        else ocp.RestoreArgs(), meta)
    restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(restore_args=args))
    impls = _key_impls(item)
    scalar_meta = ocp.metadata.ScalarMetadata

    def convert(path: Any, m: Any, value: Any) -> Any:
        if not isinstance(m, array_meta):
            return value
        value = np.asarray(value)
        if m.dtype is not None and value.dtype != np.dtype(m.dtype):
            raise ValueError(f"{item}: leaf {_dotted(path)} came back as {value.dtype}, "
                             f"its Orbax metadata says {np.dtype(m.dtype)}")
        impl = impls.get(_dotted(path))
        if impl is not None:
            return jax.random.wrap_key_data(value, impl=impl)
        if isinstance(m, scalar_meta) and value.shape == ():
            # Python int/float/bool are saved as int64/float64/bool scalars.
            return value.item() if value.dtype in _PYTHON_SCALARS else value[()]
        return value

    return jax.tree_util.tree_map_with_path(convert, meta, restored)


def read_tree(step: Step) -> Any:
    """The tree of an Orbax checkpoint, read with Orbax onto the host."""
    ocp = _ocp()
    values = {}
    for name, kind, item in step.items:
        if kind == "json":
            value = _read_json_item(ocp, item)
        else:
            value = _read_pytree(ocp, item)
        if name is None:
            return value
        values[name] = value
    return values


def import_orbax(src: str | os.PathLike, dest: str | os.PathLike, *,
                 items: Sequence[str] | None = None,
                 max_host_bytes: int | None = DEFAULT_HOST_BYTES) -> str:
    """Converts one Orbax checkpoint (a step of a ``CheckpointManager`` run, or a
    checkpointer's directory) into the jaxckpt checkpoint ``dest``, bit-exact.

    Args:
        src: the Orbax step directory (local), OCDBT or not.
        dest: the new checkpoint's path (local or URL); must not exist.
        items: the Orbax items to import (default every PyTree and JSON item).
            The single item ``default`` becomes the tree; named items its
            top-level keys.
        max_host_bytes: a ceiling on jaxckpt's own host copies while writing
            (Orbax restores the whole tree onto the host first).

    Returns:
        ``str(dest)``. Its ``user_metadata`` records the source and the Orbax step.

    PRNG keys saved by Orbax come back as typed keys of their implementation;
    Python scalars as Python scalars; every array with its saved dtype
    (bfloat16, int4, ...). Blocks until the checkpoint is committed.

    Raises:
        ImportError: orbax-checkpoint is not installed (``pip install 'jaxckpt[orbax]'``).
        FileExistsError: ``dest`` exists. Nothing is read or written.
        FileNotFoundError, ValueError: ``src`` is not a finished Orbax checkpoint
            (naming what it is instead). Nothing is written.
    """
    _ocp()
    step = inspect_step(src, items)
    where = _location.locate(dest)
    if where.exists():
        raise FileExistsError(errno.EEXIST, "import destination already exists", str(where))
    tree = read_tree(step)
    return _api.save(dest, tree, metadata=step.provenance(), max_host_bytes=max_host_bytes)


def run_steps(src: str | os.PathLike, items: Sequence[str] | None = None) -> list[Step]:
    """The finished steps of the Orbax run directory ``src``, oldest first, checked."""
    path = os.path.abspath(os.fspath(src))
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "no such Orbax run directory", path)
        raise NotADirectoryError(errno.ENOTDIR, "an Orbax run directory is a directory", path)
    where = _location.locate(path)
    if _recognise.is_step(where) and not _recognise.steps(where):
        raise ValueError(f"{path} is one Orbax checkpoint, not a CheckpointManager "
                         "directory: import it with import_orbax")
    found: dict[int, Step] = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if _TMP in name:
            log.warning("skipping %s: an unfinished Orbax save", full)
            continue
        m = _STEP_NAME.match(name)
        if not m or not os.path.isdir(full) or not _recognise.is_step(_location.locate(full)):
            continue
        number = int(m.group(1))
        if number in found:
            raise ValueError(f"{path}: {os.path.basename(found[number].path)} and {name} are "
                             f"both step {number}")
        found[number] = inspect_step(full, items)
    if not found:
        raise ValueError(f"{path} holds no finished Orbax checkpoints (step directories "
                         f"<N> or <prefix>_<N> with {_STEP_META})")
    return [found[n] for n in sorted(found)]


def _check_manager_dir(dest: Any, checkpoint_name: str, first: int) -> None:
    """Refuses a ``dest`` that is neither empty/absent nor a jaxckpt manager directory
    whose numbers are all below ``first``."""
    root = _location.locate(dest)
    _location.refuse_file(root)
    if not root.exists() or not root.listdir():
        return
    listing = _listing.list_checkpoints(str(root), checkpoint_name=checkpoint_name)
    if not len(listing) and "checkpoint" not in root.listdir():
        raise ValueError(f"{root} is not empty and is not a jaxckpt checkpoint directory; "
                         "import into a new or empty directory")
    numbers = [e.number for e in listing if e.number is not None]
    if numbers and max(numbers) >= first:
        raise ValueError(f"{root} already holds {checkpoint_name}-{max(numbers)}, and the "
                         f"Orbax steps start at {first}: numbering must continue upward; "
                         "import into a new directory")


def import_orbax_run(src: str | os.PathLike, dest: str | os.PathLike, *,
                     checkpoint_name: str = "ckpt", items: Sequence[str] | None = None,
                     max_host_bytes: int | None = DEFAULT_HOST_BYTES) -> list[str]:
    """Converts every finished step of an Orbax ``CheckpointManager`` directory into
    a jaxckpt manager directory: step ``N`` becomes ``<checkpoint_name>-<N>``.

    Each step is written by a ``jaxckpt.CheckpointManager`` (keeping them all),
    oldest first, stamped with Orbax's commit time, with Orbax's numeric
    metrics as its ``metrics``; the state file lists them in step order. A
    ``CheckpointManager(dest)`` opened afterwards saves ``last step + 1`` next
    and applies its ``max_to_keep`` from then on. Unfinished Orbax saves
    (temporary directories) are skipped with a warning.

    Args:
        src: the Orbax run directory (local).
        dest: a new or empty directory, or a jaxckpt manager directory whose
            checkpoints are all numbered below the first Orbax step.
        checkpoint_name: the jaxckpt checkpoint name prefix.
        items, max_host_bytes: as ``import_orbax``.

    Returns:
        The imported checkpoints' paths, oldest first.

    Blocks until every checkpoint is committed; one step's tree is on the host at a time.

    Raises:
        ImportError: orbax-checkpoint is not installed.
        FileNotFoundError, ValueError: ``src`` is not an Orbax run directory, one of its
            steps cannot be imported, or ``dest`` is refused (see above). Checked
            before anything is written.
        CheckpointWriteError: a write failed; the steps committed before it stay.
    """
    _ocp()
    steps = run_steps(src, items)
    _check_manager_dir(dest, checkpoint_name, steps[0].number or 0)
    now = [steps[0].timestamp]
    paths = []
    with CheckpointManager(dest, max_to_keep=None, checkpoint_name=checkpoint_name,
                           clock=lambda: now[0], max_host_bytes=max_host_bytes) as mngr:
        for step in steps:
            tree = read_tree(step)
            now[0] = max(now[0], step.timestamp)  # never backwards: the state file's order
            paths.append(mngr.save(tree, checkpoint_number=step.number,
                                   metadata=step.provenance(), metrics=step.metrics))
            del tree
    return [p for p in paths if p is not None]


def describe_source(src: str | os.PathLike) -> str:
    """``"step"`` or ``"run"``: what the Orbax directory ``src`` is (for the CLI)."""
    where = _location.locate(os.path.abspath(os.fspath(src)))
    if _recognise.is_step(where):
        return "step"
    return "run" if _recognise.steps(where) else "step"  # "step": its errors explain

