"""Step an optimizer from inside ``@njit`` code: the training loop compiled whole.

``opt.compiled()`` returns a *handle*: a named tuple of the optimizer's arena
arrays, its hyperparameter table and a small table of flags, all shared with the
Python optimizer (nothing is copied). Pass it to your ``@njit`` function and call
the functions of this module on it::

    from numbaopt import compiled

    @njit(cache=True)
    def train(h, xs, ys):
        for k in range(xs.shape[0]):
            g = compiled.grad(h, 0)          # parameter 0's gradient, a view into the arena
            g[:] = ...                       # write it (compiled.params(h, 0) reads values)
            compiled.mark_grad(h, 0)         # p.grad is not None
            compiled.step(h)                 # exactly opt.step()

    train(opt.compiled(), xs, ys)

``step(h)`` runs the optimizer's own compiled kernel, so a compiled loop and a
Python loop of ``opt.step()`` give the same bits. Hyperparameters stay live: an
edit of ``param_groups`` from Python (a scheduler's step, ``group["lr"] = x``)
raises a flag the compiled step sees, and it re-reads the groups (through
``numba.objmode``, once per edit) before stepping. ``set_lr(h, g, lr)`` sets a
group's lr from compiled code, and ``param_groups`` and ``state_dict()`` show it.
SparseAdam's handle takes row-sparse gradients: ``sparse_grad(h, i, rows, values)`` is
``p.grad = RowSparseGrad(rows, values)`` (``numbaopt.optim._sparse_adam_compiled``). An
optimizer over several dtypes gives a handle of one handle per arena, ``h.lanes``
(``numbaopt._compiled_mixed``).

Why a named tuple: numba's cache keys a function on its argument types, and a
named tuple's type is its class, which is importable by name here, so a user
function ``@njit(cache=True)`` over a handle compiles once and later processes
load it from disk (jitclass and structref do not cache: numba issues #6522,
#10021). Each optimizer kernel gets its own handle class.

Why ``step`` is lowered by hand (``numba.extending.type_callable`` and
``lower_builtin``) and not an ``@overload``: compiled code holding an array takes
a reference to it (an atomic NRT incref, and a decref when done), and LLVM's
reference pruning cannot drop the pair across a call that may raise (the kernel's,
``_sync``'s). Through an overload, inlined or not, every step took a reference to
each of the handle's arrays and to each of the kernel's arguments: ~60 atomic
operations, 0.4-0.5 us a step at Adam float32 1k/10 (the kernel itself: ~1.3 us).
The lowering emits, in the caller, a read of two flags, the kernel's call on the
handle's members and the step count: no references (the caller's handle keeps the
arrays alive), and within ~0.01 us of calling the kernel directly
(``benchmarks/compiled_loop.py``). The rare work, re-reading edited groups and the
``skip_nonfinite`` check, stays plain code in ``_prologue``.
"""

import collections
import hashlib
import pathlib
import sys
import weakref

import numpy as np
from numba import njit, objmode, types
from numba.core import cgutils
from numba.core.dispatcher import Dispatcher
from numba.extending import lower_builtin, type_callable
from numba.np.ufunc.parallel import _launch_threads

from .kernels.finite import grads_finite, grads_finite_parallel

# A cached user function that holds a parallel kernel (a large arena's step, or the
# threaded finiteness check) links against numba's parfors runtime: start it now, or
# loading such a function from the cache in a fresh process fails ("Symbol not found:
# allocate_sched").
_launch_threads()

__all__ = ["step", "set_lr", "get_lr", "grad", "params", "mark_grad", "zero_grad",
           "num_params", "skipped_steps", "sparse_grad"]

# The flags table (int64), shared by the optimizer and every handle it gave out. HOOKS:
# the optimizer has step hooks (numbaopt.optim.hooks keeps it), which a step then runs.
(DIRTY, SKIP_NONFINITE, FOUND_NONFINITE, SKIPPED, LR_WRITTEN, OWNER, PARALLEL, STEPS,
 HOOKS) = range(9)
N_FLAGS = 9

_SOURCE_DIGEST = hashlib.sha256(pathlib.Path(__file__).read_bytes()).digest()
# Every handle's fields. lr_open: the lr must be > 0 (else >= 0); lr_mask[g]: set_lr set group
# g's lr (the optimizer pulls those groups' lrs, and only those); stage_count and stage_used
# are a sparse-gradient stage's (SparseAdam, numbaopt.sparse), empty elsewhere, so that
# zero_grad clears either kind of gradient.
_FIXED = ("data", "grad_buf", "has_grad", "offsets", "chunks", "hyper", "flags", "lr_col",
          "lr_open", "lr_mask", "stage_count", "stage_used")
_PROLOGUE_ARGS = ("flags", "grad_buf", "has_grad", "chunks")
# The fields after _FIXED of a SparseAdam handle (numbaopt.optim._sparse_adam_compiled)
SPARSE_FIELDS = ("exp_avg", "exp_avg_sq", "steps", "groups", "row_len", "row_base", "num_rows",
                 "ndims", "stage_start", "stage_vstart", "stage_indices", "stage_values", "slot",
                 "table", "gsum", "coef", "generation", "threshold")
_NO_STAGE = np.zeros(0, dtype=np.int64)
_owners = weakref.WeakValueDictionary()      # flags[OWNER] -> optimizer
_next_owner = [1]
# handle class -> its Kind; Kind: the step's kernel and rare-work function, each with the
# handle fields it takes
Kind = collections.namedtuple("Kind", "kernel kernel_fields prologue prologue_fields")
_kinds = {}


# -- the handle classes ----------------------------------------------------------------------
def _class_name(prefix, kernel):
    # The name covers the kernel's version (its qualified name carries a hash of its
    # rule's sources) and this file's: step() is compiled into a user's cached function,
    # and numba's cache checks only the user's own file, so a new numbaopt must give a
    # new handle type for that function to compile again.
    digest = hashlib.sha256(f"{kernel.py_func.__module__}.{kernel.py_func.__qualname__}"
                            .encode() + _SOURCE_DIGEST).hexdigest()[:12]
    return f"{prefix}_{digest}"


def _make_class(name, fields):
    cls = collections.namedtuple(name, _FIXED + tuple(fields))
    cls.__module__ = __name__
    cls.__qualname__ = name
    setattr(sys.modules[__name__], name, cls)
    return cls


def _fields_of(name):
    """The fields after _FIXED of the handle class called ``name``, or None."""
    head = name.partition("_")[0]
    if head == "SparseAdamHandle":
        return SPARSE_FIELDS
    if head.startswith("Handle") and head[len("Handle"):].isdigit():
        return tuple(f"a{k}" for k in range(int(head[len("Handle"):])))
    return None


def __getattr__(name):
    # numba's cache index pickles handle types by reference: a later process may unpickle
    # one before any optimizer made it, so the class is rebuilt from its name
    if name.startswith("MixedHandle_"):
        return _compiled_mixed.make_class(name)
    fields = _fields_of(name) if "_" in name else None
    if fields is not None:
        return _make_class(name, fields)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _handle_class(prefix, kind):
    name = _class_name(prefix, kind.kernel)
    cls = globals().get(name) or _make_class(name, _fields_of(name))
    _kinds.setdefault(cls, kind)
    return cls


def _dense_parts(optimizer):
    """What a handle of an optimizer whose step is ``optimizer._kernel(*optimizer._args)``
    holds beyond _FIXED, and its Kind."""
    kernel, args = optimizer._kernel, optimizer._args
    if not isinstance(kernel, Dispatcher) or getattr(kernel, "targetoptions", {}).get(
            "device") is not None:
        raise NotImplementedError(
            f"{type(optimizer).__name__} cannot be stepped from compiled code: its step is "
            "not one CPU kernel call (device='cuda' or Python-driven steps)")
    n = len(args)
    fields = tuple(f"a{k}" for k in range(n))
    kind = Kind(kernel, tuple(range(len(_FIXED), len(_FIXED) + n)), _prologue,
                tuple(_FIXED.index(f) for f in _PROLOGUE_ARGS))
    return f"Handle{n}", kind, dict(zip(fields, args)), {}


def make_handle(optimizer):
    """The handle of ``optimizer`` (``opt.compiled()`` calls this after syncing its groups).

    ``optimizer._handle_parts()`` gives the class prefix, the Kind, the fields after
    _FIXED by name, and any of _FIXED's own (stage_count, stage_used) it sets."""
    prefix, kind, extra, fixed = optimizer._handle_parts()
    flags = register(optimizer)
    arena = optimizer.arena
    flags[PARALLEL] = arena.size >= optimizer.parallel_threshold
    cls = _handle_class(prefix, kind)
    values = dict(data=arena.data, grad_buf=arena.grad, has_grad=arena.has_grad,
                  offsets=arena.offsets, chunks=arena.chunks, hyper=optimizer._hyper,
                  flags=flags, lr_col=optimizer._lr_column,
                  lr_open=int(getattr(optimizer, "_lr_low_open", False)),
                  lr_mask=optimizer._lr_mask, stage_count=_NO_STAGE, stage_used=_NO_STAGE)
    values.update(fixed, **extra)
    optimizer._handle_args = tuple(extra.values())
    return cls(**values)


def register(optimizer):
    """Number ``optimizer`` in its flags table, so that compiled code finds it: its flags.
    (A copy of an optimizer has a copy of its table, with the original's number: it gets
    its own number, and the original's handles stay the original's.)"""
    flags = optimizer._flags
    current = _owners.get(int(flags[OWNER]))
    if flags[OWNER] == 0 or (current is not None and current is not optimizer):
        flags[OWNER] = _next_owner[0]
        _next_owner[0] += 1
    _owners[int(flags[OWNER])] = optimizer
    from .optim import hooks
    hooks.refresh(optimizer)            # its hooks flag, for the optimizer the table is now
    return flags


def handle_args(optimizer):
    """The arrays a handle of ``optimizer`` made now would hold (beyond its arena's own)."""
    if optimizer._lanes is not None:
        return _compiled_mixed.handle_args(optimizer)
    return tuple(optimizer._handle_parts()[2].values())


def _python_sync(owner):
    """Run from compiled code (objmode) when param_groups changed: 0, or 1 if the handle is stale."""
    optimizer = _owners.get(owner)
    if optimizer is None:
        return 2
    from .optim.optimizer import wrapped_by, wrapped_message
    if optimizer in wrapped_by:
        raise NotImplementedError(wrapped_message(optimizer, wrapped_by[optimizer]))
    before = optimizer._handle_args
    optimizer._sync()
    after = handle_args(optimizer)
    if before is None or len(before) != len(after) or any(
            a is not b and (a.size or b.size)      # (unused state: fresh empty placeholders)
            for a, b in zip(before, after) if isinstance(a, np.ndarray)):
        return 1
    return 0


@njit(cache=True)
def _sync(flags):
    with objmode(status="int64"):
        status = _python_sync(int(flags[OWNER]))
    if status == 1:
        raise RuntimeError("the optimizer's arena or buffers changed since this handle was made "
                           "(add_param_group, or an option that needs a new state buffer): get "
                           "a new one with opt.compiled()")
    if status == 2:
        raise RuntimeError("the optimizer of this handle no longer exists")


def _python_hooks(owner, post):
    """Run from compiled code (objmode): the optimizer's step pre-hooks, or post-hooks, as
    ``opt.step()`` runs them (with ``args=(opt,)``, ``kwargs={}``)."""
    from .optim import hooks
    optimizer = _owners.get(owner)
    if optimizer is None:
        return 2
    args = (optimizer,)
    if post:
        hooks.run_post_hooks(optimizer, args, {})
        return 0
    new_args, new_kwargs = hooks.run_pre_hooks(optimizer, args, {}, "a step pre-hook")
    if len(new_args) != 1 or new_args[0] is not optimizer or new_kwargs:
        raise RuntimeError("a step pre-hook gave the step new arguments, which a step taken "
                           "from compiled code (numbaopt.compiled.step) cannot take")
    return 0


@njit(cache=True)
def _run_hooks(flags, post):
    with objmode(status="int64"):
        status = _python_hooks(int(flags[OWNER]), post)
    if status == 2:
        raise RuntimeError("the optimizer of this handle no longer exists")


@njit(cache=True)
def before_step(flags):
    """What every step's rare part starts with: the step pre-hooks, then re-read edited
    groups (both only when flagged)."""
    if flags[HOOKS]:
        _run_hooks(flags, False)
    if flags[DIRTY]:
        _sync(flags)


@njit(cache=True)
def arena_finite(flags, grad_buf, has_grad, chunks):
    """Whether every gradient of a one-arena handle is finite (threaded for a large arena)."""
    if flags[PARALLEL]:
        return grads_finite_parallel(grad_buf, has_grad, chunks)
    return grads_finite(grad_buf, has_grad, chunks)


@njit(cache=True)
def note_finite(flags, ok):
    """``skip_nonfinite``'s outcome into the flags (found_nonfinite, skipped_steps): ok."""
    flags[FOUND_NONFINITE] = 0 if ok else 1
    if not ok:
        flags[SKIPPED] += 1
    return ok


@njit(cache=True)
def _prologue(flags, grad_buf, has_grad, chunks):
    """The rare part of a step, run when ``flags[DIRTY]``, ``flags[SKIP_NONFINITE]`` or
    ``flags[HOOKS]``: ``before_step``, then check the gradients; False: skip this step."""
    before_step(flags)
    if flags[SKIP_NONFINITE]:
        return note_finite(flags, arena_finite(flags, grad_buf, has_grad, chunks))
    return True


@njit(cache=True)
def _sync_only(flags):
    """The rare part of a step whose kernel checks its own gradients (SparseAdam's)."""
    before_step(flags)
    return True


# -- what compiled code calls ------------------------------------------------------------------
def step(h):
    """One optimization step of the handle's optimizer, as ``opt.step()``; False if skipped
    (``skip_nonfinite`` and a NaN or inf gradient)."""
    if type(h) in _compiled_mixed.classes:
        return _compiled_mixed.step(h)
    kind = _kinds[type(h)]
    return run_guarded(h.flags, lambda: kind.prologue(*[h[k] for k in kind.prologue_fields]),
                       lambda: kind.kernel(*[h[k] for k in kind.kernel_fields]))


def run_guarded(flags, prologue, body):
    """``emit_guarded``'s frame, run from Python: ``step(h)`` called from Python."""
    ok = not (flags[DIRTY] or flags[SKIP_NONFINITE] or flags[HOOKS]) or prologue()
    if ok and body() is not False:
        flags[STEPS] += 1
    else:
        ok = False
    if flags[HOOKS]:
        _run_hooks(flags, True)
    return ok


def _signature(context, function, argtypes):
    """The signature of the call ``function(*argtypes)`` (compiles it, or loads it from the
    cache, on first use)."""
    return context.resolve_function_type(context.resolve_value_type(function),
                                         tuple(argtypes), {})


def type_step(context, h):
    """Type ``step(h)`` of a one-arena handle (resolving its kernel's and its prologue's
    signatures): True, or False if ``h`` is not one."""
    kind = _kinds.get(getattr(h, "instance_class", None))
    if kind is None or h.types[_FIXED.index("flags")] != types.int64[::1]:
        return False
    _signature(context, kind.kernel, (h.types[k] for k in kind.kernel_fields))
    _signature(context, kind.prologue, (h.types[k] for k in kind.prologue_fields))
    _signature(context, _run_hooks, (h.types[_FIXED.index("flags")], types.boolean))
    return True


@type_callable(step)
def _type_step(context):
    def typer(h):
        if type_step(context, h) or _compiled_mixed.type_step(context, h):
            return types.boolean
        return None
    return typer


def call_function(context, builder, function, argtypes, values):
    """Emit ``function(*values)``: its result and return type (it raises as a call does)."""
    fnty = context.typing_context.resolve_value_type(function)
    signature = _signature(context.typing_context, function, argtypes)
    return context.get_function(fnty, signature)(builder, values), signature.return_type


def emit_guarded(context, builder, flags_type, flags, prologue, body, hooks=True):
    """A step's frame, emitted in the caller around ``prologue()`` and ``body()`` (callables
    that emit code; ``body`` gives a boolean value or None): if flags[DIRTY],
    [SKIP_NONFINITE] or [HOOKS]: ok = prologue(); if ok: ok = body() (when it gives one);
    flags[STEPS] += ok; if hooks and flags[HOOKS]: the post-hooks (after a skipped step
    too, as opt.step()). Returns ok."""
    data = context.make_array(flags_type)(context, builder, flags).data

    def flag(k):
        return cgutils.gep_inbounds(builder, data, k)

    def raised(k):
        return builder.icmp_signed("!=", builder.load(flag(k)), zero)

    zero = context.get_constant(types.int64, 0)
    ok = cgutils.alloca_once_value(builder, cgutils.true_bit)
    rare = builder.or_(builder.or_(raised(DIRTY), raised(SKIP_NONFINITE)), raised(HOOKS))
    with builder.if_then(rare, likely=False):
        builder.store(prologue(), ok)
    with builder.if_then(builder.load(ok), likely=True):
        result = body()
        if result is not None:
            builder.store(result, ok)
        steps = flag(STEPS)
        taken = builder.zext(builder.load(ok), steps.type.pointee)
        builder.store(builder.add(builder.load(steps), taken), steps)
    if hooks:
        with builder.if_then(raised(HOOKS), likely=False):
            call_function(context, builder, _run_hooks, [flags_type, types.boolean],
                          [flags, cgutils.true_bit])
    return builder.load(ok)


def emit_step(context, builder, handle_type, handle, hooks=True):
    """``step(h)`` of a one-arena handle, emitted in the caller from the handle's members
    as they are (see the module docstring): its Kind's prologue and kernel (whose result,
    if a bool, says whether it stepped) in ``emit_guarded``'s frame. Returns ok.
    (``hooks=False``: a lane's step, whose optimizer runs the hooks.)"""
    def call(function, fields):
        return call_function(context, builder, function, [handle_type.types[k] for k in fields],
                             [builder.extract_value(handle, k) for k in fields])

    def kernel():
        result, returns = call(kind.kernel, kind.kernel_fields)
        return result if returns == types.boolean else None

    kind = _kinds[handle_type.instance_class]
    index = _FIXED.index("flags")
    return emit_guarded(context, builder, handle_type.types[index],
                        builder.extract_value(handle, index),
                        lambda: call(kind.prologue, kind.prologue_fields)[0], kernel, hooks)


@lower_builtin(step, types.BaseNamedTuple)
def _lower_step(context, builder, sig, args):
    (handle_type,), (handle,) = sig.args, args
    if handle_type.instance_class in _compiled_mixed.classes:
        return _compiled_mixed.emit_step(context, builder, handle_type, handle)
    return emit_step(context, builder, handle_type, handle)


# handles over several dtypes, and the functions compiled code calls on a handle besides
# step: last, as they import names from here
from . import _compiled_mixed  # noqa: E402
from ._compiled_api import (get_lr, grad, mark_grad, num_params, params,  # noqa: E402
                            set_lr, skipped_steps, sparse_grad, zero_grad)
