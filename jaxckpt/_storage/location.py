"""Where checkpoints live: a local directory or a tensorstore kvstore URL.

``locate(path)`` turns what a user passes (a path, ``os.PathLike``,
``file://``, ``s3://``, ``gs://`` or ``memory://`` URL) into a ``Dir``: the
few operations the rest of jaxckpt needs on a directory, with one
implementation for the local filesystem (``os`` calls, fsync) and one for
object stores (tensorstore's kvstore drivers, where a finished ``write`` is
durable and a single key's write is atomic, but nothing can be renamed).

S3 URLs follow the AWS SDKs' environment: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` for a private endpoint, ``AWS_REGION`` or
``AWS_DEFAULT_REGION``; credentials come from tensorstore's default AWS chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance
metadata). GCS URLs use Google's application-default credentials, and
``STORAGE_EMULATOR_HOST`` (or tensorstore's ``TENSORSTORE_GCS_HTTP_URL``) for an
emulator or private endpoint (``_context.point_gcs_at_emulator``). The process-wide
tensorstore context and the object-store request limits are in
``_storage/context``.

One module of some 430 lines on purpose: the local and the object-store class stay
side by side, method for method, so that their shared interface reads as one.
"""

from __future__ import annotations

import errno
import os
import stat
import urllib.parse
from typing import Union


from . import context as _context
from .context import ts
from ..errors import CorruptCheckpointError

_KV_SCHEMES = {"s3": "s3", "gs": "gcs", "memory": "memory"}
_READ_ONLY_SCHEMES = ("http", "https")

# A FIFO opened without O_NONBLOCK waits for a writer forever.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class LocalDir:
    """A directory on a local (or mounted shared) filesystem."""

    is_local = True
    listing_is_cheap = True  # one listdir, no request

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"LocalDir({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def join(self, *names: str) -> LocalDir:
        return LocalDir(os.path.join(self.path, *names))

    def parent(self) -> LocalDir:
        return LocalDir(os.path.dirname(self.path))

    def kvstore(self) -> dict:
        return {"driver": "file", "path": self.path.rstrip("/") + "/"}

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def read(self, key: str, max_bytes: int | None = None, *, head: bool = False) -> bytes | None:
        """The bytes of file ``key`` in this directory, or None if it is missing.

        The file may be planted by someone else, so it is opened non-blocking
        (a FIFO never blocks) and must be a regular file; at most
        ``max_bytes`` are read: with ``head`` the first ``max_bytes``, else a
        larger file is refused.

        Raises:
            IsADirectoryError: ``key`` is a directory.
            CorruptCheckpointError: ``key`` is not a regular file (a FIFO, a
                device, a socket, a symlink loop), or is larger than ``max_bytes``.
        """
        path = os.path.join(self.path, key)
        try:
            fd = os.open(path, os.O_RDONLY | _NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ELOOP):  # a socket; a symlink loop
                raise CorruptCheckpointError(f"{path}: not a regular file ({e.strerror})") from e
            raise
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptCheckpointError(
                    f"{path}: not a regular file (a {_file_kind(st.st_mode)}); jaxckpt only "
                    "ever writes regular files here, so something else put it there")
            limit = max_bytes
            if not head and limit is not None and st.st_size > limit:
                raise _too_large(path, max_bytes)
            chunks, got = [], 0
            # Read to EOF, but never past the limit: the file may grow meanwhile.
            while limit is None or got <= limit:
                # Ask for what fstat said is left (os.read allocates what is asked).
                want = min(max(st.st_size - got + 1, 1 << 16), 16 << 20)
                chunk = os.read(fd, want if limit is None else min(limit + 1 - got, want))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if max_bytes is not None and len(data) > max_bytes:
            if not head:
                raise _too_large(path, max_bytes)
            data = data[:max_bytes]
        return data

    def write(self, key: str, data: bytes) -> None:
        """Writes file ``key`` and fsyncs it (not its directory)."""
        with open(os.path.join(self.path, key), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def listdir(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def subdirs(self) -> list[str]:
        """Names of the directories in this one (links not followed)."""
        out = []
        for name in sorted(self.listdir()):
            p = os.path.join(self.path, name)
            if os.path.isdir(p) and not os.path.islink(p):
                out.append(name)
        return out

    def is_dir(self) -> bool:
        """True if this is a directory (or a link to one)."""
        return os.path.isdir(self.path)

    def check_is_not_a_file(self, error: type[Exception] = NotADirectoryError,
                            message: str | None = None) -> None:
        """Raises ``error`` if something other than a directory stands here.

        ``message`` defaults to "<path> is a file, not a checkpoint directory".
        """
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise error(message or f"{self} is a file, not a checkpoint directory")

    def mtime(self, key: str) -> float | None:
        """The modification time of file ``key``.

        Raises:
            OSError: it cannot be stat'ed (missing, no permission).
        """
        return os.stat(os.path.join(self.path, key)).st_mtime

    def size_of(self, key: str) -> int | None:
        """Bytes of file ``key`` below this directory (links not followed); 0
        if there is no such file (it holds no bytes)."""
        try:
            st = os.lstat(os.path.join(self.path, key))
        except (FileNotFoundError, NotADirectoryError):
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def file_bytes(self) -> int | None:
        """Bytes of every file under this directory (sizes, not blocks); links not followed."""
        return self.file_usage()[0]

    def file_usage(self, inodes: dict | None = None) -> tuple[int | None, int]:
        """(bytes, bytes in files with another hard link) under this directory;
        ``inodes`` collects (device, inode) -> size, to count shared files once."""
        total = shared = 0
        for dirpath, _dirs, files in os.walk(self.path):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:  # deleted while we walk
                    continue
                total += st.st_size
                if st.st_nlink > 1:
                    shared += st.st_size
                if inodes is not None:
                    inodes[(st.st_dev, st.st_ino)] = st.st_size
        return total, shared


class KvDir:
    """A key prefix in a tensorstore key-value store (object store or memory)."""

    is_local = False
    listing_is_cheap = False  # a listing costs a request

    def __init__(self, url: str, spec: dict):
        self.url = url.rstrip("/")
        self.spec = spec  # its "path" is the key prefix, "" or ending in "/"
        self._store: ts.KvStore | None = None

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"KvDir({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KvDir) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def join(self, *names: str) -> KvDir:
        url, prefix = self.url, self.spec["path"]
        for name in names:
            url = f"{url}/{name}"
            prefix = f"{prefix}{name}/"
        return KvDir(url, {**self.spec, "path": prefix})

    def parent(self) -> KvDir:
        url = self.url.rsplit("/", 1)[0]
        prefix = self.spec["path"].rstrip("/").rpartition("/")[0]
        return KvDir(url, {**self.spec, "path": prefix + "/" if prefix else ""})

    def kvstore(self) -> dict:
        return dict(self.spec)

    def store(self) -> ts.KvStore:
        if self._store is None:
            self._store = self._do("open", lambda: ts.KvStore.open(
                self.spec, context=_context.context()).result())
        return self._store

    def _do(self, what: str, fn):
        try:
            return fn()
        except ValueError as e:  # tensorstore's errors: name the URL and the operation
            raise OSError(f"{self.url}: {what} failed: {e}") from e

    def exists(self) -> bool:
        return bool(self.keys())

    def read(self, key: str, max_bytes: int | None = None, *, head: bool = False) -> bytes | None:
        """The value of ``key``, or None if it is missing; as ``LocalDir.read``.

        With ``head`` only the first ``max_bytes`` are fetched. Otherwise a
        larger value is refused after it was fetched: tensorstore's ranged
        read fails for a range past the value's end, so bounding every read
        would cost a second request per read.
        """
        if head and max_bytes is not None:
            def ranged():
                store = self.store()
                try:
                    return store.read(key, byte_range=slice(0, max_bytes)).result()
                except ValueError as e:
                    if "OUT_OF_RANGE" not in str(e):
                        raise
                    return store.read(key).result()  # shorter than max_bytes

            result = self._do(f"reading {key}", ranged)
            return bytes(result.value)[:max_bytes] if result.state == "value" else None
        result = self._do(f"reading {key}", lambda: self.store().read(key).result())
        if result.state != "value":
            return None
        if max_bytes is not None and len(result.value) > max_bytes:
            raise _too_large(f"{self.url}/{key}", max_bytes)
        return bytes(result.value)

    def write(self, key: str, data: bytes) -> None:
        """Writes ``key``; returns once the store acknowledged it (durable)."""
        self._do(f"writing {key}", lambda: self.store().write(key, data).result())

    def delete(self, key: str) -> None:
        self._do(f"deleting {key}", lambda: self.store().delete_range(
            ts.KvStore.KeyRange(key, key + "\x00")).result())

    def delete_all(self) -> None:
        """Deletes every key under this prefix."""
        self._do("deleting", lambda: self.store().delete_range(ts.KvStore.KeyRange()).result())

    def delete_except(self, keep: set[str]) -> None:
        """Deletes every key under this prefix but those in ``keep``: one range
        request per gap between them."""
        if not keep:
            return self.delete_all()
        bounds = [""] + [b for key in sorted(keep) for b in (key, key + "\x00")] + [""]

        def run():
            store = self.store()
            futures = [store.delete_range(ts.KvStore.KeyRange(lo, hi))
                       for lo, hi in zip(bounds[::2], bounds[1::2]) if hi == "" or lo < hi]
            for f in futures:
                f.result()

        self._do("deleting", run)

    def keys(self) -> list[str]:
        return [k.decode() for k in self._do("listing", lambda: self.store().list().result())]

    def listdir(self) -> list[str]:
        """The first path component of every key under this prefix, once each."""
        return sorted({k.split("/", 1)[0] for k in self.keys()})

    def subdirs(self) -> list[str]:
        """The first components that have keys below them (the "directories")."""
        return sorted({k.split("/", 1)[0] for k in self.keys() if "/" in k})

    def is_dir(self) -> bool:
        """True: any prefix can hold keys."""
        return True

    def check_is_not_a_file(self, error: type[Exception] = NotADirectoryError,
                            message: str | None = None) -> None:
        """Nothing to check: no file can stand where a key prefix is."""

    def mtime(self, key: str) -> float | None:
        """None: object stores give no modification times here."""
        return None

    def size_of(self, key: str) -> int | None:
        """None: object-store listings carry no sizes here."""
        return None

    def file_bytes(self) -> int | None:
        """None: object-store listings carry no sizes here."""
        return None

    def file_usage(self, inodes: dict | None = None) -> tuple[int | None, int]:
        return None, 0


Dir = Union[LocalDir, KvDir]


def _too_large(path: str, max_bytes: int | None) -> Exception:
    return CorruptCheckpointError(
        f"{path}: larger than the {max_bytes} bytes such a file can be (jaxckpt never writes "
        "one this large); it is damaged or not a jaxckpt file")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _aws_spec(bucket: str, prefix: str) -> dict:
    spec: dict = {"driver": "s3", "bucket": bucket, "path": prefix}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        spec["endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        spec["aws_region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # What the default chain would pick first anyway; naming it spares the
        # chain's errors about missing ~/.aws files on every open.
        spec["aws_credentials"] = {"type": "environment"}
    return spec


def locate(path: str | os.PathLike | Dir) -> Dir:
    """The ``Dir`` for a user-given checkpoint path or URL.

    Raises:
        TypeError: ``path`` is not a str or os.PathLike of str.
        ValueError: ``path`` is empty, or a URL jaxckpt cannot write to (unknown
            scheme, read-only http(s), no bucket).
    """
    if isinstance(path, (LocalDir, KvDir)):
        return path
    _context.load()
    try:
        text = os.fspath(path)
    except TypeError:
        raise TypeError(f"checkpoint path must be a str or os.PathLike, got {path!r}") from None
    if not isinstance(text, str):
        raise TypeError(f"checkpoint path must be str or os.PathLike of str, got {path!r}")
    if not text:
        raise ValueError("checkpoint path is empty")
    if "\0" in text:
        raise ValueError(f"checkpoint path {text!r} contains a NUL byte")
    parsed = urllib.parse.urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        return LocalDir(urllib.parse.unquote(parsed.path))
    if not scheme or len(scheme) == 1:  # a Windows drive letter is not a scheme
        return LocalDir(text)
    if scheme in _READ_ONLY_SCHEMES:
        raise ValueError(f"{text}: {scheme}:// is read-only in tensorstore; jaxckpt needs a "
                         "writable store (a local path, file://, s3://, gs:// or memory://).")
    if scheme not in _KV_SCHEMES:
        raise ValueError(f"{text}: unknown URL scheme {scheme!r}; use a local path, file://, "
                         "s3://, gs:// or memory://.")
    if parsed.query or parsed.fragment or parsed.params:
        raise ValueError(f"{text}: checkpoint URLs take no query or fragment")
    key = urllib.parse.unquote(parsed.path).strip("/")
    if any(part in ("", ".", "..") for part in key.split("/")) and key:
        raise ValueError(f"{text}: empty, '.' or '..' path components are not allowed in URLs")
    prefix = key + "/" if key else ""
    bucket = parsed.netloc
    if scheme == "memory":
        joined = "/".join(p for p in (bucket, key) if p)
        prefix = joined + "/" if joined else ""
        return KvDir(f"memory://{joined}", {"driver": "memory", "path": prefix})
    if not bucket:
        raise ValueError(f"{text}: no bucket; write {scheme}://BUCKET/PREFIX")
    url = f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"
    if scheme == "s3":
        return KvDir(url, _aws_spec(bucket, prefix))
    _context.point_gcs_at_emulator()
    return KvDir(url, {"driver": "gcs", "bucket": bucket, "path": prefix})


def refuse_file(where: Dir, error: type[Exception] = NotADirectoryError) -> None:
    """Raises ``error`` if ``where`` is a local file (anything but a directory):
    one check and one message for every call that needs a checkpoint directory."""
    where.check_is_not_a_file(error)
