"""Multi-process checkpoints: real jax.distributed processes on localhost, CPU devices.

Saved by 2 processes x 2 devices on a (4,) mesh; restored by 1 process with 4
devices on a (2, 2) mesh, by 4 processes x 1 device, and by 2 x 2 on (2, 2).
A process killed mid-save (its part written, not yet reported) makes the
others fail naming it, and the previous checkpoint stays the latest.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import jaxckpt
from jaxckpt._commit import state_file as _state_file

sys.path.insert(0, os.path.dirname(__file__))
from _s3_server import s3, s3_server  # noqa: E402,F401

# Slow (two or more processes): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow

WORKER = os.path.join(os.path.dirname(__file__), "_multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(scenario: str, directory: str, nproc: int, devices: int, mesh: str,
        timeout: float = 180, extra_env: dict[int, dict] | None = None,
        allow_dead: set[int] = frozenset()) -> list[dict]:
    """Runs ``nproc`` worker processes; returns each one's facts (or raises with its log).

    ``extra_env`` maps a process id to environment variables for it alone;
    the processes of ``allow_dead`` kill themselves (their facts are ``{}``).
    """
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           # A hung worker prints every thread's stack before the test gives up on it.
           "JAXCKPT_TEST_STACKS_AFTER_S": str(max(1, int(timeout) - 20))}
    procs = [subprocess.Popen([sys.executable, WORKER, scenario, str(directory), str(port),
                               str(nproc), str(i), mesh],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, **(extra_env or {}).get(i, {})})
             for i in range(nproc)]
    outs = []
    for i, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            logs = [q.communicate() for q in procs]  # reaps them and closes their pipes
            raise AssertionError(f"{scenario}: process {i} still running after {timeout} s\n"
                                 + "\n".join(f"--- process {j} rc={q.returncode}\n{e[-6000:]}"
                                             for j, (q, (_, e)) in enumerate(zip(procs, logs))))
        outs.append((p.returncode, out, err))
    facts = []
    for i, (rc, out, err) in enumerate(outs):
        ok = [line for line in out.splitlines() if line.startswith("OK ")]
        if i in allow_dead:
            assert rc == -9, f"process {i} should have died: rc={rc}\n{err[-3000:]}"
            facts.append({})
            continue
        if scenario == "kill" and i == 1:
            assert rc == -9, f"process 1 should have been killed: rc={rc}\n{err[-3000:]}"
            facts.append({})
            continue
        assert rc == 0 and ok, f"process {i} rc={rc}\n{out[-2000:]}\n{err[-4000:]}"
        facts.append(json.loads(ok[-1][3:]))
    return facts


def test_two_processes_save_and_restore_onto_other_topologies(tmp_path):
    d = tmp_path / "run"
    facts = run("save", d, nproc=2, devices=2, mesh="4")
    # Process 1's tree holds a leaf it cannot save: both refuse, nothing is written.
    assert facts[1]["refused"].startswith("TypeError: ") and "host" in facts[1]["refused"]
    assert facts[0]["refused"].startswith("CoordinationError: "), facts[0]["refused"]
    assert "process 1: TypeError" in facts[0]["refused"]
    assert not (d / "refused").exists()
    for f in facts:  # retention agreed on every process; each checked its own shards
        assert f["checkpoints"] == ["ckpt-2", "ckpt-3"], f
        assert f["shards_checked"] == 8, f
    assert sorted(os.listdir(d)) == ["checkpoint", "ckpt-2", "ckpt-3", "one-off"]
    st = _state_file.read(d)
    assert st.all_model_checkpoint_paths == ["ckpt-2", "ckpt-3"]
    jaxckpt.verify(d / "ckpt-3")
    # Arrays split across processes get chunk files that match their shards
    # exactly (no two processes ever write one file); the small replicated leaf
    # and the host values are packed by process 0.
    where = {"".join(f"[{k!r}]" for _, k in leaf["path"]): leaf.get("where")
             for leaf in jaxckpt._read.reader.read_manifest(d / "ckpt-3")["leaves"]}
    assert where["['params']['big']"][0] == "array"
    assert where["['params']['big']"][2] == [512, 512, 4]
    assert where["['params']['small']"][:3] == ["array", where["['params']['small']"][1],
                                                [4, 8, 4]]
    assert where["['params']['repl']"][0] == "packed"
    assert where["['host']"][0] == "packed"
    # Each process's digests of the pieces it wrote reached process 0's manifest.
    digests = {"".join(f"[{k!r}]" for _, k in leaf["path"]): leaf.get("xxh3")
               for leaf in jaxckpt._read.reader.read_manifest(d / "ckpt-3")["leaves"]}
    assert [index for index, _ in digests["['params']['big']"]] == [
        [[r, r + 512], [0, 512]] for r in range(0, 2048, 512)]
    assert [index for index, _ in digests["['params']['grid']"]] == [
        [[0, 64], [c, c + 8]] for c in range(0, 32, 8)]
    assert len(digests["['host']"]) == 1

    one = run("restore", d, nproc=1, devices=4, mesh="2x2")
    assert one[0]["step"] == 3 and one[0]["shards_checked"] == 16
    four = run("restore", d, nproc=4, devices=1, mesh="2x2")
    assert [f["step"] for f in four] == [3] * 4
    assert sum(f["shards_checked"] for f in four) == 16
    two = run("restore", d, nproc=2, devices=2, mesh="2x2")
    assert sum(f["shards_checked"] for f in two) == 16


def test_process_killed_mid_save_is_named_and_nothing_is_committed(tmp_path):
    d = tmp_path / "run"
    kill = {"JAXCKPT_FAULT_POINT": "multihost.part_written", "JAXCKPT_FAULT_ACTION": "kill",
            "JAXCKPT_FAULT_SKIP": "1"}  # ckpt-1 goes through; dies writing ckpt-2
    facts = run("kill", d, nproc=2, devices=2, mesh="4", extra_env={1: kill})
    err = facts[0]["error"]
    assert err is not None, "process 0 committed without process 1's part"
    assert "process(es) 1 of 2" in err and "ckpt-2" in err, err
    assert facts[0]["checkpoints"] == ["ckpt-1"]
    assert jaxckpt.latest_checkpoint(d) == str(d / "ckpt-1")
    assert not os.path.exists(d / "ckpt-2")
    # The next run (one process, four devices) restores the previous checkpoint.
    again = run("restore", d, nproc=1, devices=4, mesh="4")
    assert again[0]["step"] == 1
    assert not [n for n in os.listdir(d) if ".tmp-" in n], os.listdir(d)


def test_two_processes_save_to_s3_and_one_restores(s3):
    server, bucket = s3
    d = f"s3://{bucket}/mh"
    facts = run("save", d, nproc=2, devices=2, mesh="2x2")
    assert [f["checkpoints"] for f in facts] == [["ckpt-2", "ckpt-3"]] * 2
    # The one-off save: no process wrote before every process was in it (once
    # one did, the other took the path for an existing checkpoint and refused).
    assert facts[1]["one_off_order"] == "process 0 waited"
    assert jaxckpt.latest_checkpoint(d) == f"{d}/ckpt-3"
    assert not server.keys(bucket, "mh/ckpt-1/")
    jaxckpt.verify(f"{d}/ckpt-3")
    one = run("restore", d, nproc=1, devices=4, mesh="4")
    assert one[0]["step"] == 3 and one[0]["shards_checked"] == 16
