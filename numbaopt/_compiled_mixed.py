"""Handles of an optimizer over several dtypes (``numbaopt.compiled``): one lane handle per dtype.

An optimizer over float32 and float64 parameters keeps one lane per dtype (an optimizer
of one arena, ``numbaopt.optim._mixed``). Its handle is a named tuple of

- ``flags``: the optimizer's own flags table (its group edits, ``skip_nonfinite``, its
  skipped steps, lrs set from compiled code);
- ``group_map[g, k]``: group ``g``'s index among lane ``k``'s groups, or -1;
- ``param_lane[i]``, ``param_index[i]``: parameter ``i``'s lane and its index there;
- ``lanes``: the lanes' own handles, in ``opt.arenas`` order.

``step(h)`` is the optimizer's step: re-read edited groups (once per edit), skip the step
in every lane when any lane has a NaN or inf gradient (``skip_nonfinite``), then each
lane's kernel, each emitted in the caller as a one-arena step is
(``numbaopt.compiled.emit_step``). A parameter's values and gradient have its dtype, so
compiled code reads and writes them through its lane: ``compiled.grad(h.lanes[k], j)``.
"""

import collections
import hashlib
import sys

import numpy as np
from numba import literal_unroll, njit, types

from . import compiled as _compiled
from .compiled import (SKIP_NONFINITE, _run_hooks, arena_finite, before_step, call_function,
                       emit_guarded, note_finite, run_guarded)

FIELDS = ("flags", "group_map", "param_lane", "param_index", "lanes")
classes = set()


def make_class(name):
    """The handle class called ``name`` (importable from numbaopt.compiled, for numba's cache)."""
    cls = collections.namedtuple(name, FIELDS)
    cls.__module__ = _compiled.__name__
    cls.__qualname__ = name
    setattr(sys.modules[_compiled.__name__], name, cls)
    classes.add(cls)
    return cls


def make_handle(optimizer):
    """The handle of an optimizer over several dtypes (``opt.compiled()``, after a sync)."""
    lanes = tuple(_compiled.make_handle(lane) for lane in optimizer._lanes)
    # the name covers the lanes' classes, whose names cover their kernels and numbaopt
    name = "MixedHandle_" + hashlib.sha256(
        " ".join(type(h).__name__ for h in lanes).encode()).hexdigest()[:12]
    cls = getattr(_compiled, name)
    group_map = np.full((len(optimizer._param_groups), len(lanes)), -1, dtype=np.int64)
    for k, lane in enumerate(optimizer._lanes):
        for local, g in enumerate(lane._lane_groups):
            group_map[g, k] = local
    number = {id(lane.arena): k for k, lane in enumerate(optimizer._lanes)}
    ordered = optimizer._ordered_params()
    param_lane = np.array([number[id(p._arena)] for p in ordered], dtype=np.int64)
    param_index = np.array([p._index for p in ordered], dtype=np.int64)
    flags = _compiled.register(optimizer)
    optimizer._handle_args = handle_args(optimizer)
    return cls(flags, group_map, param_lane, param_index, lanes)


def handle_args(optimizer):
    """Every array the lanes' handles hold (a handle is stale once one of them changed)."""
    out = []
    for lane in optimizer._lanes:
        arena = lane.arena
        out += [arena.data, arena.grad, arena.has_grad, lane._hyper, lane._flags]
        out += _compiled.handle_args(lane)
    return tuple(out)


@njit(cache=True)
def _prologue(flags, lanes):
    """The rare part of a step (``flags[DIRTY]``, ``[SKIP_NONFINITE]`` or ``[HOOKS]``): the
    step pre-hooks, re-read edited groups, then check every lane's gradients; False: skip
    the step in every lane."""
    before_step(flags)
    if flags[SKIP_NONFINITE]:
        ok = True
        for lane in literal_unroll(lanes):
            if ok:
                ok = arena_finite(lane.flags, lane.grad_buf, lane.has_grad, lane.chunks)
        return note_finite(flags, ok)
    return True


def step(h):
    """``compiled.step(h)`` called from Python."""
    def lanes_steps():
        for lane in h.lanes:
            _compiled.step(lane)
    return run_guarded(h.flags, lambda: _prologue(h.flags, h.lanes), lanes_steps)


def type_step(context, h):
    """Type ``step(h)`` of a handle over several dtypes: True, or False if ``h`` is not one."""
    if getattr(h, "instance_class", None) not in classes:
        return False
    lanes = h.types[FIELDS.index("lanes")]
    if not all(_compiled.type_step(context, lane) for lane in lanes):
        return False
    flags = h.types[FIELDS.index("flags")]
    _compiled._signature(context, _prologue, (flags, lanes))
    _compiled._signature(context, _run_hooks, (flags, types.boolean))
    return True


def emit_step(context, builder, handle_type, handle):
    """``step(h)`` emitted in the caller: ``_prologue(flags, lanes)`` and then each lane's
    step (no hooks: a lane has none) in ``emit_guarded``'s frame. Returns ok."""
    f, n = FIELDS.index("flags"), FIELDS.index("lanes")
    flags_type, lanes_type = handle_type.types[f], handle_type.types[n]
    flags, lanes = builder.extract_value(handle, f), builder.extract_value(handle, n)

    def prologue():
        return call_function(context, builder, _prologue, [flags_type, lanes_type],
                             [flags, lanes])[0]

    def lanes_steps():
        for k, lane_type in enumerate(lanes_type):
            _compiled.emit_step(context, builder, lane_type, builder.extract_value(lanes, k),
                                hooks=False)

    return emit_guarded(context, builder, flags_type, flags, prologue, lanes_steps)
