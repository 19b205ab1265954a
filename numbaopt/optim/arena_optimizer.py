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
import threading
import warnings
from collections.abc import MutableMapping

import numpy as np

from . import hooks as _hooks
from . import optimizer as _optimizer
from .optimizer import (Optimizer, _copy_value, check_group_flags, check_option, has_array_value,
                        hyper_float)

__all__ = ["ArenaOptimizer"]

# the flags table (numbaopt.compiled): skip_nonfinite, found_nonfinite, skipped steps,
# lr written by compiled code
_FLAG_SKIP, _FLAG_FOUND, _FLAG_SKIPPED, _FLAG_LR_WRITTEN = 1, 2, 3, 4


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
        self._skip_nonfinite = bool(skip_nonfinite)
        self._hyper = None
        self._step_lock = threading.RLock()
        self._locked_steps = False
        super().__init__(params, defaults, device=device)
        self._flags[_FLAG_SKIP] = self._skip_nonfinite

    # skip_nonfinite, found_nonfinite and skipped_steps live in the flags table that
    # compiled code (numbaopt.compiled) shares; skip_nonfinite is also a plain attribute,
    # read by every step()
    @property
    def skip_nonfinite(self):
        return self._skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"'skip_nonfinite' must be True or False, got {value!r}")
        self._skip_nonfinite = bool(value)
        self._flags[_FLAG_SKIP] = bool(value)

    @property
    def found_nonfinite(self):
        return bool(self._flags[_FLAG_FOUND])

    @found_nonfinite.setter
    def found_nonfinite(self, value):
        self._flags[_FLAG_FOUND] = bool(value)

    @property
    def skipped_steps(self):
        return int(self._flags[_FLAG_SKIPPED])

    @skipped_steps.setter
    def skipped_steps(self, value):
        self._flags[_FLAG_SKIPPED] = int(value)

    def _after_init(self):
        self.arena.ensure_scalars(len(self._scalar_state))
        self._init_state(0)
        # read at construction, so benchmarks/report.py can override the module's value
        self.parallel_threshold = _optimizer.PARALLEL_THRESHOLD * self._parallel_scale
        self._sync()
        self._dirty[0] = True    # the first step syncs again: it checks the has-grad flags
        self._flags_unchecked = True
    # -- stepping ------------------------------------------------------------------
    @_hooks.runs_hooks
    def step(self, closure=None):
        """Perform one optimization step over every parameter with a gradient.

        ``closure`` (optional) re-evaluates the model and returns the loss; it
        is called once, before the update, and its value is returned.
        """
        if self._hooks_on:
            return _hooks.call_with_hooks(ArenaOptimizer.step,
                                          (self,) if closure is None else (self, closure), {})
        loss = None
        if closure is not None:
            loss = closure()
        if self._locked_steps:
            # a prange or CUDA step runs without the GIL: save() and state_dict() in another
            # thread wait for it (a serial kernel holds the GIL, so it needs no lock)
            with self._step_lock:
                return None if self._step_arena() is False else loss
        # _step_arena's body, inlined: a call costs ~0.05 us of a ~1 us small step
        if self._dirty[0] or self.arena.stale is not None:
            self._sync()
        if self._skip_nonfinite:
            flags = self._flags
            flags[_FLAG_FOUND] = found = not self._finite()
            if found:
                flags[_FLAG_SKIPPED] += 1
                return None
        self._kernel(*self._args)
        return loss

    def _step_arena(self):
        """Sync if needed, check finiteness (skip_nonfinite), run the kernel; False if skipped."""
        if self._dirty[0] or self.arena.stale is not None:
            self._sync()
        if self._skip_nonfinite:
            flags = self._flags
            flags[_FLAG_FOUND] = found = not self._finite()
            if found:
                flags[_FLAG_SKIPPED] += 1
                return False
        self._kernel(*self._args)
        return True

    def compiled(self):
        """The handle that steps this optimizer from ``@njit`` code (``numbaopt.compiled``).

        It shares the arena, the hyperparameter table and the flags with this
        optimizer: steps taken through it are steps of this optimizer, and edits of
        ``param_groups`` reach it. Get a new one after ``add_param_group``.
        """
        from .. import compiled
        if self._dirty[0] or self.arena.stale is not None:
            self._sync()
        return compiled.make_handle(self)

    @property
    def param_groups(self):
        if self._flags[_FLAG_LR_WRITTEN]:
            self._pull_compiled_lr()
        return self._param_groups

    @param_groups.setter
    def param_groups(self, groups):
        Optimizer.param_groups.fset(self, groups)

    def _pull_compiled_lr(self):
        """Copy lrs that compiled code set (``numbaopt.compiled.set_lr``) into the groups."""
        self._flags[_FLAG_LR_WRITTEN] = 0
        col = self._lr_column
        for g, group in enumerate(self._param_groups):
            value = float(self._hyper[g, col])
            current = group.get("lr")
            if isinstance(current, np.ndarray):
                current[...] = value
            elif current != value:
                group._data["lr"] = value      # the table holds it already: no re-sync

    @property
    def _lr_column(self):
        """The column of ``lr`` in the hyperparameter table."""
        col = 0
        for name in self.hyperparameters:
            if name == "lr":
                return col
            value = self.defaults.get(name)
            col += len(value) if isinstance(value, (tuple, list)) else 1
        return 0

    def _sync(self):
        """Validate the groups and rebuild the kernel's hyperparameter table and arguments.

        Runs at the first step after any edit of ``param_groups`` (the containers
        raise ``_dirty``), and at every step while an option is an ndarray, which
        may change in place (torch's tensor lr).
        """
        if self._flags[_FLAG_LR_WRITTEN]:
            self._pull_compiled_lr()
        self._check_forgotten_flags()
        if self._dirty.lr_only and self._sync_lr():
            return
        self._reconcile()
        rows, needed, live = self._checked_rows(self._param_groups)
        hyper = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        if self._hyper is not None and self._hyper.shape == hyper.shape:
            self._hyper[...] = hyper         # in place: compiled handles hold this table
            hyper = self._hyper
        self._hyper = hyper
        self.arena.ensure_state(k for k in self._state_keys if k in needed)
        self._kernel, self._args, self._finite = self._prepare(hyper)
        self._locked_steps = self.device != "cpu" or \
            self.arena.size >= getattr(self, "parallel_threshold", 0)
        self._dirty[0] = live

    def _sync_lr(self):
        """Only lrs changed (a scheduler's step): check them and write the table's column.

        Returns False, changing nothing, when the full sync is needed (an ndarray lr,
        a device arena, or a structural change).
        """
        hyper = self._hyper
        groups = self._param_groups
        if hyper is None or not isinstance(hyper, np.ndarray) or self.device != "cpu" \
                or self.arena.stale is not None or len(groups) != hyper.shape[0]:
            return False
        values = []
        for i, group in enumerate(groups):
            lr = group.get("lr")
            if isinstance(lr, np.ndarray) or "lr" not in group:
                return False
            self._check_lr(group, i)
            values.append(float(lr))
        hyper[:, self._lr_column] = values
        self._dirty[0] = False
        return True

    _lr_message = "Invalid learning rate"   # torch's words in _check_group, for _check_lr
    _lr_low_open = False

    def _check_lr(self, group, index):
        """torch's check of a group's lr alone (``_check_group`` checks it with the rest)."""
        check_option(group, "lr", self._lr_message, index=index, low_open=self._lr_low_open)

    def _check_forgotten_flags(self):
        """Warn (once) when gradients were written into the arena with no has-grad flag set."""
        # Only at the first step: later, zero_grad() leaves old values behind on purpose.
        if not getattr(self, "_flags_unchecked", False):
            return
        self._flags_unchecked = False
        arena = self.arena
        if not isinstance(arena.grad, np.ndarray) or arena.has_grad.any() \
                or not arena.grad.any():
            return
        warnings.warn(
            f"{type(self).__name__}.step(): opt.arena.grad holds gradients but no parameter "
            "has its has-grad flag set, so the step skips every parameter. Set "
            "opt.arena.has_grad[:] = True after writing the arena, or call "
            "opt.zero_grad(set_to_none=False) before", UserWarning, stacklevel=4)

    def _checked_rows(self, groups):
        """Validate ``groups``: ``(kernel rows, state keys they need, any ndarray option)``."""
        rows = []
        needed = set()
        live = False
        for i, group in enumerate(groups):
            missing = [k for k in self.defaults if k not in group]
            if missing:
                raise ValueError(
                    f"param group {i} has no {', '.join(map(repr, missing))}: every group "
                    f"needs {type(self).__name__}'s options (was it deleted from the group?)")
            check_group_flags(group, type(self).__name__, i)
            self._check_group(group, index=i)
            rows.append(self._hyper_row(group))
            needed.update(self._group_state_keys(group))
            live = live or has_array_value(group)
        return rows, needed, live

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
                row.extend(hyper_float(v) for v in value)
            else:
                row.append(hyper_float(value))
        return row

    def _group_state_keys(self, group):
        return self._state_keys

    # -- groups --------------------------------------------------------------------
    def _before_add_group(self, groups):
        # Everything the step after growing will check, checked before the arena grows.
        self._checked_rows(groups)

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

    def _param_entry(self, p):
        return _ParamState(self, p)

    def _has_entry(self, p):
        return bool(self._live_entry(p._index)) or bool(self._user_state.get(p))

    def _params_with_state(self):
        arena = self.arena
        steps, scalars = arena.step_counts(), arena.scalar_values()   # one copy for all
        return [p for i, p in enumerate(arena.params)
                if self._param_state(i, self.param_groups[arena.param_group[i]], False, steps,
                                     scalars) or self._user_state.get(p)]

    def _live_entry(self, i):
        arena = self.arena
        return self._param_state(i, self.param_groups[arena.param_group[i]], False,
                                 arena.step_counts(), arena.scalar_values()) or {}

    def _arena_keys(self):
        return set(self._state_keys) | set(self._scalar_state) | (
            {"step"} if self._step_in_state else set())

    def _set_param_entry(self, p, value):
        # opt.state[p] = {...}: the user's keys are replaced, the arena's written through
        live = self._live_entry(p._index)
        dropped = [k for k in live if k not in value]
        if dropped:
            raise ValueError(
                f"cannot drop {sorted(dropped)} from the state of a {type(self).__name__} "
                "parameter: it lives in the arena. Set entries (opt.state[p][key] = value) or "
                "load a state_dict")
        arena_values = {k: v for k, v in value.items() if k in live}
        for key, v in arena_values.items():
            self._check_entry(p._index, key, v, live[key])
        for key, v in arena_values.items():
            self._write_entry(p._index, key, v, live[key])
        self._user_state[p] = {k: v for k, v in value.items() if k not in live}

    def _check_entry(self, i, key, value, view):
        shape = () if key == "step" or key in self._scalar_state else view.shape
        array = np.asarray(value)
        if array.shape != shape or array.dtype.kind not in "iuf" or \
                not np.isfinite(array).all() or (key == "step" and float(array) < 0):
            raise ValueError(f"state '{key}' of parameter {i} must be a finite real "
                             f"{'number' if shape == () else 'array of shape ' + str(shape)}, "
                             f"got {value!r}")

    def _write_entry(self, i, key, value, view):
        arena = self.arena
        if key == "step":
            steps = arena.step_counts().copy()
            steps[i] = float(np.asarray(value))
            self._write_steps(steps)
        elif key in self._scalar_state:
            k = self._scalar_state.index(key)
            if isinstance(arena.scalars, np.ndarray):
                arena.scalars[i, k] = float(np.asarray(value))
            else:
                scalars = np.array(arena.scalar_values(), dtype=np.float64)
                scalars[i, k] = float(np.asarray(value))
                arena.scalars = arena._adopt_scalars(scalars)
                self._dirty[0] = True     # the kernel arguments hold the scalar table
        elif isinstance(view, np.ndarray):
            np.copyto(view, np.asarray(value), casting="unsafe")
        else:
            arena._copy_into(view, np.asarray(value, dtype=arena.dtype))

    def _write_steps(self, steps):
        arena = self.arena
        if isinstance(arena.step, np.ndarray):
            arena.step[:] = steps
        else:
            arena.step.copy_to_device(steps)

    def _saved_entries(self):
        with self._step_lock:               # not between the halves of a parallel step
            return self._saved_entries_unlocked()

    def _saved_entries_unlocked(self):
        arena = self.arena
        steps = arena.step_counts()
        scalars = arena.scalar_values()
        out = []
        for i, p in enumerate(arena.params):
            entry = self._param_state(i, self.param_groups[arena.param_group[i]], True, steps,
                                      scalars) or {}
            entry.update(_copied(self._user_state.get(p, {})))
            out.append(entry)
        return out

    def _load_state_dict(self, state_dict):
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
        entries, others = self._loaded_entries(state_dict, index_of)
        user = dict(others)
        for i, key, entry in entries:
            extra = self._load_param_state(i, entry, new_groups[arena.param_group[i]], step,
                                           scalars, buffers, key)
            if extra:
                user[arena.params[i]] = extra

        arena.load(step, buffers, scalars)
        self._user_state.clear()
        self._user_state.update(user)
        self._set_groups(new_groups)
        self._sync()

    def _fresh_state(self, buffers, groups):
        """Fill ``buffers`` with the state of parameters that have none saved (zeros by default)."""

    def _load_param_state(self, i, entry, group, step, scalars, buffers, key):
        """Check parameter ``i``'s saved entry and stage it; returns its other keys (copied).

        Keys the optimizer does not keep in the arena are kept as they are (torch
        keeps any key). An entry with none of the arena's keys is a parameter that
        has not stepped yet.
        """
        expected = set(self._state_keys) & set(self._group_state_keys(group))
        allowed = expected | set(self._scalar_state) | ({"step"} if self._step_in_state else set())
        unknown = (set(entry) & set(self._state_keys)) - expected
        if unknown:
            raise ValueError(
                f"loaded state of parameter {key!r} has unexpected keys {sorted(unknown)} for "
                f"{type(self).__name__} with these options (expected {sorted(allowed)})")
        extra = {k: _copy_value(v) for k, v in entry.items() if k not in allowed}
        if not (allowed & set(entry)) and not self._state_from_start:
            return extra
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
        return extra

    # -- misc ----------------------------------------------------------------------
    def __getstate__(self):
        # The kernel arguments alias the arena; they are rebuilt after unpickling.
        return {k: v for k, v in super().__getstate__().items()
                if k not in ("_args", "_kernel", "_finite", "_step_lock")}

    def __setstate__(self, state):
        self._step_lock = threading.RLock()
        super().__setstate__(state)
        self._sync()


def _scalar(value, key, name, non_negative=False):
    s = np.asarray(value)
    if s.shape != () or s.dtype.kind not in "iuf" or not math.isfinite(float(s)) \
            or (non_negative and float(s) < 0):
        kind = "a non-negative" if non_negative else "a finite"
        raise ValueError(f"loaded '{name}' of parameter {key!r} must be {kind} number or "
                         f"0-d array, got {value!r}")
    return float(s)


def _copied(entry):
    return {k: _copy_value(v) for k, v in entry.items()}


class _ParamState(MutableMapping):
    """``opt.state[p]``: the arena's entries (live views; ``step`` as torch's float32) and
    any key the user added, which is kept and saved. Writing an arena entry copies into it."""

    def __init__(self, optimizer, p):
        self._opt = optimizer
        self._p = p

    def _user(self, create=False):
        store = self._opt._user_state
        return store.setdefault(self._p, {}) if create else store.get(self._p, {})

    def __getitem__(self, key):
        live = self._opt._live_entry(self._p._index)
        if key in live:
            value = live[key]
            return np.array(value, dtype=np.float32) if key == "step" else value
        return self._user()[key]

    def __setitem__(self, key, value):
        opt = self._opt
        i = self._p._index
        live = opt._live_entry(i)
        if key in live:
            opt._check_entry(i, key, value, live[key])
            opt._write_entry(i, key, value, live[key])
        elif key in opt._arena_keys():
            raise ValueError(f"parameter {i} has no {type(opt).__name__} state yet (it is "
                             f"created at its first step), so '{key}' cannot be set")
        else:
            self._user(create=True)[key] = value

    def __delitem__(self, key):
        if key in self._opt._live_entry(self._p._index):
            raise ValueError(f"cannot delete '{key}': it is {type(self._opt).__name__} state "
                             "kept in the arena")
        del self._user()[key]

    def __iter__(self):
        live = self._opt._live_entry(self._p._index)
        yield from live
        yield from (k for k in list(self._user()) if k not in live)

    def __len__(self):
        return sum(1 for _ in self)

    def __repr__(self):
        return repr(dict(self.items()))
