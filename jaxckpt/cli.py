"""The ``jaxckpt`` command line (also ``python -m jaxckpt``): ``main(argv=None) -> int``.

    jaxckpt ls DIR                 one row per checkpoint: name, number, committed, size, status
    jaxckpt show PATH [--json]     the tree: key path, shape, dtype, bytes per leaf, totals
    jaxckpt verify PATH_OR_DIR     re-read every byte against its checksum
    jaxckpt export CKPT OUT        write Hugging Face safetensors shards and their index
    jaxckpt import-orbax SRC DEST  convert an Orbax checkpoint (or a whole Orbax run)
    jaxckpt demo                   train, get SIGKILLed, resume (see ``jaxckpt demo --help``)

Exit status: 0 all good, 1 something is damaged (each damaged leaf or
checkpoint is named), 2 usage errors (a one-line reason on stderr). Tables and
progress bars are drawn by rich, imported only here and when a bar is shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_DAMAGED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with what was asked, reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (argparse prints the whole usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxckpt",
                description="List, inspect, verify and export jaxckpt checkpoints; run the demo.",
                epilog="Exit status: 0 ok, 1 damaged checkpoint(s), 2 usage error.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("ls", help="list the checkpoints in a directory with their status",
                        description="One row per checkpoint in DIR: name, number, committed "
                        "time (local), size on disk, status (latest, active, preserved, "
                        "uncommitted, missing).")
    ls.add_argument("directory", metavar="DIR")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

    show = sub.add_parser("show", help="show a checkpoint's tree without reading array data",
                          description="The tree of the checkpoint at PATH (or of the latest "
                          "checkpoint in the directory PATH): key path, shape, dtype and bytes "
                          "per leaf, and the totals. Reads only the manifest.")
    show.add_argument("path", metavar="PATH")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    verify = sub.add_parser("verify", help="re-read every byte against its checksum",
                            description="Verify the checkpoint PATH, or every committed "
                            "checkpoint in the directory PATH (and that the state file names "
                            "only existing, committed ones). Exit 1 naming each damaged "
                            "leaf or checkpoint.")
    verify.add_argument("path", metavar="PATH_OR_DIR")
    verify.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")

    export = sub.add_parser("export", help="write a checkpoint as Hugging Face safetensors",
                            description="Write the checkpoint CKPT (or the latest in the "
                            "directory CKPT) into the new directory OUT as sharded "
                            "model-0000i-of-0000N.safetensors files plus "
                            "model.safetensors.index.json; tensor names are the key paths "
                            "joined with '.', e.g. params.layer_0.kernel. Streams leaf by "
                            "leaf; OUT appears whole or not at all.")
    export.add_argument("ckpt", metavar="CKPT")
    export.add_argument("out", metavar="OUT")
    export.add_argument("--format", choices=["safetensors"], default="safetensors",
                        help="output format (only safetensors so far)")
    export.add_argument("--prefix", default=None,
                        help="export only this dotted subtree and strip it from the names "
                        "(e.g. --prefix params)")
    export.add_argument("--select", default=None,
                        help="export only this dotted subtree, keeping the full names")
    export.add_argument("--max-shard-bytes", type=_positive, default=5 * 10**9,
                        help="bytes of tensors per file (default 5e9, as transformers)")
    export.add_argument("--skip-unsupported", action="store_true",
                        help="leave out leaves safetensors has no dtype for (PRNG keys, "
                        "int4, complex, other float8s) instead of refusing")

    imp = sub.add_parser("import-orbax", help="convert an Orbax checkpoint or run directory",
                         description="Convert the Orbax checkpoint SRC (a step directory of an "
                         "Orbax CheckpointManager, OCDBT or not, or a checkpointer's directory) "
                         "into the new jaxckpt checkpoint DEST, bit-exact; or, when SRC is an "
                         "Orbax CheckpointManager directory, every finished step N into "
                         "DEST/<name>-N of a jaxckpt manager directory, so that a "
                         "jaxckpt.CheckpointManager on DEST continues the numbering. Reads "
                         "with Orbax: pip install 'jaxckpt[orbax]'.")
    imp.add_argument("src", metavar="SRC")
    imp.add_argument("dest", metavar="DEST")
    imp.add_argument("--checkpoint-name", default="ckpt",
                     help="for a run directory: the checkpoint name prefix (default ckpt)")
    imp.add_argument("--items", default=None,
                     help="comma-separated Orbax items to import (default: every PyTree "
                     "and JSON item)")

    demo = sub.add_parser("demo", help="train, get killed with SIGKILL, resume: the main job",
                          description="Trains a small Flax NNX model with optax on synthetic "
                          "data, checkpointing asynchronously; kills its training process with "
                          "SIGKILL part way, resumes with restore_or_initialize and shows that "
                          "the loss curve and the step numbers continue. Runs on the CPU "
                          "unless JAX_PLATFORMS says otherwise. Needs optax "
                          "(pip install 'jaxckpt[demo]').")
    demo.add_argument("--dir", default="demo-checkpoints",
                      help="checkpoint directory (default: ./demo-checkpoints; a previous "
                      "demo's directory is cleared, any other non-empty one is refused)")
    demo.add_argument("--steps", type=_positive, default=300, help="training steps (default 300)")
    demo.add_argument("--every", type=_positive, default=10,
                      help="checkpoint interval in steps (default 10)")
    demo.add_argument("--kill-at", type=_positive, default=None,
                      help="step after which the training process is killed "
                      "(default: 60%% of --steps)")
    demo.add_argument("--keep", type=_positive, default=3, help="max_to_keep (default 3)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps long key paths on one line instead of wrapping at 80.
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, width=width, highlight=False)


# ---------------------------------------------------------------- commands


def _refuse_orbax(path: Any) -> None:
    """A usage error saying so when ``path`` is an Orbax checkpoint or run directory."""
    from ._read import orbax as _orbax
    from ._storage import location as _location

    found = _orbax.describe(_location.locate(path))
    if found is not None:
        raise UsageError(found)


def _cmd_ls(args: argparse.Namespace) -> int:
    from ._commit import atomic as _commit
    from ._report import render as _display, listing as _listing
    from ._storage import location as _location

    directory = args.directory
    if _commit.is_committed(_location.locate(directory)):
        raise UsageError(f"{directory} is a checkpoint, not a directory of checkpoints; "
                         f"try 'jaxckpt show {directory}'")
    try:
        listing = _listing.list_checkpoints(directory)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise UsageError(f"{e.strerror}: {directory}") from None
    if args.json:
        print(json.dumps([e.as_dict() for e in listing], indent=2))
        return EXIT_OK
    if not listing:
        _refuse_orbax(directory)
        print(f"no checkpoints in {listing.directory}")
        return EXIT_OK
    console = _console()
    console.print(_display.rich_text(listing.directory))
    console.print(_display.rich_table(listing.headers, listing.rows(), right=listing.right))
    footer = listing.footer()
    if footer:
        console.print(_display.rich_text(footer))
    return EXIT_OK


def _resolve_checkpoint(path: str) -> tuple[str, str | None]:
    """(checkpoint path, note) for a checkpoint or a directory with a latest one."""
    from . import _api
    from ._commit import atomic as _commit
    from ._storage import location as _location

    where = _location.locate(path)
    path = str(where)
    if _commit.is_committed(where):
        return path, None
    if not where.exists():
        raise UsageError(f"no such file or directory: {path}")
    _refuse_orbax(where)
    latest = _api.latest_checkpoint(where) if where.is_dir() else None
    if latest is None:
        return path, None  # let the reader explain what is wrong with it
    return latest, f"latest checkpoint in {path}"


def _cmd_show(args: argparse.Namespace) -> int:
    from ._report import describe as _describe, render as _display

    path, note = _resolve_checkpoint(args.path)
    info = _describe.inspect(path)
    if args.json:
        print(json.dumps(info.as_dict(), indent=2, default=repr))
        return EXIT_OK
    console = _console()
    title = f"checkpoint {info.path}" + (f"  ({note})" if note else "")
    console.print(_display.rich_text(title))
    console.print(_display.rich_text(_display.text_fields(info.fields())))
    console.print(_display.rich_table(info.headers, info.rows(),
                                      right=(3,), footer=info.footer()))
    return EXIT_OK


def _verify_targets(path: str) -> tuple[list[str], list[str], list[str]]:
    """(checkpoints to verify, problems found without reading, notes)."""
    from ._commit import atomic as _commit
    from ._format import manifest as _format, names as _names
    from ._report import listing as _listing
    from ._storage import location as _location

    where = _location.locate(path)
    path = str(where)
    if _commit.is_committed(where):
        return [path], [], []
    if not where.exists():
        raise UsageError(f"no such file or directory: {path}")
    if not where.is_dir():
        raise UsageError(f"{path} is a file, not a checkpoint or a directory of checkpoints")
    _refuse_orbax(where)
    data = (_format.PACKED, _format.ARRAYS)
    if any(n in data or _names.data_token(n) is not None for n in where.subdirs()):
        return [], [f"UNCOMMITTED {path}: checkpoint data without a commit record "
                    f"({_format.MANIFEST}); an interrupted save, or its record was deleted"], []
    listing = _listing.list_checkpoints(path)
    targets, problems, notes = [], [], []
    for e in listing:
        if e.status in (_listing.LATEST, _listing.ACTIVE, _listing.PRESERVED):
            targets.append(e.path)
        elif e.status == _listing.MISSING:
            problems.append(f"MISSING {e.name}: the state file names it but it is not on disk")
        elif e.note == "named in the state file":
            problems.append(f"UNCOMMITTED {e.name}: the state file names it but it has no "
                            f"commit record ({_format.MANIFEST})")
        else:
            notes.append(f"skipped {e.name}: {e.status} ({e.note}); readers ignore it")
    if not targets and not problems:
        raise UsageError(f"no checkpoints in {path}")
    return targets, problems, notes


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import _api
    from ._report import render as _display
    from .errors import CheckpointError
    from ._storage import location as _location

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    root = str(_location.locate(args.path))
    targets, problems, notes = _verify_targets(root)
    damaged = list(problems)
    for line in problems:
        print(line)
    for line in notes:
        print(line)
    for target in targets:
        name = (args.path if target == root else
                target[len(root) + 1:] if target.startswith(root + "/") else target)
        try:
            summary = _api.verify(target, progress=progress)
        except CheckpointError as e:
            damaged.append(target)
            print(f"DAMAGED {name}:")
            for line in str(e).splitlines():
                print(f"  {line}")
            continue
        print(f"OK {name} ({summary.leaves} leaves, {_display.human_bytes(summary.nbytes)})")
    if damaged:
        print(f"jaxckpt verify: {len(damaged)} damaged in {args.path} "
              f"({len(targets)} checkpoint(s) read)", file=sys.stderr)
        return EXIT_DAMAGED
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from ._export import safetensors as _safetensors
    from ._report import render as _display

    path, note = _resolve_checkpoint(args.ckpt)
    try:
        done = _safetensors.export_safetensors(
            path, args.out, prefix=args.prefix, select=args.select,
            max_shard_bytes=args.max_shard_bytes, skip_unsupported=args.skip_unsupported)
    except (FileExistsError, TypeError) as e:
        raise UsageError(str(e)) from None
    print(f"exported {path}" + (f" ({note})" if note else "") + f" to {args.out}: "
          f"{done['tensors']} tensors, {_display.human_bytes(done['total_size'])} in "
          f"{len(done['files'])} file(s)")
    if done["skipped"]:
        print(f"skipped (no safetensors dtype): {', '.join(done['skipped'])}")
    return EXIT_OK


def _cmd_import_orbax(args: argparse.Namespace) -> int:
    from ._import import orbax as _import

    items = [i for i in args.items.split(",") if i] if args.items else None
    try:
        if _import.describe_source(args.src) == "run":
            paths = _import.import_orbax_run(args.src, args.dest, items=items,
                                             checkpoint_name=args.checkpoint_name)
            print(f"imported {len(paths)} Orbax step(s) from {args.src} into {args.dest}: "
                  + ", ".join(p.rsplit("/", 1)[-1] for p in paths))
        else:
            path = _import.import_orbax(args.src, args.dest, items=items)
            print(f"imported Orbax checkpoint {args.src} as {path}")
    except ImportError as e:
        raise UsageError(str(e)) from None
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import _demo

    return _demo.main(args)


_COMMANDS = {"ls": _cmd_ls, "show": _cmd_show, "verify": _cmd_verify, "export": _cmd_export,
             "import-orbax": _cmd_import_orbax, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 damaged, 2 usage)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) and usage errors (2)
        return int(e.code or 0)
    from .errors import CheckpointError, CheckpointNotFoundError

    try:
        return _COMMANDS[args.command](args)
    except UsageError as e:
        print(f"jaxckpt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CheckpointNotFoundError as e:
        print(f"jaxckpt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE if args.command != "verify" else EXIT_DAMAGED
    except CheckpointError as e:
        first, *rest = str(e).splitlines() or [""]
        print(f"jaxckpt {args.command}: damaged: {first}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        return EXIT_DAMAGED
    except (ValueError, OSError) as e:  # an unsupported URL, an unreadable path
        print(f"jaxckpt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
