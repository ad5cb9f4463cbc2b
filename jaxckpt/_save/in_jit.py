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

With ``save_on_preemption=True`` (single process) the predicate is
``due | poll()``: an ordered callback, every step, returns whether a SIGTERM
was recorded, and the host callback then saves regardless of the interval
and waits for the commit (the compiled loop waits with it); the signal is
handed on once the main thread runs Python again (``_save/preemption``).

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

In a multi-process program the save is collective: the taken branch holds one
ordered callback per process, each pinned to that process's first device, so
every process's callback runs for the same steps in the same order and
queues the same numbered save (the ``SaveCoordinator`` keys pair up; process
0 commits once every part is durable). The sharding of a traced value is not
known while tracing, so the layout on disk is jaxckpt's own (``_parts``): a
large leaf is split into one block per process along its first axis that the
process count divides, and process ``p``'s callback receives block ``p`` only
(XLA moves just that block, usually already on that process's devices);
other leaves go whole to process 0, which packs the small ones.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from . import snapshot as _snapshot
from .. import _tree
from ..errors import CheckpointError

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
        if _is_array(leaf):
            # A PRNG key stores its key data (uint32), never float0.
            if not _tree.is_prng_key(leaf) and np.dtype(leaf.dtype) == jax.dtypes.float0:
                raise TypeError(f"leaf at key path {entry.path_str} has dtype float0 (a "
                                "gradient of an integer), which cannot be checkpointed")
        else:
            _tree.check_leaf(entry)
        record, data = _snapshot.leaf_record([list(t) for t in entry.path], leaf)
        if _is_array(leaf):
            slots.append(_Slot(record, None))
            operands.append(data)
        else:
            slots.append(_Slot(record, data))
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
    # JAX's copies of the operands, made for this callback: all new host memory.
    return _snapshot.Snapshot(records, leaves, metadata,
                              host_bytes=sum(a.nbytes for a in leaves))


@dataclasses.dataclass(frozen=True)
class _Part:
    """How one array operand is split among the processes of a multi-process save."""

    shape: tuple[int, ...]
    dtype: np.dtype
    axis: int | None  # split into equal blocks along it; None: whole, to process 0

    def index(self, p: int, count: int) -> tuple[tuple[int, int], ...]:
        """Process ``p``'s block as (start, stop) per axis."""
        out = [(0, n) for n in self.shape]
        size = self.shape[self.axis] // count
        out[self.axis] = (p * size, (p + 1) * size)
        return tuple(out)

    def block(self, x: jax.Array, p: int, count: int) -> jax.Array:
        if self.axis is None:
            return x
        start, stop = self.index(p, count)[self.axis]
        return jax.lax.slice_in_dim(x, start, stop, axis=self.axis)


def _parts(arrays: list[jax.Array], count: int) -> list[_Part]:
    """Per array operand: split along the first axis ``count`` divides, if it is large.

    Small leaves, and large ones no axis of which ``count`` divides, go whole
    to process 0 (small ones into the packed array, as ``save`` does).
    """
    out = []
    for x in arrays:
        shape, dtype = tuple(x.shape), np.dtype(x.dtype)
        axis = None
        if not _snapshot.small(shape, dtype):
            axis = next((a for a, n in enumerate(shape) if n >= count and n % count == 0), None)
        out.append(_Part(shape, dtype, axis))
    return out


# In a multi-process program JAX copies a callback's operands onto the CPU
# device before the callback sees them; a copy of 100 KiB or more runs on the
# CPU client's thread pool, which the running computation can hold entirely
# (on a 2-core host: one device in this callback, the other waiting at a
# collective), so reading the operand would wait forever. Smaller copies are
# made inline: each block travels as flat pieces of at most this size.
_PIECE_BYTES = 64 << 10


def _spans(size: int, itemsize: int) -> list[tuple[int, int]]:
    per = max(1, _PIECE_BYTES // itemsize)
    return [(i, min(i + per, size)) for i in range(0, size, per)]


def _cut(block: jax.Array) -> list[jax.Array]:
    """On device: ``block`` as flat pieces (see ``_PIECE_BYTES``)."""
    flat = jnp.ravel(block)
    return [jax.lax.slice(flat, (a,), (b,))
            for a, b in _spans(flat.shape[0], np.dtype(block.dtype).itemsize)]


def _join(pieces: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """On the host: the next block of ``shape`` from the callback's pieces."""
    spans = _spans(math.prod(shape), dtype.itemsize)
    if not spans:
        return np.empty(shape, dtype)
    return np.concatenate([np.asarray(next(pieces)) for _ in spans]).reshape(shape)


def _first_device(p: int) -> jax.Device:
    return min((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)


def _process_snapshot(slots: list[_Slot], parts: list[_Part], arrays: tuple,
                      metadata: dict | None, me: int) -> _snapshot.Snapshot:
    """This process's part of a multi-process save: its blocks of the split leaves;
    on process 0 also the leaves it writes whole (``arrays`` holds just those)."""
    count = jax.process_count()
    records: list[dict] = []
    leaves: list[_snapshot.ArrayLeaf] = []
    it, part_it = iter(arrays), iter(parts)
    for slot in slots:
        record = dict(slot.record)
        records.append(record)
        if record["kind"] == "py":
            continue
        part = None if slot.static is not None else next(part_it)
        if part is not None and part.axis is not None:
            index = part.index(me, count)
            data = _join(it, tuple(b - a for a, b in index), part.dtype)
            leaves.append(_snapshot.ArrayLeaf(
                record, data.dtype, part.shape, [_snapshot.Shard(index, data)],
                tuple(b - a for a, b in index), exact=True))
            continue
        if me == 0:
            data = (slot.static if slot.static is not None
                    else _join(it, part.shape, part.dtype))
            leaves.append(_snapshot.host_array(record, data))
        else:  # process 0 writes it; this process only knows where it goes
            static = slot.static
            dtype = static.dtype if static is not None else part.dtype
            shape = static.shape if static is not None else part.shape
            leaves.append(_snapshot.ArrayLeaf(record, dtype, shape, [], shape,
                                              packed=_snapshot.small(shape, dtype)))
    return _snapshot.Snapshot(records, leaves, metadata,
                              host_bytes=sum(p.data.nbytes for a in leaves for p in a.shards))


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

    See ``CheckpointManager.save_in_jit``; ``mngr`` is the manager's
    ``_directory/registry.Handle``. Everything that can be checked without the values
    is checked here, at trace time.
    """
    mngr.check_open()
    refusal = getattr(mngr, "jit_refusal", None)  # a rule the compiled filter cannot apply
    if refusal is not None:
        raise ValueError(
            f"save_in_jit for {mngr.directory}: the manager has {refusal}, which decides on "
            "the host at every call; compiled code filters steps on device with a fixed "
            "checkpoint_interval. Use an int checkpoint_interval, or call save() between steps")
    if not isinstance(check_interval, bool):
        raise TypeError(f"check_interval must be a Python bool, got {check_interval!r}")
    metadata = _snapshot.check_metadata(metadata)
    if step is None:
        if mngr.step_counter is None:
            raise ValueError(
                f"save_in_jit for {mngr.directory} needs the step: pass step=..., or "
                "give the CheckpointManager a step_counter (state -> int)")
        step = mngr.step_counter(state)
        what = "step_counter(state)"
    else:
        what = "step"
    step = _traced_int(step, what)
    number = None if checkpoint_number is None else _traced_int(checkpoint_number,
                                                                 "checkpoint_number")
    slots, arrays = _plan(state)
    directory = mngr.directory
    preempt = mngr.save_on_preemption
    if preempt and jax.process_count() > 1:
        raise ValueError(
            f"save_in_jit for {directory}: save_on_preemption=True is not supported inside "
            "compiled code in a multi-process program (every process would have to agree on "
            "the step on device); call mngr.save(state) every step from the host loop instead")

    count = jax.process_count()
    parts = _parts(arrays, count) if count > 1 else None

    def snapshot(host: tuple) -> _snapshot.Snapshot:
        if parts is None:
            return _host_snapshot(slots, host, metadata)
        return _process_snapshot(slots, parts, host, metadata, jax.process_index())

    def callback(step: Any, *rest: Any) -> None:
        at = int(np.asarray(step))
        try:
            _check_host_int(at, what)
            n = at if number is None else _check_host_int(int(np.asarray(rest[0])),
                                                          "checkpoint_number")
            host = rest if number is None else rest[1:]
            log.debug("save_in_jit callback: step %d, checkpoint %d, %s", at, n, directory)
            if mngr.manager is None:  # the handle holds it weakly
                log.error("save_in_jit: the CheckpointManager for %s was garbage-collected; "
                          "step %s was not saved", directory, at)
                return
            forced = preempt and mngr.preempt_due(at)  # a preemption notice: save this step
            mngr.save_host_snapshot(lambda: snapshot(host), at, n, check_interval and not forced)
            if forced:
                mngr.preempt_saved(at)  # waits for the commit, then hands SIGTERM on
        except Exception as e:  # raising here would abort the user's computation
            error = CheckpointError(f"save_in_jit of step {at} in {directory} failed in its "
                                    f"host callback: {e}")
            error.__cause__ = e
            log.error("%s", error)
            if mngr.manager is not None:
                mngr.report(error)

    # A checkpoint has no gradient: this lets save_in_jit sit inside jax.grad.
    operands = [jax.lax.stop_gradient(x)
                for x in [step] + ([number] if number is not None else []) + arrays]
    interval = mngr.interval

    def send(ops: list) -> None:
        if parts is None:
            io_callback(callback, None, *ops, ordered=True)
            return
        scalars, values = ops[: len(ops) - len(arrays)], ops[len(ops) - len(arrays):]
        for p in range(count):
            mine = [piece for part, x in zip(parts, values)
                    if part.axis is not None or p == 0
                    for piece in _cut(part.block(x, p, count))]
            io_callback(callback, None, *scalars, *mine, ordered=True,
                        sharding=jax.sharding.SingleDeviceSharding(_first_device(p)))

    _TRACED.add(mngr)
    if interval is None or not check_interval:
        send(operands)
        return
    divisor = jnp.asarray(interval, step.dtype) if interval <= jnp.iinfo(step.dtype).max else None
    due = step % divisor == 0 if divisor is not None else step == 0
    if preempt:  # one host round trip per step asks whether a SIGTERM came (see _save/preemption)
        due = due | io_callback(lambda: np.bool_(_poll(mngr)), jax.ShapeDtypeStruct((), bool),
                                ordered=True)
    jax.lax.cond(due, send, lambda ops: None, operands)


def _poll(mngr: Any) -> bool:
    try:
        return mngr.manager is not None and bool(mngr.preempt_poll())
    except Exception as e:  # raising here would abort the user's computation
        log.error("save_in_jit: the preemption poll for %s failed: %r", mngr.directory, e)
        return False


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
