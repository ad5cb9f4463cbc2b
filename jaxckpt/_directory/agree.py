"""Decisions every process of a multi-process program must share.

Whatever must be equal on every process (the latest checkpoint when a
manager opens, which checkpoint a restore reads, whether a restore worked
everywhere, what retention keeps) is decided once, by process 0, and shared
through jax.distributed's key-value store: each process reads only what
process 0 wrote, never the disk on its own.

One primitive, ``Agreement.exchange``: every other process writes its input
under ``<scope>/a<n>/<phase>/in/<i>``; process 0 waits for all of them (one
deadline of ``timeout_s`` for the lot), computes the decision and writes it
to ``<scope>/a<n>/<phase>/out``; every process returns it. ``n`` counts the
exchanges of one scope, so the processes must make the same collective calls
in the same order (they do: the same program). A process missing at the
deadline is named in the error every process raises. The others wait for
process 0 up to ``2 * timeout_s + 60`` s (it may itself first wait
``timeout_s`` for a late one). Once every input of exchange ``n`` arrived,
every process has read the decision of ``n - 1``, so process 0 deletes it.
In a single-process program every call runs the decision inline.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from typing import Any, Callable

from .._format import names as _names
from . import coordinate as _multihost
from ..errors import (CheckpointNotFoundError, CoordinationError, CoordinationTimeoutError,
                      CorruptCheckpointError)

_CHUNK = 256 << 10  # characters per key, well under the coordination service's limit
_FAIL = "!"


def leader_wait(timeout_s: float) -> float:
    """How long a process waits for process 0's decision."""
    return 2 * timeout_s + 60


class Agreement:
    """The collective decisions of one scope (a manager, or a module-level call).

    Thread-safe; the processes must call it in the same order.
    """

    def __init__(self, scope_key: str, timeout_s: float, what: str,
                 stale_scope: str | None = None):
        self.count = _multihost.process_count()
        self.index = _multihost.process_index()
        self.timeout_s = float(timeout_s)
        self.what = what
        self._scope = scope_key
        self._stale = stale_scope  # an earlier call's keys, read by everyone once we gather
        self._n = 0
        self._lock = threading.Lock()

    @property
    def multi(self) -> bool:
        return self.count > 1

    def exchange(self, phase: str, mine: str,
                 decide: Callable[[list[str]], str]) -> str:
        """Every process sends ``mine``; process 0 calls ``decide`` with every
        process's input (its own first) and every process returns the result.

        Raises:
            CoordinationTimeoutError: a process did not send its input in time
                (named), or process 0 did not decide in time.
            CoordinationError: ``decide`` failed on process 0 (its error, quoted).
        """
        if not self.multi:
            return decide([mine])
        with self._lock:
            self._n += 1
            n = self._n
        prefix = f"{self._scope}/a{n}/{phase}"
        client = _multihost.client()
        if self.index != 0:
            put_value(client, f"{prefix}/in/{self.index}", mine)
            out = self._get(client, f"{prefix}/out", leader_wait(self.timeout_s),
                            f"process 0 of {self.count} did not decide {phase}")
            if out.startswith(_FAIL):
                raise _failure(out[1:])
            return out
        try:
            inputs = [mine] + self._gather(client, prefix, phase)
            stale = f"{self._scope}/a{n - 1}" if n > 1 else self._stale
            if stale is not None:
                try:
                    client.key_value_delete(stale)
                except Exception:  # stale keys only cost memory in the coordinator
                    pass
            out = decide(inputs)
        except BaseException as e:
            put_value(client, f"{prefix}/out", _FAIL + _encode_error(e))
            raise
        put_value(client, f"{prefix}/out", out)
        return out

    def _gather(self, client: Any, prefix: str, phase: str) -> list[str]:
        deadline = time.monotonic() + self.timeout_s
        got, late = [], []
        for i in range(1, self.count):
            try:
                got.append(self._get(client, f"{prefix}/in/{i}",
                                     max(0.001, deadline - time.monotonic()), ""))
            except TimeoutError:
                late.append(i)
        if late:
            who = _multihost.late_processes(late, self.count, phase, self.timeout_s)
            raise CoordinationTimeoutError(
                f"{self.what}: {who} (failed, died, late, or made different jaxckpt calls); "
                "every process of the program must make the same ones")
        return got

    def _get(self, client: Any, key: str, timeout_s: float, late: str) -> str:
        try:
            return get_value(client, key, timeout_s)
        except TimeoutError as e:
            raise CoordinationTimeoutError(f"{self.what}: {late} within {timeout_s:g} s (waiting "
                                           f"in process {self.index} of {self.count})") from e

    # ------------------------------------------------------------ uses

    def share(self, phase: str, make: Callable[[], str]) -> str:
        """Process 0's ``make()``, on every process (the others never call it)."""
        return self.exchange(phase, "", lambda _: make())

    def together(self, phase: str, fn: Callable[[], Any]) -> Any:
        """Runs ``fn`` on every process; returns its result only if it worked on all.

        If it failed anywhere, every process raises: its own error if it had
        one, else one naming the processes that failed. Damage (a corrupt or
        vanished checkpoint, which may show only on the process reading a
        shard) raises ``CorruptCheckpointError``/``CheckpointNotFoundError``
        everywhere, so that every process falls back alike.
        """
        if not self.multi:
            return fn()
        result, error = None, None
        try:
            result = fn()
        except Exception as e:  # reported, then raised below
            error = e
        mine = "" if error is None else _encode_error(error)
        verdict = json.loads(self.exchange(phase, mine, _verdict))
        kind = verdict["kind"]
        if kind == "ok":
            return result
        if error is not None and (_kind(error) == kind or
                                  {_kind(error), kind} <= {"damage", "missing"}):
            raise error
        why = f"{self.what}: {phase} failed on another process: {verdict['why']}"
        if kind == "exists":
            raise FileExistsError(errno.EEXIST, why) from error
        cls = {"damage": CorruptCheckpointError, "missing": CheckpointNotFoundError}.get(
            kind, CoordinationError)
        raise cls(why) from error


def _kind(e: BaseException) -> str:
    """How every process reacts to ``e``: alike for damage or absence (each falls
    back), for a path that exists (each raises FileExistsError), else as to a failure."""
    return ("missing" if isinstance(e, CheckpointNotFoundError) else
            "damage" if isinstance(e, CorruptCheckpointError) else
            "exists" if isinstance(e, FileExistsError) else "fail")


def _encode_error(e: BaseException) -> str:
    return json.dumps({"kind": _kind(e), "why": f"{type(e).__name__}: {e}"})


def _verdict(inputs: list[str]) -> str:
    failed = [(i, json.loads(v)) for i, v in enumerate(inputs) if v]
    if not failed:
        return json.dumps({"kind": "ok"})
    kinds = {f["kind"] for _, f in failed}
    kind = next((k for k in ("fail", "damage", "missing", "exists") if k in kinds), "fail")
    why = "; ".join(f"process {i}: {f['why']}" for i, f in failed)
    return json.dumps({"kind": kind, "why": why})


def _failure(text: str) -> Exception:
    try:
        f = json.loads(text)
        kind, why = f["kind"], f["why"]
    except (ValueError, KeyError, TypeError):
        kind, why = "fail", text
    name, _, rest = why.partition(": ")
    if name in ("TimeoutError", "CoordinationTimeoutError"):
        return CoordinationTimeoutError(f"process 0 reports: {rest}")
    cls = {"damage": CorruptCheckpointError, "missing": CheckpointNotFoundError}.get(
        kind, CoordinationError)
    return cls(f"process 0 failed: {why}")


def put_value(client: Any, key: str, value: str) -> None:
    if len(value) <= _CHUNK:
        client.key_value_set(key, "=" + value)
        return
    chunks = [value[i : i + _CHUNK] for i in range(0, len(value), _CHUNK)]
    for k, chunk in enumerate(chunks):  # before the key itself: there once it is
        client.key_value_set(f"{key}/{k}", chunk)
    client.key_value_set(key, f"#{len(chunks)}")


def get_value(client: Any, key: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    head = _blocking_get(client, key, timeout_s)
    if head.startswith("="):
        return head[1:]
    return "".join(_blocking_get(client, f"{key}/{k}", max(0.001, deadline - time.monotonic()))
                   for k in range(int(head[1:])))


def _blocking_get(client: Any, key: str, timeout_s: float) -> str:
    try:
        return client.blocking_key_value_get(key, max(1, int(timeout_s * 1000)))
    except Exception as e:  # jax raises JaxRuntimeError(DEADLINE_EXCEEDED) and others
        if "DEADLINE_EXCEEDED" in str(e) or "timed out" in str(e):
            raise CoordinationTimeoutError(str(e)) from e
        raise CoordinationError(f"jax.distributed's key-value store failed reading {key}: "
                              f"{e}") from e


# ------------------------------------------------------------ module-level calls

_calls: dict[tuple[str, str], int] = {}
_calls_lock = threading.Lock()


def for_call(kind: str, target: str, timeout_s: float) -> Agreement:
    """An agreement for one module-level call (``latest_checkpoint``, ``restore``)
    on ``target``: the processes pair their calls by counting them.

    Once every process sent its input to call ``n``, every one has read the
    decisions of call ``n - 1``: process 0 then deletes that call's keys, so
    a loop of such calls leaves at most one call's keys in the coordinator.
    """
    with _calls_lock:
        n = _calls[(kind, target)] = _calls.get((kind, target), 0) + 1
    stale = _multihost.scope(target, kind, n - 1) if n > 1 else None
    return Agreement(_multihost.scope(target, kind, n), timeout_s, target, stale_scope=stale)


# ------------------------------------------------------------ what a manager shares

def encode_found(root: Any, found: Any) -> str:
    """Process 0's view of a directory as it opens (``_directory/recovery.Found``), with
    paths relative to the directory, so that each process resolves them."""
    from .._commit import state_file as _state_file

    rel = lambda p: _state_file.relative(root, p)  # noqa: E731
    return json.dumps({
        "max_number": found.max_number,
        "latest": None if found.latest is None else rel(found.latest),
        "active": [[rel(p), t] for p, t in found.retention.active],
        "last_preserved": found.retention.last_preserved,
        "carried": [[raw, t] for raw, t in found.carried],
    })


def decode_found(root: Any, text: str) -> Any:
    """A ``_directory/recovery.Found`` from ``encode_found``; ``named`` is None (only
    process 0 deletes, so only it needs the state file's names)."""
    from . import policy as _policy, recovery as _recovery
    from .._commit import state_file as _state_file

    d = json.loads(text)
    res = lambda p: _state_file.resolve(root, p)  # noqa: E731
    return _recovery.Found(
        max_number=int(d["max_number"]), named=None,
        retention=_policy.Retention([(res(p), float(t)) for p, t in d["active"]],
                                    float(d["last_preserved"])),
        latest=None if d["latest"] is None else res(d["latest"]),
        carried=[(raw, t) for raw, t in d["carried"]])


def encode_kept(root: Any, kept: Any, delete: list[str]) -> str:
    """Process 0's retention decision of one save: the active set it published."""
    from .._commit import state_file as _state_file

    rel = lambda p: _state_file.relative(root, p)  # noqa: E731
    return json.dumps({"active": [[rel(p), t] for p, t in kept.active],
                       "last_preserved": kept.last_preserved,
                       "delete": [rel(p) for p in delete]})


def decode_kept(root: Any, text: str) -> tuple[Any, list[str]]:
    from . import policy as _policy
    from .._commit import state_file as _state_file

    d = json.loads(text)
    res = lambda p: _state_file.resolve(root, p)  # noqa: E731
    return (_policy.Retention([(res(p), float(t)) for p, t in d["active"]],
                              float(d["last_preserved"])),
         [res(p) for p in d["delete"]])


def name(path: str) -> str:
    """A checkpoint's last path component, for messages."""
    return _names.basename(path)
