"""Plain-text and HTML tables for reprs (Jupyter's ``_repr_html_``), no dependencies.

The command line draws the same rows with rich; this module keeps ``import
jaxckpt`` free of it.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .._save import stats as _stats

Row = Sequence[str]


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``'1.5 KiB'``; None -> ``'-'``."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def local_time(ts: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS``; None -> ``'-'``."""
    if ts is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):  # a fake clock's reading
        return f"{ts:.3f}"


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.1f} ms" if s < 1.0 else f"{s:.2f} s"


def text_table(headers: Row, rows: Sequence[Row], *, right: Sequence[int] = (),
               footer: Row | None = None) -> str:
    """Columns padded to their widest cell; ``right`` lists right-aligned columns."""
    body = [list(headers)] + [list(r) for r in rows] + ([list(footer)] if footer else [])
    widths = [max(len(r[i]) for r in body) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w)
               for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(body[0]), rule] + [line(r) for r in body[1 : len(rows) + 1]]
    if footer:
        lines += [rule, line(body[-1])]
    return "\n".join(lines)


def html_table(headers: Row, rows: Sequence[Row], *, right: Sequence[int] = (),
               footer: Row | None = None, caption: str | None = None) -> str:
    """An HTML ``<table>``; every cell is escaped."""

    def cells(tag: str, values: Row) -> str:
        return "".join(
            f'<{tag} style="text-align:{"right" if i in right else "left"}">'
            f"{html.escape(str(v))}</{tag}>" for i, v in enumerate(values))

    parts = ["<table>"]
    if caption:
        parts.append(f'<caption style="text-align:left">{html.escape(caption)}</caption>')
    parts.append(f"<thead><tr>{cells('th', headers)}</tr></thead><tbody>")
    parts += [f"<tr>{cells('td', r)}</tr>" for r in rows]
    parts.append("</tbody>")
    if footer:
        parts.append(f"<tfoot><tr>{cells('th', footer)}</tr></tfoot>")
    parts.append("</table>")
    return "".join(parts)


def html_fields(fields: Sequence[tuple[str, str]]) -> str:
    """A two-column key/value table for an object's header."""
    rows = "".join(
        f'<tr><th style="text-align:left">{html.escape(k)}</th>'
        f'<td style="text-align:left">{html.escape(v)}</td></tr>' for k, v in fields)
    return f"<table>{rows}</table>"


def text_fields(fields: Sequence[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in fields), default=0)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in fields)


def rich_text(value: str) -> Any:
    """A rich ``Text`` (never markup: key paths and file names may hold [brackets])."""
    from rich.text import Text

    return Text(value)


def rich_table(headers: Row, rows: Sequence[Row], *, right: Sequence[int] = (),
               footer: Row | None = None) -> Any:
    """The same rows as ``text_table`` as a rich ``Table`` (imports rich)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_footer=footer is not None, show_edge=False,
                  pad_edge=False)
    for i, name in enumerate(headers):
        # Only the last column (status, bytes) wraps on a narrow terminal.
        table.add_column(name, justify="right" if i in right else "left",
                         footer=rich_text(footer[i]) if footer else "",
                         no_wrap=i < len(headers) - 1)
    for row in rows:
        table.add_row(*(rich_text(c) for c in row))
    return table


def manager_fields(directory: str, max_to_keep: int | None, keep_hours: float | None,
                   interval: int | None, pending: int,
                   stats: _stats.SaveSummary) -> list[tuple[str, str]]:
    """The header lines of a CheckpointManager's text and HTML reprs."""
    fields = [("directory", directory), ("max_to_keep", str(max_to_keep))]
    if keep_hours is not None:
        fields.append(("keep_checkpoint_every_n_hours", str(keep_hours)))
    if interval is not None:
        fields.append(("checkpoint_interval", str(interval)))
    fields.append(("pending saves", str(pending)))
    if stats.saves:
        fields += [
            ("saves", f"{stats.saves} ({stats.committed} committed, {stats.failed} failed)"),
            ("save() blocked", f"mean {seconds(stats.blocked_mean_s)}, "
                               f"max {seconds(stats.blocked_max_s)}"),
            ("written", f"{human_bytes(stats.bytes_written)} in "
                        f"{seconds(stats.write_s)} of writer time"),
        ]
    return fields


def manager_text(fields: Sequence[tuple[str, str]], listing: str) -> str:
    """A CheckpointManager's ``str``: its header lines, then its checkpoint listing."""
    return f"CheckpointManager\n{text_fields(fields)}\n{listing}"


def manager_html(fields: Sequence[tuple[str, str]], listing_html: str) -> str:
    """A CheckpointManager's ``_repr_html_``: its header table, then its listing's."""
    return ("<div><strong>CheckpointManager</strong>" + html_fields(fields)
            + listing_html + "</div>")


def manager_repr(directory: str, max_to_keep: int | None, checkpoints: int,
                 latest: str | None, pending: int) -> str:
    """A CheckpointManager's one-line ``repr``."""
    return (f"CheckpointManager({directory!r}, max_to_keep={max_to_keep}, "
            f"{checkpoints} checkpoint(s), latest={latest!r}"
            + (f", {pending} pending" if pending else "") + ")")
