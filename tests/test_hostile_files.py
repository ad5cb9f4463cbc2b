"""Checkpoints and directories from someone else: hostile manifests, planted
FIFOs, devices and oversized files (issue 13 items 9, 10, 11, 16, 20).

Each hostile manifest is a real checkpoint written by ``jaxckpt.save`` whose
``_CHECKPOINT`` is rewritten with a correct checksum, so the validator (not
the checksum) must refuse it; every reader must agree with ``verify``.
"""

from __future__ import annotations

import os
import shutil
import threading
import tracemalloc

import jax
import numpy as np
import pytest

import jaxckpt
from jaxckpt._format import manifest as _format
from jaxckpt._storage import location as _location
from jaxckpt._commit import state_file as _state_file
from jaxckpt import cli
from jaxckpt._report import describe as _describe, listing as _listing
from jaxckpt.errors import CorruptCheckpointError, StructureMismatchError

from _reliability import TALLY

BIG = 600_000  # int32 elements: over LARGE_BYTES, so the leaf gets an array of its own


def _tree() -> dict:
    return {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "big": np.arange(BIG, dtype=np.int32),
        "empty": np.zeros((0, 3), np.float16),
        "py": [1, 2.5, "s", None],
        "key": jax.random.key(0),
        "s": np.float64(1.5),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("hostile") / "ckpt-1")
    jaxckpt.save(path, _tree(), metadata={"step": 1})
    return path


def _manifest(path: str) -> dict:
    with open(os.path.join(path, _format.MANIFEST), "rb") as f:
        return _format.unpack_manifest(f.read(), path)


def _write_manifest(path: str, manifest: dict) -> None:
    with open(os.path.join(path, _format.MANIFEST), "wb") as f:
        f.write(_format.pack_manifest(manifest))


def _copy(saved: str, tmp_path, name: str = "ckpt-1") -> str:
    dest = str(tmp_path / name)
    shutil.copytree(saved, dest)
    return dest


def _leaf(m: dict, key: str) -> dict:
    return next(leaf for leaf in m["leaves"] if leaf["path"][0][1] == key)


def _nested(depth: int):
    x: list = []
    for _ in range(depth):
        x = [x]
    return x


def _set(key: str, field: str, value):
    def mutate(m):
        _leaf(m, key)[field] = value
    return mutate


def _top(field: str, value):
    def mutate(m):
        m[field] = value
    return mutate


def _py_index(index: int):
    def mutate(m):
        _leaf(m, "py")["path"] = [["k", "py"], ["i", index]]
    return mutate


def _dup_path(m):
    _leaf(m, "s")["path"] = [["k", "w"]]


def _leaf_in_leaf(m):
    _leaf(m, "s")["path"] = [["k", "w"], ["k", "x"]]


def _shift_packed(m):
    leaf = _leaf(m, "w")
    leaf["where"] = ["packed", leaf["where"][1] + len(m["packed_inline"]), leaf["where"][2]]


HOSTILE = {
    # item 9: a list index allocates nothing
    "list index 10**12": _py_index(10**12),
    "list index gap": _py_index(7),
    "duplicate key path": _dup_path,
    "leaf inside a leaf": _leaf_in_leaf,
    # item 10: names are never paths
    "array name ../": _set("big", "where", ["array", "../../other/a/0", [BIG, 4], [BIG, 4]]),
    "array name absolute": _set("big", "where", ["array", "/etc/a", [BIG, 4], [BIG, 4]]),
    "data ../": _top("data", "../other"),
    "data absolute": _top("data", "/tmp"),
    # item 16: nothing made up
    "unknown py tag": lambda m: _leaf(m, "py").update(value=["pickle", b"cos\nsystem\n"]),
    "py tag with wrong type": lambda m: _leaf(m, "py").update(value=["int", "1"]),
    "empty for a non-empty shape": _set("w", "where", ["empty"]),
    "packed past the end": _shift_packed,
    "packed nbytes wrong": _set("w", "where", ["packed", 0, 4]),
    "packed_inline short": lambda m: m.update(packed_inline=m["packed_inline"][:-1]),
    # item 20: wrong types everywhere
    "dtype object": _set("w", "dtype", "object"),
    "dtype str": _set("w", "dtype", "<U5"),
    "dtype void": _set("w", "dtype", "V8"),
    "dtype big-endian": _set("w", "dtype", ">f4"),
    "dtype unknown": _set("w", "dtype", "float33"),
    "dtype not a str": _set("w", "dtype", 7),
    "shape negative": _set("w", "shape", [-3, 4]),
    "shape huge": _set("big", "shape", [2**40, 2**40]),
    "shape not a list": _set("w", "shape", 12),
    "kind unknown": _set("w", "kind", "pickle"),
    "key impl unknown": _set("key", "impl", "os.system"),
    "key shape inconsistent": _set("key", "key_shape", [5]),
    "leaves not a list": _top("leaves", {"a": 1}),
    "leaf not a dict": lambda m: m["leaves"].append(3),
    "path token kind": _set("w", "path", [["x", "w"]]),
    "path token not a pair": _set("w", "path", [["k"]]),
    "path deep": _set("w", "path", _nested(900)),
    "metadata not a dict": _top("metadata", [1, 2]),
    "metadata deep": _top("metadata", {"a": _nested(900)}),
    "version True": _top("version", True),
    "version 99": _top("version", 99),
    "created a str": _top("created", "yesterday"),
    "packed_nbytes huge": _top("packed_nbytes", 2**62),
    "packed_chunk zero": _top("packed_chunk", 0),
    "chunk of wrong rank": _set("big", "where", ["array", "0", [BIG], [BIG]]),
    "chunk zero": _set("big", "where", ["array", "0", [0, 4], [0, 4]]),
    "chunks too many": _set("big", "where", ["array", "0", [1, 4], [1, 4]]),
    "where unknown": _set("w", "where", ["file", "/etc/passwd"]),
    "xxh3 malformed": _set("w", "xxh3", [[[[0, 99], [0, 4]], "0" * 32]]),
    "xxh3 bad digest": _set("w", "xxh3", [[[[0, 3], [0, 4]], "XYZ"]]),
    "not a map": lambda m: (m.clear()),
}


def _hostile(saved: str, tmp_path, mutate) -> str:
    path = _copy(saved, tmp_path)
    m = _manifest(path)
    mutate(m)
    if not m:  # "not a map"
        with open(os.path.join(path, _format.MANIFEST), "wb") as f:
            f.write(_format.pack_manifest([1, 2, 3]))
        return path
    _write_manifest(path, m)
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_manifest_is_refused_by_every_reader(saved, tmp_path, case):
    path = _hostile(saved, tmp_path, HOSTILE[case])
    TALLY["corruptions tried"] += 1
    tracemalloc.start()
    try:
        for read in (jaxckpt.metadata, jaxckpt.restore, jaxckpt.verify, jaxckpt.user_metadata,
                     _describe.inspect, lambda p: jaxckpt.restore(p, _tree())):
            with pytest.raises(CorruptCheckpointError) as e:
                read(path)
            assert path in str(e.value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{case}: {peak} bytes allocated to refuse it"
    # A listing reports it (as damaged or uncommitted) instead of raising.
    _listing.list_checkpoints(str(tmp_path))
    TALLY["corruptions caught"] += 1


def test_error_names_the_field_and_key_path(saved, tmp_path):
    path = _hostile(saved, tmp_path, HOSTILE["dtype object"])
    with pytest.raises(CorruptCheckpointError, match=r"leaves\[\d+\]\.dtype \(key path \['w'\]\)"):
        jaxckpt.restore(path)
    path = _hostile(saved, tmp_path / "x", HOSTILE["list index 10**12"])
    with pytest.raises(CorruptCheckpointError, match=r"list indices.*\['py'\]"):
        jaxckpt.metadata(path)


def test_untouched_manifest_and_forward_fields_still_read(saved, tmp_path):
    """Unknown keys are ignored; valid xxh3 digests and a data prefix are accepted."""
    path = _copy(saved, tmp_path)
    m = _manifest(path)
    m["future_field"] = {"x": 1}
    _leaf(m, "w")["future"] = 1
    assert _leaf(m, "big")["xxh3"]  # format 3 records the digests it checks
    os.rename(os.path.join(path, m["data"]), os.path.join(path, "d-0123abcd"))
    m["data"] = "d-0123abcd"  # any well-formed data prefix is followed
    _write_manifest(path, m)
    jaxckpt.verify(path)
    got = jaxckpt.restore(path)
    assert np.array_equal(got["big"], np.arange(BIG, dtype=np.int32))
    assert got["py"] == [1, 2.5, "s", None]


def test_array_name_cannot_read_another_checkpoint(tmp_path):
    """Item 10: ``../`` in an array name read the other checkpoint's data; verify said OK."""
    jaxckpt.save(str(tmp_path / "other"), {"big": np.ones(BIG, np.int32)})
    jaxckpt.save(str(tmp_path / "mine"), {"big": np.zeros(BIG, np.int32)})
    path = str(tmp_path / "mine")
    m = _manifest(path)
    other = _manifest(str(tmp_path / "other"))["data"]
    m["leaves"][0]["where"][1] = f"../../../other/{other}/a/0"
    _write_manifest(path, m)
    shutil.rmtree(os.path.join(path, m["data"], "a"))
    TALLY["corruptions tried"] += 1
    for read in (jaxckpt.verify, jaxckpt.restore):
        with pytest.raises(CorruptCheckpointError, match="array name"):
            read(path)
    TALLY["corruptions caught"] += 1


def test_array_declaring_more_than_its_files_hold(saved, tmp_path):
    """A 64 GiB shape in a valid-looking record raised a raw OSError (ENOMEM) from
    verify and restore; metadata, which reads no data, shows what is declared."""
    path = _hostile(saved, tmp_path, lambda m: _leaf(m, "big").update(
        shape=[2**34], where=["array", "0", [2**34, 4], [2**34, 4]]))
    TALLY["corruptions tried"] += 1
    for read in (jaxckpt.verify, jaxckpt.restore):
        with pytest.raises(CorruptCheckpointError, match=r"\['big'\] declares 68719476736"):
            read(path)
    assert jaxckpt.metadata(path)["big"].shape == (2**34,)
    TALLY["corruptions caught"] += 1


def test_packed_array_declaring_more_than_its_files_hold(tmp_path):
    """A few manifest bytes declaring a 64 GiB packed leaf raised a raw OSError (ENOMEM)."""
    path = str(tmp_path / "c")
    jaxckpt.save(path, {"p": [np.ones(20_000, np.float32) for _ in range(5)]})
    m = _manifest(path)
    assert "packed_inline" not in m
    last = m["leaves"][-1]
    end = last["where"][1] + (2**34) * 4
    last["shape"], last["where"][2] = [2**34], (2**34) * 4
    chunk = m["packed_chunk"]
    m["packed_nbytes"] = -(-end // chunk) * chunk
    _write_manifest(path, m)
    TALLY["corruptions tried"] += 1
    for read in (jaxckpt.verify, jaxckpt.restore):
        with pytest.raises(CorruptCheckpointError, match="declares"):
            read(path)
    TALLY["corruptions caught"] += 1


def test_declared_list_index_allocates_nothing(tmp_path):
    """Item 9: a tiny manifest declaring a leaf at list index N allocated 8*N bytes."""
    path = str(tmp_path / "c")
    jaxckpt.save(path, [1])
    m = _manifest(path)
    m["leaves"][0]["path"] = [["i", 200_000_000]]
    _write_manifest(path, m)
    assert os.path.getsize(os.path.join(path, _format.MANIFEST)) < 200
    TALLY["corruptions tried"] += 1
    tracemalloc.start()
    try:
        for read in (jaxckpt.metadata, jaxckpt.restore):
            with pytest.raises(CorruptCheckpointError, match="list indices"):
                read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    TALLY["corruptions caught"] += 1


def test_unflatten_raw_refuses_gaps_without_allocating():
    from jaxckpt import _tree as tree

    assert tree.unflatten_raw([(("i", 1),), (("i", 0),)], ["b", "a"]) == ["a", "b"]
    assert tree.unflatten_raw([], []) == {}
    for paths in ([(("i", 10**15),)], [(("i", 0),), (("i", 2),)],
                  [(("k", "a"),), (("k", "a"), ("k", "b"))],
                  [(("k", "a"), ("k", "b")), (("k", "a"),)], [(), (("k", "a"),)]):
        with pytest.raises(CorruptCheckpointError):
            tree.unflatten_raw(paths, list(range(len(paths))))


def _in_thread(fn, timeout: float = 60):
    """Runs ``fn`` in a daemon thread; fails (instead of hanging) if it blocks."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # handed back to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked (a FIFO was opened for reading)"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_fifo_manifest_never_blocks(saved, tmp_path):
    """Item 11: a FIFO planted as _CHECKPOINT blocked latest_checkpoint, ls and verify."""
    with jaxckpt.CheckpointManager(str(tmp_path / "run"), max_to_keep=3) as mgr:
        mgr.save({"x": np.ones(3)})
    ckpt = os.path.join(str(tmp_path / "run"), "ckpt-1")
    os.remove(os.path.join(ckpt, _format.MANIFEST))
    os.mkfifo(os.path.join(ckpt, _format.MANIFEST))
    TALLY["bad inputs tried"] += 1
    assert _in_thread(lambda: jaxckpt.latest_checkpoint(str(tmp_path / "run"))) is None
    with pytest.raises(CorruptCheckpointError, match="FIFO"):
        _in_thread(lambda: jaxckpt.restore(ckpt))
    with pytest.raises(CorruptCheckpointError, match="FIFO"):
        _in_thread(lambda: jaxckpt.verify(ckpt))
    _in_thread(lambda: _listing.list_checkpoints(str(tmp_path / "run")))
    assert _in_thread(lambda: cli.main(["ls", str(tmp_path / "run")])) == 0
    for argv in (["verify", str(tmp_path / "run")], ["verify", ckpt], ["show", ckpt]):
        assert _in_thread(lambda: cli.main(argv)) != 0
    TALLY["bad inputs refused"] += 1


def test_fifo_state_file_never_blocks(tmp_path):
    run = str(tmp_path / "run")
    with jaxckpt.CheckpointManager(run, max_to_keep=3) as mgr:
        mgr.save({"x": np.ones(3)})
    os.remove(os.path.join(run, "checkpoint"))
    os.mkfifo(os.path.join(run, "checkpoint"))
    TALLY["bad inputs tried"] += 1
    with pytest.raises(CorruptCheckpointError, match="FIFO"):
        _in_thread(lambda: jaxckpt.latest_checkpoint(run))
    with pytest.raises(CorruptCheckpointError, match="FIFO"):
        _in_thread(lambda: _state_file.read(run))
    for argv in (["ls", run], ["verify", run]):
        assert _in_thread(lambda: cli.main(argv)) != 0
    TALLY["bad inputs refused"] += 1


def test_device_and_oversized_files_are_refused(saved, tmp_path):
    """Item 9: /dev/zero linked in as _CHECKPOINT, or a huge one, was read without limit."""
    ckpt = _copy(saved, tmp_path)
    manifest = os.path.join(ckpt, _format.MANIFEST)
    os.remove(manifest)
    os.symlink("/dev/zero", manifest)
    TALLY["bad inputs tried"] += 2
    with pytest.raises(CorruptCheckpointError, match="character device"):
        _in_thread(lambda: jaxckpt.restore(ckpt))
    os.remove(manifest)
    with open(manifest, "wb") as f:  # sparse: costs no disk
        f.truncate(300 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptCheckpointError, match="larger than"):
            jaxckpt.metadata(ckpt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    run = str(tmp_path / "run")
    os.mkdir(run)
    with open(os.path.join(run, "checkpoint"), "wb") as f:
        f.truncate(17 << 20)
    with pytest.raises(CorruptCheckpointError, match="larger than"):
        jaxckpt.latest_checkpoint(run)
    TALLY["bad inputs refused"] += 2


def test_object_store_reads_are_bounded():
    where = _location.locate("memory://hostile-bounded/c")
    where.write("k", b"0123456789")
    assert where.read("k", 4, head=True) == b"0123"
    assert where.read("k", 40, head=True) == b"0123456789"
    assert where.read("missing", 4, head=True) is None
    assert where.read("k", 10) == b"0123456789"
    with pytest.raises(CorruptCheckpointError, match="larger than"):
        where.read("k", 9)


def test_masked_array_refused_at_save(tmp_path):
    """Item 16: np.ma arrays (ndarray subclasses) lost their mask silently."""
    x = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])
    TALLY["bad inputs tried"] += 1
    with pytest.raises(TypeError, match=r"masked array at key path \['m'\]"):
        jaxckpt.save(str(tmp_path / "c"), {"m": x})
    assert not os.path.exists(tmp_path / "c")
    with jaxckpt.CheckpointManager(str(tmp_path / "run")) as mgr:
        for _ in range(2):  # the second save takes the cached-structure path
            with pytest.raises(TypeError, match="masked array"):
                mgr.save({"m": x})
    TALLY["bad inputs refused"] += 1


def test_int_target_never_truncates_a_float(tmp_path):
    """Item 16: an int target truncated a saved 1.5 to 1."""
    path = str(tmp_path / "c")
    jaxckpt.save(path, {"a": 1.5, "b": 1.0, "c": 3, "d": np.float64(2.5), "e": 2})
    TALLY["bad inputs tried"] += 2
    with pytest.raises(StructureMismatchError, match=r"\['a'\]: float 1.5 on disk, int in the"):
        jaxckpt.restore(path, {"a": 0, "b": 0, "c": 0, "d": 0.0, "e": True}, partial=True)
    with pytest.raises(StructureMismatchError, match=r"\['d'\].*2.5 on disk, int"):
        jaxckpt.restore(path, {"d": 0}, partial=True)
    TALLY["bad inputs refused"] += 2
    got = jaxckpt.restore(path, {"a": 0.0, "b": 0, "c": 0.0, "d": 0.0, "e": 0})
    assert got == {"a": 1.5, "b": 1, "c": 3.0, "d": 2.5, "e": 2}
    assert type(got["b"]) is int and type(got["c"]) is float


def test_decode_py_refuses_unknown_tags():
    with pytest.raises(CorruptCheckpointError, match="unknown"):
        _format.decode_py(["pickle", b"x"])


@pytest.mark.parametrize("case", ["unknown py tag", "dtype object", "list index gap",
                                  "array name ../", "leaves not a list", "path deep",
                                  "metadata deep"])
@pytest.mark.parametrize("command", ["ls", "show", "verify"])
def test_cli_never_prints_a_traceback(saved, tmp_path, capsys, case, command):
    """Item 20: the CLI printed tracebacks for malformed manifests."""
    run = tmp_path / "run"
    run.mkdir()
    path = _hostile(saved, run, HOSTILE[case])
    _state_file.prepare(str(run), _state_file.CheckpointState("ckpt-1", ["ckpt-1"], [1.0], None)).install()
    target = str(run) if command == "ls" else path
    code = cli.main([command, target])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if command == "ls":
        assert code == 0
    else:
        assert code == 1, err
        assert len(err.strip().splitlines()) >= 1 and "ckpt-1" in out + err
