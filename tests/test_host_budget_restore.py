"""Restores under a host-memory budget (issue 17): ``max_host_bytes`` streams each
large leaf slab by slab onto its devices instead of reading it whole on the host.

Both ways of assembling a leaf run here on the CPU backend: CPU devices adopt one
host buffer filled slab by slab (the default), and the accelerator way (each slab
sent to the device and written into a donated device buffer) is forced with
``stream.ADOPT_ON_CPU = False``. The memory tests run a child under an address-space
limit (``RLIMIT_AS``) that a whole-leaf read exceeds: tensorstore maps the leaf's
whole shard file besides the result (2x the leaf), a budgeted read maps one slab.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxckpt
from jaxckpt import CorruptCheckpointError
from jaxckpt._read import reader as _reader, stream

sys.path.insert(0, os.path.dirname(__file__))
from _reliability import TALLY  # noqa: E402

MiB = 1 << 20


@pytest.fixture(params=[True, False], ids=["adopt", "transfer"])
def adopt(request, monkeypatch):
    """Each test once per way of assembling a leaf on its devices."""
    monkeypatch.setattr(stream, "ADOPT_ON_CPU", request.param)
    return request.param


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {
        # Several slabs under a 1 MiB budget, the last one shorter (remainder).
        "f32": rng.standard_normal((1001, 700)).astype(np.float32),
        "bf16": rng.standard_normal((3, 1200, 333)).astype(ml_dtypes.bfloat16),
        "bool": rng.integers(0, 2, (2_100_007,)).astype(bool),
        "int4": rng.integers(-8, 8, (1500, 1501)).astype(ml_dtypes.int4),
        "c64": (rng.standard_normal((300, 1000)) + 1j).astype(np.complex64),
        # One row larger than a slab: cut along the second axis.
        "wide": rng.integers(0, 1 << 30, (2, 300_001)).astype(np.int32),
        "scalar": np.float32(3.5),
        "zero_d": np.array(7, np.int32),
        "empty": np.zeros((0, 5), np.float32),
        "small": np.arange(10, dtype=np.int16),
        "key": jax.random.key(3),
        "py": 5,
    }


def _abstract(tree):
    return jax.tree.map(lambda x: x if isinstance(x, int) else
                        jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def _same(a, b) -> None:
    if isinstance(b, int):
        assert a == b and type(a) is int
        return
    if jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
        assert a.dtype == b.dtype
        b, a = jax.random.key_data(b), jax.random.key_data(a)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_a_budgeted_restore_is_bit_exact(tmp_path, adopt):
    tree = _tree()
    jaxckpt.save(tmp_path / "c", tree)
    out = jaxckpt.restore(tmp_path / "c", _abstract(tree), max_host_bytes=MiB)
    for k in tree:
        _same(out[k], tree[k])
        if not isinstance(tree[k], int):
            assert isinstance(out[k], jax.Array), k
    raw = jaxckpt.restore(tmp_path / "c", max_host_bytes=MiB)
    for k in tree:
        _same(raw[k] if k in ("key", "py") else jnp.asarray(raw[k]), tree[k])
    onto_numpy = jaxckpt.restore(tmp_path / "c", {k: np.zeros_like(v) for k, v in tree.items()
                                                  if k not in ("key", "py")},
                                 partial=True, max_host_bytes=MiB)
    for k, v in onto_numpy.items():
        assert type(v) is np.ndarray, k
        _same(v, tree[k])


def test_a_budgeted_restore_casts_to_the_target_dtype(tmp_path, adopt):
    tree = _tree()
    jaxckpt.save(tmp_path / "c", {"f32": tree["f32"], "bf16": tree["bf16"]})
    target = {"f32": jax.ShapeDtypeStruct((1001, 700), jnp.bfloat16),
              "bf16": np.zeros((3, 1200, 333), np.float32)}
    out = jaxckpt.restore(tmp_path / "c", target, max_host_bytes=MiB)
    _same(out["f32"], jnp.asarray(tree["f32"].astype(ml_dtypes.bfloat16)))
    _same(out["bf16"], tree["bf16"].astype(np.float32))


@pytest.mark.parametrize("spec", [P("x"), P(None, "x"), P("x", "y"), P()],
                         ids=["rows", "cols", "grid", "replicated"])
def test_a_budgeted_restore_onto_sharded_targets_is_bit_exact(tmp_path, adopt, spec):
    devices = np.array(jax.devices()[:4])
    mesh = Mesh(devices.reshape(4) if len(spec) < 2 else devices.reshape(2, 2),
                ("x",) if len(spec) < 2 else ("x", "y"))
    x = np.random.default_rng(1).standard_normal((1000, 1004)).astype(np.float32)
    jaxckpt.save(tmp_path / "c", {"x": x})
    sharding = NamedSharding(mesh, spec)
    out = jaxckpt.restore(tmp_path / "c", {"x": jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                      sharding=sharding)},
                          max_host_bytes=MiB)["x"]
    assert out.sharding == sharding
    _same(out, x)
    for shard in out.addressable_shards:
        assert np.asarray(shard.data).tobytes() == x[shard.index].tobytes()


def test_a_budgeted_restore_keeps_a_host_memory_kind(tmp_path, adopt):
    x = np.random.default_rng(5).standard_normal((1000, 600)).astype(np.float32)
    jaxckpt.save(tmp_path / "c", {"x": x})
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
    out = jaxckpt.restore(tmp_path / "c", {"x": jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                      sharding=sharding)},
                          max_host_bytes=MiB)["x"]
    assert out.sharding.memory_kind == "pinned_host"
    _same(out, x)


def test_a_manager_restores_under_a_budget(tmp_path, adopt):
    x = np.random.default_rng(2).standard_normal((2000, 300)).astype(np.float32)
    with jaxckpt.CheckpointManager(tmp_path / "run") as mngr:
        mngr.save({"x": x}, 1)
        out = mngr.restore(target={"x": jax.ShapeDtypeStruct(x.shape, x.dtype)},
                           max_host_bytes=MiB)
    _same(out["x"], x)


def _digest_pair(tmp_path) -> tuple[str, str]:
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    rng = np.random.default_rng(4)
    jaxckpt.save(old, {"y": rng.standard_normal((1024, 1024)).astype(np.float32)})
    jaxckpt.save(new, {"y": rng.standard_normal((1024, 1024)).astype(np.float32)})
    return old, new


def _array_dir(path: str) -> str:
    manifest = _reader.read_manifest(path)
    (leaf,) = manifest["leaves"]
    return os.path.join(path, manifest.get("data", ""), "a", leaf["where"][1])


def test_a_budgeted_restore_checks_the_manifests_digests(tmp_path, adopt):
    old, new = _digest_pair(tmp_path)
    shutil.rmtree(_array_dir(new))
    shutil.copytree(_array_dir(old), _array_dir(new))
    target = {"y": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}
    TALLY["corruptions tried"] += 1
    for call in (lambda: jaxckpt.restore(new, target, max_host_bytes=MiB),
                 lambda: jaxckpt.restore(new, max_host_bytes=MiB)):
        with pytest.raises(CorruptCheckpointError, match=r"\['y'\].*digest"):
            call()
    TALLY["corruptions caught"] += 1


def test_a_budgeted_restore_catches_a_flipped_byte(tmp_path, adopt):
    old, _ = _digest_pair(tmp_path)
    (name,) = [os.path.join(d, f) for d, _, fs in os.walk(_array_dir(old)) for f in fs]
    with open(name, "r+b") as f:
        f.seek(3 * MiB)
        byte = f.read(1)
        f.seek(3 * MiB)
        f.write(bytes([byte[0] ^ 1]))
    TALLY["corruptions tried"] += 1
    with pytest.raises(CorruptCheckpointError, match=r"\['y'\]"):
        jaxckpt.restore(old, {"y": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)},
                        max_host_bytes=MiB)
    TALLY["corruptions caught"] += 1


@pytest.mark.parametrize("bad", [0, -1, MiB - 1, 1.5e9, True, "64M", [MiB]])
def test_a_bad_budget_is_refused(tmp_path, bad):
    jaxckpt.save(tmp_path / "c", {"x": np.ones(3)})
    TALLY["bad inputs tried"] += 1
    with jaxckpt.CheckpointManager(tmp_path / "run") as mngr:
        mngr.save({"x": np.ones(3)}, 1)
        for call in (lambda: jaxckpt.restore(tmp_path / "c", max_host_bytes=bad),
                     lambda: mngr.restore(max_host_bytes=bad)):
            with pytest.raises((TypeError, ValueError),
                               match=r"max_host_bytes(=.* is below the minimum| must be an int)"):
                call()
    TALLY["bad inputs refused"] += 1


# ------------------------------------------------------- under a memory limit

LEAF_ROWS = 64 * 1024  # 256 MiB of float32 rows of 1024
BUDGET = 32 * MiB
MARGIN = 128 * MiB  # a whole-leaf read needs about 2x the leaf: over the limit

_CHILD = textwrap.dedent("""
    import os, resource, sys
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxckpt
    from jaxckpt._read import stream

    path, warm, budget, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    kw = {{"max_host_bytes": budget}} if budget else {{}}
    stream.ADOPT_ON_CPU = mode != "transfer"
    rows = {rows}
    if mode == "sharded":
        sharding = NamedSharding(Mesh(np.array(jax.devices()), ("x",)), P("x"))
    else:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(n):
        return {{"w": jax.ShapeDtypeStruct((n, 1024), jnp.float32, sharding=sharding)}}

    # Start the thread pools and compile what a restore compiles, before measuring.
    jax.block_until_ready(jaxckpt.restore(warm, target(rows // 8), **kw))

    def vm_size():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize"):
                return int(line.split()[1]) * 1024

    limit = vm_size() + rows * 1024 * 4 + {budget} + {margin}
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        out = jaxckpt.restore(path, target(rows), **kw)["w"]
        jax.block_until_ready(out)
    except MemoryError as e:
        print("MemoryError:", e)
        sys.exit(3)
    assert out.sharding == sharding
    row = np.asarray(out[rows - 1])
    assert (row == np.float32(rows - 1)).all(), row
    print("restored")
""")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A checkpoint of one 256 MiB leaf (row i all i), and one of an eighth of it."""
    root = tmp_path_factory.mktemp("big")
    paths = []
    for rows in (LEAF_ROWS, LEAF_ROWS // 8):
        w = np.broadcast_to(np.arange(rows, dtype=np.float32)[:, None], (rows, 1024))
        paths.append(str(root / f"w{rows}"))
        jaxckpt.save(paths[-1], {"w": np.ascontiguousarray(w)})
        del w
    return paths


def _child(big, budget: int, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    script = _CHILD.format(rows=LEAF_ROWS, budget=BUDGET, margin=MARGIN)
    return subprocess.run([sys.executable, "-c", script, *big, str(budget), mode], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["adopt", "transfer", "sharded"])
def test_a_budgeted_restore_fits_under_a_memory_limit(big, mode):
    done = _child(big, BUDGET, mode)
    assert done.returncode == 0 and "restored" in done.stdout, done.stdout + done.stderr


def test_a_whole_leaf_restore_exceeds_that_limit(big):
    """The limit above is tight enough to matter: without the budget it fails,
    with a MemoryError (not a report of damage: the checkpoint is sound)."""
    done = _child(big, 0, "adopt")
    assert done.returncode == 3 and "MemoryError" in done.stdout, done.stdout + done.stderr
    assert "out of memory" in done.stdout and "['w']" in done.stdout, done.stdout


def test_manager_budget_is_the_restore_default(tmp_path):
    """A manager's max_host_bytes also bounds its restores' reads (a restore's own overrides it)."""
    big = np.arange(4 << 20, dtype=np.float32)  # 16 MiB
    with jaxckpt.CheckpointManager(tmp_path / "m", max_host_bytes=2 << 20) as mngr:
        mngr.save({"w": big})
        mngr.wait_until_finished()
        assert mngr._restorer.default_budget == 2 << 20
        np.testing.assert_array_equal(mngr.restore(target={"w": big})["w"], big)
        np.testing.assert_array_equal(mngr.restore(max_host_bytes=4 << 20)["w"], big)
    with jaxckpt.CheckpointManager(tmp_path / "m", max_host_bytes=1000) as mngr:
        assert mngr._restorer.default_budget == stream.MIN_HOST_BYTES
