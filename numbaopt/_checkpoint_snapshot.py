"""A consistent copy of an optimizer's state, taken while another thread may step it.

``snapshot(optimizer)`` returns ``(params, state_dict)``: a host copy of the
arena's values and torch's state_dict, with exact float64 step counts (and
per-parameter scalar state) instead of torch's float32. The file is written from
this copy, so what is hashed is what is written.

Why it is consistent: an ``ArenaOptimizer`` step changes the arena in one compiled
call, and the snapshot copies the values, step counts, scalar state and every state
buffer in one compiled call too. A serial kernel holds the GIL, so the two cannot
overlap and the copy falls between two steps. A ``prange`` kernel (arenas of
``parallel_threshold`` elements and more) releases the GIL while its threads run
(measured), and a CUDA arena is copied down buffer by buffer: those need
``_step_lock``, a lock that ``step()`` holds while it changes the arena (proposed for
``ArenaOptimizer``), under which the snapshot is taken whenever the optimizer has
one. Others (a Python ``step()``, LBFGS, DistributedOptimizer) go through their
``state_dict()``, under the same lock if they have one.
"""

import contextlib

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .optim.arena_optimizer import ArenaOptimizer
from .optim.optimizer import Optimizer, _copy_value

__all__ = ["snapshot", "values_dtype", "host_values", "set_values", "set_arena_values"]

_ALIGN = 64


@intrinsic
def _copy_bytes(typingctx, dst, start, src):
    # memcpy(&dst[start], src, src.size) for uint8 arrays: numba's slice assignment
    # copies byte by byte (6x slower than memcpy, measured)
    def codegen(context, builder, signature, args):
        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[2])(context, builder, args[2])
        cgutils.raw_memcpy(builder, builder.gep(d.data, [args[1]]), s.data, s.nitems, 1)
        return context.get_dummy_value()
    return types.void(dst, start, src), codegen


@njit(cache=True, error_model="numpy")
def _gather(sources, out, starts):
    # Copies each uint8 array of the tuple ``sources`` to ``out[starts[k]:]``, in one
    # call that holds the GIL throughout, as a step's kernel does.
    for k in range(len(sources)):
        src = sources[k]
        if starts[k] < 0 or starts[k] + src.size > out.size:
            raise ValueError("snapshot buffer too small")
        _copy_bytes(out, starts[k], src)


def _fast(optimizer):
    """Whether the state_dict can be built from the arena snapshot (the generic
    ``ArenaOptimizer`` state layout, no state_dict hooks to run)."""
    cls = type(optimizer)
    return (isinstance(optimizer, ArenaOptimizer)
            and cls._param_state is ArenaOptimizer._param_state
            and cls._saved_entries is ArenaOptimizer._saved_entries
            and cls.state_dict is Optimizer.state_dict and "state_dict" not in vars(optimizer)
            and not optimizer._optimizer_state_dict_pre_hooks
            and not optimizer._optimizer_state_dict_post_hooks)


def _mixed(optimizer):
    return getattr(optimizer, "_lanes", None) is not None


def values_dtype(optimizer):
    """The dtype of the checkpoint's ``params`` vector: the arena's; float64 for an optimizer
    over several dtypes (every float32, float64 and complex value is exact in it)."""
    return np.dtype(np.float64) if _mixed(optimizer) else optimizer.arena.dtype


def host_values(optimizer):
    """A host copy of every parameter's values as the checkpoint's ``params`` vector: the
    arena; for several dtypes, each parameter (complex ones as real pairs) in float64."""
    if not _mixed(optimizer):
        arena = optimizer.arena
        return np.array(arena.to_host(arena.data), copy=True)
    parts = []
    for p in optimizer._ordered_params():
        value = np.ascontiguousarray(p.numpy())
        if value.dtype.kind == "c":
            value = value.view(value.real.dtype)
        parts.append(value.reshape(-1))
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def values_size(optimizer):
    """The length of the ``params`` vector."""
    if not _mixed(optimizer):
        return optimizer.arena.size
    return sum(p.size * (2 if p.dtype.kind == "c" else 1) for p in optimizer._ordered_params())


def set_arena_values(arena, values):
    """Write a host vector of the arena's size into its ``data`` (on the host or the GPU)."""
    if isinstance(arena.data, np.ndarray):
        arena.data[:] = values
    elif values.size:
        arena.data.copy_to_device(np.ascontiguousarray(values, dtype=arena.dtype))


def set_values(optimizer, values):
    """Write a ``params`` vector (from ``host_values``) back into the parameters."""
    if not _mixed(optimizer):
        set_arena_values(optimizer.arena, values)
        return
    start = 0
    for p in optimizer._ordered_params():
        n = p.size * (2 if p.dtype.kind == "c" else 1)
        chunk = values[start:start + n]
        start += n
        if p.dtype.kind == "c":
            chunk = chunk.astype(p.dtype.type(0).real.dtype).view(p.dtype)
        p.data = chunk.reshape(p.shape).astype(p.dtype)


def snapshot(optimizer):
    """``(params, state_dict)``: host copies, taken in one go (see the module docstring)."""
    lock = getattr(optimizer, "_step_lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        if _fast(optimizer) and not _mixed(optimizer):
            return _arena_snapshot(optimizer)
        sd = optimizer.state_dict()
        params = host_values(optimizer)
        if isinstance(optimizer, ArenaOptimizer) and optimizer._step_in_state:
            _exact_steps(sd, _step_counts(optimizer))
        return params, sd


def _step_counts(optimizer):
    """Each parameter's step count (float64), in the state_dict's order."""
    if not _mixed(optimizer):
        return optimizer.arena.step_counts()
    return np.array([p._arena.step_counts()[p._index] for p in optimizer._ordered_params()],
                    dtype=np.float64)


def _exact_steps(sd, steps):
    """Swap torch's float32 ``step`` for the exact float64 count where they agree."""
    for i, entry in sd["state"].items():
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < len(steps):
            step = entry.get("step") if isinstance(entry, dict) else None
            if isinstance(step, np.ndarray) and step.shape == () and step.dtype == np.float32 \
                    and np.float32(steps[i]) == step:
                entry["step"] = np.array(steps[i], dtype=np.float64)


def _arena_copies(optimizer, data=True):
    """Host copies of ``(data, step, scalars, {name: buffer})``, taken in one go (``data``
    None with ``data=False``)."""
    arena = optimizer.arena
    names = list(arena.state)
    if not isinstance(arena.data, np.ndarray):      # a device arena: copy down each buffer
        return (np.array(arena.to_host(arena.data)) if data else None,
                np.array(arena.step_counts(), np.float64),
                np.array(arena.scalar_values(), np.float64),
                {k: np.array(arena.to_host(arena.state[k])) for k in names})
    first = arena.data if data else np.empty(0, arena.dtype)
    arrays = [first, arena.step, np.ascontiguousarray(arena.scalars)] + \
        [arena.state[k] for k in names]
    starts, total = [], 0
    for a in arrays:
        starts.append(total)
        total += -(-a.nbytes // _ALIGN) * _ALIGN
    out = np.empty(total, dtype=np.uint8)
    _gather(tuple(a.reshape(-1).view(np.uint8) for a in arrays), out,
            np.array(starts, dtype=np.int64))
    copies = [out[s:s + a.nbytes].view(a.dtype).reshape(a.shape)
              for s, a in zip(starts, arrays)]
    return copies[0] if data else None, copies[1], copies[2], dict(zip(names, copies[3:]))


def _arena_snapshot(optimizer):
    """The state_dict ``ArenaOptimizer.state_dict`` would give, built from one snapshot,
    with float64 step counts and scalar state."""
    groups_view = optimizer.param_groups          # pulls lrs set by compiled code
    del groups_view
    data, steps, scalars, buffers = _arena_copies(optimizer)
    arena = optimizer.arena
    groups, index = optimizer._packed_groups()
    user = optimizer._user_state
    entries = []
    for i, p in enumerate(arena.params):
        group = optimizer._param_groups[arena.param_group[i]]
        entry = {}
        if steps[i] != 0 or optimizer._state_from_start:
            if optimizer._step_in_state:
                entry["step"] = steps[i:i + 1].reshape(())
            for k, key in enumerate(optimizer._scalar_state):
                entry[key] = scalars[i, k:k + 1].reshape(())
            for key in optimizer._state_keys:
                if key in optimizer._group_state_keys(group):
                    entry[key] = arena.view(buffers[key], i)
        entry.update({k: _copy_value(v) for k, v in user.get(p, {}).items()})
        entries.append(entry)
    state = optimizer._packed_state(entries, index, "the checkpoint")
    return data, {"state": state, "param_groups": groups}
