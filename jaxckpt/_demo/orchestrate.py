"""``jaxckpt demo``: train, get killed with SIGKILL, resume, and show that nothing was lost.

The parent process (``main``) runs the training twice as a subprocess
(``python -m jaxckpt._demo.child train ...``, in ``child``):

1. a Flax NNX MLP learns a synthetic regression with optax's Adam in a jitted
   step; every ``--every`` steps ``CheckpointManager.save`` snapshots the model
   and optimizer state and returns while the write goes on in the background;
2. right after a save at or past ``--kill-at`` the parent kills the process
   with SIGKILL (usually while that save is still being written);
3. a second process calls ``restore_or_initialize``, which restores the newest
   committed checkpoint, and trains to ``--steps``.

Batch ``i`` is a pure function of ``i``, so the steps between the restored
checkpoint and the kill are replayed with bit-identical losses when the state
was restored exactly. The children report JSON lines on stdout; the parent
draws the loss curve and a summary (``_demo_report``). JAX, Flax and optax
are imported only in the children.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import report as _demo_report

MARKER = ".jaxckpt-demo"


class DemoError(Exception):
    """The demo cannot run (missing optax, a directory it must not clear)."""


@dataclasses.dataclass
class Run:
    """What one training process reported."""

    losses: dict[int, float] = dataclasses.field(default_factory=dict)
    saves: list[dict] = dataclasses.field(default_factory=list)
    finished: list[dict] = dataclasses.field(default_factory=list)
    logs: list[dict] = dataclasses.field(default_factory=list)
    start: dict | None = None
    done: dict | None = None
    returncode: int | None = None
    seconds: float = 0.0
    stderr: str = ""


@dataclasses.dataclass
class DemoResult:
    """The two runs and what the demo checked."""

    directory: str
    steps: int
    first: Run
    second: Run
    latest_at_kill: str | None
    listing_at_kill: Any
    replay_max_diff: float | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def killed_after(self) -> int:
        return max(self.first.losses, default=0)

    @property
    def resumed_step(self) -> int:
        return self.second.start["step"] if self.second.start else 0


def check_requirements() -> None:
    """Raises ``DemoError`` with the fix if optax or Flax NNX is missing."""
    missing = []
    for name in ("optax", "flax.nnx"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DemoError(f"jaxckpt demo needs {' and '.join(missing)}, which "
                        f"{'is' if len(missing) == 1 else 'are'} not installed; install "
                        "the demo extra: pip install 'jaxckpt[demo]'")


def prepare_directory(directory: str) -> str:
    """Creates (or clears a previous demo's) ``directory``; refuses anything else."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise DemoError(f"--dir {directory} is a file")
        if os.listdir(directory) and not os.path.exists(os.path.join(directory, MARKER)):
            raise DemoError(f"--dir {directory} is not empty and was not made by the demo; "
                            "refusing to clear it (pass --dir with a new or empty directory)")
        shutil.rmtree(directory)
    os.makedirs(directory)
    with open(os.path.join(directory, MARKER), "w") as f:
        f.write("made by jaxckpt demo; the demo clears this directory when run again\n")
    return directory


def _child_env() -> dict:
    env = dict(os.environ)
    # The child must import this jaxckpt even when it is not installed.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _run_child(run: Run, directory: str, steps: int, every: int, keep: int,
               kill_at: int | None, on_event: Any) -> Run:
    """Runs one training process into ``run``; SIGKILLs it after a save at or past ``kill_at``."""
    cmd = [sys.executable, "-m", "jaxckpt._demo.child", "train", directory,
           str(steps), str(every), str(keep)]
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=_child_env())
        killed = False
        try:
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # not ours (a library printed something)
                kind = event.get("event")
                if kind == "step":
                    run.losses[event["step"]] = event["loss"]
                elif kind == "save":
                    run.saves.append(event)
                elif kind in ("committed", "failed"):
                    run.finished.append(event)
                elif kind == "log":
                    run.logs.append(event)
                elif kind == "start":
                    run.start = event
                elif kind == "done":
                    run.done = event
                on_event(event)
                if (not killed and kill_at is not None and kind == "save"
                        and event["step"] >= kill_at):
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    on_event({"event": "killed", "pid": proc.pid, "step": event["step"],
                              "path": event["path"]})
        finally:
            if proc.poll() is None and kill_at is None:
                proc.wait()
            elif proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        err.seek(0)
        run.stderr = err.read()
    run.returncode = proc.returncode
    run.seconds = time.perf_counter() - began
    return run


def run(directory: str, *, steps: int = 300, every: int = 10, kill_at: int | None = None,
        keep: int = 3, console: Any = None) -> DemoResult:
    """Runs the whole demo in ``directory`` (which must be prepared) and checks it."""
    from rich.console import Console

    from .. import _api
    from .._report import render as _display, listing as _listing

    console = console or Console(highlight=False)
    say = console.print
    kill_at = kill_at or max(every, int(steps * 0.6))
    if kill_at >= steps:
        raise DemoError(f"--kill-at ({kill_at}) must be before the last step ({steps})")
    first, second = Run(), Run()
    current = [first]

    def show(event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            if event["resumed_from"]:
                say(f"[bold]resumed[/] (pid {event['pid']}): restore_or_initialize() restored "
                    f"{os.path.basename(event['resumed_from'])}, continuing at step "
                    f"{event['step'] + 1}")
            else:
                say(f"[bold]training[/] (pid {event['pid']}): no checkpoint yet, "
                    "initialized a fresh model")
        elif kind == "save":
            loss = current[0].losses.get(event["step"], float("nan"))
            say(f"  step {event['step']:>5}  loss {loss:.5f}  saving "
                f"{os.path.basename(event['path'])}: save() blocked "
                f"{_display.seconds(event['blocked_s'])}")
        elif kind == "log" and event["level"] in ("WARNING", "ERROR", "CRITICAL"):
            say(f"  [yellow]jaxckpt {event['level']}:[/]", _display.rich_text(event["msg"]))
        elif kind == "killed":
            say(f"[bold red]SIGKILL[/] to training process {event['pid']} right after "
                f"step {event['step']}'s save() returned")

    say(f"[bold]jaxckpt demo[/] in {directory}")
    say(f"{steps} steps of a Flax NNX MLP with optax Adam; CheckpointManager(max_to_keep={keep}, "
        f"checkpoint_interval={every}). save() returns once the state is copied to host; "
        f"the write goes on in the background. SIGKILL after the save at step {kill_at}.")
    _run_child(first, directory, steps, every, keep, kill_at, show)
    latest_at_kill = _api.latest_checkpoint(directory)
    listing = _listing.list_checkpoints(directory)
    say(f"on disk after the kill (newest committed: "
        f"{os.path.basename(latest_at_kill) if latest_at_kill else 'none'}):")
    say(_display.rich_table(listing.headers, listing.rows(), right=listing.right))
    current[0] = second
    _run_child(second, directory, steps, every, keep, None, show)

    problems = []
    if first.returncode != -signal.SIGKILL:
        problems.append(f"the first training process ended with status {first.returncode}, "
                        f"not by SIGKILL:\n{first.stderr[-2000:]}")
    if second.returncode != 0 or second.done is None:
        problems.append(f"the resumed training process failed (status {second.returncode}):"
                        f"\n{second.stderr[-2000:]}")
    resumed = second.start["step"] if second.start else None
    expected = _demo_report.number(latest_at_kill) or 0
    if resumed != expected:
        problems.append(f"resumed at step {resumed}, but the newest committed checkpoint "
                        f"after the kill was step {expected}")
    if second.losses and min(second.losses) != (resumed or 0) + 1:
        problems.append(f"the resumed run started at step {min(second.losses)}, "
                        f"not {(resumed or 0) + 1}")
    if max(second.losses, default=0) != steps:
        problems.append(f"the resumed run stopped at step {max(second.losses, default=0)}")
    replayed = sorted(set(first.losses) & set(second.losses))
    diff = max((abs(first.losses[s] - second.losses[s]) for s in replayed), default=None)
    if diff is not None and diff > 1e-6 * max(abs(first.losses[s]) for s in replayed):
        problems.append(f"replayed steps {replayed[0]}..{replayed[-1]} differ in loss by "
                        f"up to {diff:.3g}: the state was not restored exactly")
    result = DemoResult(directory, steps, first, second, latest_at_kill, listing, diff, problems)
    _demo_report.summary(result, every, say)
    return result


def main(args: Any) -> int:
    """``jaxckpt demo``: prepare the directory, run, print the summary; the exit status."""
    try:
        check_requirements()
        directory = prepare_directory(args.dir)
        result = run(directory, steps=args.steps, every=args.every, kill_at=args.kill_at,
                     keep=args.keep)
    except DemoError as e:
        print(f"jaxckpt demo: error: {e}", file=sys.stderr)
        return 2
    return 0 if result.ok else 1

