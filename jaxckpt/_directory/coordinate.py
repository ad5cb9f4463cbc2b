"""Coordinating one save across the processes of a ``jax.distributed`` program.

Every process writes the shards it owns; process 0 commits only after every
process said its bytes are durable. The signals go through jax.distributed's
own key-value store (no home-made transport). Every wait has a timeout, and a
process that is late, failed or died is named in the error the others raise,
instead of a silent hang.

Keys, under ``jaxckpt/<scope>/<seq>/``: ``token`` (process 0: the name of the
staging area), ``part/<i>`` (process i: ``ok [<n>]`` or its error;
``part/<i>/<k>``: the n pieces of its payload, the digests of what it wrote and
the files it references), ``commit``
(process 0: ``ok`` or why not). In a single-process program every call here
returns at once.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Sequence

import jax

from ..errors import CoordinationError, CoordinationTimeoutError

DEFAULT_TIMEOUT_S = 300.0
_OK = "ok"
_CHUNK = 256 << 10  # characters of payload per key


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def scope(directory: str, kind: str, instance: int) -> str:
    """A key prefix unique to one manager (or module-level save target) in this run."""
    digest = hashlib.sha1(directory.encode()).hexdigest()[:16]
    return f"jaxckpt/{digest}/{kind}{instance}"


def _client():
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise CoordinationError(
            f"this program has {process_count()} processes but jax.distributed's client is "
            "not available; call jax.distributed.initialize() before saving")
    return client


def client():
    """jax.distributed's key-value client, for the modules that build on this one."""
    return _client()


def late_processes(late: Sequence[int], count: int, did_not: str, timeout_s: float,
                   word: str | None = None) -> str:
    """``process 2 of 3 did not <did_not> within 5 s``: who was late, for the others' errors.

    ``word`` is "process" or "processes" by how many were late, unless given.
    """
    word = word or ("processes" if len(late) > 1 else "process")
    names = ", ".join(str(i) for i in late)
    return f"{word} {names} of {count} did not {did_not} within {timeout_s:g} s"


class SaveCoordinator:
    """The signals of one save: agree on a token, report parts, announce the commit.

    Thread-safe in the sense it needs: each instance is used by one writer
    job. Every wait is bounded by ``timeout_s``.
    """

    def __init__(self, scope_key: str, seq: int, what: str, timeout_s: float,
                 hold_commit: bool = False):
        self.count = process_count()
        self.index = process_index()
        self.primary = self.index == 0
        self.what = what  # e.g. the checkpoint path, for messages
        self.timeout_s = float(timeout_s)
        self._prefix = f"{scope_key}/{seq}"
        self._previous = f"{scope_key}/{seq - 1}" if seq > 0 else None
        # A manager's save is finished only once process 0 published it (state
        # file replaced, retention applied): it holds the announcement until then.
        self.hold_commit = hold_commit
        self.decision = ""  # what process 0 published with the commit (its retention)

    @property
    def multi(self) -> bool:
        return self.count > 1

    def _get(self, key: str, timeout_s: float, who: str, waiting_for: str) -> str:
        try:
            return _client().blocking_key_value_get(f"{self._prefix}/{key}",
                                                    int(timeout_s * 1000))
        except Exception as e:  # jax raises JaxRuntimeError(DEADLINE_EXCEEDED) and others
            if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e):
                raise CoordinationError(
                    f"{self.what}: process {self.index} could not hear from {who} "
                    f"({waiting_for}): {e}") from e
            raise CoordinationTimeoutError(
                f"{self.what}: {who} did not {waiting_for} within {timeout_s:g} s "
                f"(waiting in process {self.index} of {self.count}); it failed, died or is "
                "late. The checkpoint is not committed; earlier ones are intact.") from e

    def _set(self, key: str, value: str) -> None:
        _client().key_value_set(f"{self._prefix}/{key}", value)

    def checks(self, what: str, timeout_s: float) -> Any:
        """The agreement (``agree.Agreement``) of the checks before this save
        writes anything; its keys go with the save's parts."""
        from . import agree as _agree

        return _agree.Agreement(f"{self._prefix}/check", timeout_s, what)

    def share_token(self, make: Callable[[], str]) -> str:
        """Process 0 calls ``make`` and publishes the result; the others receive it."""
        if not self.multi:
            return make()
        if self.primary:
            try:
                token = make()
            except BaseException as e:
                self._set("token", "!" + repr(e))
                raise
            self._set("token", token)
            return token
        token = self._get("token", self.timeout_s, "process 0", "start the save")
        if token.startswith("!"):
            raise CoordinationError(f"{self.what}: process 0 could not start the save: {token[1:]}")
        return token

    def part_done(self, error: BaseException | None, payload: str = "") -> None:
        """Reports this process's part as durable (``error`` None) or failed;
        ``payload`` (its pieces' digests) goes to process 0 with the report."""
        if self.multi and not self.primary:
            if error is not None:
                self._set(f"part/{self.index}", repr(error))
                return
            # In pieces, each well under the coordination service's message limit.
            chunks = [payload[i : i + _CHUNK] for i in range(0, len(payload), _CHUNK)]
            for k, chunk in enumerate(chunks):
                self._set(f"part/{self.index}/{k}", chunk)
            self._set(f"part/{self.index}", f"{_OK} {len(chunks)}" if chunks else _OK)

    def wait_parts(self) -> list[str]:
        """Process 0: returns once every process reported its part durable,
        with the payload each sent (process 1 first).

        Raises:
            CoordinationTimeoutError: naming the processes that did not report in time.
            CoordinationError: naming the processes whose part failed.
        """
        if not self.multi:
            return []
        failed, late, payloads = [], [], []
        deadline = time.monotonic() + self.timeout_s
        for i in range(1, self.count):
            left = max(0.001, deadline - time.monotonic())
            try:
                value = self._get(f"part/{i}", left, f"process {i}", "report its part durable")
            except TimeoutError:
                late.append(i)
                continue
            word, _, n = value.partition(" ")
            if word != _OK or not (n.isdigit() or not n):
                failed.append(f"process {i}: {value}")
                continue
            # Set before the report, so they are there already.
            payloads.append("".join(
                self._get(f"part/{i}/{k}", max(0.001, deadline - time.monotonic()),
                          f"process {i}", "send its part's digests")
                for k in range(int(n or 0))))
        if not late:
            # Every process passed the checks, read the token and process 0
            # read every part: only ``commit`` stays (deleted with the next
            # save of this scope).
            for key in ("check", "part", "token"):
                try:
                    _client().key_value_delete(f"{self._prefix}/{key}")
                except Exception:  # stale keys only cost memory in the coordinator
                    pass
        if failed:
            raise CoordinationError(f"{self.what}: not committed; writing failed in "
                                  + "; ".join(failed))
        if late:
            who = late_processes(late, self.count, "report their part durable", self.timeout_s,
                                 word="process(es)")
            raise CoordinationTimeoutError(f"{self.what}: not committed; {who} (failed, died or "
                                           "late). Earlier checkpoints are intact.")
        if self._previous is not None:
            # Every process has finished the previous save by now.
            try:
                _client().key_value_delete(self._previous)
            except Exception:  # stale keys only cost memory in the coordinator
                pass
        return payloads

    def announce(self, error: BaseException | None) -> None:
        """Process 0: tells the others whether the checkpoint was committed."""
        if self.multi and self.primary and not (error is None and self.hold_commit):
            self.published(error)

    def published(self, error: BaseException | None, decision: str = "") -> None:
        """Process 0: the checkpoint is published (or failed): releases the others."""
        if self.multi and self.primary:
            from . import agree as _agree

            _agree.put_value(_client(), f"{self._prefix}/commit",
                        (f"{_OK} {decision}" if decision else _OK) if error is None
                        else repr(error))

    def wait_commit(self) -> None:
        """The other processes: returns once process 0 committed the checkpoint
        (for a manager's save: and published it), keeping its ``decision``."""
        if not self.multi or self.primary:
            return
        from . import agree as _agree

        # Process 0 first waits up to timeout_s for every part, then commits.
        wait = _agree.leader_wait(self.timeout_s)
        try:
            value = _agree.get_value(_client(), f"{self._prefix}/commit", wait)
        except TimeoutError as e:
            raise CoordinationTimeoutError(
                f"{self.what}: process 0 of {self.count} did not commit and publish it within "
                f"{wait:g} s (waiting in process {self.index}); it failed, died or is late") from e
        word, _, decision = value.partition(" ")
        if word != _OK:
            raise CoordinationError(f"{self.what}: process 0 did not commit it: {value}")
        self.decision = decision
