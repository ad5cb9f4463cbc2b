"""The TensorFlow-format ``checkpoint`` state file: parse, render, replace.

It is protobuf text format of ``CheckpointState``; we write paths relative to
the directory and read absolute ones (as TensorFlow wrote them) too. Locally
it is replaced with temp file, fsync, ``os.replace``, fsync of the directory;
on object stores with one PUT, which readers see whole or not at all.
"""

from __future__ import annotations

import dataclasses
import os
import re

from .. import _faults
from .._format import names as _names
from .._storage import durable as _durable, location as _location
from .._storage.location import Dir
from ..errors import CorruptCheckpointError

FILENAME = _names.STATE_FILE
# TensorFlow's file names each checkpoint in two lines; 16 MiB holds over
# 100,000 of them. A larger file (or /dev/zero linked in its place) is refused.
MAX_BYTES = 16 << 20

_LINE = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")
_STRING_FIELDS = ("model_checkpoint_path", "all_model_checkpoint_paths")
_FLOAT_FIELDS = ("all_model_checkpoint_timestamps", "last_preserved_timestamp")


@dataclasses.dataclass
class CheckpointState:
    """The state file's content; paths as written (relative or absolute)."""

    model_checkpoint_path: str | None = None
    all_model_checkpoint_paths: list[str] = dataclasses.field(default_factory=list)
    all_model_checkpoint_timestamps: list[float] = dataclasses.field(default_factory=list)
    last_preserved_timestamp: float | None = None


def _unescape(text: str, where: str) -> str:
    if len(text) < 2 or text[0] not in "\"'" or text[-1] != text[0]:
        raise CorruptCheckpointError(f"{where}: expected a quoted string, got {text!r}")
    body = text[1:-1].encode("utf-8")
    out = bytearray()
    i = 0
    simple = {ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("\\"): 92, ord('"'): 34,
              ord("'"): 39, ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("v"): 11, ord("?"): 63}
    while i < len(body):
        c = body[i]
        if c != 92:
            out.append(c)
            i += 1
            continue
        i += 1
        if i >= len(body):
            raise CorruptCheckpointError(f"{where}: dangling backslash in {text!r}")
        c = body[i]
        if c in simple:
            out.append(simple[c])
            i += 1
        elif c in b"01234567":
            j = i
            while j < len(body) and j < i + 3 and body[j] in b"01234567":
                j += 1
            out.append(int(body[i:j], 8) & 0xFF)
            i = j
        elif c == ord("x"):
            j = i + 1
            while j < len(body) and j < i + 3 and chr(body[j]) in "0123456789abcdefABCDEF":
                j += 1
            if j == i + 1:
                raise CorruptCheckpointError(f"{where}: \\x without hex digits in {text!r}")
            out.append(int(body[i + 1 : j], 16))
            i = j
        else:
            raise CorruptCheckpointError(f"{where}: unknown escape in {text!r}")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(f"{where}: path is not UTF-8: {text!r}") from e


def _escape(value: str) -> str:
    out = []
    for b in value.encode("utf-8"):
        ch = chr(b)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif 32 <= b < 127:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def parse(text: str, where: str = FILENAME) -> CheckpointState:
    """Parses state-file text.

    Raises:
        CorruptCheckpointError: the text is not a CheckpointState, naming the line.
    """
    state = CheckpointState()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        here = f"{where}:{lineno}"
        if not m:
            raise CorruptCheckpointError(f"{here}: not a 'field: value' line: {line!r}")
        field, value = m.groups()
        if field in _STRING_FIELDS:
            s = _unescape(value, here)
            if field == "model_checkpoint_path":
                state.model_checkpoint_path = s
            else:
                state.all_model_checkpoint_paths.append(s)
        elif field in _FLOAT_FIELDS:
            try:
                f = float(value)
            except ValueError:
                raise CorruptCheckpointError(f"{here}: {field} is not a number: {value!r}") from None
            if field == "last_preserved_timestamp":
                state.last_preserved_timestamp = f
            else:
                state.all_model_checkpoint_timestamps.append(f)
        else:
            raise CorruptCheckpointError(f"{here}: unknown field {field!r}")
    if state.all_model_checkpoint_timestamps and len(state.all_model_checkpoint_timestamps) != len(
        state.all_model_checkpoint_paths
    ):
        raise CorruptCheckpointError(
            f"{where}: {len(state.all_model_checkpoint_paths)} paths but "
            f"{len(state.all_model_checkpoint_timestamps)} timestamps"
        )
    return state


def render(state: CheckpointState) -> str:
    lines = []
    if state.model_checkpoint_path is not None:
        lines.append(f"model_checkpoint_path: {_escape(state.model_checkpoint_path)}")
    lines += [f"all_model_checkpoint_paths: {_escape(p)}" for p in state.all_model_checkpoint_paths]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in state.all_model_checkpoint_timestamps]
    if state.last_preserved_timestamp is not None:
        lines.append(f"last_preserved_timestamp: {state.last_preserved_timestamp!r}")
    return "\n".join(lines) + "\n"


def resolve(directory: str | Dir, path: str) -> str:
    """A full path (or URL) for a state-file entry; relative ones are under ``directory``."""
    where = _location.locate(directory)
    if "://" in path:
        return str(_location.locate(path))
    if where.is_local:
        return os.path.normpath(path if os.path.isabs(path) else os.path.join(where.path, path))
    return str(where.join(*[p for p in path.split("/") if p]))


def relative(directory: str | Dir, path: str) -> str:
    where = _location.locate(directory)
    if not where.is_local:
        base = str(where) + "/"
        return path[len(base):] if path.startswith(base) else path
    rel = os.path.relpath(path, where.path)
    return path if rel.startswith("..") else rel


def read(directory: str | Dir) -> CheckpointState | None:
    """The state in ``<directory>/checkpoint``, or None if there is no file."""
    where = _location.locate(directory)
    try:
        data = where.read(FILENAME, MAX_BYTES)
    except IsADirectoryError:
        data = None
    if data is None:
        return None
    file = f"{where}/{FILENAME}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(f"{file}: not UTF-8 text") from e
    if not text.strip():
        # Never written empty (it always names the latest checkpoint): an empty
        # file is damage, e.g. a crash on a filesystem that reorders writes.
        raise CorruptCheckpointError(f"{file}: the state file is empty (damaged)")
    return parse(text, file)


class Replacement:
    """A new state file, ready to replace the current one.

    Locally its content is already durable in a temporary beside the state
    file (``prepare``), so that this fsync can run alongside the checkpoint's
    own commit; ``install`` only renames it into place and fsyncs the
    directory. On object stores ``install`` is the single PUT.
    """

    def __init__(self, where: Dir, data: bytes):
        self._where, self._data = where, data
        self._tmp: str | None = None
        if where.is_local:
            self._tmp = os.path.join(where.path, _names.state_file_tmp())
            try:
                _durable.write_file_durably(self._tmp, data)
            except BaseException:
                self.discard()
                raise

    def install(self) -> None:
        """Atomically replaces the state file with this one."""
        if self._tmp is None:
            self._where.write(FILENAME, self._data)
            return
        try:
            _faults.point("state_file.before_replace")
            os.replace(self._tmp, os.path.join(self._where.path, FILENAME))
        except BaseException:
            self.discard()
            raise
        self._tmp = None
        _faults.point("state_file.after_replace")
        _durable.fsync_dir(self._where.path)

    def discard(self) -> None:
        """Removes the temporary of a replacement that will not be installed."""
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None


def prepare(directory: str | Dir, state: CheckpointState) -> Replacement:
    """Writes ``state`` durably beside ``<directory>/checkpoint``, not yet in place."""
    return Replacement(_location.locate(directory), render(state).encode("utf-8"))


def sweep_temporaries(directory: str | Dir) -> list[str]:
    """Removes ``checkpoint.tmp-*`` files left by a crash during a local replacement."""
    where = _location.locate(directory)
    if not where.is_local:
        return []
    removed = []
    for name in where.listdir():
        if _names.is_state_file_tmp(name):
            try:
                os.unlink(os.path.join(where.path, name))
                removed.append(name)
            except OSError:
                pass
    return removed
