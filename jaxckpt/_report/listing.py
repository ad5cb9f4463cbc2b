"""What is in a checkpoint directory, without reading array data.

``list_checkpoints`` gives one entry per checkpoint directory (committed ones,
ones the state file names, and leftovers of interrupted saves or deletions)
with its status, size and times. The command line, the reprs and the
notebook share it.

Statuses:
    latest       the newest committed checkpoint the state file names
    active       committed, in the state file's active set
    preserved    committed and on disk, not in the active set (kept by
                 ``keep_checkpoint_every_n_hours``, saved outside a manager, or
                 from another manager)
    uncommitted  a leftover of an interrupted save or deletion (or one in
                 progress in another process); readers ignore it
    pending      (a manager's own view) a save queued or being written
    missing      named in the state file but not on disk
"""

from __future__ import annotations

import dataclasses
import errno
import html
from typing import Any, Iterable, Iterator, Sequence

from . import render as _display
from .._commit import atomic as _commit
from .._commit import state_file as _state_file
from .._format import manifest as _format, names as _names
from .._commit import references as _references
from .._read import latest as _latest, reader as _reader
from .._save import units as _units
from .._storage import location as _location
from .._storage.location import Dir

LATEST, ACTIVE, PRESERVED = "latest", "active", "preserved"
UNCOMMITTED, PENDING, MISSING = "uncommitted", "pending", "missing"

_NUMBERED = _names.NUMBERED
_LEFTOVER_NOTES = {
    _names.TMP: "save in progress or interrupted",
    _names.TRASH: "deletion in progress or interrupted",
    _names.OLD: "replaced copy set aside; replace in progress or interrupted",
    _names.DELETING: "not a deletion marker (markers are files)",
}

# Rows shown by reprs; the command line shows every row.
REPR_ROWS = 200


def disk_bytes(path: str | Dir) -> int | None:
    """Bytes of every file under ``path`` (sizes, not blocks); links not followed.

    On object stores, which list keys without sizes, the stored array bytes
    of a committed checkpoint from its manifest (None if it has none).
    """
    return disk_usage(path)[0]


def disk_usage(path: str | Dir, inodes: dict | None = None) -> tuple[int | None, int]:
    """(bytes, shared bytes) of the files under ``path``: shared files are
    those with another hard link (an incremental save's, see ``_save.units``).
    ``inodes`` collects (device, inode) -> size, to count a directory's total
    with each shared file once. Object stores: see ``disk_bytes``; shared are
    the files its manifest references under an earlier checkpoint (format 4's
    ``shared``, sized from the manifest), and ``inodes`` collects object keys.
    """
    where = _location.locate(path)
    usage = where.file_usage(inodes)
    if usage[0] is not None:
        return usage
    try:
        manifest = _reader.read_manifest(where)
    except Exception:
        return None, 0
    nbytes = sum(_reader.nbytes_of(leaf) for leaf in manifest["leaves"])
    references = manifest.get("shared") or {}
    if not references and inodes is None:
        return nbytes, 0
    sizes = {rel: n for _, rel, n in _units.of_manifest(manifest)}
    shared = sum(sizes.get(rel, 0) for rel in references)
    if inodes is not None:
        own = f"{where.name}/{manifest.get('data')}/"
        for rel, n in sizes.items():
            inodes[references.get(rel) or own + rel] = n
        inodes[own] = max(0, nbytes - sum(sizes.values()))  # bytes in no unit (inline, v2)
    return nbytes, shared


def _manifest_times(path: str) -> tuple[float | None, float | None, dict | None]:
    """(created, committed, metrics): the save's timestamp, the commit record's
    mtime (on object stores, which give no mtime here, the save's timestamp)
    and the metrics saved with it."""
    where = _location.locate(path)
    try:
        manifest = _reader.read_manifest(where)
        created, metrics = manifest.get("created"), manifest.get("metrics")
        committed = where.mtime(_format.MANIFEST)
    except Exception:  # damaged manifests are verify's business, not the listing's
        return None, None, None
    return created, created if committed is None else committed, metrics


@dataclasses.dataclass(frozen=True)
class CheckpointEntry:
    """One row of a directory listing.

    ``committed`` is when the commit record was written (its file's mtime);
    ``created`` is the checkpoint's timestamp (the manager's clock when
    ``save`` was called), as in the state file. ``shared_bytes``: the part of
    ``nbytes`` in files hard-linked with another checkpoint (incremental
    saves); ``nbytes - shared_bytes`` is what deleting it frees.
    """

    name: str
    path: str
    number: int | None
    status: str
    nbytes: int | None
    committed: float | None = None
    created: float | None = None
    note: str = ""
    shared_bytes: int | None = None
    metrics: dict | None = None  # given to the manager's save(..., metrics=)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_HEADERS = ("name", "number", "committed", "size", "status")
_SHARED_HEADERS = ("name", "number", "committed", "size", "shared", "status")


class CheckpointList(Sequence[CheckpointEntry]):
    """The checkpoints in one directory, oldest number first; a table in Jupyter.

    ``disk_bytes``: every listed entry's files on disk, each file shared by
    several checkpoints counted once (None on object stores). When any
    checkpoint shares files the table has a ``shared`` column.
    """

    def __init__(self, directory: str, entries: list[CheckpointEntry],
                 disk_bytes: int | None = None):
        self.directory = directory
        self.entries = entries
        self.disk_bytes = disk_bytes

    @property
    def shares(self) -> bool:
        """Whether any checkpoint here shares files with another."""
        return any(e.shared_bytes for e in self.entries)

    def __getitem__(self, i: Any) -> Any:
        return self.entries[i]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[CheckpointEntry]:
        return iter(self.entries)

    def rows(self) -> list[list[str]]:
        """Display rows: name, number, committed (local time), size, status."""
        out = []
        shares = self.shares
        for e in self.entries:
            status = f"{e.status} ({e.note})" if e.note else e.status
            row = [e.name, "-" if e.number is None else str(e.number),
                   _display.local_time(e.committed), _display.human_bytes(e.nbytes)]
            if shares:
                row.append(_display.human_bytes(e.shared_bytes) if e.shared_bytes else "-")
            row.append(status)
            if self.has_metrics:
                row.append(_metrics_text(e.metrics))
            out.append(row)
        return out

    @property
    def has_metrics(self) -> bool:
        """Whether any checkpoint here was saved with metrics (then a last column)."""
        return any(e.metrics for e in self.entries)

    @property
    def headers(self) -> tuple[str, ...]:
        return (_SHARED_HEADERS if self.shares else _HEADERS) + (
            ("metrics",) if self.has_metrics else ())

    def footer(self) -> str | None:
        """The directory's total on disk, when checkpoints share files."""
        if not self.shares or self.disk_bytes is None:
            return None
        return (f"on disk: {_display.human_bytes(self.disk_bytes)} in all "
                "(a file shared by several checkpoints counted once)")

    def __repr__(self) -> str:
        if not self.entries:
            return f"no checkpoints in {self.directory}"
        rows = self.rows()
        more = len(rows) - REPR_ROWS
        text = f"{self.directory}\n" + _display.text_table(self.headers, rows[:REPR_ROWS],
                                                            right=self.right)
        footer = self.footer()
        return (text + (f"\n... {more} more" if more > 0 else "")
                + (f"\n{footer}" if footer else ""))

    @property
    def right(self) -> tuple[int, ...]:
        return (1, 3, 4) if self.shares else (1, 3)

    def _repr_html_(self) -> str:
        if not self.entries:
            return f"<p>no checkpoints in <code>{html.escape(self.directory)}</code></p>"
        rows = self.rows()
        footer = self.footer()
        return _display.html_table(self.headers, rows[:REPR_ROWS], right=self.right,
                                   caption=self.directory) + (
            f"<p>{html.escape(footer)}</p>" if footer else "")


def _metrics_text(metrics: dict | None) -> str:
    """``eval_loss=0.31 acc=0.9``: each metric to 4 significant digits, sorted by name."""
    if not metrics:
        return "-"
    return " ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}=?"
                    for k, v in sorted(metrics.items()))


def _basename(path: str) -> str:
    return _names.basename(path)


def list_checkpoints(
    directory: str,
    *,
    checkpoint_name: str | None = None,
    pending: Iterable[str] = (),
) -> CheckpointList:
    """Every checkpoint directory under ``directory`` with its status.

    Args:
        directory: a checkpoint directory: a local path or a URL.
        checkpoint_name: only checkpoints named ``<checkpoint_name>-<N>`` (and
            their leftovers); None lists every checkpoint.
        pending: paths of saves in flight in this process (a manager's
            ``pending``), shown as ``pending`` instead of ``uncommitted``.

    Reads only directory entries, the state file and manifests. Never blocks
    on a writer; a save committing meanwhile may show in either state.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        NotADirectoryError: ``directory`` is a file.
        CorruptCheckpointError: the state file cannot be parsed.
        ValueError: ``directory`` is a URL this version cannot read.
    """
    root = _location.locate(directory)
    directory = str(root)
    if not root.exists():
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint directory", directory)
    _location.refuse_file(root)
    state = _state_file.read(root)
    named = []
    if state is not None:
        named = [_state_file.resolve(root, p) for p in state.all_model_checkpoint_paths]
        if state.model_checkpoint_path:
            head = _state_file.resolve(root, state.model_checkpoint_path)
            if head not in named:
                named.append(head)
    active = set(named)
    latest = _latest.latest_here(root)
    pending_paths = {str(_location.locate(p)) for p in pending}
    pending_numbers = {}
    for p in pending_paths:
        m = _NUMBERED.match(_basename(p))
        if m:
            pending_numbers[(m["name"], int(m["number"]))] = p

    def wanted(name: str | None) -> bool:
        return checkpoint_name is None or name == checkpoint_name

    entries: list[CheckpointEntry] = []
    inodes: dict = {}
    scanned: list = []

    def references() -> _references.Scan:  # object stores: read once, when needed
        if not scanned:
            scanned.append(_references.scan(root))
        return scanned[0]

    def usage(path: str) -> dict:
        nbytes, shared = disk_usage(path, inodes)
        return {"nbytes": nbytes, "shared_bytes": shared}

    seen: set[str] = set()
    shown_pending: set[str] = set()
    for name in root.subdirs():
        path = str(root.join(name))
        leftover = _names.parse(name)
        numbered = _NUMBERED.match(name)
        if leftover is not None:
            # A leftover is uncommitted even when it holds a whole committed
            # copy (a replaced or deleted checkpoint): readers never see it.
            base = _NUMBERED.match(leftover.base)
            if base is None or not wanted(base["name"]):
                continue
            number = int(base["number"])
            mine = pending_numbers.get((base["name"], number))
            if leftover.kind == _names.TMP and mine is not None:
                status, note = PENDING, "being written"
                shown_pending.add(mine)
            else:
                status, note = UNCOMMITTED, _LEFTOVER_NOTES[leftover.kind]
            entries.append(CheckpointEntry(name, path, number, status, note=note, **usage(path)))
            continue
        committed = _commit.is_committed(path)
        number = int(numbered["number"]) if numbered else None
        if checkpoint_name is not None and not (numbered and numbered["name"] == checkpoint_name):
            continue
        if not committed and not numbered and path not in active:
            continue  # some other directory: logs, a dataset, ...
        seen.add(path)
        if committed:
            created, when, metrics = _manifest_times(path)
            status = LATEST if path == latest else ACTIVE if path in active else PRESERVED
            found = usage(path)
            note = ""
            if found["shared_bytes"] and not root.is_local:
                note = "references " + ", ".join(sorted(references().uses.get(name, ())))
            entries.append(CheckpointEntry(name, path, number, status, committed=when,
                                           created=created, note=note, metrics=metrics,
                                           **found))
        else:
            note = "named in the state file" if path in active else "no commit record"
            users = [] if root.is_local else references().users_of(name)
            if users:  # deleted, its objects kept for the checkpoints referencing them
                note = "deleted; objects kept, referenced by " + ", ".join(users)
            entries.append(CheckpointEntry(name, path, number, UNCOMMITTED, note=note,
                                           **usage(path)))
    for path in named:
        if path in seen:
            continue
        base = _basename(path)
        m = _NUMBERED.match(base)
        if checkpoint_name is not None and not (m and m["name"] == checkpoint_name):
            continue
        number = int(m["number"]) if m else None
        shown = path if path.rstrip("/").rsplit("/", 1)[0] != directory else base
        if _commit.is_committed(path):  # outside the directory (absolute path in the file)
            created, when, metrics = _manifest_times(path)
            entries.append(CheckpointEntry(shown, path, number,
                                           LATEST if path == latest else ACTIVE,
                                           committed=when, created=created, metrics=metrics,
                                           **usage(path)))
        else:
            entries.append(CheckpointEntry(shown, path, number, MISSING, None,
                                           note="named in the state file"))
    for path in sorted(pending_paths - shown_pending):
        base = _basename(path)
        m = _NUMBERED.match(base)
        if m and wanted(m["name"]) and path not in seen:
            entries.append(CheckpointEntry(base, path, int(m["number"]), PENDING, None,
                                           note="queued"))
    entries.sort(key=lambda e: (e.number is None, e.number or 0, e.name.lstrip("."), e.name))
    return CheckpointList(directory, entries,
                          sum(inodes.values()) if inodes or root.listing_is_cheap else None)
