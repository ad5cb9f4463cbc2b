"""A FUSE pass-through file system that records what a power cut would keep.

In the spirit of LazyFS: ``python _lazyfs.py BACKING MOUNT LOG`` mounts
BACKING at MOUNT (foreground, one thread, so operations reach it one at a
time in the order the kernel completes them) and logs every operation that
changes the file system, or makes a change durable, by inode (our own
numbers, so a rename carries a file's data and a directory's entries with
it). On unmount it pickles the log to LOG.

``Durable`` replays a log prefix with the strict crash model the issue asks
for: a file's data is durable only up to its last ``fsync``; a directory's
entries (name -> inode: creates, renames, unlinks, mkdir, rmdir) only up to
that directory's last ``fsync``. Everything else is lost at a cut.
``Durable.materialize`` writes the image a host would find after a power cut
at that instant. One recorded run therefore gives a cut after every
operation.

``stat`` of ``MOUNT/.powercut-mark-<label>`` logs a marker (and fails with
ENOENT): the worker uses it to say "this commit returned here".

``rename`` honours ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE`` (mfusepy drops
the flags, so ``_FlagsFUSE`` passes them on); with ``LAZYFS_REFUSE_RENAME_FLAGS=1``
it refuses any flag with EINVAL, as NFS does, so the library's two-rename
fallback runs.

``link`` adds a directory entry to an existing inode: like a create, the new
name is durable only once its directory is fsync'd, and the inode's data is
whatever was fsync'd through any of its names. An unlink drops one name; the
inode lives on while another name reaches it. With ``LAZYFS_REFUSE_LINKS=1``
it refuses links with EPERM (as some FUSE and network file systems do), so
incremental saves fall back to writing every file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pickle
import subprocess
import sys
import time

MARK = ".powercut-mark-"
_NOREPLACE, _EXCHANGE = 1, 2


class _Node:
    __slots__ = ("kind", "children")

    def __init__(self, kind: str):
        self.kind = kind  # "f" or "d"
        self.children: dict[str, int] = {}


def _libc_renameat2():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _serve(backing: str, mount: str, log_path: str) -> None:
    import mfusepy

    class _FlagsFUSE(mfusepy.FUSE):
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(old.decode(), new.decode(), flags)

    renameat2 = _libc_renameat2()
    refuse_flags = os.environ.get("LAZYFS_REFUSE_RENAME_FLAGS") == "1"
    refuse_links = os.environ.get("LAZYFS_REFUSE_LINKS") == "1"

    class PowerCutFS(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            self.log: list[tuple] = []
            self.nodes: dict[int, _Node] = {0: _Node("d")}
            self.next_id = 1
            self.fh_ino: dict[int, int] = {}

        # -- namespace bookkeeping (live tree of our inode numbers) --
        def _full(self, path: str) -> str:
            return os.path.join(backing, path.lstrip("/"))

        def _resolve(self, path: str) -> int:
            ino = 0
            for part in path.strip("/").split("/"):
                if part:
                    ino = self.nodes[ino].children[part]
            return ino

        def _parent(self, path: str) -> tuple[int, str]:
            head, name = os.path.split(path.rstrip("/"))
            return self._resolve(head), name

        def _new(self, path: str, kind: str) -> int:
            parent, name = self._parent(path)
            ino = self.next_id
            self.next_id += 1
            self.nodes[ino] = _Node(kind)
            self.nodes[parent].children[name] = ino
            self.log.append(("new", parent, name, ino, kind))
            return ino

        # -- reads: plain pass-through --
        def getattr(self, path, fh=None):
            if os.path.basename(path).startswith(MARK):
                self.log.append(("mark", os.path.basename(path)[len(MARK):]))
                raise OSError(errno.ENOENT, "")
            st = os.lstat(self._full(path)) if path is not None else os.fstat(fh)
            out = {k: getattr(st, k) for k in (
                "st_mode", "st_nlink", "st_size", "st_uid", "st_gid", "st_ino")}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return out

        def access(self, path, amode):
            if not os.access(self._full(path), amode):
                raise OSError(errno.EACCES, "")

        def readdir(self, path, fh):
            return [".", ".."] + os.listdir(self._full(path))

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def statfs(self, path):
            sv = os.statvfs(self._full(path))
            return {k: getattr(sv, k) for k in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")}

        def chmod(self, path, mode):
            os.chmod(self._full(path), mode)

        def chown(self, path, uid, gid):
            os.chown(self._full(path), uid, gid)

        def utimens(self, path, times=None):
            os.utime(self._full(path), ns=times)

        # -- files --
        def open(self, path, flags):
            fh = os.open(self._full(path), flags)
            ino = self._resolve(path)
            self.fh_ino[fh] = ino
            if flags & os.O_TRUNC and flags & os.O_ACCMODE:
                self.log.append(("trunc", ino, 0))
            return fh

        def create(self, path, mode, flags):
            existed = os.path.lexists(self._full(path))
            fh = os.open(self._full(path), flags | os.O_CREAT, mode)
            ino = self._resolve(path) if existed else self._new(path, "f")
            self.fh_ino[fh] = ino
            if existed and flags & os.O_TRUNC:
                self.log.append(("trunc", ino, 0))
            return fh

        def write(self, path, data, offset, fh):
            n = os.pwrite(fh, data, offset)
            self.log.append(("write", self.fh_ino[fh], offset, bytes(data[:n])))
            return n

        def truncate(self, path, length, fh=None):
            if fh is not None:
                os.ftruncate(fh, length)
                ino = self.fh_ino[fh]
            else:
                os.truncate(self._full(path), length)
                ino = self._resolve(path)
            self.log.append(("trunc", ino, length))

        def fsync(self, path, datasync, fh):
            os.fsync(fh)
            self.log.append(("fsync", self.fh_ino[fh]))

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            os.close(fh)
            self.fh_ino.pop(fh, None)

        # -- directories --
        def mkdir(self, path, mode):
            os.mkdir(self._full(path), mode)
            self._new(path, "d")

        def opendir(self, path):
            return 0

        def releasedir(self, path, fh):
            return 0

        def fsyncdir(self, path, datasync, fh):
            self.log.append(("fsync", self._resolve(path)))

        def unlink(self, path):
            os.unlink(self._full(path))
            parent, name = self._parent(path)
            del self.nodes[parent].children[name]
            self.log.append(("unlink", parent, name))

        def rmdir(self, path):
            os.rmdir(self._full(path))
            parent, name = self._parent(path)
            del self.nodes[parent].children[name]
            self.log.append(("unlink", parent, name))

        def rename(self, old, new, flags=0):
            if flags and (refuse_flags or flags & ~(_NOREPLACE | _EXCHANGE)):
                raise OSError(errno.EINVAL, "")
            if renameat2(-100, self._full(old).encode(), -100, self._full(new).encode(), flags):
                raise OSError(ctypes.get_errno(), "")
            sp, sname = self._parent(old)
            dp, dname = self._parent(new)
            src, dst = self.nodes[sp].children, self.nodes[dp].children
            moved = src.pop(sname)
            if flags & _EXCHANGE:
                src[sname] = dst[dname]
            dst[dname] = moved
            self.log.append(("rename", sp, sname, dp, dname, bool(flags & _EXCHANGE)))

        def symlink(self, target, source):
            raise OSError(errno.EPERM, "the power-cut file system models no links")

        def link(self, target, source):
            # mfusepy's order: ``target`` is the new name, ``source`` the existing file.
            if refuse_links:
                raise OSError(errno.EPERM, "this power-cut file system refuses hard links")
            ino = self._resolve(source)
            if self.nodes[ino].kind != "f":
                raise OSError(errno.EPERM, "")
            os.link(self._full(source), self._full(target))
            parent, name = self._parent(target)
            self.nodes[parent].children[name] = ino
            self.log.append(("link", parent, name, ino))

        def destroy(self, path):
            with open(log_path + ".part", "wb") as f:
                pickle.dump(self.log, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(log_path + ".part", log_path)

    _FlagsFUSE(PowerCutFS(), mount, foreground=True, nothreads=True, hard_remove=True,
               attr_timeout=0, entry_timeout=0, negative_timeout=0)


class Durable:
    """Replays a log, keeping both the live and the durable state of every inode."""

    def __init__(self):
        self.kind = {0: "d"}
        self.live_data: dict[int, bytearray] = {}
        self.durable_data: dict[int, bytes] = {}
        self.live_entries: dict[int, dict[str, int]] = {0: {}}
        self.durable_entries: dict[int, dict[str, int]] = {0: {}}
        # Per directory, its entry changes since its last fsync, in order, each
        # a tuple of (name, inode or None for a removal) applied atomically (a
        # rename within a directory is one change): what a journal may or may
        # not have written out when power went.
        self.pending: dict[int, list[tuple[tuple[str, int | None], ...]]] = {0: []}

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "new":
            _, parent, name, ino, k = op
            self.kind[ino] = k
            if k == "d":
                self.live_entries[ino], self.durable_entries[ino] = {}, {}
                self.pending[ino] = []
            else:
                self.live_data[ino], self.durable_data[ino] = bytearray(), b""
            self.live_entries[parent][name] = ino
            self.pending[parent].append(((name, ino),))
        elif kind == "link":
            # One more name for an existing file: pending in its directory like
            # a create; the data is the inode's, whichever name reaches it.
            _, parent, name, ino = op
            self.live_entries[parent][name] = ino
            self.pending[parent].append(((name, ino),))
        elif kind == "write":
            _, ino, offset, data = op
            buf = self.live_data[ino]
            if len(buf) < offset:
                buf.extend(bytes(offset - len(buf)))
            buf[offset:offset + len(data)] = data
        elif kind == "trunc":
            _, ino, length = op
            buf = self.live_data[ino]
            del buf[length:]
            buf.extend(bytes(length - len(buf)))
        elif kind == "fsync":
            ino = op[1]
            if self.kind[ino] == "d":
                self.durable_entries[ino] = dict(self.live_entries[ino])
                self.pending[ino] = []
            else:
                self.durable_data[ino] = bytes(self.live_data[ino])
        elif kind == "unlink":
            _, parent, name = op
            del self.live_entries[parent][name]
            self.pending[parent].append(((name, None),))
        elif kind == "rename":
            _, sp, sname, dp, dname, exchange = op
            src, dst = self.live_entries[sp], self.live_entries[dp]
            moved = src.pop(sname)
            if exchange:
                src[sname] = dst[dname]
            dst[dname] = moved
            if sp == dp:
                self.pending[sp].append(((sname, src.get(sname)), (dname, moved)))
            else:
                self.pending[sp].append(((sname, src.get(sname)),))
                self.pending[dp].append(((dname, moved),))
        elif kind != "mark":
            raise ValueError(f"unknown log entry {op!r}")

    def image(self, rng=None) -> dict[str, bytes | None]:
        """The durable tree: relative path -> file bytes (None for a directory).

        With ``rng`` (a ``random.Random``), each directory also keeps a random
        prefix of its un-synced entry changes, as if the file system had
        journaled some metadata on its own before the cut, independently per
        directory; file data stays only what was fsync'd (the dangerous
        order: a name that survives while its data does not)."""
        out: dict[str, bytes | None] = {}

        def entries(ino: int) -> dict[str, int]:
            got = dict(self.durable_entries[ino])
            if rng is not None:
                changes = self.pending[ino]
                for change in changes[:rng.randint(0, len(changes))]:
                    for name, child in change:
                        if child is None:
                            got.pop(name, None)
                        else:
                            got[name] = child
            return got

        def walk(ino: int, prefix: str, above: frozenset) -> None:
            for name, child in sorted(entries(ino).items()):
                path = prefix + name
                if self.kind[child] == "d":
                    if child not in above:
                        out[path] = None
                        walk(child, path + "/", above | {child})
                else:
                    out[path] = self.durable_data[child]

        walk(0, "", frozenset([0]))
        return out


def materialize(image: dict[str, bytes | None], dest: str) -> None:
    """Writes ``image`` (from ``Durable.image``) under the new directory ``dest``."""
    os.makedirs(dest)
    for path, data in sorted(image.items()):
        full = os.path.join(dest, path)
        if data is None:
            os.mkdir(full)
        else:
            with open(full, "wb") as f:
                f.write(data)


def fuse_unavailable() -> str | None:
    """Why this host cannot mount the file system, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this host"
    return None


@contextlib.contextmanager
def mounted(tmp: str, refuse_rename_flags: bool = False, refuse_links: bool = False):
    """Mounts a power-cut file system under ``tmp``; yields ``(mount, log)``
    where ``log`` is a list filled with the recorded operations on unmount."""
    backing, mount, log_path = (os.path.join(tmp, n) for n in ("backing", "mnt", "ops.pickle"))
    os.makedirs(backing)
    os.makedirs(mount)
    env = dict(os.environ, LAZYFS_REFUSE_RENAME_FLAGS="1" if refuse_rename_flags else "0",
               LAZYFS_REFUSE_LINKS="1" if refuse_links else "0")
    server = subprocess.Popen([sys.executable, __file__, backing, mount, log_path], env=env)
    log: list[tuple] = []
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mount):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the power-cut file system did not mount at {mount}")
            time.sleep(0.05)
        yield mount, log
    finally:
        if os.path.ismount(mount):
            subprocess.run(["fusermount3", "-u", mount], check=True)
        server.wait(timeout=60)
    with open(log_path, "rb") as f:
        log.extend(pickle.load(f))


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
