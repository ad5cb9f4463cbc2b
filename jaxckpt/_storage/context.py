"""The process-wide tensorstore context, and the object-store request limits it sets.

One context for every array and kvstore jaxckpt opens (``_storage/arrays``,
``_storage/location``'s ``KvDir``): ``memory://`` checkpoints outlive the
call that wrote them, connections are reused, and an endpoint that stops
answering fails a request within ``timeout_s()``.
"""

from __future__ import annotations

import os
import threading


class _Tensorstore:
    """The ``tensorstore`` module, imported at its first use.

    Its import is ~15 ms that ``import jaxckpt`` need not pay (issue 17).
    ``load()`` runs it on the caller's thread when a checkpoint path is first
    located, so that no writer thread imports a module (under a lock, or while
    the interpreter exits).
    """

    def __getattr__(self, name: str):
        import tensorstore

        value = getattr(tensorstore, name)
        setattr(self, name, value)  # later look-ups skip __getattr__
        return value


ts = _Tensorstore()


def load() -> None:
    """Imports tensorstore now (on this thread) if it is not imported yet."""
    import tensorstore  # noqa: F401

_context_lock = threading.Lock()
_context: ts.Context | None = None

TIMEOUT_ENV = "JAXCKPT_OBJECT_STORE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 120.0
_RETRIES_MAX = 8


def timeout_s() -> float:
    """Seconds within which an object-store request fails if the endpoint stops
    answering: ``JAXCKPT_OBJECT_STORE_TIMEOUT_S``, default 120, at least 12.

    Raises:
        ValueError: the variable is not a number of seconds >= 12.
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 12 or value == float("inf"):
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds >= 12, got {raw!r}")
    return value


def _request_limits(timeout: float) -> tuple[dict, int]:
    """(retry settings, stall seconds) whose worst case fits in ``timeout``.

    tensorstore has no deadline per request, only curl's low-speed watchdog
    (an attempt that moves under 1 byte/s for the stall time is abandoned)
    and a retry budget. An endpoint that accepts connections and never
    answers costs every attempt the full stall: 9 attempts of timeout/12
    plus backoff 1/480 .. 1/30 of it (0.25 s .. 4 s at 120 s, about 20 s in
    all) is at most 0.92 * timeout. Failing fast (refused, 5xx) costs the
    backoff alone. Without the watchdog tensorstore waited 842 s.
    """
    stall = max(1, int(timeout / 12))
    retries = {"max_retries": _RETRIES_MAX, "initial_delay": f"{timeout / 480:.3f}s",
               "max_delay": f"{timeout / 30:.3f}s"}
    return retries, stall


GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_GCS_URL_ENV = "TENSORSTORE_GCS_HTTP_URL"
_GCS_TOKEN_ENV = "GOOGLE_AUTH_TOKEN_FOR_TESTING"


def point_gcs_at_emulator() -> None:
    """Honours ``STORAGE_EMULATOR_HOST`` (``host:port`` or a URL), the variable
    Google's own client libraries read for a GCS emulator.

    tensorstore's ``gcs`` driver has no endpoint field; it reads
    ``TENSORSTORE_GCS_HTTP_URL`` when the process opens its first ``gs://``
    store. Called whenever a ``gs://`` URL is located: sets that variable
    from ``STORAGE_EMULATOR_HOST`` unless the user set it, and then, as Google's
    libraries do for an emulator, sends no real credentials there (a
    placeholder bearer token instead of the application-default chain, which
    on a cloud VM would fetch the VM's token for a local server).

    Raises:
        ValueError: ``STORAGE_EMULATOR_HOST`` is set but names no host.
    """
    raw = os.environ.get(GCS_EMULATOR_ENV, "").strip()
    if not raw:
        return
    url = raw if "://" in raw else f"http://{raw}"
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest.strip("/") or any(c.isspace() for c in url):
        raise ValueError(f"{GCS_EMULATOR_ENV} must be host:port or an http(s):// URL, "
                         f"got {raw!r}")
    if os.environ.get(_GCS_URL_ENV):
        return  # the user's own tensorstore setting (and credentials) decide
    os.environ[_GCS_URL_ENV] = url.rstrip("/")
    os.environ.setdefault(_GCS_TOKEN_ENV, "emulator")


def context() -> ts.Context:
    """The process-wide tensorstore context.

    Shared so that ``memory://`` checkpoints outlive the call that wrote them
    and connections to object stores are reused. Its first call sets
    tensorstore's curl stall watchdog (``TENSORSTORE_CURL_LOW_SPEED_*``)
    unless the environment already sets it, before any request is made.
    """
    global _context
    with _context_lock:
        if _context is None:
            retries, stall = _request_limits(timeout_s())
            # Read by tensorstore when it makes its HTTP transport, at the
            # first object-store request; a user's own setting wins.
            os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", str(stall))
            os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")
            spec = {
                "file_io_concurrency": {"limit": 32},
                # Reads map the file and copy once into our buffer, instead of
                # pread into tensorstore's buffer and then a copy into ours:
                # W1's restore 0.54-1.2 s -> 0.18-0.21 s here.
                "file_io_mode": {"mode": "memmap"},
                "s3_request_retries": retries,
                "gcs_request_retries": retries,
            }
            try:
                _context = ts.Context(spec)
            except ValueError:  # a tensorstore without file_io_mode
                del spec["file_io_mode"]
                _context = ts.Context(spec)
        return _context
