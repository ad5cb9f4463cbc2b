"""save_in_jit on an asynchronous backend (GPU): checks the CPU tests cannot make.

    python benchmarks/in_jit_gpu_check.py [--n 2048]

On the CPU backend a computation with host callbacks runs synchronously, so
two protections of save_in_jit are only exercised on GPU/TPU, where a jitted
call returns before its callbacks have run:

  drain     ``wait_until_finished`` right after dispatch must include the
            saves of the dispatched call (it calls ``jax.effects_barrier``).
  no_hang   ``save(out)`` right after dispatch must not deadlock: it waits for
            ``out`` before taking the lock the pending callbacks need.

Prints one JSON line per check and exits 1 if one fails. Then run
``benchmarks/in_jit_overhead.py`` for the step-time figures on that device.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp

import jaxckpt


def _loop(mngr, steps: int):
    def body(s, _):
        s = {"w": jnp.tanh(s["w"] @ s["w"]) * 0.5 + s["w"] * 0.5, "step": s["step"] + 1}
        mngr.save_in_jit(s)
        return s, None

    return jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps)[0])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048, help="state is one n x n float32 matrix")
    n = ap.parse_args().n
    failures = 0
    state = {"w": jnp.eye(n, dtype=jnp.float32), "step": jnp.asarray(0)}
    for check in ("drain", "no_hang"):
        d = tempfile.mkdtemp()
        try:
            mngr = jaxckpt.CheckpointManager(d, max_to_keep=None, step_counter=lambda s: s["step"],
                                             checkpoint_interval=50)
            run = _loop(mngr, 200)
            jax.block_until_ready(run(state))  # compile; saves 50..200
            mngr.wait_until_finished()
            start = {"w": state["w"], "step": jnp.asarray(1000)}
            out = run(start)  # asynchronous: returns before its callbacks ran
            result: dict = {"check": check, "device": str(jax.devices()[0])}
            if check == "drain":
                mngr.wait_until_finished()
                got = sorted(int(p.rsplit("-", 1)[1]) for p in mngr.checkpoints)
                ok = got[-4:] == [1050, 1100, 1150, 1200]
                result["latest"] = got[-4:]
            else:
                returned = threading.Event()

                def host_save():
                    # A new step, so that save()'s same-step rule does not skip it.
                    later = {"w": out["w"], "step": out["step"] + 1}
                    mngr.save(later, checkpoint_number=5000, check_interval=False)
                    returned.set()

                worker = threading.Thread(target=host_save, daemon=True)
                worker.start()
                ok = returned.wait(timeout=120)
                if ok:
                    mngr.wait_until_finished()
                    ok = mngr.latest_checkpoint.endswith("ckpt-5000")
            result["ok"] = bool(ok)
            print(json.dumps(result), flush=True)
            failures += not ok
            if ok:
                mngr.close()
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
