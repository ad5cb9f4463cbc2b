"""The ``jaxckpt`` command line: ``main(argv=None) -> int``.

This version has ``demo`` as a placeholder; ``ls``, ``show`` and ``verify``
print their checkpoint facts plainly (the richer CLI is a later issue).
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxckpt", description="Inspect and verify jaxckpt checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="train, get killed, resume (not yet)")
    v = sub.add_parser("verify", help="re-read every byte of a checkpoint against its checksums")
    v.add_argument("path")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.command == "demo":
        print("jaxckpt demo: not yet (see the open issue for the users' surface)")
        return 0
    from . import _api
    from .errors import CheckpointError

    try:
        _api.verify(args.path)
    except CheckpointError as e:
        print(f"DAMAGED: {e}", file=sys.stderr)
        return 1
    print(f"OK: {args.path}")
    return 0
