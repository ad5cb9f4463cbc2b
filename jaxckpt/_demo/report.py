"""``jaxckpt demo``'s report: the loss curve and the summary table of the two runs."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .orchestrate import DemoResult


def _sparkline(values: list[float | None], lo: float, hi: float) -> str:
    bars = "▁▂▃▄▅▆▇█"
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        else:
            frac = 0.0 if hi <= lo else (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
            out.append(bars[min(len(bars) - 1, max(0, int(frac * len(bars))))])
    return "".join(out)


def loss_curve(first: dict[int, float], second: dict[int, float], steps: int,
               width: int = 60) -> list[str]:
    """Two sparklines on one step axis (log scale): the killed run and the resumed one."""
    per = max(1, math.ceil(steps / width))
    cols = math.ceil(steps / per)
    values = [v for v in list(first.values()) + list(second.values()) if v > 0]
    if not values:
        return []
    lo, hi = min(values), max(values)

    def binned(losses: dict[int, float]) -> list[float | None]:
        out = []
        for c in range(cols):
            got = [losses[s] for s in range(c * per + 1, (c + 1) * per + 1) if s in losses]
            out.append(math.exp(sum(math.log(max(v, lo)) for v in got) / len(got)) if got else None)
        return out

    axis = f"step 1{' ' * (cols - len(str(steps)) - 1)}{steps}"
    return [f"run 1 |{_sparkline(binned(first), lo, hi)}|",
            f"run 2 |{_sparkline(binned(second), lo, hi)}|",
            f"       {axis}",
            f"       (loss {hi:.3g} .. {lo:.3g}, log scale, {per} step(s) per column)"]


def number(path: str | None) -> int | None:
    if not path:
        return None
    tail = os.path.basename(path.rstrip("/")).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def summary(r: DemoResult, every: int, say: Any) -> None:
    from rich import box
    from rich.table import Table

    from .._report import render as _display, listing as _listing

    say("")
    say("[bold]loss curve[/] (run 1 was killed; run 2 resumed from the checkpoint):")
    for line in loss_curve(r.first.losses, r.second.losses, r.steps):
        say(_display.rich_text("  " + line))
    runs = (r.first, r.second)
    saves = [e for run in runs for e in run.saves]
    committed = [e for run in runs for e in run.finished if e["event"] == "committed"]
    failed = [e for run in runs for e in run.finished if e["event"] == "failed"]
    # A save of run 1 committed if it reported so, or is on disk committed after
    # the kill (the process may die between the commit and its report).
    on_disk = {e.path for e in r.listing_at_kill
               if e.status in (_listing.LATEST, _listing.ACTIVE, _listing.PRESERVED)}
    reported = {e["path"] for e in r.first.finished if e["event"] == "committed"}
    lost = [e for e in r.first.saves if e["path"] not in on_disk | reported]
    blocked = [e["blocked_s"] for e in saves]
    nbytes = sum(e["nbytes"] for e in committed)
    write_s = sum(e["write_s"] for e in committed)
    deleted = sorted({os.path.basename(p) for e in committed for p in e["deleted"]},
                     key=lambda n: number(n) or 0)
    kept = [os.path.basename(p) for p in (r.second.done or {}).get("kept", [])]
    replayed = sorted(set(r.first.losses) & set(r.second.losses))

    table = Table(box=box.SIMPLE, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("saves", f"{len(saves)} save() calls, {len(saves) - len(lost) - len(failed)} "
                  f"committed, {len(lost)} cut off by the SIGKILL (never committed; swept on "
                  "resume)" + (f", {len(failed)} failed" if failed else ""))
    if blocked:
        table.add_row("save() blocked", f"mean {_display.seconds(sum(blocked) / len(blocked))}, "
                      f"max {_display.seconds(max(blocked))} (snapshot to host; the write is "
                      "asynchronous)")
    table.add_row("bytes written", f"{_display.human_bytes(nbytes)} "
                  f"({_display.human_bytes(committed[0]['nbytes']) if committed else '-'} "
                  "per checkpoint)")
    if write_s > 0:
        table.add_row("write throughput", f"{_display.human_bytes(int(nbytes / write_s))}/s "
                      f"(background writer busy {_display.seconds(write_s)} in total)")
    table.add_row("kept", ", ".join(kept) or "-")
    table.add_row("deleted", f"{len(deleted)} by max_to_keep"
                  + (f" ({deleted[0]} .. {deleted[-1]})" if deleted else ""))
    table.add_row("killed", f"after step {r.killed_after}; newest committed checkpoint then: "
                  f"{os.path.basename(r.latest_at_kill) if r.latest_at_kill else 'none'}")
    if replayed:
        same = "identical" if r.replay_max_diff == 0 else f"max |diff| {r.replay_max_diff:.3g}"
        table.add_row("resumed", f"at step {r.resumed_step + 1}; steps "
                      f"{replayed[0]}..{replayed[-1]} were replayed with {same} losses")
    else:
        table.add_row("resumed", f"at step {r.resumed_step + 1} (no step was lost)")
    table.add_row("time", f"run 1 {r.first.seconds:.1f} s, run 2 {r.second.seconds:.1f} s "
                  "(each includes starting Python, JAX and the jit compile)")
    say(table)
    if r.ok:
        say("[bold green]OK[/]: training continued where the killed process left off; "
            f"inspect with 'jaxckpt ls {r.directory}' or 'jaxckpt show {r.directory}'")
    else:
        for p in r.problems:
            say("[bold red]PROBLEM[/]:", _display.rich_text(p))
