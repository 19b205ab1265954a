"""Optimizer base: parsing ``params``, param_groups, the arena, and torch's state_dict.

``Optimizer`` is torch's base class: a subclass writes ``step()`` in Python.
The built-in optimizers derive from ``numbaopt.optim.elementwise.ElementwiseOptimizer``,
which keeps the state in the arena and steps it in one compiled call.
The base's parts live next to it: groups in ``_optimizer_groups``, state and
state_dict in ``_optimizer_state``, option checks in ``_optimizer_checks``.
"""

from collections import OrderedDict

import weakref

import numpy as np

from ..arena import check_no_overlap, make_arena
from . import hooks as _hooks
from ._groups import DirtyFlag, ParamGroup, ParamGroups
# The option checks, and the private helpers other modules import from here, live in
# their own modules; this one stays their import path.
from ._optimizer_checks import (check_betas, check_flag, check_group_flags,
                                check_implementation_flags, check_option, has_array_value,
                                hyper_float, is_finite_real)
from ._optimizer_groups import GroupsMixin, _split_groups
from ._optimizer_state import StateMixin, _copy_value
from .hooks import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

#: Arenas with at least this many elements use the parallel (prange) kernel, times the
#: optimizer's ``_parallel_scale``. Measured on 2 cores (``python -m benchmarks.report
#: --sections threshold``): Adam's parallel kernel wins from 2**13-2**14 elements, SGD's,
#: whose update is little more than memory traffic, from 2**15-2**16.
PARALLEL_THRESHOLD = 1 << 14

__all__ = ["Optimizer", "ParamGroup", "PARALLEL_THRESHOLD", "check_betas", "check_flag", "check_option",
           "check_implementation_flags", "check_group_flags", "hyper_float", "is_finite_real",
           "register_optimizer_step_pre_hook",
           "register_optimizer_step_post_hook"]


class Optimizer(GroupsMixin, StateMixin):
    """Base class of numbaopt optimizers, with torch.optim.Optimizer's API.

    Subclass it the way torch's docs teach: call ``super().__init__(params,
    defaults)`` and write ``step()`` in Python over ``self.param_groups`` and
    ``self.state[p]`` (a dict per parameter, kept between steps and saved by
    ``state_dict()``). Parameters live in the optimizer's flat arena, so
    ``p.data`` and ``p.grad`` are views and in-place updates (``p.data -= ...``)
    are what a step writes. That path runs Python per parameter; for the
    one-call compiled step, subclass ``numbaopt.optim.ElementwiseOptimizer``
    and declare the update rule instead.

    Examples
    --------
    >>> class SignSGD(Optimizer):
    ...     def __init__(self, params, lr=0.01):
    ...         super().__init__(params, dict(lr=lr))
    ...     def step(self, closure=None):
    ...         for group in self.param_groups:
    ...             for p in group["params"]:
    ...                 if p.grad is not None:
    ...                     p.data -= group["lr"] * np.sign(p.grad)
    """

    # torch's implementation flags: accepted, stored in the groups, and changing nothing here.
    _implementation_flags = {}
    # Whether step hooks run (an instance attribute, kept by numbaopt.optim.hooks).
    _hooks_on = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "_runs_hooks", False):
            cls.step = _python_step(step)

    def __init__(self, params, defaults, *, device="cpu"):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self._init_hooks()
        self.device = device
        self.defaults = {k: tuple(v) if isinstance(v, list) else v for k, v in defaults.items()}
        self._check_group(self.defaults)
        # flags shared with compiled code (numbaopt.compiled): [0] mirrors _dirty
        self._flags = np.zeros(N_FLAGS, dtype=np.int64)
        self._dirty = DirtyFlag(self._flags)
        _hooks.refresh(self)                  # (its hook flag: a global hook may be on)
        groups = []
        for g in _split_groups(params):
            groups.append(self._checked_new_group(g, groups))
        all_params = [p for g in groups for p in g["params"]]
        dtypes = self._arena_dtypes(all_params)
        check_no_overlap(all_params)
        for i, g in enumerate(groups):
            self._check_group(g, index=i)
        if len(dtypes) == 1:
            self.arena = make_arena([g["params"] for g in groups], dtypes[0], device)
            self.arena.owner = type(self).__name__     # named in errors about its parameters
        else:
            self._build_lanes(groups, dtypes, device)   # one arena per dtype (_mixed)
        self._param_groups = ParamGroups(groups, self._dirty)
        self._user_state = {}
        self._after_init()

    def _init_hooks(self):
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        _hooks.track(self)

    def _after_init(self):
        """Called at the end of ``__init__`` (the elementwise optimizers build their kernels)."""

    # -- stepping ------------------------------------------------------------------
    def step(self, closure=None):
        """Perform one optimization step. Subclasses implement it (see the class docstring)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement step(): a subclass of "
            "numbaopt.optim.Optimizer writes step() in Python over self.param_groups and "
            "self.state, as in torch; or subclass numbaopt.optim.ElementwiseOptimizer and "
            "declare coefficients() and update() for the compiled one-call step")

    def set_grads(self, grads):
        """Assign every parameter's gradient in one call: ``grads[i]`` for parameter ``i``.

        Parameters are in arena order (group by group, as given; ``opt.arena.params``);
        ``None`` means no gradient. The same checks as ``p.grad = g`` (shape, a real
        dtype), all made before anything is written, then one copy per parameter.
        ``grads`` may also be one 1-D array of every parameter's gradient, flattened and
        end to end (``parameters_to_vector``'s layout, what a model with a flat gradient
        has): one copy, whatever the count.
        """
        if self._dirty[0]:
            self._reconcile(None)        # groups appended to param_groups are packed first
        if isinstance(grads, np.ndarray):
            grads = self._split_vector(grads)
            if isinstance(grads, np.ndarray):            # the arena's own layout: one copy
                np.copyto(self.arena.grad, grads, casting="unsafe")
                self.arena.has_grad[:] = True
                return
        arena = self.arena
        params = arena.params
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(f"set_grads got {len(grads)} gradients for {len(params)} parameters")
        if arena.plain_grads and not arena.has_complex and \
                set(map(type, grads)) == {np.ndarray} and \
                [g.shape for g in grads] == arena.shapes and \
                all(dt.kind in "fiub" for dt in {g.dtype for g in grads}):
            # every check at C speed, then a copy into each view (concatenate(axis=None)
            # costs as much for vectors and twice as much for matrices: it flattens each)
            for view, g in zip(arena._grad_views, grads):
                view[...] = g                  # (casts as np.copyto(casting="unsafe"))
            arena.has_grad[:] = True
            return
        check_grads(params, grads)
        for p, g in zip(params, grads):
            p.grad = g

    def _split_vector(self, vector):
        """A flat gradient vector as the arena's grad layout (itself, when it is real and the
        arena a host one without complex parameters), or as one view per parameter."""
        kind = vector.dtype.kind
        arena = None if getattr(self, "_lanes", None) is not None else self.arena
        if arena is not None and arena.plain_grads and not arena.has_complex \
                and kind in "fiub" and vector.ndim == 1 and vector.size == arena.size:
            return vector                 # the arena's own layout
        params = self._ordered_params()
        sizes = [p.size for p in params]
        if vector.ndim != 1 or vector.size != sum(sizes):
            raise ValueError(f"set_grads got an array of shape {vector.shape}: a 1-D vector of "
                             f"{sum(sizes)} elements (every parameter's, end to end) or a list "
                             "of one gradient per parameter")
        if kind not in "fiubc":
            raise TypeError(f"gradient must be a real numeric array, got dtype {vector.dtype}")
        starts = np.cumsum([0] + sizes)
        return [vector[a:b].reshape(p.shape) for p, a, b in zip(params, starts, starts[1:])]

    def compiled(self):
        """A handle to step this optimizer from ``@njit`` code (``numbaopt.compiled``)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot be stepped from compiled code: its step is Python "
            "(numbaopt.compiled steps the optimizers whose step is one compiled kernel)")

    def zero_grad(self, set_to_none=True):
        """Reset gradients: to None (default; the step then skips them) or to zeros.

        With ``set_to_none=False`` every parameter then has a zero gradient, the
        arena's analogue of torch's zeroed ``.grad`` tensors that a backward pass
        accumulates into: code that writes (or ``+=``) ``opt.arena.grad`` next is
        stepped without touching ``has_grad``. (torch keeps a never-set grad None.)
        """
        if self._dirty[0]:
            self._reconcile(None)      # groups appended to param_groups are packed first
        if set_to_none:
            self.arena.has_grad.fill(False)
        else:
            self.arena.zero_grad()
            self.arena.has_grad.fill(True)

    # -- hooks (torch's) ---------------------------------------------------------------
    def register_step_pre_hook(self, hook):
        """Register ``hook(optimizer, args, kwargs)``, run before each ``step()``.

        It may return ``(new_args, new_kwargs)`` to replace the step's arguments
        (``args`` starts with the optimizer). Returns a handle with ``remove()``.
        """
        return _hooks._register(self._optimizer_step_pre_hooks, hook,
                                on_change=lambda: _hooks.refresh(self))

    def register_step_post_hook(self, hook):
        """Register ``hook(optimizer, args, kwargs)``, run after each ``step()``."""
        return _hooks._register(self._optimizer_step_post_hooks, hook,
                                on_change=lambda: _hooks.refresh(self))

    def register_state_dict_pre_hook(self, hook, prepend=False):
        """Register ``hook(optimizer)``, run before ``state_dict()`` builds the dict."""
        return _hooks._register(self._optimizer_state_dict_pre_hooks, hook, prepend)

    def register_state_dict_post_hook(self, hook, prepend=False):
        """Register ``hook(optimizer, state_dict)``; it may edit the dict or return a new one."""
        return _hooks._register(self._optimizer_state_dict_post_hooks, hook, prepend)

    def register_load_state_dict_pre_hook(self, hook, prepend=False):
        """Register ``hook(optimizer, state_dict)``, run before loading.

        It gets a shallow copy of the dict given to ``load_state_dict`` and may
        edit it or return a replacement (for example to remap by ``param_names``).
        """
        return _hooks._register(self._optimizer_load_state_dict_pre_hooks, hook, prepend)

    def register_load_state_dict_post_hook(self, hook, prepend=False):
        """Register ``hook(optimizer)``, run after ``load_state_dict`` has loaded."""
        return _hooks._register(self._optimizer_load_state_dict_post_hooks, hook, prepend)

    # -- misc ----------------------------------------------------------------------
    def __getstate__(self):
        # torch drops hooks on pickling (they are often lambdas); so do we
        return {k: v for k, v in self.__dict__.items()
                if not k.startswith("_optimizer_") and k != "_hooks_on"}

    def __setstate__(self, state):
        flags = state.get("_flags")
        if flags is not None:
            if flags.shape[0] < N_FLAGS:                  # pickled before the hooks flag
                flags = np.concatenate([flags, np.zeros(N_FLAGS - flags.shape[0], np.int64)])
                state["_flags"] = state["_dirty"].flags = flags
            state["_handle_args"] = None     # (the copy's own handles set it)
        self.__dict__.update(state)
        self._init_hooks()

    def __repr__(self):
        # torch's format, to the character: a blank line between groups
        out = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            out += f"\nParameter Group {i}\n"
            out += "".join(f"    {key}: {group[key]}\n" for key in sorted(group) if key != "params")
        return out + ")"

    def _check_group(self, group, index=None, where="param group"):
        """Raise ``ValueError`` for an invalid group (torch's base class checks nothing)."""


# optimizer -> the name of the wrapper that steps it (a DistributedOptimizer, which averages
# gradients across ranks first): it has no compiled handle, and the ones it had go stale.
# By identity, so that a copy of the optimizer is not wrapped.
wrapped_by = weakref.WeakKeyDictionary()


# the size of the flags table compiled code shares (numbaopt.compiled.N_FLAGS)
N_FLAGS = 9


def wrapped_message(optimizer, wrapper):
    return (f"this {type(optimizer).__name__} is stepped by a {wrapper}, which averages the "
            "gradients across ranks first (MPI calls, made from Python): a step from compiled "
            "code would skip that, so it has no compiled handle")


def mark_wrapped(optimizer, wrapper):
    """``optimizer`` is now stepped by ``wrapper``: refuse compiled steps of it. Its handles
    hold its flags table: leave that one flagged for good (their next step syncs, and
    refuses) and keep the flags in a fresh one, as a sync clears the flag."""
    wrapped_by[optimizer] = type(wrapper).__name__
    stale, optimizer._flags = optimizer._flags, optimizer._flags.copy()
    stale[0] = 1
    optimizer._dirty.flags = optimizer._flags
    optimizer._handle_args = None


def check_grads(params, grads):
    """``p.grad = g``'s checks of every pair, before any is written (naming the index)."""
    from ..parameter import _as_array, _check_assignable
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is not None:
            try:
                _check_assignable(_as_array(g), p.shape, "gradient", p.dtype)
            except (TypeError, ValueError) as error:
                raise type(error)(f"gradient {i}: {error}") from None


def _python_step(func):
    """Wrap a Python ``step`` (a user's subclass): pending group edits, then torch's hooks."""
    import functools

    @functools.wraps(func)
    def step(self, *args, **kwargs):
        if self._dirty[0]:
            self._reconcile()      # the compiled-step base re-reads options in its own step
        if self._hooks_on:
            return _hooks.call_with_hooks(func, (self,) + args, kwargs)
        return func(self, *args, **kwargs)

    step._runs_hooks = True
    return step
