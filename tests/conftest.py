"""Test-wide JAX settings: several CPU devices, strict rank promotion, x64 as users run.

JAX's default (``jax_enable_x64`` off) holds for every test; a test marked
``@pytest.mark.x64`` runs with it on, and the setting is restored after it.
The flag is process-wide config, so child processes never inherit it: a test
whose child needs x64 passes ``JAX_ENABLE_X64=1`` in the child's environment.

``@pytest.mark.slow`` marks the tests that run child processes (several
processes, kill rounds, power cuts, notebooks, the demo, the S3 server) and
the fuzz rounds; ``pytest -m "not slow"`` (``make test-fast``) is the quick loop.
"""

from __future__ import annotations

import os

# Must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _x64_when_marked(request):
    """``jax_enable_x64`` on for the duration of a test marked ``x64``.

    Global config rather than the ``jax.enable_x64`` context: that one is
    thread-local, and a manager's writer thread must see the same setting.
    """
    if request.node.get_closest_marker("x64") is None:
        yield
        return
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def pytest_collection_modifyitems(items):
    # Every test on the local S3 server starts that server's process.
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def _merge_tally(into: dict, got: dict) -> None:
    for key, value in got.items():
        into[key] = max(into.get(key, 0), value) if "peak" in key else into.get(key, 0) + value


def pytest_sessionfinish(session):
    # Under pytest-xdist (``make test`` runs two workers) each worker sends its
    # tally to the controller, which prints the sum.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        from _reliability import TALLY

        workeroutput["jaxckpt_tally"] = dict(TALLY)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    from _reliability import TALLY

    _merge_tally(TALLY, getattr(node, "workeroutput", {}).get("jaxckpt_tally", {}))


def pytest_terminal_summary(terminalreporter):
    """Prints what the reliability tests tried (kill rounds, faults, corruptions, bad inputs)."""
    from _reliability import TALLY

    if TALLY:
        terminalreporter.write_line(
            "reliability: " + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())))
