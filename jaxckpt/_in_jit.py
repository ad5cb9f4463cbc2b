"""Saving from traced code: the machinery behind ``CheckpointManager.save_in_jit``.

Inside ``jax.jit``, ``lax.scan``, ``lax.fori_loop`` or ``lax.cond`` there is no
Python line between steps, so the save is compiled into the program as an
ordered ``jax.experimental.io_callback``::

    on device, every call:   send = step % checkpoint_interval == 0
                             lax.cond(send, io_callback(ordered=True), nothing)
    on the host, only when sent (the callback):
                             save()'s rules on the concrete step (same step as
                             the last save: skip; step < last + interval: skip),
                             copy the operands out, queue the write, return.

A step that is not sent does no device-to-host copy and no host round trip
(the gather and the callback sit inside the taken branch). A sent step costs
one device-to-host copy of the state (on a sharded state XLA first gathers
every leaf onto device 0) and the host copies JAX makes of a callback's
operands; the callback keeps those host arrays as its snapshot, so it copies
nothing more. The write runs on the manager's background writer, as for
``save``.

The callback never raises into XLA: that would abort the whole compiled
computation and lose its result (on several CPU devices the others then wait
at their next collective until XLA kills the process). A failure in it
(closed manager, negative step, ...) is logged and handed to the writer, so
that the next host call (``save``, ``wait_until_finished``, ``close``) raises
it as ``CheckpointWriteError``, as it does for a failed write.

On asynchronous backends a jitted call returns before its callbacks have run,
so the manager's host calls first wait for them (``drain``, ``wait_ready``).
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from . import _format, _snapshot, _tree
from .errors import CheckpointError

log = logging.getLogger("jaxckpt")

# Managers that have compiled a save_in_jit: their host calls must first wait
# for dispatched computations, whose callbacks may still be about to queue saves.
_TRACED: weakref.WeakSet = weakref.WeakSet()


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One leaf of the state: its manifest record, and its data if static."""

    record: dict  # path, kind, dtype, shape (and impl, key_shape, value)
    static: np.ndarray | None  # NumPy leaves are constants of the trace


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array)  # tracers included


def _plan(state: Any) -> tuple[list[_Slot], list[jax.Array]]:
    """Splits ``state`` into manifest slots and the arrays the callback receives.

    Raises ``TypeError`` naming the key path of a leaf that cannot be saved.
    """
    entries, _ = _tree.flatten(state)
    slots: list[_Slot] = []
    operands: list[jax.Array] = []
    for entry in entries:
        _tree.check_path(entry)
        leaf = entry.leaf
        record: dict[str, Any] = {"path": [list(t) for t in entry.path]}
        if _is_array(leaf):
            leaf = _snapshot.jax_kind(record, leaf)
            dtype = np.dtype(leaf.dtype)
            if dtype == jax.dtypes.float0:
                raise TypeError(f"leaf at key path {entry.path_str} has dtype float0 (a "
                                "gradient of an integer), which cannot be checkpointed")
            record["dtype"] = _format.dtype_name(dtype)
            record["shape"] = list(leaf.shape)
            slots.append(_Slot(record, None))
            operands.append(leaf)
            continue
        _tree.check_leaf(entry)
        if isinstance(leaf, (np.ndarray, np.generic)):
            record["kind"] = "array" if isinstance(leaf, np.ndarray) else "scalar"
            data = np.array(leaf, copy=True, order="C")
            record["dtype"] = _format.dtype_name(data.dtype)
            record["shape"] = list(data.shape)
            slots.append(_Slot(record, data))
        else:
            record["kind"] = "py"
            record["value"] = _format.encode_py(leaf)
            slots.append(_Slot(record, None))
    return slots, operands


def _host_snapshot(slots: list[_Slot], arrays: tuple, metadata: dict | None) -> _snapshot.Snapshot:
    """The snapshot of one save, from the callback's operands (copied)."""
    records: list[dict] = []
    leaves: list[_snapshot.ArrayLeaf] = []
    it = iter(arrays)
    for slot in slots:
        record = dict(slot.record)  # writing adds "where" (only) to each record
        records.append(record)
        if record["kind"] == "py":
            continue
        if slot.static is not None:
            data = slot.static
        else:
            # The operand is a host jax.Array that JAX made for this call alone (a
            # copy of the device buffer); the view keeps it alive, so no copy here.
            data = np.asarray(next(it))
        leaves.append(_snapshot.host_array(record, data))
    return _snapshot.Snapshot(records, leaves, metadata)


def _traced_int(value: Any, what: str) -> jax.Array:
    """A scalar integer for the device: a tracer as is, a Python int checked now."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError(f"{what} must be >= 0, got {value}")
        return jnp.asarray(value)
    dtype = getattr(value, "dtype", None)
    if dtype is None or np.ndim(value) != 0 or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{what} must be an integer scalar (a traced int is fine), got "
                        f"{getattr(value, 'aval', value)!r}")
    return jnp.asarray(value)


def _check_host_int(number: int, what: str) -> int:
    if number < 0:
        raise ValueError(f"{what} must be >= 0, got {number}")
    return number


def save(mngr: Any, state: Any, step: Any, checkpoint_number: Any, check_interval: bool,
         metadata: dict | None) -> None:
    """Stages a save of ``state`` into the computation being traced.

    See ``CheckpointManager.save_in_jit``. Everything that can be checked
    without the values is checked here, at trace time.
    """
    mngr._check_open()
    if jax.process_count() > 1:
        raise NotImplementedError(
            "save_in_jit supports single-process programs only: the callback runs in one "
            "process and multi-host saves need every process; call save() between "
            "compiled calls instead")
    if not isinstance(check_interval, bool):
        raise TypeError(f"check_interval must be a Python bool, got {check_interval!r}")
    metadata = _snapshot.check_metadata(metadata)
    if step is None:
        if mngr._step_counter is None:
            raise ValueError(
                f"save_in_jit for {mngr.directory} needs the step: pass step=..., or "
                "give the CheckpointManager a step_counter (state -> int)")
        step = mngr._step_counter(state)
        what = "step_counter(state)"
    else:
        what = "step"
    step = _traced_int(step, what)
    number = None if checkpoint_number is None else _traced_int(checkpoint_number,
                                                                 "checkpoint_number")
    slots, arrays = _plan(state)
    ref = weakref.ref(mngr)
    directory = mngr.directory

    def callback(step: Any, *rest: Any) -> None:
        at = int(np.asarray(step))
        try:
            _check_host_int(at, what)
            n = at if number is None else _check_host_int(int(np.asarray(rest[0])),
                                                          "checkpoint_number")
            host = rest if number is None else rest[1:]
            log.debug("save_in_jit callback: step %d, checkpoint %d, %s", at, n, directory)
            live = ref()
            if live is None:
                log.error("save_in_jit: the CheckpointManager for %s was garbage-collected; "
                          "step %s was not saved", directory, at)
                return
            live._save_host_snapshot(lambda: _host_snapshot(slots, host, metadata),
                                     at, n, check_interval)
        except Exception as e:  # raising here would abort the user's computation
            error = CheckpointError(f"save_in_jit of step {at} in {directory} failed in its "
                                    f"host callback: {e}")
            error.__cause__ = e
            log.error("%s", error)
            live = ref()
            if live is not None:
                live._writer.report(error)

    # A checkpoint has no gradient: this lets save_in_jit sit inside jax.grad.
    operands = [jax.lax.stop_gradient(x)
                for x in [step] + ([number] if number is not None else []) + arrays]
    interval = mngr.checkpoint_interval

    def send(ops: list) -> None:
        io_callback(callback, None, *ops, ordered=True)

    _TRACED.add(mngr)
    if interval is None or not check_interval:
        send(operands)
        return
    divisor = jnp.asarray(interval, step.dtype) if interval <= jnp.iinfo(step.dtype).max else None
    due = step % divisor == 0 if divisor is not None else step == 0
    jax.lax.cond(due, send, lambda ops: None, operands)


def wait_ready(mngr: Any, state: Any) -> None:
    """Before ``save`` takes its lock: waits for the arrays of ``state``.

    ``save`` holds its lock while it copies ``state`` to the host; if that
    copy waited for a computation whose save_in_jit callback needs the lock,
    neither would ever finish.
    """
    if mngr not in _TRACED:
        return
    for leaf in jax.tree_util.tree_leaves(state):
        if (isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
                and not leaf.is_deleted()):  # a deleted leaf gets save()'s own error
            leaf.block_until_ready()


def drain(mngr: Any) -> None:
    """Waits until dispatched computations have run their save_in_jit callbacks."""
    if mngr in _TRACED:
        jax.effects_barrier()
