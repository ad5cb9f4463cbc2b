"""Progress bars for restore and verify (``progress=True``), drawn by rich on stderr
(in Jupyter: in the cell's output).

rich is imported only when a bar is asked for, so ``import jaxckpt`` stays
cheap. Off, ``bar`` is a no-op that imports nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Callable, Iterator

from .._read import reader as _reader


def _console(jupyter: bool | None = None):
    """The bar's console: stderr on a terminal or in a log; in Jupyter the cell's
    ordinary output (stderr there is a red box that reads as an error), as a
    live widget where ipywidgets is installed, else plain text lines.
    ``jupyter``: None detects it (rich looks for an IPython kernel)."""
    from rich.console import Console

    console = Console(stderr=True)
    if jupyter is None:
        jupyter = console.is_jupyter
    if not jupyter:
        return console
    if importlib.util.find_spec("ipywidgets") is not None:
        return Console(force_jupyter=True)
    # rich's live display in Jupyter needs ipywidgets (and warns without it).
    return Console(file=sys.stdout, force_jupyter=False, force_terminal=False)


@contextlib.contextmanager
def bar(total_bytes: int, description: str, enabled: bool) -> Iterator[Callable[[dict], None]]:
    """Yields ``advance(leaf_record)``, which moves the bar by that leaf's bytes."""
    if not enabled:
        yield lambda leaf: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    console = _console()
    # On a terminal the bar goes away when done; logs and notebooks keep its final line.
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                  transient=console.is_terminal) as progress:
        task = progress.add_task(description, total=max(total_bytes, 1))

        def advance(leaf: dict) -> None:
            progress.advance(task, _reader.nbytes_of(leaf))

        yield advance
        progress.update(task, completed=max(total_bytes, 1))


def label(verb: str, path: object) -> str:
    """``'restore ckpt-5'``: the bar's description (a full path would crowd the bar out)."""
    return f"{verb} {os.path.basename(os.fspath(path).rstrip('/')) or path}"


def total_bytes(leaves: list[dict]) -> int:
    return sum(_reader.nbytes_of(leaf) for leaf in leaves)
