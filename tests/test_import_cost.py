"""What ``import jaxckpt`` loads, and a clean exit after saving many leaves (issue 17).

Fresh interpreters (subprocesses): which modules an import pulls in beyond
jax is a fact, not a timing; tensorstore, flax, rich and optax wait until a
checkpoint path is located or a type of theirs is met.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY = ("tensorstore", "flax", "rich", "optax", "orbax")


def _python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_import_loads_no_heavy_dependency():
    p = _python(f"""
        import json, sys
        import jaxckpt
        names = sorted({{m.split(".")[0] for m in sys.modules}})
        print(json.dumps([m for m in {LAZY!r} if m in names]))
    """)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []


def test_cli_help_and_usage_errors_import_no_jax():
    """``jaxckpt --help`` took 2.5 s, all of it importing jax (issue 19): the package
    loads its public names on first use, and the command line imports them only
    for a command that reads a checkpoint."""
    p = _python("""
        import io, json, sys, contextlib
        from jaxckpt.cli import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            codes = [main(["--help"]), main(["export", "--help"]), main(["bogus"])]
        print(json.dumps([codes, "jax" in sys.modules]))
    """)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [[0, 0, 2], False]


def test_public_names_work_before_tensorstore_is_imported(tmp_path):
    """Every public name resolves; a save and a restore import tensorstore on
    the caller's thread (locating the path) and round-trip the tree."""
    p = _python(f"""
        import sys, threading
        import numpy as np
        import jaxckpt
        for name in jaxckpt.__all__ + ["inspect", "CheckpointInfo", "SaveStats"]:
            getattr(jaxckpt, name)
        assert "tensorstore" not in sys.modules
        imported_on = []
        class Finder:
            def find_spec(self, name, path=None, target=None):
                if name == "tensorstore":
                    imported_on.append(threading.current_thread().name)
                return None
        sys.meta_path.insert(0, Finder())
        with jaxckpt.CheckpointManager({str(tmp_path / "ckpt")!r}) as m:
            m.save({{"w": np.arange(6.0)}}, 1)
        out = jaxckpt.restore(jaxckpt.latest_checkpoint({str(tmp_path / "ckpt")!r}))
        assert np.array_equal(out["w"], np.arange(6.0)), out
        assert imported_on == ["MainThread"], imported_on
        print("ok")
    """)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().endswith("ok")


def test_exit_after_saving_many_leaves_is_clean(tmp_path):
    """10,000 leaves saved, the manager closed, the interpreter exits with 0.

    The writer thread used to free the last job's arrays in its frame's
    teardown after close() had returned; the main thread finalised meanwhile
    and the process aborted ("terminate called after throwing an instance of
    ''", status 134), as benchmarks/per_leaf.py did at >= 10k leaves.
    """
    p = _python(f"""
        import jax, numpy as np
        import jaxckpt
        def tree(seed):  # fresh arrays each save, so that nothing is shared
            host = [np.full(256, seed + i, np.float32) for i in range(10_000)]
            return {{f"l{{i // 16:04d}}": {{f"w{{i % 16:02d}}": x for i, x in
                     enumerate(jax.device_put(host[i:i + 16]), i)}}
                    for i in range(0, len(host), 16)}}
        m = jaxckpt.CheckpointManager({str(tmp_path / "many")!r}, max_to_keep=2)
        for n in range(2):
            m.save(tree(n), n)
        m.close()
        print("closed", flush=True)
    """)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "closed" in p.stdout
