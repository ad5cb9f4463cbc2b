"""Every name a save, a replace or a deletion leaves beside a checkpoint, in one place.

Beside checkpoint ``<name>`` (``ckpt-3``) in its directory, on local filesystems:

    .<name>.tmp-<token>    a save being written, or interrupted (``<token>``: new_token)
    .<name>.old-<token>    a replace without RENAME_EXCHANGE: the old checkpoint set
                           aside while ``.<name>.tmp-<token>`` moves into its place
    .<name>.trash-<hex>    a checkpoint being deleted (out of sight, then removed)
    .<name>.deleting       a deletion intent (``_deletions``; a file, or a key)

Tokens and ids are lowercase hex. ``parse`` also reads what earlier versions
left and never swept: ``..<name>.tmp-<t>.trash-<hex>``, the trash of a replaced
checkpoint, so that the sweep removes it like any other leftover.
"""

from __future__ import annotations

import dataclasses
import re
import uuid

TMP, OLD, TRASH, DELETING = "tmp", "old", "trash", "deleting"

_LEFTOVER = re.compile(r"^\.(?P<base>.+)\.(?:(?P<kind>tmp|old|trash)-(?P<token>[0-9a-f]+)|deleting)$")


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A parsed leftover name: the checkpoint it belongs to, what it is, its token."""

    base: str  # the checkpoint's own name, e.g. "ckpt-3"
    kind: str  # TMP, OLD, TRASH or DELETING
    token: str | None  # None for DELETING


def tmp(name: str, token: str) -> str:
    return f".{name}.{TMP}-{token}"


def old(name: str, token: str) -> str:
    return f".{name}.{OLD}-{token}"


def trash(name: str) -> str:
    return f".{name}.{TRASH}-{uuid.uuid4().hex[:12]}"


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


def number_of(base: str, checkpoint_name: str) -> int | None:
    """N if ``base`` is ``<checkpoint_name>-<N>``, else None."""
    prefix = f"{checkpoint_name}-"
    rest = base[len(prefix):] if base.startswith(prefix) else ""
    return int(rest) if rest.isdigit() and rest.isascii() else None
