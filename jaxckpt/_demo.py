"""``jaxckpt demo``: train, get killed with SIGKILL, resume, and show that nothing was lost.

The parent process (``main``) runs the training twice as a subprocess
(``python -m jaxckpt._demo train ...``):

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
draws the loss curve and a summary. JAX, Flax and optax are imported only in
the children.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

MARKER = ".jaxckpt-demo"
HIDDEN = 512
FEATURES = 16
BATCH = 256


class DemoError(Exception):
    """The demo cannot run (missing optax, a directory it must not clear)."""


# ---------------------------------------------------------------- the training child


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class _EmitLogs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _emit("log", level=record.levelname, msg=record.getMessage())


def train(directory: str, steps: int, every: int, keep: int) -> None:
    """The training process: restore or initialize, then train and checkpoint to ``steps``."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import jaxckpt

    logging.getLogger("jaxckpt").addHandler(_EmitLogs(logging.WARNING))

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.l1 = nnx.Linear(FEATURES, HIDDEN, rngs=rngs)
            self.l2 = nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
            self.l3 = nnx.Linear(HIDDEN, 1, rngs=rngs)

        def __call__(self, x):
            return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    data_key = jax.random.key(1234)
    teacher = jax.random.normal(jax.random.key(7), (FEATURES,)) / math.sqrt(FEATURES)

    @jax.jit
    def batch(step):
        x = jax.random.normal(jax.random.fold_in(data_key, step), (BATCH, FEATURES))
        return x, jnp.sin(3.0 * x @ teacher)[:, None]

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    def state(step: int) -> dict:
        return {"model": nnx.state(model), "opt": nnx.state(optimizer), "step": step}

    # last_checkpoint_step=0: the first save is at step `every`, not step 1.
    mngr = jaxckpt.CheckpointManager(directory, max_to_keep=keep, last_checkpoint_step=0,
                                     step_counter=lambda s: s["step"], checkpoint_interval=every)
    restored = mngr.restore_or_initialize(target=state(0))
    start = 0
    if restored is not None:
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["opt"])
        start = restored["step"]
    _emit("start", pid=os.getpid(), step=start, resumed_from=mngr.latest_checkpoint)

    reported: set[str] = set()

    def report_finished() -> None:
        for s in mngr.stats.recent:
            key = f"{s.path}@{s.started}"
            if s.done and key not in reported:
                reported.add(key)
                _emit("committed" if s.committed else "failed", path=s.path, nbytes=s.nbytes,
                      blocked_s=s.blocked_s, write_s=s.write_s, deleted=s.deleted,
                      error=s.error)

    for step in range(start + 1, steps + 1):
        loss = float(train_step(model, optimizer, *batch(step)))
        _emit("step", step=step, loss=loss)
        final = step == steps
        path = mngr.save(state(step), checkpoint_number=step, check_interval=not final)
        if path is not None:
            _emit("save", step=step, path=path, blocked_s=mngr.stats.recent[-1].blocked_s)
        report_finished()
    mngr.close()
    report_finished()
    _emit("done", kept=mngr.checkpoints, latest=mngr.latest_checkpoint)


# ---------------------------------------------------------------- the parent


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
    cmd = [sys.executable, "-m", "jaxckpt._demo", "train", directory,
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


def _number(path: str | None) -> int | None:
    if not path:
        return None
    tail = os.path.basename(path.rstrip("/")).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def run(directory: str, *, steps: int = 300, every: int = 10, kill_at: int | None = None,
        keep: int = 3, console: Any = None) -> DemoResult:
    """Runs the whole demo in ``directory`` (which must be prepared) and checks it."""
    from rich.console import Console

    from . import _api, _display, _inspect

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
    listing = _inspect.list_checkpoints(directory)
    say(f"on disk after the kill (newest committed: "
        f"{os.path.basename(latest_at_kill) if latest_at_kill else 'none'}):")
    say(_display.rich_table(listing.headers, listing.rows(), right=(1, 3)))
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
    expected = _number(latest_at_kill) or 0
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
    _summary(result, every, say)
    return result


def _summary(r: DemoResult, every: int, say: Any) -> None:
    from rich import box
    from rich.table import Table

    from . import _display, _inspect

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
               if e.status in (_inspect.LATEST, _inspect.ACTIVE, _inspect.PRESERVED)}
    reported = {e["path"] for e in r.first.finished if e["event"] == "committed"}
    lost = [e for e in r.first.saves if e["path"] not in on_disk | reported]
    blocked = [e["blocked_s"] for e in saves]
    nbytes = sum(e["nbytes"] for e in committed)
    write_s = sum(e["write_s"] for e in committed)
    deleted = sorted({os.path.basename(p) for e in committed for p in e["deleted"]},
                     key=lambda n: _number(n) or 0)
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


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "train":
        train(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: python -m jaxckpt._demo train DIR STEPS EVERY KEEP (run 'jaxckpt demo')")
