"""Large accelerator leaves: their device-to-host copies started in save() and
waited for on the writer thread.

A GPU or TPU state of gigabytes would block save() for as long as the link
takes to move it (0.42 s for 512 MiB on one GPU, at pageable-memory speed).
Instead ``start`` puts every large leaf, in one batched ``jax.device_put``,
into its device's pinned host memory (a memory kind JAX exposes where the
backend has one) and returns; ``Snapshot.settle`` waits on the writer thread.
Small leaves are not worth a transfer each (a ``device_put`` costs tens of us
per array): save() waits for those as before.
"""

from __future__ import annotations

from typing import Any

import jax

# Tests set this to run the accelerator path (copies left in flight into host
# memory) on the CPU backend, where a host view would otherwise be taken.
FORCE_IN_FLIGHT = False
_HOST_SHARDING: dict[Any, Any] = {}  # device -> its pinned_host sharding, or None


def target(device: Any) -> Any:
    """A single-device sharding in ``device``'s pinned host memory, or None
    where the backend has none (then save() waits for the copies itself)."""
    try:
        return _HOST_SHARDING[device]
    except KeyError:
        pass
    found = None
    try:
        if any(m.kind == "pinned_host" for m in device.addressable_memories()):
            found = jax.sharding.SingleDeviceSharding(device, memory_kind="pinned_host")
    except Exception:  # a backend without memory kinds
        found = None
    _HOST_SHARDING[device] = found
    return found


def start(in_flight: list, pending: list) -> list:
    """Starts one batched copy of every large leaf in ``in_flight`` into host
    memory; returns them as ``Snapshot.copying``.

    ``jax.device_put`` into a host memory kind makes a new array: the caller
    may donate or delete the original the moment save() returns, and JAX
    orders that after the copy (the buffer is reused only once the copy has
    read it). Where the copy cannot be started, the leaves go to ``pending``,
    which save() waits for, as for small leaves.
    """
    if not in_flight:
        return []
    sources = [data for _, pieces in in_flight for _, data, _ in pieces]
    targets = [t for _, pieces in in_flight for _, _, t in pieces]
    try:
        copies = iter(jax.device_put(sources, targets))
    except Exception:  # e.g. no pinned host memory left: copy as small leaves are
        for arr, pieces in in_flight:
            for _, data, _ in pieces:
                data.copy_to_host_async()
            pending.append((arr, [(index, data) for index, data, _ in pieces]))
        return []
    return [(arr, [(index, next(copies)) for index, _, _ in pieces])
            for arr, pieces in in_flight]
