"""Host-to-device transfers of many restored leaves at once.

``jax.device_put(list, shardings)`` spends 60-90 us of Python per leaf
(abstractify, aval updates, result handlers) before jaxlib's native
``batched_device_put``, which itself costs 6-10 us per leaf on the CPU
backend (measured on jax 0.10, 10,000 leaves of 1 KiB). ``put`` calls that
native function directly, exactly as ``jax.device_put`` of a NumPy array
with a sharding does in the end (``pxla._shard_np_array``: the same aval,
sharding, per-device shards and committed flag), and falls back to
``jax.device_put`` where that path does anything more (a dtype JAX would
canonicalise, such as float64 without x64) or where this jax has no such
function.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

try:  # private to jax: probed once (see _native), with jax.device_put as the fallback
    from jax._src import core as _core, dispatch as _dispatch
    from jax._src.lib import xla_client as _xc

    _batched = _xc.batched_device_put
    _ShapedArray = _core.ShapedArray
    _update_dp_aval = _dispatch.update_dp_aval
except Exception:  # another jax: its public device_put only
    _batched = None

_state: dict[str, Any] = {"native": None}


def aval(shape: tuple[int, ...], dtype: np.dtype, sharding: jax.sharding.Sharding) -> Any:
    """The abstract value ``jax.device_put`` gives a NumPy array of ``shape`` and
    ``dtype`` put with ``sharding`` (a NamedSharding's mesh and spec are part
    of it), or None where it cannot be made here."""
    if _batched is None:
        return None
    key = (shape, dtype, id(sharding))
    found = _avals.get(key)
    if found is not None and found[0] is sharding:  # the sharding is kept: its id is its own
        return found[1]
    try:
        made = _update_dp_aval(_ShapedArray(shape, dtype), sharding)
    except Exception:  # a dtype or sharding this jax's avals refuse: the public path
        made = None
    if len(_avals) >= _MAX_AVALS:
        _avals.clear()
    _avals[key] = (sharding, made)
    return made


# Avals by (shape, dtype, sharding identity): planning 50,000 leaves of a few
# shapes makes a few avals, not 50,000.
_avals: dict[tuple, tuple[Any, Any]] = {}
_MAX_AVALS = 4096


def _probe() -> bool:
    """Whether the native call gives what ``jax.device_put`` gives, on one tiny array."""
    if _batched is None:
        return False
    try:
        host = np.arange(3, dtype=np.float32)
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        got = _batched(aval((3,), host.dtype, sharding), sharding, [host],
                       list(sharding.device_set), True)
        want = jax.device_put(host, sharding)
        return (isinstance(got, jax.Array) and got.committed and got.sharding == want.sharding
                and got.aval == want.aval and np.array_equal(np.asarray(got), host))
    except Exception:  # a jaxlib whose signature differs: the public path
        return False


def native() -> bool:
    """Whether ``put`` can use jaxlib's batched_device_put (probed on first use)."""
    if _state["native"] is None:
        _state["native"] = _probe()
    return _state["native"]


def direct(dtype: np.dtype, cache: dict) -> bool:
    """Whether a leaf of ``dtype`` goes through the native call: JAX keeps the
    dtype as it is (``cache``: per restore, as x64 may be switched between)."""
    ok = cache.get(dtype)
    if ok is None:
        ok = cache[dtype] = (dtype.kind in "biufc" or dtype.kind == "V") and \
            jax.dtypes.canonicalize_dtype(dtype) == dtype
    return ok


def put(abstract: Any, sharding: jax.sharding.Sharding, shards: list[np.ndarray],
        devices: list[Any]) -> jax.Array:
    """A committed ``jax.Array`` of the ``aval`` ``abstract`` with ``sharding``, from
    one host array per device (``devices`` in the sharding's addressable
    order); callers check ``native()`` and ``direct(dtype)`` first."""
    return _batched(abstract, sharding, shards, devices, True)
