"""save_in_jit in a multi-process program: 2 jax.distributed processes x 2 CPU devices.

A state sharded over the 4 devices is trained by a jitted ``fori_loop`` and
then a ``scan`` that call ``save_in_jit`` every step; every process's
callback queues the same numbered save with its own blocks, process 0
commits, and a new manager in each process restores the latest bit-exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import jaxckpt

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _multihost_worker import JIT_SHAPES, value  # noqa: E402
from test_multihost import WORKER, _free_port  # noqa: E402

# Slow (two processes): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow


def run(scenario: str, directory, nproc: int, devices: int, mesh: str, tmp_path,
        timeout: float = 300) -> list[dict]:
    """As test_multihost.run, with each process's output in a file: XLA's
    warnings fill a pipe that is read only later, which would block the
    writer (and, at the next collective, every process)."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    logs = [(open(tmp_path / f"out{i}", "w+"), open(tmp_path / f"err{i}", "w+"))
            for i in range(nproc)]
    procs = [subprocess.Popen([sys.executable, WORKER, scenario, str(directory), str(port),
                               str(nproc), str(i), mesh], stdout=out, stderr=err, text=True,
                              env=env)
             for i, (out, err) in enumerate(logs)]
    facts = []
    try:
        for i, (p, (out, err)) in enumerate(zip(procs, logs)):
            rc = p.wait(timeout=timeout)
            out.seek(0), err.seek(0)
            text, errors = out.read(), err.read()
            ok = [line for line in text.splitlines() if line.startswith("OK ")]
            assert rc == 0 and ok, f"process {i} rc={rc}\n{text[-2000:]}\n{errors[-4000:]}"
            facts.append(json.loads(ok[-1][3:]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for out, err in logs:
            out.close(), err.close()
    return facts


def _where(directory) -> dict:
    return {leaf["path"][-1][1]: leaf
            for leaf in jaxckpt._read.reader.read_manifest(directory)["leaves"]}


def test_save_in_jit_with_two_processes_each_writing_its_blocks(tmp_path):
    d = tmp_path / "run"
    facts = run("in_jit", d, nproc=2, devices=2, mesh="4", tmp_path=tmp_path)
    for f in facts:  # the same checkpoints, the same latest, on every process
        assert f["checkpoints"] == ["ckpt-4", "ckpt-8", "ckpt-12"], f
        assert f["latest"] == "ckpt-12", f
    assert sum(f["shards_checked"] for f in facts) == 16
    jaxckpt.verify(d / "ckpt-12")
    leaves = _where(d / "ckpt-12")
    # Each process wrote its own block of the split leaves (its digests reached
    # process 0's manifest); the rest process 0 wrote whole or packed.
    assert [index for index, _ in leaves["big"]["xxh3"]] == [
        [[0, 1024], [0, 512]], [[1024, 2048], [0, 512]]]
    assert [index for index, _ in leaves["wide"]["xxh3"]] == [
        [[0, 3], [0, 1 << 17]], [[0, 3], [1 << 17, 1 << 18]]]
    assert leaves["odd"]["where"][0] == "array" and len(leaves["odd"]["xxh3"]) == 1
    assert leaves["small"]["where"][0] == "packed"
    # Read back in this (single) process, whole: bit-exact.
    out = jaxckpt.restore(d / "ckpt-12")
    for name, shape in JIT_SHAPES.items():
        got = np.asarray(out["params"][name])
        assert got.tobytes() == value(name, shape, 12).tobytes(), name
    assert int(out["step"]) == 12 and out["note"] == "in-jit"
    np.testing.assert_array_equal(out["host"], np.arange(3))
