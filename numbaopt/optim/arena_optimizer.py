"""Optimizers whose state lives in the arena, stepped by one compiled call.

``ArenaOptimizer`` holds what every such optimizer shares: per-parameter step
counts and scalar state in the arena's tables, state buffers of the arena's
layout, torch's ``state`` / ``state_dict`` / ``load_state_dict`` over them,
``skip_nonfinite``, and the hyperparameter table rebuilt when a group changes.
A subclass says how a step runs (``_prepare``). The elementwise optimizers
(``numbaopt.optim.elementwise``) derive from it, and so do the ones whose step
is not one elementwise pass (Muon, SparseAdam, Adafactor).
"""

import math
from collections.abc import Mapping

import numpy as np

from ..parameter import Parameter
from . import optimizer as _optimizer
from .optimizer import Optimizer, ParamGroup, check_group_flags

__all__ = ["ArenaOptimizer"]


class ArenaOptimizer(Optimizer):
    """An optimizer with its state in the arena and a step that is one compiled call.

    A subclass declares:

    - ``hyperparameters``: the group options the kernel reads, in column order
      of the float64 row ``h`` (a pair such as ``betas`` takes two columns, a
      bool is 0.0 or 1.0). Or override ``_hyper_row(group)``.
    - ``_state_keys``: torch's names of the per-element state buffers, in
      torch's order; ``_group_state_keys(group)`` says which a group uses.
    - ``_scalar_state``: names of per-parameter scalar state (NAdam's
      ``mu_product``), stored as float64 in ``s[i]`` and given in state_dict as
      torch's float32 0-d arrays.
    - ``_prepare(hyper)``: the compiled call that steps the arena, its
      arguments, and a finiteness check of the gradients.
    - ``_check_group(group, index, where)``: torch's range checks (ValueError).

    ``skip_nonfinite=True`` (an option of every optimizer, not of torch) checks
    every gradient before stepping and, if any is NaN or inf, skips the whole
    step: parameters, state and step counts stay as they were, ``step()``
    returns None, ``found_nonfinite`` is True and ``skipped_steps`` counts it,
    the way torch's GradScaler skips steps. By default non-finite values
    propagate into the parameters, as in torch.
    """

    hyperparameters = ()
    _state_keys = ()
    _scalar_state = ()
    _step_in_state = True
    _state_from_start = False   # torch's Adagrad has state before its first step
    _parallel_scale = 1         # cheap updates need bigger arenas before threads pay off
    _load_defaults = {"maximize": False}

    def __init__(self, params, defaults, *, skip_nonfinite=False, device="cpu"):
        if not isinstance(skip_nonfinite, (bool, np.bool_)):
            raise ValueError(f"'skip_nonfinite' must be True or False, got {skip_nonfinite!r}")
        self.skip_nonfinite = bool(skip_nonfinite)
        self.found_nonfinite = False
        self.skipped_steps = 0
        super().__init__(params, defaults, device=device)

    def _after_init(self):
        self.arena.ensure_scalars(len(self._scalar_state))
        self._init_state(0)
        # read at construction, so benchmarks/report.py can override the module's value
        self.parallel_threshold = _optimizer.PARALLEL_THRESHOLD * self._parallel_scale
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
            check_group_flags(group, type(self).__name__, i)
            self._check_group(group, index=i)
            rows.append(self._hyper_row(group))
            needed.update(self._group_state_keys(group))
        hyper = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        arena.ensure_state(k for k in self._state_keys if k in needed)
        self._kernel, self._args, self._finite = self._prepare(hyper)
        self._dirty[0] = False

    def _prepare(self, hyper):
        """``(kernel, args, finite)``: the step's compiled call, its arguments, and a
        no-argument all-gradients-finite check, for the float64 table ``hyper``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _prepare(hyper)")

    def _hyper_row(self, group):
        """The group's float64 kernel row: ``hyperparameters`` flattened, in order."""
        row = []
        for name in self.hyperparameters:
            value = group[name]
            if isinstance(value, (tuple, list)):
                row.extend(float(v) for v in value)
            else:
                row.append(float(value))
        return row

    def _group_state_keys(self, group):
        return self._state_keys

    # -- groups --------------------------------------------------------------------
    def _before_add_group(self):
        # Validate pending edits of existing groups before the arena grows.
        for i, group in enumerate(self.param_groups):
            self._check_group(group, index=i)

    def _after_add_group(self, first):
        self.arena.ensure_scalars(len(self._scalar_state))
        self._init_state(first)
        self._sync()

    # -- state ---------------------------------------------------------------------
    def _init_state(self, first):
        """Initialise the state of parameters ``first:`` (lazy for most optimizers)."""

    def _param_state(self, i, group, copy, steps, scalars):
        """Parameter ``i``'s state dict (live views, or host copies), or None if it has none.

        ``steps`` and ``scalars`` are the host arrays of step counts and scalar state.
        """
        arena = self.arena
        if steps[i] == 0 and not self._state_from_start:
            return None
        out = {}
        if self._step_in_state:
            out["step"] = np.array(steps[i], dtype=np.float32) if copy else arena.step_view(i)
        for k, key in enumerate(self._scalar_state):
            # torch keeps these as float32 tensors (its default scalar dtype)
            out[key] = np.array(scalars[i, k], dtype=np.float32)
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
        scalars = arena.scalar_values()
        state = {}
        for i in range(len(arena)):
            entry = self._param_state(i, self.param_groups[arena.param_group[i]], True, steps,
                                      scalars)
            if entry is not None:
                state[i] = entry
        return {"state": state, "param_groups": self._packed_groups()}

    def load_state_dict(self, state_dict):
        """Load a state_dict from ``state_dict()`` or from torch.optim (tensors as ``.numpy()``).

        Everything is validated before anything changes; on error the optimizer
        is untouched. Arrays are copied in.
        """
        new_groups, index_of = self._loaded_groups(state_dict)
        arena = self.arena
        # Build the new state in fresh buffers; commit only when all of it is valid.
        step = np.zeros(len(arena), dtype=np.float64)
        scalars = np.zeros((len(arena), len(self._scalar_state)), dtype=np.float64)
        needed = set()
        for new in new_groups:
            needed.update(self._group_state_keys(new))
        buffers = {k: np.zeros(arena.size, arena.dtype) for k in self._state_keys if k in needed}
        self._fresh_state(buffers, new_groups)
        for i, key, entry in self._loaded_entries(state_dict, index_of):
            self._load_param_state(i, entry, new_groups[arena.param_group[i]], step, scalars,
                                   buffers, key)

        arena.load(step, buffers, scalars)
        self.param_groups[:] = [ParamGroup(g, self._dirty) for g in new_groups]
        self._sync()

    def _fresh_state(self, buffers, groups):
        """Fill ``buffers`` with the state of parameters that have none saved (zeros by default)."""

    def _load_param_state(self, i, entry, group, step, scalars, buffers, key):
        expected = set(self._state_keys) & set(self._group_state_keys(group))
        allowed = expected | set(self._scalar_state) | ({"step"} if self._step_in_state else set())
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
            step[i] = _scalar(entry["step"], key, "step", non_negative=True)
        else:
            step[i] = 1.0   # a saved momentum buffer exists
        for k, name in enumerate(self._scalar_state):
            scalars[i, k] = _scalar(entry[name], key, name)
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


def _scalar(value, key, name, non_negative=False):
    s = np.asarray(value)
    if s.shape != () or s.dtype.kind not in "iuf" or not math.isfinite(float(s)) \
            or (non_negative and float(s) < 0):
        kind = "a non-negative" if non_negative else "a finite"
        raise ValueError(f"loaded '{name}' of parameter {key!r} must be {kind} number or "
                         f"0-d array, got {value!r}")
    return float(s)


class _StateView(Mapping):
    """``opt.state``: maps each Parameter with state to a dict of live views."""

    def __init__(self, optimizer):
        self._opt = optimizer

    def _index(self, p):
        arena = self._opt.arena
        if isinstance(p, Parameter) and p._arena is arena:
            return p._index
        raise KeyError(p)

    def _entry(self, i, steps, scalars):
        opt = self._opt
        return opt._param_state(i, opt.param_groups[opt.arena.param_group[i]], False, steps,
                                scalars)

    def __getitem__(self, p):
        arena = self._opt.arena
        entry = self._entry(self._index(p), arena.step_counts(), arena.scalar_values())
        return {} if entry is None else entry

    def __contains__(self, p):
        try:
            return bool(self[p])
        except KeyError:
            return False

    def __iter__(self):
        arena = self._opt.arena
        steps, scalars = arena.step_counts(), arena.scalar_values()
        for i, p in enumerate(arena.params):
            if self._entry(i, steps, scalars):
                yield p

    def __len__(self):
        return sum(1 for _ in self)

