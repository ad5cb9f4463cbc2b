"""Test-wide JAX settings: several CPU devices, strict rank promotion."""

from __future__ import annotations

import os

# Must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_enable_x64", True)


def pytest_terminal_summary(terminalreporter):
    """Prints what the reliability tests tried (kill rounds, faults, corruptions, bad inputs)."""
    from _reliability import TALLY

    if TALLY:
        terminalreporter.write_line(
            "reliability: " + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())))
