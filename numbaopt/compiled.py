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

Why a named tuple: numba's cache keys a function on its argument types, and a
named tuple's type is its class, which is importable by name here, so a user
function ``@njit(cache=True)`` over a handle compiles once and later processes
load it from disk (jitclass and structref do not cache: numba issues #6522,
#10021). Each optimizer kernel gets its own handle class; ``step`` is resolved
per class with ``numba.extending.overload``.
"""

import collections
import hashlib
import pathlib
import sys
import weakref

import numpy as np
from numba import njit, objmode
from numba.core.dispatcher import Dispatcher
from numba.extending import overload
from numba.np.ufunc.parallel import _launch_threads

from .kernels.finite import grads_finite, grads_finite_parallel

# A cached user function that holds a parallel kernel (a large arena's step, or the
# threaded finiteness check) links against numba's parfors runtime: start it now, or
# loading such a function from the cache in a fresh process fails ("Symbol not found:
# allocate_sched").
_launch_threads()

__all__ = ["step", "set_lr", "get_lr", "grad", "params", "mark_grad", "zero_grad",
           "num_params", "skipped_steps"]

# The flags table (int64), shared by the optimizer and every handle it gave out.
DIRTY, SKIP_NONFINITE, FOUND_NONFINITE, SKIPPED, LR_WRITTEN, OWNER, PARALLEL, STEPS = range(8)
N_FLAGS = 8

_SOURCE_DIGEST = hashlib.sha256(pathlib.Path(__file__).read_bytes()).digest()
_FIXED = ("data", "grad_buf", "has_grad", "offsets", "chunks", "hyper", "flags", "lr_col")
_owners = weakref.WeakValueDictionary()      # flags[OWNER] -> optimizer
_next_owner = [1]
_impls = {}                                  # handle class -> plain step function


# -- the handle classes ----------------------------------------------------------------------
def _class_name(n, kernel):
    # The name covers the kernel's version (its qualified name carries a hash of its
    # rule's sources) and this file's: a user's cached function inlines step(), and
    # numba's cache checks only the user's own file, so a new numbaopt must give a
    # new handle type for that function to compile again.
    digest = hashlib.sha256(f"{kernel.py_func.__module__}.{kernel.py_func.__qualname__}"
                            .encode() + _SOURCE_DIGEST).hexdigest()[:12]
    return f"Handle{n}_{digest}"


def _make_class(name, n):
    cls = collections.namedtuple(name, _FIXED + tuple(f"a{k}" for k in range(n)))
    cls.__module__ = __name__
    cls.__qualname__ = name
    setattr(sys.modules[__name__], name, cls)
    return cls


def __getattr__(name):
    # numba's cache index pickles handle types by reference: a later process may unpickle
    # one before any optimizer made it, so the class is rebuilt from its name
    if name.startswith("Handle") and "_" in name:
        head = name[len("Handle"):name.index("_")]
        if head.isdigit():
            return _make_class(name, int(head))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _handle_class(kernel, n):
    name = _class_name(n, kernel)
    cls = globals().get(name) or _make_class(name, n)
    if cls not in _impls:
        _impls[cls] = _bind_step(kernel, n, name)
    return cls


def _bind_step(kernel, n, name):
    """The step of one kernel: a plain function with the kernel as a global (cacheable)."""
    args = ", ".join(f"h.a{k}" for k in range(n))
    source = (
        "def _step(h):\n"
        "    if h.flags[DIRTY]:\n"
        "        _sync(h.flags)\n"
        "    if h.flags[SKIP_NONFINITE]:\n"
        "        if h.flags[PARALLEL]:\n"
        "            ok = grads_finite_parallel(h.grad_buf, h.has_grad, h.chunks)\n"
        "        else:\n"
        "            ok = grads_finite(h.grad_buf, h.has_grad, h.chunks)\n"
        "        h.flags[FOUND_NONFINITE] = 0 if ok else 1\n"
        "        if not ok:\n"
        "            h.flags[SKIPPED] += 1\n"
        "            return False\n"
        f"    kernel({args})\n"
        "    h.flags[STEPS] += 1\n"
        "    return True\n")
    env = dict(globals())         # __name__ among them: a cached function's environment
    env.update({"kernel": kernel, "_sync": _sync, "grads_finite": grads_finite,
           "grads_finite_parallel": grads_finite_parallel, "DIRTY": DIRTY,
           "SKIP_NONFINITE": SKIP_NONFINITE, "PARALLEL": PARALLEL,
           "FOUND_NONFINITE": FOUND_NONFINITE, "SKIPPED": SKIPPED,
                "STEPS": STEPS})
    # compiled under this file's name (numba's cache locates functions by source file) and
    # a qualified name per handle class, which already names the kernel's version
    exec(compile(source, __file__, "exec"), env)
    function = env["_step"]
    function.__qualname__ = function.__name__ = f"_step_{name}"
    return function


def make_handle(optimizer):
    """The handle of ``optimizer`` (``opt.compiled()`` calls this after syncing its groups)."""
    kernel, args = optimizer._kernel, optimizer._args
    if not isinstance(kernel, Dispatcher) or getattr(kernel, "targetoptions", {}).get(
            "device") is not None:
        raise NotImplementedError(
            f"{type(optimizer).__name__} cannot be stepped from compiled code: its step is "
            "not one CPU kernel call (device='cuda', sparse or Python-driven steps)")
    flags = optimizer._flags
    if flags[OWNER] == 0:
        flags[OWNER] = _next_owner[0]
        _next_owner[0] += 1
    _owners[int(flags[OWNER])] = optimizer
    arena = optimizer.arena
    flags[PARALLEL] = arena.size >= optimizer.parallel_threshold
    cls = _handle_class(kernel, len(args))
    handle = cls(arena.data, arena.grad, arena.has_grad, arena.offsets, arena.chunks,
                 optimizer._hyper, flags, optimizer._lr_column, *args)
    optimizer._handle_args = args
    return handle


def _python_sync(owner):
    """Run from compiled code (objmode) when param_groups changed: 0, or 1 if the handle is stale."""
    optimizer = _owners.get(owner)
    if optimizer is None:
        return 2
    before = optimizer._handle_args
    optimizer._sync()
    after = optimizer._args
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


# -- what compiled code calls ------------------------------------------------------------------
def step(h):
    """One optimization step of the handle's optimizer, as ``opt.step()``; False if skipped
    (``skip_nonfinite`` and a NaN or inf gradient)."""
    return _impls[type(h)](h)


@overload(step, inline="always", jit_options={"cache": True})
def _step_overload(h):
    impl = _impls.get(getattr(h, "instance_class", None))
    if impl is None:
        return None
    return impl


@njit(cache=True)
def set_lr(h, g, lr):
    """Set group ``g``'s lr from compiled code; ``param_groups`` and ``state_dict()`` see it."""
    if not (lr >= 0.0 and lr < np.inf):
        raise ValueError("Invalid learning rate: a compiled set_lr got a negative or "
                         "non-finite value")
    h.hyper[g, h.lr_col] = lr
    h.flags[LR_WRITTEN] = 1


@njit(cache=True)
def get_lr(h, g):
    """Group ``g``'s current lr."""
    return h.hyper[g, h.lr_col]


@njit(cache=True)
def num_params(h):
    """The number of parameters (arena order: group by group, as given)."""
    return h.offsets.shape[0] - 1


@njit(cache=True)
def params(h, i):
    """Parameter ``i``'s values: a flat view into the arena."""
    return h.data[h.offsets[i]:h.offsets[i + 1]]


@njit(cache=True)
def grad(h, i):
    """Parameter ``i``'s gradient buffer: a flat view into the arena (write it, then mark_grad)."""
    return h.grad_buf[h.offsets[i]:h.offsets[i + 1]]


@njit(cache=True)
def mark_grad(h, i):
    """Say that parameter ``i`` has a gradient (torch's ``p.grad is not None``)."""
    h.has_grad[i] = True


@njit(cache=True)
def zero_grad(h, set_to_none=True):
    """``opt.zero_grad(set_to_none)``: clear the has-grad flags, or zero the gradient values
    (the flags stay, as in torch)."""
    if set_to_none:
        h.has_grad[:] = False
    else:
        h.grad_buf[:] = 0


@njit(cache=True)
def skipped_steps(h):
    """How many steps ``skip_nonfinite`` skipped (``opt.skipped_steps``)."""
    return h.flags[SKIPPED]
