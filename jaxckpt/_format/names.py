"""Every on-disk name jaxckpt writes or looks for, built and parsed in one place.

Pure: no I/O (``new_token`` and ``trash`` read the clock and ``uuid4`` only).
This is the name grammar of ``FORMAT.md``; it will become ``_format/names.py``.

In a manager's directory (local, or an object-store prefix):

    checkpoint               the state file (``STATE_FILE``; TensorFlow's name)
    checkpoint.tmp-<hex>     a state file being replaced (local only)
    <name>-<N>               a checkpoint: ``checkpoint_name``, "-", N in ASCII
                             decimal digits (``numbered``; ``number_of`` and
                             ``split_numbered`` parse it)

Beside checkpoint ``<base>`` (``ckpt-3``), on local filesystems:

    .<base>.tmp-<token>      a save being written, or interrupted (``<token>``: new_token)
    .<base>.old-<token>      a replace without RENAME_EXCHANGE: the old checkpoint set
                             aside while ``.<base>.tmp-<token>`` moves into its place
    .<base>.trash-<hex>      a checkpoint being deleted (out of sight, then removed)
    .<base>.deleting         a deletion intent (``_commit/deletions``; a file, or a key)

Inside one checkpoint:

    _CHECKPOINT              the manifest (``MANIFEST``); its presence is the commit
    d-<token>/               this save's arrays (``data``; object stores: a
                             prefix swept once older than the lease)
      packed/                the packed array of small leaves (``PACKED``)
      a/<i>/                 one array per large leaf, ``<i>`` decimal (``ARRAYS``)

Tokens and ids are lowercase hex. ``parse`` also reads what earlier versions
left and never swept: ``..<base>.tmp-<t>.trash-<hex>``, the trash of a replaced
checkpoint, so that the sweep removes it like any other leftover.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid

MANIFEST = "_CHECKPOINT"
STATE_FILE = "checkpoint"
DATA_PREFIX = "d-"
PACKED = "packed"
ARRAYS = "a"

TMP, OLD, TRASH, DELETING = "tmp", "old", "trash", "deleting"

_LEFTOVER = re.compile(r"^\.(?P<base>.+)\.(?:(?P<kind>tmp|old|trash)-(?P<token>[0-9a-f]+)|deleting)$")
# ``<name>-<N>`` for any name; a match has groups "name" and "number".
NUMBERED = re.compile(r"^(?P<name>.+)-(?P<number>[0-9]+)\Z")
_STATE_TMP = re.compile(rf"^{re.escape(STATE_FILE)}\.{TMP}-[0-9a-f]+$")
# What a manifest may name as its data directory, and as a large leaf's array:
# each is joined onto the checkpoint path, so never a path of its own.
_DATA = re.compile(rf"{re.escape(DATA_PREFIX)}[0-9a-f]{{1,64}}")
_ARRAY = re.compile(r"[0-9]{1,12}")
_TIMED_TOKEN = re.compile(r"^[0-9a-f]{20}$")


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A parsed leftover name: the checkpoint it belongs to, what it is, its token."""

    base: str  # the checkpoint's own name, e.g. "ckpt-3"
    kind: str  # TMP, OLD, TRASH or DELETING
    token: str | None  # None for DELETING


# ------------------------------------------------------------ checkpoints


def numbered(checkpoint_name: str, number: int) -> str:
    """``<checkpoint_name>-<number>``: checkpoint ``number``'s directory name."""
    return f"{checkpoint_name}-{number}"


def number_of(base: str, checkpoint_name: str) -> int | None:
    """N if ``base`` is ``<checkpoint_name>-<N>``, else None."""
    prefix = f"{checkpoint_name}-"
    rest = base[len(prefix):] if base.startswith(prefix) else ""
    return int(rest) if rest.isdigit() and rest.isascii() else None


def split_numbered(entry: str) -> tuple[str, int] | None:
    """(name, N) if ``entry`` is ``<name>-<N>`` for any name, else None."""
    m = NUMBERED.match(entry)
    return (m["name"], int(m["number"])) if m else None


def basename(path: str) -> str:
    """The last component of a local path or URL (a trailing "/" ignored)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


# ------------------------------------------------------------ leftovers


def tmp(name: str, token: str) -> str:
    return f".{name}.{TMP}-{token}"


def old(name: str, token: str) -> str:
    return f".{name}.{OLD}-{token}"


def trash(name: str) -> str:
    return f".{name}.{TRASH}-{new_id()}"


def deleting(name: str) -> str:
    return f".{name}.{DELETING}"


def parse(entry: str) -> Leftover | None:
    """The leftover ``entry`` (a directory entry's name) is, or None if it is none."""
    m = _LEFTOVER.match(entry)
    if m is None:
        return None
    kind = m["kind"] or DELETING
    base = m["base"]
    if base.startswith("."):  # an earlier version's trash of a temporary
        inner = parse(base)
        if inner is None or inner.kind == DELETING or kind != TRASH:
            return None
        base = inner.base
    return Leftover(base, kind, m["token"])


def base_of(entry: str) -> str:
    """The checkpoint name behind ``entry``: itself, or what the leftover belongs to."""
    found = parse(entry)
    return entry if found is None else found.base


# ------------------------------------------------------------ tokens


def new_token() -> str:
    """A fresh staging token: lowercase hex, 8 digits of the Unix time in seconds
    (so that a sweep can tell its age) and 12 random ones."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{uuid.uuid4().hex[:12]}"


def new_id() -> str:
    """12 random lowercase hex digits: the id of a trash entry or a temporary."""
    return uuid.uuid4().hex[:12]


def token_time(token: str) -> int | None:
    """The Unix time (seconds) a ``new_token`` token was made; None for a token
    without one (made before tokens carried a time)."""
    return int(token[:8], 16) if _TIMED_TOKEN.match(token) else None


# ------------------------------------------------------------ inside a checkpoint


def data(token: str) -> str:
    """``d-<token>``: the data directory (object stores: prefix) of one save."""
    return f"{DATA_PREFIX}{token}"


def data_token(entry: str) -> str | None:
    """The token of a data directory's name ``d-<...>`` (not checked), else None."""
    return entry[len(DATA_PREFIX):] if entry.startswith(DATA_PREFIX) else None


def is_data(name: str) -> bool:
    """True for a name a manifest may give as its ``data``: ``d-`` and 1-64 hex digits."""
    return _DATA.fullmatch(name) is not None


def array(index: int) -> str:
    """The name under ``a/`` of the ``index``-th large leaf's array."""
    return str(index)


def is_array(name: str) -> bool:
    """True for a name a manifest may give a large leaf's array: 1-12 decimal digits."""
    return _ARRAY.fullmatch(name) is not None


# ------------------------------------------------------------ the state file


def state_file_tmp() -> str:
    """``checkpoint.tmp-<hex>``: a fresh temporary for a state-file replacement."""
    return f"{STATE_FILE}.{TMP}-{new_id()}"


def is_state_file_tmp(entry: str) -> bool:
    return _STATE_TMP.match(entry) is not None
