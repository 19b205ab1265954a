"""Optimizer base: parsing ``params``, param_groups, the arena, and torch's state_dict.

``Optimizer`` is torch's base class: a subclass writes ``step()`` in Python.
The built-in optimizers derive from ``numbaopt.optim.elementwise.ElementwiseOptimizer``,
which keeps the state in the arena and steps it in one compiled call.
"""

import copy
import math
from collections.abc import Mapping
from numbers import Real

import numpy as np

from ..arena import check_no_overlap, make_arena
from ..parameter import Parameter

#: Arenas with at least this many elements use the parallel (prange) kernel, times the
#: optimizer's ``_parallel_scale``. Measured on 2 cores (``python -m benchmarks.report
#: --sections threshold``): Adam's parallel kernel wins from 2**13-2**14 elements, SGD's,
#: whose update is little more than memory traffic, from 2**15-2**16.
PARALLEL_THRESHOLD = 1 << 14

__all__ = ["Optimizer", "ParamGroup", "PARALLEL_THRESHOLD", "check_betas", "check_flag", "check_option",
           "check_implementation_flags", "check_group_flags"]



class ParamGroup(dict):
    """A parameter group: a dict that tells its optimizer when it changes.

    Changing any option (``group["lr"] = 0.1``) makes the optimizer validate
    and re-read the options at its next ``step()``.
    """

    __slots__ = ("_dirty",)

    def __init__(self, items, dirty):
        super().__init__(items)
        self._dirty = dirty

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._dirty[0] = True

    def __delitem__(self, key):
        super().__delitem__(key)
        self._dirty[0] = True

    def update(self, *args, **kwargs):
        super().update(*args, **kwargs)
        self._dirty[0] = True

    def setdefault(self, key, default=None):
        self._dirty[0] = True
        return super().setdefault(key, default)

    def pop(self, key, *default):
        self._dirty[0] = True
        return super().pop(key, *default)

    def __reduce__(self):
        return (ParamGroup, (dict(self), self._dirty))


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

    def __init__(self, params, defaults, *, device="cpu"):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.device = device
        self.defaults = dict(defaults)
        self._check_group(self.defaults)
        self._dirty = [True]
        groups = [self._new_group(g) for g in _split_groups(params)]
        all_params = [p for g in groups for p in g["params"]]
        _check_unique(all_params)
        dtype = self._arena_dtype(all_params)
        check_no_overlap(all_params)
        for i, g in enumerate(groups):
            self._check_group(g, index=i)
        self.arena = make_arena([g["params"] for g in groups], dtype, device)
        self.arena.owner = type(self).__name__     # named in errors about its parameters
        self.param_groups = [ParamGroup(g, self._dirty) for g in groups]
        self._python_state = {}
        self._after_init()

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

    def zero_grad(self, set_to_none=True):
        """Reset gradients: to None (default; the step then skips them) or to zeros.

        With ``set_to_none=False`` parameters that have no gradient keep none,
        as in torch.
        """
        if set_to_none:
            self.arena.has_grad.fill(False)
        else:
            self.arena.zero_grad()

    # -- groups --------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a group of parameters (e.g. layers unfrozen while fine-tuning).

        The arena grows to hold them; existing values, gradients and state are kept.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        group = self._new_group(param_group)
        old = [p for g in self.param_groups for p in g["params"]]
        _check_unique(old + group["params"])
        self._arena_dtype(group["params"], expected=self.arena.dtype)
        check_no_overlap(old + group["params"])
        self._check_group(group, index=len(self.param_groups))
        self._before_add_group()
        first = len(old)
        self.arena = make_arena([g["params"] for g in self.param_groups] + [group["params"]],
                                self.arena.dtype, self.device, previous=self.arena)
        self.arena.owner = type(self).__name__
        self.param_groups.append(ParamGroup(group, self._dirty))
        self._after_add_group(first)

    def _before_add_group(self):
        """Called by ``add_param_group`` once the new group is valid, before anything changes."""

    def _after_add_group(self, first):
        """Called by ``add_param_group`` after the arena grew; ``first`` is the new group's first index."""

    def _new_group(self, group):
        """A plain-dict copy of ``group`` with its params listed and defaults filled in."""
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
            group["param_names"] = names
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError("optimizer can only optimize numbaopt.Parameter objects, "
                                f"but one of the params is {type(p).__module__}.{type(p).__qualname__}")
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        return group

    def _arena_dtype(self, params, expected=None):
        return _common_dtype(params, expected)

    # -- state (torch's way: a dict per parameter) -----------------------------------
    @property
    def state(self):
        """Per-parameter state: ``opt.state[p]`` is a dict, created empty on first access."""
        return _PythonState(self._python_state, self)

    def state_dict(self):
        """The optimizer's state in torch's format; every array is a copy.

        ``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``
        """
        index = {id(p): i for i, p in enumerate(self.arena.params)}
        state = {index[id(p)]: {k: _copy_value(v) for k, v in entry.items()}
                 for p, entry in self._python_state.items() if id(p) in index and entry}
        return {"state": dict(sorted(state.items())), "param_groups": self._packed_groups()}

    def _packed_groups(self):
        arena = self.arena
        groups = []
        for g, group in enumerate(self.param_groups):
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = list(range(arena.group_offsets[g], arena.group_offsets[g + 1]))
            groups.append(packed)
        return groups

    def load_state_dict(self, state_dict):
        """Load a state_dict from ``state_dict()`` or from torch.optim (tensors as ``.numpy()``).

        Everything is validated before anything changes; on error the optimizer
        is untouched. Arrays are copied in.
        """
        new_groups, index_of = self._loaded_groups(state_dict)
        state = {}
        for i, key, entry in self._loaded_entries(state_dict, index_of):
            state[self.arena.params[i]] = {k: _copy_value(v) for k, v in entry.items()}
        self._python_state.clear()
        self._python_state.update(state)
        self.param_groups[:] = [ParamGroup(g, self._dirty) for g in new_groups]

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
            new["params"] = group["params"]
            if "param_names" in group and "param_names" not in new:
                new["param_names"] = group["param_names"]
            new_groups.append(new)
        return new_groups, index_of

    @staticmethod
    def _loaded_entries(state_dict, index_of):
        """``(parameter index, saved key, entry)`` of each state a state_dict holds, checked.

        ``index_of`` (from ``_loaded_groups``) maps saved parameter keys to indices.
        """
        saved = state_dict["state"]
        if not isinstance(saved, Mapping):
            raise ValueError("state_dict['state'] must be a dict")
        out = []
        for key, entry in saved.items():
            if key not in index_of:
                raise ValueError(f"loaded state refers to parameter {key!r}, "
                                 "which no loaded param group lists")
            if not isinstance(entry, Mapping):
                raise ValueError(f"loaded state of parameter {key!r} is not a dict")
            out.append((index_of[key], key, entry))
        return out

    _load_defaults = {}

    # -- misc ----------------------------------------------------------------------
    def __repr__(self):
        # torch's format, to the character: a blank line between groups
        out = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            out += f"\nParameter Group {i}\n"
            out += "".join(f"    {key}: {group[key]}\n" for key in sorted(group) if key != "params")
        return out + ")"

    def _check_group(self, group, index=None, where="param group"):
        """Raise ``ValueError`` for an invalid group (torch's base class checks nothing)."""


class _PythonState(Mapping):
    """``opt.state`` of a Python-step optimizer: ``state[p]`` is created empty on first access."""

    def __init__(self, store, optimizer):
        self._store = store
        self._opt = optimizer

    def __getitem__(self, p):
        if not isinstance(p, Parameter) or p._arena is not self._opt.arena:
            raise KeyError(p)
        return self._store.setdefault(p, {})

    def __contains__(self, p):
        return bool(self._store.get(p))

    def __iter__(self):
        return (p for p, entry in self._store.items() if entry)

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

    The value must be a finite real number; ``index`` names the group in the message.
    """
    value = group[key]
    ok = is_finite_real(value)
    if ok:
        ok = (low < value if low_open else low <= value) and \
             (value < high if high_open else value <= high)
    if not ok:
        suffix = f" ({where} {index}, '{key}')" if index is not None else ""
        raise ValueError(f"{message}: {value!r}{suffix}")


def is_finite_real(value):
    """Whether ``value`` is a finite real number (not a bool): what a kernel column takes."""
    if not isinstance(value, Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:        # an int beyond float's range (lr=10**400)
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


def _check_unique(params):
    seen = {}
    for i, p in enumerate(params):
        j = seen.setdefault(id(p), i)
        if j != i:
            raise ValueError("some parameters appear more than once "
                             f"(parameters {j} and {i} are the same object)")


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
