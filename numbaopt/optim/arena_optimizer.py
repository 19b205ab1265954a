"""Optimizers whose state lives in the arena, stepped by one compiled call.

``ArenaOptimizer`` holds what every such optimizer shares: per-parameter step
counts and scalar state in the arena's tables, state buffers of the arena's
layout, torch's ``state`` / ``state_dict`` / ``load_state_dict`` over them,
``skip_nonfinite``, and the hyperparameter table rebuilt when a group changes
(the state in torch's terms is ``_arena_state.ArenaStateMixin``'s).
A subclass says how a step runs (``_prepare``). The elementwise optimizers
(``numbaopt.optim.elementwise``) derive from it, and so do the ones whose step
is not one elementwise pass (Muon, SparseAdam, Adafactor).
"""

import threading
import warnings

import numpy as np

from . import hooks as _hooks
from . import optimizer as _optimizer
from ._arena_state import ArenaStateMixin
from ._mixed import MixedDtypesMixin
from .optimizer import Optimizer, check_group_flags, check_option, has_array_value, hyper_float

__all__ = ["ArenaOptimizer"]

# the flags table (numbaopt.compiled): skip_nonfinite, found_nonfinite, skipped steps,
# lr written by compiled code
_FLAG_SKIP, _FLAG_FOUND, _FLAG_SKIPPED, _FLAG_LR_WRITTEN = 1, 2, 3, 4


class ArenaOptimizer(MixedDtypesMixin, ArenaStateMixin, Optimizer):
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

    @staticmethod
    def _lane_init(lane, groups, defaults, device):
        """Build ``lane`` (a bare instance of the class) over one dtype's groups (``_mixed``)."""
        ArenaOptimizer.__init__(lane, groups, defaults, device=device)

    def _after_init(self):
        if self._lanes is not None:
            self.parallel_threshold = _optimizer.PARALLEL_THRESHOLD * self._parallel_scale
            self._sync()
            return
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
        wrapper = _optimizer.wrapped_by.get(self)
        if wrapper is not None:
            raise NotImplementedError(_optimizer.wrapped_message(self, wrapper))
        if self._dirty[0] or self.arena.stale is not None:
            self._sync()
        if self._lanes is not None:          # several dtypes: a handle of lane handles
            return compiled._compiled_mixed.make_handle(self)
        return compiled.make_handle(self)

    def _handle_parts(self):
        """What ``compiled.make_handle`` puts in a handle (``compiled._dense_parts``)."""
        from .. import compiled
        return compiled._dense_parts(self)

    @property
    def param_groups(self):
        if self._flags[_FLAG_LR_WRITTEN]:
            self._pull_compiled_lr()
        return self._param_groups

    @param_groups.setter
    def param_groups(self, groups):
        Optimizer.param_groups.fset(self, groups)

    def _pull_compiled_lr(self):
        """Copy the lrs compiled code set (``numbaopt.compiled.set_lr``, which marks its group
        in ``_lr_mask``) into the groups; other groups keep what Python gave them, synced or
        not. Returns the groups' indices."""
        self._flags[_FLAG_LR_WRITTEN] = 0
        if self._lanes is not None:
            return self._pull_lane_lrs()
        mask = self._lr_mask
        changed = [int(g) for g in np.flatnonzero(mask[:len(self._param_groups)])]
        mask[:] = 0
        col = self._lr_column
        for g in changed:
            group, value = self._param_groups[g], float(self._hyper[g, col])
            current = group.get("lr")
            if isinstance(current, np.ndarray):
                current[...] = value
            elif current != value:
                group._data["lr"] = value      # the table holds it already: no re-sync
        return changed

    #: one flag per group: compiled code set its lr (a handle's lr_mask)
    _lr_mask = np.zeros(0, dtype=np.int64)

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
        if self._lanes is not None:
            return self._sync_lanes()
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
        if self._lr_mask.shape[0] != hyper.shape[0]:
            self._lr_mask = np.zeros(hyper.shape[0], dtype=np.int64)
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

    # -- misc ----------------------------------------------------------------------
    def __getstate__(self):
        # The kernel arguments alias the arena; they are rebuilt after unpickling.
        return {k: v for k, v in super().__getstate__().items()
                if k not in ("_args", "_kernel", "_finite", "_step_lock")}

    def __setstate__(self, state):
        self._step_lock = threading.RLock()
        super().__setstate__(state)
        if self._lanes is not None:
            self._lane_by_arena = {id(lane.arena): lane for lane in self._lanes}
        self._sync()
