"""Optimizer base: param_groups, state, state_dict, and the one-call step.

Subclasses (one module per algorithm) declare their options, state buffers and
kernels; this class owns everything else: parsing ``params``, packing the
arena, refreshing the small hyperparameter table when a group changed, and
torch's ``state_dict`` format.
"""

import copy
import math
from collections.abc import Mapping
from numbers import Real

import numpy as np

from ..arena import check_no_overlap, make_arena
from ..parameter import Parameter

__all__ = ["Optimizer", "ParamGroup"]

#: Arenas with at least this many elements use the parallel (prange) kernel, times the
#: optimizer's ``_parallel_scale``. Measured on 2 cores (``python -m benchmarks.report
#: --sections threshold``): Adam's parallel kernel wins from 2**13-2**14 elements, SGD's,
#: whose update is little more than memory traffic, from 2**15-2**16.
PARALLEL_THRESHOLD = 1 << 14

# torch's implementation-selection flags: accepted from a torch state_dict, never stored.
_TORCH_IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")


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
    """Base class of numbaopt optimizers (torch.optim.Optimizer's API).

    Subclasses set:

    - ``_state_keys``: torch's per-parameter state names, in torch's order,
      excluding ``"step"``; each is a flat buffer in ``arena.state``.
    - ``_step_in_state``: whether ``"step"`` appears in the state_dict.
    - ``_kernels``: ``(serial, parallel)`` compiled kernels, same signature.
    - ``_load_defaults``: options a saved group may lack (torch's ``__setstate__``).

    and implement ``_check_group(group)`` (raise ``ValueError``),
    ``_hyper_row(group)`` (the kernel's float64 row) and
    ``_group_state_keys(group)`` (state buffers the group uses).

    ``skip_nonfinite=True`` (an option of every optimizer, not of torch) checks
    every gradient before stepping and, if any is NaN or inf, skips the whole
    step: parameters, state and step counts stay as they were, ``step()``
    returns None, ``found_nonfinite`` is True and ``skipped_steps`` counts it,
    the way torch's GradScaler skips steps. By default non-finite values
    propagate into the parameters, as in torch.
    """

    _state_keys = ()
    _step_in_state = True
    _state_from_start = False   # torch's Adagrad has state before its first step
    _parallel_scale = 1         # cheap updates need bigger arenas before threads pay off
    _kernels = (None, None)
    _load_defaults = {"maximize": False}

    def __init__(self, params, defaults, *, skip_nonfinite=False, device="cpu"):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.device = device
        self.defaults = dict(defaults)
        self._check_group(self.defaults)
        if not isinstance(skip_nonfinite, (bool, np.bool_)):
            raise ValueError(f"'skip_nonfinite' must be True or False, got {skip_nonfinite!r}")
        self.skip_nonfinite = bool(skip_nonfinite)
        self.found_nonfinite = False
        self.skipped_steps = 0
        self._dirty = [True]
        groups = [self._new_group(g) for g in _split_groups(params)]
        all_params = [p for g in groups for p in g["params"]]
        _check_unique(all_params)
        dtype = _common_dtype(all_params)
        check_no_overlap(all_params)
        for i, g in enumerate(groups):
            self._check_group(g, index=i)
        self.arena = make_arena([g["params"] for g in groups], dtype, device)
        self.param_groups = [ParamGroup(g, self._dirty) for g in groups]
        self._init_state(0)
        self.parallel_threshold = PARALLEL_THRESHOLD * self._parallel_scale
        self._sync()

    # -- stepping ------------------------------------------------------------------
    def step(self, closure=None):
        """Perform one optimization step over every parameter with a gradient.

        ``closure`` (optional) re-evaluates the model and returns the loss; it
        is called once, before the update, and its value is returned.
        """
        loss = None
        if closure is not None:
            loss = closure()
        if self._dirty[0] or self.arena.stale is not None:
            self._sync()
        if self.skip_nonfinite:
            self.found_nonfinite = not self._finite()
            if self.found_nonfinite:
                self.skipped_steps += 1
                return None
        self._kernel(*self._args)
        return loss

    def zero_grad(self, set_to_none=True):
        """Reset gradients: to None (default; the step then skips them) or to zeros.

        With ``set_to_none=False`` parameters that have no gradient keep none,
        as in torch.
        """
        if set_to_none:
            self.arena.has_grad.fill(False)
        else:
            self.arena.zero_grad()

    def _sync(self):
        """Validate the groups and rebuild the kernel's hyperparameter table and arguments."""
        arena = self.arena
        if arena.stale is not None:
            raise RuntimeError(f"{type(self).__name__} can no longer step: {arena.stale}")
        if len(self.param_groups) != len(arena.group_offsets) - 1:
            raise RuntimeError(
                "param_groups was changed in place; use add_param_group to add parameters")
        rows = []
        needed = set()
        for i, group in enumerate(self.param_groups):
            self._check_group(group, index=i)
            rows.append(self._hyper_row(group))
            needed.update(self._group_state_keys(group))
        hyper = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        arena.ensure_state(k for k in self._state_keys if k in needed)
        self._kernel, self._args, self._finite = arena.prepare(self, hyper)
        self._dirty[0] = False

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
        _common_dtype(group["params"], expected=self.arena.dtype)
        check_no_overlap(old + group["params"])
        self._check_group(group, index=len(self.param_groups))
        first = len(old)
        self.arena = make_arena([g["params"] for g in self.param_groups] + [group["params"]],
                                self.arena.dtype, self.device, previous=self.arena)
        self.param_groups.append(ParamGroup(group, self._dirty))
        self._init_state(first)
        self._sync()

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

    # -- state ---------------------------------------------------------------------
    def _init_state(self, first):
        """Initialise the state of parameters ``first:`` (lazy for most optimizers)."""

    def _param_state(self, i, group, copy, steps):
        """Parameter ``i``'s state dict (live views, or host copies), or None if it has none.

        ``steps`` is the host array of step counts.
        """
        arena = self.arena
        if steps[i] == 0 and not self._state_from_start:
            return None
        out = {}
        if self._step_in_state:
            out["step"] = np.array(steps[i], dtype=np.float32) if copy else arena.step_view(i)
        for key in self._state_keys:
            if key in self._group_state_keys(group):
                buf = arena.state[key]
                out[key] = arena.param_to_host(buf, i) if copy else arena.view(buf, i)
        return out or None

    @property
    def state(self):
        """Per-parameter state: ``opt.state[p]`` is a dict of live views (torch's ``state``)."""
        return _StateView(self)

    def state_dict(self):
        """The optimizer's state in torch's format; every array is a copy.

        ``{"state": {index: {"step": ..., "exp_avg": ...}}, "param_groups": [{..., "params": [indices]}]}``
        """
        arena = self.arena
        steps = arena.step_counts()
        state = {}
        for i in range(len(arena)):
            entry = self._param_state(i, self.param_groups[arena.param_group[i]], True, steps)
            if entry is not None:
                state[i] = entry
        groups = []
        for g, group in enumerate(self.param_groups):
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = list(range(arena.group_offsets[g], arena.group_offsets[g + 1]))
            groups.append(packed)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict from ``state_dict()`` or from torch.optim (tensors as ``.numpy()``).

        Everything is validated before anything changes; on error the optimizer
        is untouched. Arrays are copied in.
        """
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
            new = {k: copy.deepcopy(v) for k, v in saved.items()
                   if k != "params" and k not in _TORCH_IMPLEMENTATION_FLAGS}
            for k, v in self._load_defaults.items():
                new.setdefault(k, v)
            missing = [k for k in self.defaults if k not in new]
            if missing:
                raise ValueError(
                    f"loaded param group {g} has no {', '.join(map(repr, missing))}: "
                    f"was it saved from another optimizer than {type(self).__name__}?")
            self._check_group(new, index=g, where="loaded param group")
            new["params"] = group["params"]
            if "param_names" in group and "param_names" not in new:
                new["param_names"] = group["param_names"]
            new_groups.append(new)

        # Build the new state in fresh buffers; commit only when all of it is valid.
        step = np.zeros(len(arena), dtype=np.float64)
        needed = set()
        for new in new_groups:
            needed.update(self._group_state_keys(new))
        buffers = {k: np.zeros(arena.size, arena.dtype) for k in self._state_keys if k in needed}
        self._fresh_state(buffers, new_groups)
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise ValueError("state_dict['state'] must be a dict")
        for key, entry in saved_state.items():
            if key not in index_of:
                raise ValueError(f"loaded state refers to parameter {key!r}, "
                                 "which no loaded param group lists")
            i = index_of[key]
            self._load_param_state(i, entry, new_groups[arena.param_group[i]], step, buffers, key)

        arena.load(step, buffers)
        self.param_groups[:] = [ParamGroup(g, self._dirty) for g in new_groups]
        self._sync()

    def _fresh_state(self, buffers, groups):
        """Fill ``buffers`` with the state of parameters that have none saved (zeros by default)."""

    def _load_param_state(self, i, entry, group, step, buffers, key):
        if not isinstance(entry, Mapping):
            raise ValueError(f"loaded state of parameter {key!r} is not a dict")
        expected = set(self._state_keys) & set(self._group_state_keys(group))
        allowed = expected | ({"step"} if self._step_in_state else set())
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(
                f"loaded state of parameter {key!r} has unexpected keys {sorted(unknown)} for "
                f"{type(self).__name__} with these options (expected {sorted(allowed)})")
        missing = allowed - set(entry)
        if missing:
            raise ValueError(f"loaded state of parameter {key!r} lacks {sorted(missing)}")
        arena = self.arena
        shape = arena.params[i].shape
        if self._step_in_state:
            s = np.asarray(entry["step"])
            if s.shape != () or s.dtype.kind not in "iuf" or not math.isfinite(float(s)) \
                    or float(s) < 0:
                raise ValueError(f"loaded 'step' of parameter {key!r} must be a non-negative "
                                 f"number or 0-d array, got {entry['step']!r}")
            step[i] = float(s)
        else:
            step[i] = 1.0   # a saved momentum buffer exists
        lo, hi = arena.offsets[i], arena.offsets[i + 1]
        for k in expected:
            value = np.asarray(entry[k])
            if value.shape != shape:
                raise ValueError(f"loaded '{k}' of parameter {key!r} has shape {value.shape}, "
                                 f"the parameter has shape {shape}")
            if value.dtype.kind not in "iuf":
                raise ValueError(f"loaded '{k}' of parameter {key!r} has non-real dtype {value.dtype}")
            buffers[k][lo:hi] = value.reshape(-1)

    # -- misc ----------------------------------------------------------------------
    def __getstate__(self):
        # The kernel arguments alias the arena; they are rebuilt after unpickling.
        return {k: v for k, v in self.__dict__.items() if k not in ("_args", "_kernel", "_finite")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._sync()

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        return "\n".join(lines) + "\n)"

    # subclass hooks
    def _check_group(self, group, index=None, where="param group"):
        raise NotImplementedError

    def _hyper_row(self, group):
        raise NotImplementedError

    def _group_state_keys(self, group):
        return self._state_keys


class _StateView(Mapping):
    """``opt.state``: maps each Parameter with state to a dict of live views."""

    def __init__(self, optimizer):
        self._opt = optimizer

    def _index(self, p):
        arena = self._opt.arena
        if isinstance(p, Parameter) and p._arena is arena:
            return p._index
        raise KeyError(p)

    def __getitem__(self, p):
        opt = self._opt
        i = self._index(p)
        entry = opt._param_state(i, opt.param_groups[opt.arena.param_group[i]], False,
                                 opt.arena.step_counts())
        return {} if entry is None else entry

    def __contains__(self, p):
        try:
            return bool(self[p])
        except KeyError:
            return False

    def __iter__(self):
        opt = self._opt
        steps = opt.arena.step_counts()
        for i, p in enumerate(opt.arena.params):
            if opt._param_state(i, opt.param_groups[opt.arena.param_group[i]], False, steps):
                yield p

    def __len__(self):
        return sum(1 for _ in self)


# -- helpers for subclasses -------------------------------------------------------------
def check_option(group, key, message, low=0.0, high=math.inf, high_open=False,
                 index=None, where="param group", low_open=False):
    """Raise torch's ``ValueError(f"{message}: {value}")`` unless ``low <= value <= high``.

    The value must be a finite real number; ``index`` names the group in the message.
    """
    value = group[key]
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low < value if low_open else low <= value) and \
             (value < high if high_open else value <= high)
    if not ok:
        suffix = f" ({where} {index}, '{key}')" if index is not None else ""
        raise ValueError(f"{message}: {value!r}{suffix}")


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
