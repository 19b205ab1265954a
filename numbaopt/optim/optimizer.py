"""Optimizer base: parsing ``params``, param_groups, the arena, and torch's state_dict.

``Optimizer`` is torch's base class: a subclass writes ``step()`` in Python.
The built-in optimizers derive from ``numbaopt.optim.elementwise.ElementwiseOptimizer``,
which keeps the state in the arena and steps it in one compiled call.
"""

import copy
import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from numbers import Real

import numpy as np

from ..arena import check_no_overlap, make_arena
from ..parameter import Parameter
from . import hooks as _hooks
from ._groups import DirtyFlag, ParamGroup, ParamGroups
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

class Optimizer:
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
        self._flags = np.zeros(8, dtype=np.int64)
        self._dirty = DirtyFlag(self._flags)
        groups = []
        for g in _split_groups(params):
            groups.append(self._checked_new_group(g, groups))
        all_params = [p for g in groups for p in g["params"]]
        dtype = self._arena_dtype(all_params)
        check_no_overlap(all_params)
        for i, g in enumerate(groups):
            self._check_group(g, index=i)
        self.arena = make_arena([g["params"] for g in groups], dtype, device)
        self.arena.owner = type(self).__name__     # named in errors about its parameters
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
        dtype), all made before anything is written; for host arenas the copy is one
        ``np.concatenate`` into the grad arena.
        """
        arena = self.arena
        params = arena.params
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(f"set_grads got {len(grads)} gradients for {len(params)} parameters")
        if arena.plain_grads and set(map(type, grads)) == {np.ndarray} and \
                [g.shape for g in grads] == arena.shapes and \
                all(dt.kind in "fiub" for dt in {g.dtype for g in grads}):
            # every check at C speed, then one copy into the grad arena
            np.concatenate(grads, axis=None, out=arena.grad, casting="unsafe")
            arena.has_grad[:] = True
            return
        from ..parameter import _as_array, _check_assignable
        for i, (g, shape) in enumerate(zip(grads, arena.shapes)):
            if g is not None:
                try:
                    _check_assignable(_as_array(g), shape, "gradient")
                except (TypeError, ValueError) as error:
                    raise type(error)(f"gradient {i}: {error}") from None
        for p, g in zip(params, grads):
            p.grad = g

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

    # -- groups --------------------------------------------------------------------
    @property
    def param_groups(self):
        """The parameter groups, torch's list of dicts; every edit takes effect at the next step.

        Options change through any route (``group["lr"] = x``, ``group |= {...}``,
        ``opt.param_groups[i] = {...}``); groups appended to the list are packed
        into the arena at the next step, as ``add_param_group`` would.
        """
        return self._param_groups

    @param_groups.setter
    def param_groups(self, groups):
        if isinstance(groups, Mapping) or not hasattr(groups, "__iter__"):
            raise TypeError("param_groups must be a list of dicts, got "
                            f"{type(groups).__name__}")
        self._param_groups = ParamGroups(groups, self._dirty)
        self._dirty[0] = True

    def add_param_group(self, param_group):
        """Add a group of parameters (e.g. layers unfrozen while fine-tuning).

        The arena grows to hold them; existing values, gradients and state are kept.
        Nothing changes unless the group and every pending edit of the others are valid.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        self._reconcile(None)
        self._adopt([param_group], append=True)

    def _adopt(self, new_groups, append):
        """Validate ``new_groups`` (dicts) against the others, then grow the arena with them.

        With ``append`` they are added to ``param_groups``; otherwise they are its last
        entries already (appended by the user) and are replaced by their completed form.
        """
        n = len(self.arena.group_offsets) - 1
        existing = list(self._param_groups)[:n]
        checked = []
        for g, raw in enumerate(new_groups):
            group = self._checked_new_group(raw, existing + checked)
            self._arena_dtype(group["params"], expected=self.arena.dtype)
            check_no_overlap([p for x in existing + checked for p in x["params"]]
                             + group["params"])
            self._check_group(group, index=n + g)
            checked.append(group)
        self._before_add_group(existing + checked)
        for group in checked:
            first = len(self.arena)
            groups = [g["params"] for g in self._param_groups][:len(self.arena.group_offsets) - 1]
            self.arena = make_arena(groups + [group["params"]], self.arena.dtype, self.device,
                                    previous=self.arena)
            self.arena.owner = type(self).__name__
            k = len(self.arena.group_offsets) - 2
            if append:
                self._param_groups.append(group)
            else:
                self._param_groups[k] = group
            self._after_add_group(first)

    def _reconcile(self, doing="step"):
        """Make the arena match ``param_groups`` after edits of the list, or raise why not.

        Groups appended to the list are packed (``_adopt``). Parameters added to or
        removed from a packed group, and removed or reordered groups, are refused:
        the arena holds each group's parameters contiguously in order.
        """
        arena = self.arena
        if doing is not None and arena.stale is not None:
            raise RuntimeError(f"{type(self).__name__} can no longer {doing}: {arena.stale}")
        groups = self._param_groups
        offsets = arena.group_offsets
        n = len(offsets) - 1
        for g, group in enumerate(list(groups)[:n]):
            if "params" not in group:
                raise ValueError(f"param group {g} has no 'params' entry")
            params = group["params"]
            expected = arena.params[offsets[g]:offsets[g + 1]]
            if len(params) != len(expected) or any(a is not b for a, b in zip(params, expected)):
                raise RuntimeError(
                    f"the parameters of param group {g} changed after the optimizer packed "
                    f"them ({len(expected)} packed, {len(params)} in the group now): numbaopt "
                    "keeps every group's parameters contiguously in its arena. Add parameters "
                    "with optimizer.add_param_group({'params': [...]}); for other changes build "
                    "a new optimizer and carry the state over with state_dict()")
        if len(groups) < n:
            raise RuntimeError(
                f"param_groups holds {len(groups)} groups, the optimizer packed {n}: removing a "
                "group is not supported (its parameters stay in the arena). Build a new "
                "optimizer over the parameters to train and carry state over with state_dict()")
        if len(groups) > n:
            self._adopt(list(groups)[n:], append=False)

    def _before_add_group(self, groups):
        """Called with every group (packed and new) once the new ones are valid, before
        anything changes: raise here to refuse."""

    def _after_add_group(self, first):
        """Called by ``add_param_group`` after the arena grew; ``first`` is the new group's first index."""

    def _checked_new_group(self, group, others):
        """``_new_group(group)``, checked against the groups ``others`` as torch's add_param_group."""
        group = self._new_group(group)
        for other in others:
            if ("param_names" in group) != ("param_names" in other):
                kind = "with names" if "param_names" in group else "without names"
                raise ValueError("all optimizer param groups should be with/without names. "
                                 f"cannot add param group {kind} to the optimizer")
        seen = {id(p) for other in others for p in other["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        return group

    def _new_group(self, group):
        """A plain-dict copy of ``group`` with its params listed and defaults filled in."""
        if not isinstance(group, Mapping):
            raise TypeError(f"param_group must be a dict, but got {type(group).__name__}")
        group = dict(group)
        if "params" not in group:
            raise ValueError("a parameter group needs a 'params' entry")
        params = group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of parameters in sets will change between runs. "
                "Please use a list instead.")
        elif isinstance(params, np.ndarray):
            raise TypeError("a group's 'params' must be a list of numbaopt.Parameter, "
                            "got a numpy.ndarray (wrap it: numbaopt.Parameter(array))")
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        params = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(params):
                raise ValueError("all optimizer params should be with/without names. "
                                 "Some param names are missing")
        elif "param_names" in group:
            names = list(group["param_names"])
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError("optimizer can only optimize numbaopt.Parameter objects, "
                                f"but one of the params is {type(p).__module__}.{type(p).__qualname__}")
        if len({id(p) for p in params}) != len(params):
            # torch warns and keeps the duplicate (and steps it twice); the arena holds it once
            warnings.warn("optimizer contains a parameter group with duplicate parameters; "
                          "in future, this will cause an error; see "
                          "github.com/pytorch/pytorch/issues/40967 for more information "
                          "(numbaopt keeps each parameter once)", UserWarning, stacklevel=4)
            first = {}
            for k, p in enumerate(params):
                first.setdefault(id(p), k)
            keep = sorted(first.values())
            params = [params[k] for k in keep]
            names = [names[k] for k in keep] if names else names
        if names:
            group["param_names"] = names
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        return group

    def _arena_dtype(self, params, expected=None):
        return _common_dtype(params, expected)

    # -- state (torch's way: a dict per parameter) -----------------------------------
    @property
    def state(self):
        """Per-parameter state: ``opt.state[p]`` is a dict, created empty on first access.

        Other keys (``opt.state["x"] = 1``) are kept too, and go into ``state_dict()``.
        """
        return _State(self)

    def _param_entry(self, p):
        """``state[p]`` for a parameter of this optimizer (a dict here; arena views in subclasses)."""
        return self._user_state.setdefault(p, {})

    def _set_param_entry(self, p, value):
        self._user_state[p] = dict(value)

    def _has_entry(self, p):
        return bool(self._user_state.get(p))

    def _params_with_state(self):
        return [p for p in self.arena.params if self._has_entry(p)]

    def state_dict(self):
        """The optimizer's state in torch's format; every array is a copy.

        ``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``.
        State-dict hooks run before and after, as in torch.
        """
        for hook in tuple(self._optimizer_state_dict_pre_hooks.values()):
            hook(self)
        groups, index = self._packed_groups()
        state = self._packed_state(self._saved_entries(), index, "state_dict()")
        state_dict = {"state": state, "param_groups": groups}
        for hook in tuple(self._optimizer_state_dict_post_hooks.values()):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _packed_state(self, entries, index, what):
        """torch's ``state``: ``entries`` (one per parameter, arena order) under the indices
        ``index`` (from ``_packed_groups``), then the non-parameter keys (copies)."""
        state = {}
        for p, entry in zip(self.arena.params, entries):
            if entry:
                if id(p) not in index:
                    raise ValueError(
                        f"parameter {p._index} has optimizer state but is in no param group (was a "
                        f"group removed from param_groups?); {what} would lose it")
                state[index[id(p)]] = entry
        state = dict(sorted(state.items()))
        for key, value in self._user_state.items():
            if not isinstance(key, Parameter):
                state[key] = copy.deepcopy(value)
        return state

    def _saved_entries(self):
        """Each parameter's state as state_dict() stores it (copies; empty dicts for none)."""
        return [{k: _copy_value(v) for k, v in self._user_state.get(p, {}).items()}
                for p in self.arena.params]

    def _packed_groups(self):
        """torch's packed groups and the ``id(p) -> index`` numbering they use.

        Parameters are numbered in order of first appearance, group by group, as in torch.
        """
        index = {}
        start = 0
        groups = []
        for group in self._param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            params = group.get("params", ())
            for i, p in enumerate(params, start):
                index.setdefault(id(p), i)
            packed["params"] = [index[id(p)] for p in params]
            start += len(params)
            groups.append(packed)
        return groups, index

    def load_state_dict(self, state_dict):
        """Load a state_dict from ``state_dict()`` or from torch.optim (tensors as ``.numpy()``).

        Everything is validated before anything changes; on error the optimizer
        is untouched. Arrays are copied in. Load hooks run as in torch: the
        pre-hooks get a shallow copy and may return a replacement.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        state_dict = dict(state_dict)
        for hook in tuple(self._optimizer_load_state_dict_pre_hooks.values()):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._reconcile("load state")
        self._load_state_dict(state_dict)
        for hook in tuple(self._optimizer_load_state_dict_post_hooks.values()):
            hook(self)

    def _load_state_dict(self, state_dict):
        new_groups, index_of = self._loaded_groups(state_dict)
        entries, others = self._loaded_entries(state_dict, index_of)
        state = {}
        for i, key, entry in entries:
            state[self.arena.params[i]] = {k: _copy_value(v) for k, v in entry.items()}
        self._user_state.clear()
        self._user_state.update(state)
        self._user_state.update(others)
        self._set_groups(new_groups)

    def _set_groups(self, groups):
        self._param_groups[:] = groups
        self._dirty[0] = True

    def _loaded_groups(self, state_dict):
        """Validate a state_dict's groups: ``(new group dicts, saved parameter key -> index)``."""
        if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict \
                or "state" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        arena = self.arena
        if arena.stale is not None:
            raise RuntimeError(f"{type(self).__name__} can no longer load state: {arena.stale}")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)}, optimizer has {len(self.param_groups)})")
        new_groups = []
        index_of = {}
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(f"loaded param group {g} is not a dict with a 'params' entry")
            saved_params = list(saved["params"])
            if len(saved_params) != len(group["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size "
                    f"of optimizer's group (group {g}: {len(saved_params)} saved, "
                    f"{len(group['params'])} in the optimizer)")
            first = int(arena.group_offsets[g])
            for k, key in enumerate(saved_params):
                if key in index_of:
                    raise ValueError(f"loaded state dict lists parameter {key!r} twice")
                index_of[key] = first + k
            new = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            for k, v in self._load_defaults.items():
                new.setdefault(k, v)
            for k, v in self._implementation_flags.items():
                new.setdefault(k, v)
            missing = [k for k in self.defaults if k not in new]
            if missing:
                raise ValueError(
                    f"loaded param group {g} has no {', '.join(map(repr, missing))}: "
                    f"was it saved from another optimizer than {type(self).__name__}?")
            check_group_flags(new, type(self).__name__, g, "loaded param group")
            self._check_group(new, index=g, where="loaded param group")
            new["params"] = list(group["params"])
            if "param_names" in group and "param_names" not in new:
                new["param_names"] = group["param_names"]
            new_groups.append(new)
        return new_groups, index_of

    @staticmethod
    def _loaded_entries(state_dict, index_of):
        """The state a state_dict holds, checked: ``([(index, saved key, entry)], others)``.

        ``index_of`` (from ``_loaded_groups``) maps saved parameter keys to indices;
        entries under other keys (torch keeps any key in ``state``) come back in ``others``.
        """
        saved = state_dict["state"]
        if not isinstance(saved, Mapping):
            raise ValueError("state_dict['state'] must be a dict")
        out = []
        others = {}
        for key, entry in saved.items():
            if key not in index_of:
                others[key] = copy.deepcopy(entry)
                continue
            if not isinstance(entry, Mapping):
                raise ValueError(f"loaded state of parameter {key!r} is not a dict")
            out.append((index_of[key], key, entry))
        return out, others

    _load_defaults = {}

    # -- misc ----------------------------------------------------------------------
    def __getstate__(self):
        # torch drops hooks on pickling (they are often lambdas); so do we
        return {k: v for k, v in self.__dict__.items()
                if not k.startswith("_optimizer_") and k != "_hooks_on"}

    def __setstate__(self, state):
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


class _State(MutableMapping):
    """``opt.state``: ``state[p]`` for each parameter (created on access), and any other key."""

    def __init__(self, optimizer):
        self._opt = optimizer

    def _param(self, key):
        if isinstance(key, Parameter):
            if key._arena is not self._opt.arena:
                raise KeyError(f"{key!r} is not a parameter of this {type(self._opt).__name__}")
            return True
        return False

    def __getitem__(self, key):
        if self._param(key):
            return self._opt._param_entry(key)
        return self._opt._user_state.setdefault(key, {})

    def __setitem__(self, key, value):
        if self._param(key):
            if not isinstance(value, Mapping):
                raise TypeError(f"the state of a parameter must be a dict, got {type(value).__name__}")
            self._opt._set_param_entry(key, value)
        else:
            self._opt._user_state[key] = value

    def __delitem__(self, key):
        if self._param(key):
            self._opt._set_param_entry(key, {})
        else:
            del self._opt._user_state[key]

    def __contains__(self, key):
        try:
            return self._opt._has_entry(key) if self._param(key) else key in self._opt._user_state
        except KeyError:
            return False

    def __iter__(self):
        opt = self._opt
        yield from opt._params_with_state()
        for key in list(opt._user_state):
            if not isinstance(key, Parameter):
                yield key

    def __len__(self):
        return sum(1 for _ in self)


def _copy_value(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


# -- helpers for subclasses -------------------------------------------------------------
def check_option(group, key, message, low=0.0, high=math.inf, high_open=False,
                 index=None, where="param group", low_open=False):
    """Raise torch's ``ValueError(f"{message}: {value}")`` unless ``low <= value <= high``.

    The value must be a finite real number, or a 1-element real array (torch's
    tensor hyperparameters, e.g. ``lr=np.asarray(1e-3)``); ``index`` names the
    group in the message.
    """
    value = group[key]
    if isinstance(value, np.ndarray) and value.size != 1:
        raise ValueError(f"Tensor {key} must be 1-element, got an array of shape {value.shape}")
    ok = is_finite_real(value)
    if ok:
        value = hyper_float(value)
        ok = (low < value if low_open else low <= value) and \
             (value < high if high_open else value <= high)
    if not ok:
        suffix = f" ({where} {index}, '{key}')" if index is not None else ""
        raise ValueError(f"{message}: {group[key]!r}{suffix}")


def hyper_float(value):
    """A hyperparameter as a float: a number, or the element of a 1-element array."""
    if isinstance(value, np.ndarray):
        return float(value.reshape(-1)[0])
    return float(value)


def is_finite_real(value):
    """Whether ``value`` is a finite real number (not a bool), or a 1-element real array."""
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "iuf":
            return False
        return bool(np.isfinite(value).all())
    if not isinstance(value, Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:        # an int beyond float's range (lr=10**400)
        return False


def has_array_value(group):
    """Whether a group holds an ndarray option (read again at every step: it may change in place)."""
    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, np.ndarray) or (
                isinstance(value, tuple) and any(isinstance(v, np.ndarray) for v in value)):
            return True
    return False


def check_betas(group, index=None, where="param group", key="betas", high_open=True,
                message="Invalid beta parameter at index"):
    """A pair of floats in ``[0, 1)`` (torch's Adam family), each checked with torch's message."""
    betas = group[key]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        suffix = f" ({where} {index})" if index is not None else ""
        raise ValueError(f"{key} must be a pair of floats, got {betas!r}{suffix}")
    for k in (0, 1):
        check_option({key: betas[k]}, key, f"{message} {k}", high=1.0, high_open=high_open,
                     index=index, where=where)


def check_group_flags(group, name, index=None, where="param group"):
    """The implementation flags a group holds (torch's), validated as the constructor does."""
    present = {k: group[k] for k in ("foreach", "fused", "capturable", "differentiable")
               if k in group}
    try:
        check_implementation_flags(name, **present)
    except ValueError as error:
        suffix = f" ({where} {index})" if index is not None else ""
        raise ValueError(f"{error}{suffix}") from None


def check_flag(group, key, index=None, where="param group"):
    value = group[key]
    if not isinstance(value, (bool, np.bool_)):
        suffix = f" ({where} {index})" if index is not None else ""
        raise ValueError(f"'{key}' must be True or False, got {value!r}{suffix}")


def _split_groups(params):
    """Normalise ``params`` to a list of group dicts (torch's rules)."""
    if isinstance(params, (Parameter, np.ndarray)):
        raise TypeError("params argument given to the optimizer should be an iterable of "
                        "Parameters or dicts, but got " + type(params).__qualname__)
    if isinstance(params, (set, frozenset)):
        raise TypeError("optimizer parameters need to be organized in ordered collections, but "
                        "the ordering of parameters in sets will change between runs. "
                        "Please use a list instead.")
    if isinstance(params, Mapping):
        raise TypeError("params argument given to the optimizer should be an iterable of "
                        "Parameters or dicts, but got a single dict (wrap it in a list)")
    groups = list(params)
    if len(groups) == 0:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(groups[0], Mapping):
        return [{"params": groups}]
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping):
            raise TypeError(f"params mixes dicts and other objects (entry {i} is "
                            f"{type(g).__qualname__})")
    return groups


def _common_dtype(params, expected=None):
    dtype = expected
    first = None
    for i, p in enumerate(params):
        if dtype is None:
            dtype, first = p.dtype, i
        elif p.dtype != dtype:
            where = f"parameter {first} is {dtype}" if first is not None else f"the optimizer's arena is {dtype}"
            raise TypeError(
                f"all parameters of one optimizer must share a dtype: {where}, parameter {i} is "
                f"{p.dtype}. Use one optimizer per dtype; numbaopt never casts silently.")
    return np.dtype(np.float32 if dtype is None else dtype)


def check_implementation_flags(name, foreach=None, fused=None, capturable=False,
                               differentiable=False):
    """torch's implementation flags as group entries, with torch's defaults.

    numbaopt has one implementation, so ``foreach``, ``fused`` and ``capturable``
    change nothing (there is nothing to capture); ``differentiable=True`` is
    refused: numbaopt's step is not traced by an autograd.
    """
    for flag, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"'{flag}' must be None, True or False, got {value!r}")
    for flag, value in (("capturable", capturable), ("differentiable", differentiable)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"'{flag}' must be True or False, got {value!r}")
    if differentiable:
        raise ValueError(
            f"{name}(differentiable=True) is not supported: numbaopt's step is a compiled "
            "kernel that no autograd records, so there is nothing to differentiate through")
    return dict(foreach=foreach, fused=fused, capturable=bool(capturable),
                differentiable=False)
