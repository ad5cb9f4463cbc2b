"""What ``jaxckpt.verify`` returns, and its damage report grouped by damaged file."""

from __future__ import annotations

import dataclasses
import html

from . import render as _render


@dataclasses.dataclass(frozen=True)
class VerifySummary:
    """The result of a ``jaxckpt.verify`` that found every byte intact.

    Attributes:
        path: the checkpoint verified.
        leaves: how many leaves it holds (Python values included).
        nbytes: the array bytes read and checked.
        seconds: how long the verify took.
    """

    path: str
    leaves: int
    nbytes: int
    seconds: float

    def __str__(self) -> str:
        return (f"OK {self.path}: {self.leaves} leaves, {_render.human_bytes(self.nbytes)} "
                f"checked in {_render.seconds(self.seconds)}")

    def __repr__(self) -> str:
        return (f"VerifySummary(path={self.path!r}, leaves={self.leaves}, "
                f"nbytes={self.nbytes} ({_render.human_bytes(self.nbytes)}), "
                f"seconds={self.seconds:.3g})")

    def _repr_html_(self) -> str:
        return (f"<div><b>OK</b> <code>{html.escape(self.path)}</code>: {self.leaves} leaves, "
                f"{_render.human_bytes(self.nbytes)} checked in "
                f"{_render.seconds(self.seconds)}</div>")


def group_by_file(problems: list[tuple[str, str, str]]) -> list[str]:
    """One line per damaged file from ``(file, key path, message)`` problems: the
    file, the first message's cause, and every leaf whose bytes it holds.
    Problems without a file (``""``) keep a line each."""
    order: list[str] = []
    by_file: dict[str, list[tuple[str, str]]] = {}
    lines = []
    for file, leaf, message in problems:
        if not file:
            lines.append(message)
            continue
        if file not in by_file:
            order.append(file)
            by_file[file] = []
        by_file[file].append((leaf, message))
    for file in order:
        found = by_file[file]
        first = found[0][1]
        if len(found) == 1:
            lines.append(first)
            continue
        # The messages differ only in the leaf named; say it once.
        cause = first.split(" is damaged or missing: ", 1)[-1]
        leaves = ", ".join(leaf for leaf, _ in found)
        lines.append(f"file {file} is damaged ({len(found)} leaves: {leaves}): {cause}")
    return lines
