"""Per-batch cyclical schedules: CyclicLR and OneCycleLR.

Both set the lr from stored bounds rather than scaling it, and can cycle the momentum
(or Adam's ``beta1``) inversely to it.
"""

from __future__ import annotations

import copy
import math
from functools import partial

from .lr_scheduler import (LRScheduler, _callables_state, _check_gamma, _check_optimizer,
                           _format_param, _is_int, _is_real, _state_without,
                           _update_param_group_val, _warn_get_lr_called_within_step)


def _set_momentum(group, momentum, use_beta1):
    if use_beta1:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum


def _triangular_scale_fn(x):
    return 1.0


def _triangular2_scale_fn(x):
    return 1 / (2.0 ** (x - 1))


def _exp_range_scale_fn(gamma, x):
    return gamma ** x


class CyclicLR(LRScheduler):
    """Cycle each group's lr between ``base_lr`` and ``max_lr`` (cyclical learning rates).

    Each cycle rises for ``step_size_up`` steps and falls for ``step_size_down``;
    the amplitude is scaled by ``scale_fn`` of the cycle number or of the step
    ("triangular": 1, "triangular2": halved each cycle, "exp_range": ``gamma ** step``).
    With ``cycle_momentum`` the momentum (or Adam's ``beta1``) moves inversely,
    between ``max_momentum`` and ``base_momentum``. Step it after every batch.

    Parameters
    ----------
    optimizer : Optimizer
    base_lr, max_lr : float or list of float
        Lower and upper lr bounds, one per param group when a list.
    step_size_up : int, default 2000
    step_size_down : int, optional
        Defaults to ``step_size_up``.
    mode : {"triangular", "triangular2", "exp_range"}, default "triangular"
    gamma : float, default 1.0
    scale_fn : callable, optional
        Overrides ``mode``; evaluated per ``scale_mode`` ("cycle" or "iterations").
    scale_mode : {"cycle", "iterations"}, default "cycle"
    cycle_momentum : bool, default True
    base_momentum, max_momentum : float or list of float, default 0.8 and 0.9
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.1, momentum=0.9)
    >>> sched = CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=10)
    >>> for batch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, base_lr, max_lr, step_size_up=2000, step_size_down=None,
                 mode="triangular", gamma=1.0, scale_fn=None, scale_mode="cycle",
                 cycle_momentum=True, base_momentum=0.8, max_momentum=0.9, last_epoch=-1):
        _check_optimizer(optimizer)
        # torch divides by these at the constructor's step.
        if not _is_real(step_size_up) or not step_size_up > 0:
            raise ValueError(f"Expected positive step_size_up, but got {step_size_up!r}")
        if step_size_down is not None and (not _is_real(step_size_down) or step_size_down < 0):
            raise ValueError(f"Expected non-negative step_size_down, but got {step_size_down!r}")
        _check_gamma(gamma)
        self.optimizer = optimizer

        base_lrs = _format_param("base_lr", optimizer, base_lr)
        self.max_lrs = _format_param("max_lr", optimizer, max_lr)
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` "
                                 "option enabled")
            base_momentums = _format_param("base_momentum", optimizer, base_momentum)
            max_momentums = _format_param("max_momentum", optimizer, max_momentum)
        if mode not in ["triangular", "triangular2", "exp_range"] and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")

        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                _update_param_group_val(group, "lr", lr)

        step_size_up = float(step_size_up)
        step_size_down = float(step_size_down) if step_size_down is not None else step_size_up
        self.total_size = step_size_up + step_size_down
        self.step_ratio = step_size_up / self.total_size

        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()

        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = "betas" in self.optimizer.defaults
            self.base_momentums = base_momentums
            self.max_momentums = max_momentums
            if last_epoch == -1:
                for m_momentum, b_momentum, group in zip(
                        self.max_momentums, self.base_momentums, optimizer.param_groups,
                        strict=True):
                    _set_momentum(group, m_momentum, self.use_beta1)
                    group["max_momentum"] = m_momentum
                    group["base_momentum"] = b_momentum

        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self):
        if self._scale_fn_custom is not None:
            return
        if self.mode == "triangular":
            self._scale_fn_ref = _triangular_scale_fn
            self.scale_mode = "cycle"
        elif self.mode == "triangular2":
            self._scale_fn_ref = _triangular2_scale_fn
            self.scale_mode = "cycle"
        elif self.mode == "exp_range":
            self._scale_fn_ref = partial(_exp_range_scale_fn, self.gamma)
            self.scale_mode = "iterations"

    def scale_fn(self, x):
        """Return the amplitude scale at ``x`` (a cycle number or a step)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        return self._scale_fn_ref(x)

    def get_lr(self):
        """Return this step's lr per group; sets the cycled momentum as a side effect."""
        _warn_get_lr_called_within_step(self)

        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle
        if x <= self.step_ratio:
            scale_factor = x / self.step_ratio
        else:
            scale_factor = (x - 1) / (self.step_ratio - 1)
        scale_arg = cycle if self.scale_mode == "cycle" else self.last_epoch

        lrs = []
        for base_lr, max_lr in zip(self.base_lrs, self.max_lrs, strict=True):
            base_height = (max_lr - base_lr) * scale_factor
            lrs.append(base_lr + base_height * self.scale_fn(scale_arg))

        if self.cycle_momentum:
            momentums = []
            for base_momentum, max_momentum in zip(self.base_momentums, self.max_momentums,
                                                   strict=True):
                base_height = (max_momentum - base_momentum) * scale_factor
                momentums.append(max_momentum - base_height * self.scale_fn(scale_arg))
            for param_group, momentum in zip(self.optimizer.param_groups, momentums, strict=True):
                _set_momentum(param_group, momentum, self.use_beta1)

        return lrs

    def state_dict(self):
        """Return the scheduler's state; a function ``scale_fn`` is stored as None."""
        state = _state_without(self, ("optimizer", "_scale_fn_ref", "_scale_fn_custom"))
        fn = self._scale_fn_custom
        state["_scale_fn_custom"] = None if fn is None else _callables_state([fn])[0]
        return state

    def load_state_dict(self, state_dict):
        """Load a state returned by :meth:`state_dict`."""
        state = {key: value for key, value in state_dict.items() if key != "_scale_fn_custom"}
        super().load_state_dict(state)
        fn_state = state_dict.get("_scale_fn_custom")
        if fn_state is not None:
            self._scale_fn_custom.__dict__.update(copy.deepcopy(fn_state))
        self._init_scale_fn()


class OneCycleLR(LRScheduler):
    """The 1cycle policy: lr up from ``max_lr / div_factor`` to ``max_lr``, then down to far below.

    Phases (fractions of ``total_steps``): ``pct_start`` rising, the rest falling to
    ``initial_lr / final_div_factor``; ``three_phase`` mirrors the rise before a
    final fall. Each phase anneals by cosine or linearly. With ``cycle_momentum``
    the momentum (or Adam's ``beta1``) moves inversely. Step it after every batch;
    more than ``total_steps`` steps raise ``ValueError``.

    Parameters
    ----------
    optimizer : Optimizer
    max_lr : float or list of float
    total_steps : int, optional
        Or give ``epochs`` and ``steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
    pct_start : float, default 0.3
    anneal_strategy : {"cos", "linear"}, default "cos"
    cycle_momentum : bool, default True
    base_momentum, max_momentum : float or list of float, default 0.85 and 0.95
    div_factor : float, default 25.0
    final_div_factor : float, default 1e4
    three_phase : bool, default False
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=1e-4, momentum=0.9)
    >>> sched = OneCycleLR(opt, max_lr=0.01, steps_per_epoch=100, epochs=10)
    >>> for batch in range(1000):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False,
                 last_epoch=-1):
        _check_optimizer(optimizer)
        self.optimizer = optimizer

        if total_steps is not None:
            if not _is_int(total_steps) or total_steps <= 0:
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not _is_int(epochs) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not _is_int(steps_per_epoch) or steps_per_epoch <= 0:
                raise ValueError(
                    f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")

        if three_phase:
            self._schedule_phases = [
                {"end_step": float(pct_start * self.total_steps) - 1,
                 "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * self.total_steps) - 2,
                 "start_lr": "max_lr", "end_lr": "initial_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": self.total_steps - 1,
                 "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        else:
            self._schedule_phases = [
                {"end_step": float(pct_start * self.total_steps) - 1,
                 "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": self.total_steps - 1,
                 "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
            ]

        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")

        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError("anneal_strategy must be one of 'cos' or 'linear', instead got "
                             f"{anneal_strategy}")
        self._anneal_func_type = anneal_strategy

        max_lrs = _format_param("max_lr", self.optimizer, max_lr)
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` "
                                 "option enabled")
            max_momentums = _format_param("max_momentum", optimizer, max_momentum)
            base_momentums = _format_param("base_momentum", optimizer, base_momentum)

        if last_epoch == -1:
            for idx, group in enumerate(self.optimizer.param_groups):
                group["initial_lr"] = max_lrs[idx] / div_factor
                group["max_lr"] = max_lrs[idx]
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = cycle_momentum
        if self.cycle_momentum:
            self.use_beta1 = "betas" in self.optimizer.defaults
            if last_epoch == -1:
                for m_momentum, b_momentum, group in zip(
                        max_momentums, base_momentums, optimizer.param_groups, strict=True):
                    _set_momentum(group, m_momentum, self.use_beta1)
                    group["max_momentum"] = m_momentum
                    group["base_momentum"] = b_momentum

        super().__init__(optimizer, last_epoch)

    def _anneal_func(self, *args, **kwargs):
        if hasattr(self, "_anneal_func_type"):
            if self._anneal_func_type == "cos":
                return self._annealing_cos(*args, **kwargs)
            elif self._anneal_func_type == "linear":
                return self._annealing_linear(*args, **kwargs)
            raise ValueError(f"Unknown _anneal_func_type: {self._anneal_func_type}")
        # A scheduler restored from older torch, which kept the function itself in
        # `anneal_func` (and saved it in state_dict) instead of `_anneal_func_type`.
        return self.anneal_func(*args, **kwargs)

    def state_dict(self):
        """Return the scheduler's state; a legacy ``anneal_func`` is handed out as it is."""
        return _state_without(self, ("optimizer",), shared=("anneal_func",))

    def load_state_dict(self, state_dict):
        """Load a state returned by :meth:`state_dict`, also one saved by older torch.

        Older torch saved the annealing function in ``anneal_func`` and no
        ``_anneal_func_type``; as in torch, that function is kept (not copied) and
        used only where the scheduler has no ``_anneal_func_type`` of its own.
        """
        state = {key: value for key, value in state_dict.items() if key != "anneal_func"}
        super().load_state_dict(state)
        if "anneal_func" in state_dict:
            self.anneal_func = state_dict["anneal_func"]

    @staticmethod
    def _annealing_cos(start, end, pct):
        """Cosine anneal from `start` to `end` as pct goes from 0.0 to 1.0."""
        cos_out = math.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out

    @staticmethod
    def _annealing_linear(start, end, pct):
        """Linearly anneal from `start` to `end` as pct goes from 0.0 to 1.0."""
        return (end - start) * pct + start

    def get_lr(self):
        """Return this step's lr per group; sets the cycled momentum as a side effect."""
        _warn_get_lr_called_within_step(self)

        lrs = []
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(f"Tried to step {step_num} times. The specified number of total "
                             f"steps is {self.total_steps}")

        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step_num <= end_step or i == len(self._schedule_phases) - 1:
                    pct = (step_num - start_step) / (end_step - start_step)
                    computed_lr = self._anneal_func(
                        group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        computed_momentum = self._anneal_func(
                            group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                    break
                start_step = phase["end_step"]

            lrs.append(computed_lr)
            if self.cycle_momentum:
                _set_momentum(group, computed_momentum, self.use_beta1)

        return lrs
