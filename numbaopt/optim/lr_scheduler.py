"""Learning-rate schedulers: a port of torch 2.13's ``torch.optim.lr_scheduler``.

Every scheduler here computes the same learning-rate (and momentum) sequence as
its torch namesake, with the same constructor signature and defaults, the same
``state_dict()`` keys and the same warnings. Schedulers write the new values into
``optimizer.param_groups``; the optimizer reads them at its next ``step()``. A
learning rate held as a 0-d ``numpy.ndarray`` (numbaopt's counterpart of torch's
tensor lr) is written in place, as torch ``fill_``s a tensor one, and copied
wherever torch clones one (``initial_lr``, ``base_lrs``, ``get_last_lr()``, the
``max_lr`` & co. given to CyclicLR and OneCycleLR); any other lr stays a Python
number.

Where torch is silent or fails late (a ``ZeroDivisionError`` some steps in),
the constructors here raise a ``ValueError`` or ``TypeError`` up front instead.
"""

from __future__ import annotations

import copy
import math
import numbers
import types
import warnings
from bisect import bisect_right
from collections import Counter
from functools import partial, wraps
from weakref import ref

import numpy as np

from .optimizer import Optimizer

__all__ = [
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "SequentialLR",
    "CosineAnnealingLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
    "CyclicLR",
    "CosineAnnealingWarmRestarts",
    "OneCycleLR",
    "PolynomialLR",
    "LRScheduler",
]

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)

_STEP_OVERRIDDEN_WARNING = (
    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
    "initialization. Please, make sure to call `optimizer.step()` before "
    "`lr_scheduler.step()`. See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)

_STEP_ORDER_WARNING = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
    "will result in PyTorch skipping the first value of the learning rate schedule. "
    "See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)

_GET_LR_WARNING = (
    "To get the last learning rate computed by the scheduler, please use `get_last_lr()`."
)


# -- argument checks (the ones torch lacks) ------------------------------------------------------
def _check_optimizer(optimizer):
    # torch checks this in LRScheduler.__init__, after most subclasses have already
    # read optimizer.param_groups; check first so the error names the real mistake.
    if not isinstance(optimizer, Optimizer):
        cls = type(optimizer)
        raise TypeError(f"{cls.__name__} is not an Optimizer (expected a numbaopt.optim.Optimizer, "
                        f"got an instance of {cls.__module__}.{cls.__qualname__})")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive_int(name, value):
    if not _is_int(value) or value <= 0:
        raise ValueError(f"Expected positive integer {name}, but got {value!r}")


def _check_gamma(value):
    if not _is_real(value) or not value > 0:
        raise ValueError(f"Expected positive gamma, but got {value!r}")


# -- param_group helpers ----------------------------------------------------------------------------
def _copy_value(value):
    """A copy of an ndarray value (torch clones a tensor one, so no two holders alias); else itself."""
    return value.copy() if isinstance(value, np.ndarray) else value


def _format_param(name, optimizer, param):
    """Return one value of ``param`` per param group (a list or tuple is checked, a scalar repeated)."""
    if isinstance(param, (list, tuple)):
        if len(param) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(param)} values, param_groups has {len(optimizer.param_groups)}."
            )
    else:
        param = [param] * len(optimizer.param_groups)
    return [_copy_value(value) for value in param]


def _param_groups_val_list(optimizer, key):
    """``group[key]`` of every group, ndarrays copied (a KeyError where a group lacks ``key``)."""
    return [_copy_value(group[key]) for group in optimizer.param_groups]


def _update_param_group_val(param_group, key, val):
    """Set ``param_group[key]`` to ``val``: in place into an ndarray, as torch ``fill_``s a tensor lr.

    Any other current value is replaced, by a Python float where ``val`` is a NumPy value:
    storing the array itself would alias it (torch does, with a tensor ``base_lr`` for a
    float lr in CyclicLR, whose ``base_lrs`` then follow the lr and stop the cycle), and a
    group that held a Python number keeps one.
    """
    current = param_group[key]
    if isinstance(current, np.ndarray):
        if isinstance(val, np.ndarray) and val.ndim:
            val = val.squeeze()          # torch's _to_scalar: a 1-element value fills it too
        current[...] = val
        # The write bypasses the group's __setitem__: store the same array again so the
        # optimizer learns that the group changed.
        param_group[key] = current
    elif isinstance(val, (np.ndarray, np.generic)):
        param_group[key] = float(val)
    else:
        param_group[key] = val


def _set_momentum(group, momentum, use_beta1):
    if use_beta1:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum


def _state_without(scheduler, excluded, shared=()):
    # A deep copy, so the dict shares no memory with the scheduler (torch hands out
    # its live lists); the values are plain floats, ints, strings, lists and ndarrays.
    # The ``shared`` ones (functions) are handed out as they are: a deep copy of a bound
    # method would copy the object it is bound to.
    return {key: value if key in shared else copy.deepcopy(value)
            for key, value in scheduler.__dict__.items() if key not in excluded}


def _callables_state(fns):
    # torch keeps the __dict__ of callable objects and None for plain functions and lambdas
    # (and fails on builtins, which have no __dict__: None for them too).
    return [None if isinstance(fn, types.FunctionType) or not hasattr(fn, "__dict__")
            else copy.deepcopy(fn.__dict__) for fn in fns]


class LRScheduler:
    """Base class of the learning-rate schedulers.

    Subclasses implement ``get_lr()`` (the chainable rule, from the groups' current
    ``lr``) and optionally ``_get_closed_form_lr()`` (from ``base_lrs`` and
    ``last_epoch``), used when ``step(epoch)`` is given an epoch.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose ``param_groups[i]["lr"]`` this scheduler sets.
    last_epoch : int, default -1
        Index of the last epoch seen; -1 starts a new schedule (and records each
        group's ``initial_lr``), a value >= 0 resumes one.
    """

    _get_lr_called_within_step = False
    _is_initial = False

    def __init__(self, optimizer, last_epoch=-1):
        _check_optimizer(optimizer)
        self.optimizer = optimizer

        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", _copy_value(group["lr"]))
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming scheduler with last_epoch >= 0.\n"
                        "This typically happens when:\n"
                        "1. You're trying to resume training from a checkpoint but haven't properly loaded the optimizer state\n"
                        "2. You're using last_epoch >= 0 for a fresh training run (not recommended)"
                    )
        self.base_lrs = _param_groups_val_list(optimizer, "initial_lr")
        self.last_epoch = last_epoch

        _patch_track_step_called(optimizer)
        self._initial_step()

    def _initial_step(self):
        """Reset the step count and take the constructor's step."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def state_dict(self):
        """Return the scheduler's state: every attribute but the optimizer (a copy)."""
        return _state_without(self, ("optimizer",))

    def load_state_dict(self, state_dict):
        """Load a state returned by :meth:`state_dict` (copied, not referenced)."""
        self.__dict__.update(copy.deepcopy(state_dict))

    def get_last_lr(self):
        """Return the learning rates the last step set, one per param group."""
        return self._last_lr

    def get_lr(self):
        """Compute the next learning rate of each param group (called by :meth:`step`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_lr(): a "
                                  "scheduler subclass returns one lr per param group")

    def step(self, epoch=None):
        """Advance the schedule by one epoch and write the new ``lr`` into each group.

        ``epoch`` is deprecated in torch: it sets ``last_epoch`` and uses the
        closed form where the scheduler has one.
        """
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(_STEP_OVERRIDDEN_WARNING, UserWarning, stacklevel=2)
            elif not (getattr(self.optimizer, "_opt_called", False) or _compiled_steps(self.optimizer)):
                warnings.warn(_STEP_ORDER_WARNING, UserWarning, stacklevel=2)

        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch=None):
        self._get_lr_called_within_step = True
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                if hasattr(self, "_get_closed_form_lr"):
                    values = self._get_closed_form_lr()
                else:
                    values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False

        for param_group, lr in zip(self.optimizer.param_groups, values, strict=True):
            _update_param_group_val(param_group, "lr", lr)

        self._last_lr = _param_groups_val_list(self.optimizer, "lr")


class _LRScheduler(LRScheduler):
    """Deprecated alias of :class:`LRScheduler`, kept as torch keeps it."""


def _compiled_steps(optimizer):
    """Steps taken from compiled code (numbaopt.compiled), which bypass step()'s wrapper."""
    flags = getattr(optimizer, "_flags", None)
    return flags is not None and flags[7] > 0


def _patch_track_step_called(optimizer):
    """Wrap ``optimizer.step`` once so it sets ``optimizer._opt_called`` (torch's check)."""
    if hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        return
    opt_ref = ref(optimizer)            # no reference cycle optimizer -> wrapper -> optimizer
    func = optimizer.step.__func__

    @wraps(func)
    def wrapper(*args, **kwargs):
        opt = opt_ref()
        opt._opt_called = True
        return func.__get__(opt, opt.__class__)(*args, **kwargs)

    wrapper._wrapped_by_lr_sched = True
    optimizer.step = wrapper


def _warn_get_lr_called_within_step(scheduler):
    if not scheduler._get_lr_called_within_step:
        warnings.warn(_GET_LR_WARNING, UserWarning, stacklevel=3)


def _lr_lambdas(optimizer, lr_lambda):
    if isinstance(lr_lambda, (list, tuple)):
        if len(lr_lambda) != len(optimizer.param_groups):
            raise ValueError(
                f"Expected {len(optimizer.param_groups)} lr_lambdas, but got {len(lr_lambda)}")
        lr_lambdas = list(lr_lambda)
    else:
        lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
    for fn in lr_lambdas:
        if not callable(fn):
            raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
    return lr_lambdas


class _LambdaStateMixin:
    """state_dict keeping callable objects' ``__dict__`` and dropping plain functions (torch)."""

    def state_dict(self):
        """Return the scheduler's state; functions and lambdas are stored as None."""
        state = _state_without(self, ("optimizer", "lr_lambdas"))
        state["lr_lambdas"] = _callables_state(self.lr_lambdas)
        return state

    def load_state_dict(self, state_dict):
        """Load a state returned by :meth:`state_dict`."""
        state = {key: value for key, value in state_dict.items() if key != "lr_lambdas"}
        self.__dict__.update(copy.deepcopy(state))
        for fn, fn_state in zip(self.lr_lambdas, state_dict["lr_lambdas"]):
            if fn_state is not None:
                fn.__dict__.update(copy.deepcopy(fn_state))


class LambdaLR(_LambdaStateMixin, LRScheduler):
    """Set each group's lr to its initial lr times ``lr_lambda(epoch)``.

    ``lr = initial_lr * lr_lambda(last_epoch)``.

    Parameters
    ----------
    optimizer : Optimizer
    lr_lambda : callable or list of callables
        ``epoch -> factor``; one per param group when a list.
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.1)
    >>> sched = LambdaLR(opt, lr_lambda=lambda epoch: 0.95 ** epoch)
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        self.lr_lambdas = _lr_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Return ``base_lr * lr_lambda(last_epoch)`` per group."""
        _warn_get_lr_called_within_step(self)
        return [base_lr * lmbda(self.last_epoch)
                for lmbda, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)]


class MultiplicativeLR(_LambdaStateMixin, LRScheduler):
    """Multiply each group's lr by ``lr_lambda(epoch)`` at every step.

    ``lr_t = lr_{t-1} * lr_lambda(t)`` (the constructor's step leaves lr unchanged).

    Parameters
    ----------
    optimizer : Optimizer
    lr_lambda : callable or list of callables
        ``epoch -> factor``; one per param group when a list.
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.1)
    >>> sched = MultiplicativeLR(opt, lr_lambda=lambda epoch: 0.95)
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        self.lr_lambdas = _lr_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Return ``lr * lr_lambda(last_epoch)`` per group."""
        _warn_get_lr_called_within_step(self)
        if self._is_initial:
            return _param_groups_val_list(self.optimizer, "lr")
        return [group["lr"] * lmbda(self.last_epoch)
                for lmbda, group in zip(self.lr_lambdas, self.optimizer.param_groups, strict=True)]


class StepLR(LRScheduler):
    """Decay each group's lr by ``gamma`` every ``step_size`` epochs.

    ``lr = initial_lr * gamma ** (last_epoch // step_size)``.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        Period of the decay, a positive integer.
    gamma : float, default 0.1
        Multiplicative decay factor, > 0.
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.05)
    >>> sched = StepLR(opt, step_size=30, gamma=0.1)   # 0.05, then 0.005 from epoch 30
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        _check_optimizer(optimizer)
        _check_positive_int("step_size", step_size)
        _check_gamma(gamma)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Multiply the groups' lr by ``gamma`` when ``last_epoch`` is a multiple of ``step_size``."""
        _warn_get_lr_called_within_step(self)
        if (self.last_epoch == 0) or (self.last_epoch % self.step_size != 0):
            return _param_groups_val_list(self.optimizer, "lr")
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size)
                for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Decay each group's lr by ``gamma`` at each milestone epoch.

    ``lr = initial_lr * gamma ** (number of milestones <= last_epoch)``; a milestone
    listed twice decays twice.

    Parameters
    ----------
    optimizer : Optimizer
    milestones : iterable of int
        Epoch indices.
    gamma : float, default 0.1
        Multiplicative decay factor, > 0.
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.05)
    >>> sched = MultiStepLR(opt, milestones=[30, 80], gamma=0.1)
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        _check_optimizer(optimizer)
        _check_gamma(gamma)
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Multiply the groups' lr by ``gamma ** count`` when ``last_epoch`` is a milestone."""
        _warn_get_lr_called_within_step(self)
        if self.last_epoch not in self.milestones:
            return _param_groups_val_list(self.optimizer, "lr")
        return [group["lr"] * self.gamma ** self.milestones[self.last_epoch]
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        milestones = sorted(self.milestones.elements())
        return [base_lr * self.gamma ** bisect_right(milestones, self.last_epoch)
                for base_lr in self.base_lrs]


class ConstantLR(LRScheduler):
    """Scale each group's lr by ``factor`` until epoch ``total_iters``.

    ``lr = initial_lr * factor`` for ``last_epoch < total_iters``, then ``initial_lr``.

    Parameters
    ----------
    optimizer : Optimizer
    factor : float, default 1/3
        In (0, 1].
    total_iters : int, default 5
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.05)
    >>> sched = ConstantLR(opt, factor=0.5, total_iters=40)   # 0.025, then 0.05
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, factor=1.0 / 3, total_iters=5, last_epoch=-1):
        _check_optimizer(optimizer)
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        if factor == 0:
            # torch accepts 0 and then divides by it at epoch total_iters.
            raise ValueError("Constant multiplicative factor must be > 0 (the lr is divided by it "
                             "at total_iters).")
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Scale by ``factor`` at epoch 0 and by ``1 / factor`` at ``total_iters``."""
        _warn_get_lr_called_within_step(self)
        if self.last_epoch == 0:
            return [group["lr"] * self.factor for group in self.optimizer.param_groups]
        if self.last_epoch != self.total_iters:
            return _param_groups_val_list(self.optimizer, "lr")
        return [group["lr"] * (1.0 / self.factor) for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
                for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale each group's lr by a factor going linearly from ``start_factor`` to ``end_factor``.

    ``lr = initial_lr * (start + (end - start) * min(last_epoch, total_iters) / total_iters)``.

    Parameters
    ----------
    optimizer : Optimizer
    start_factor : float, default 1/3
        In (0, 1].
    end_factor : float, default 1.0
        In [0, 1].
    total_iters : int, default 5
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.05)
    >>> sched = LinearLR(opt, start_factor=0.05, total_iters=40)   # warm-up to 0.05
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        _check_optimizer(optimizer)
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError("Starting multiplicative factor expected to be greater than 0 and "
                             "less or equal to 1.")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Scale the groups' lr by the ratio of this epoch's factor to the previous one."""
        _warn_get_lr_called_within_step(self)
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return _param_groups_val_list(self.optimizer, "lr")
        return [
            group["lr"] * (
                1.0 + (self.end_factor - self.start_factor)
                / (self.total_iters * self.start_factor
                   + (self.last_epoch - 1) * (self.end_factor - self.start_factor)))
            for group in self.optimizer.param_groups
        ]

    def _get_closed_form_lr(self):
        return [
            base_lr * (self.start_factor
                       + (self.end_factor - self.start_factor)
                       * min(self.total_iters, self.last_epoch) / self.total_iters)
            for base_lr in self.base_lrs
        ]


class ExponentialLR(LRScheduler):
    """Decay each group's lr by ``gamma`` every epoch.

    ``lr = initial_lr * gamma ** last_epoch``.

    Parameters
    ----------
    optimizer : Optimizer
    gamma : float
        Multiplicative decay factor, > 0.
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.05)
    >>> sched = ExponentialLR(opt, gamma=0.95)
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, gamma, last_epoch=-1):
        _check_optimizer(optimizer)
        _check_gamma(gamma)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Multiply the groups' lr by ``gamma``."""
        _warn_get_lr_called_within_step(self)
        # When resuming (last_epoch >= 0) the constructor's step must not decay once more.
        if self._is_initial:
            return _param_groups_val_list(self.optimizer, "lr")
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


def _check_schedulers(owner, optimizer, schedulers):
    for scheduler_idx, scheduler in enumerate(schedulers):
        if not hasattr(scheduler, "optimizer"):
            raise TypeError(
                f"{owner} at index {scheduler_idx} should have `optimizer` as its attribute.")
        if isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(
                f"{owner} does not support `ReduceLROnPlateau` scheduler as it "
                "requires additional kwargs to be specified when calling `step`, "
                f"but got one at index {scheduler_idx} in the given schedulers sequence.")
        if optimizer != scheduler.optimizer:
            raise ValueError(
                f"{owner} expects all schedulers to belong to the same optimizer, but "
                f"got scheduler {scheduler.__class__.__name__} at index {scheduler_idx} has "
                f"{scheduler.optimizer}, which is different from {optimizer.__class__.__name__}.")


class _NestedStateMixin:
    """state_dict holding the wrapped schedulers' own state dicts (torch)."""

    def state_dict(self):
        """Return the scheduler's state, with each wrapped scheduler's state_dict."""
        state = _state_without(self, ("optimizer", "_schedulers"))
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict):
        """Load a state returned by :meth:`state_dict` into this and the wrapped schedulers."""
        state = {key: value for key, value in state_dict.items() if key != "_schedulers"}
        self.__dict__.update(copy.deepcopy(state))
        for scheduler, scheduler_state in zip(self._schedulers, state_dict["_schedulers"]):
            scheduler.load_state_dict(scheduler_state)


class SequentialLR(_NestedStateMixin, LRScheduler):
    """Run a list of schedulers one after another, switching at the milestones.

    At epoch ``milestones[i]`` scheduler ``i + 1`` restarts from epoch 0 (from the
    current lr for chainable ones, from ``initial_lr`` for closed-form ones).

    Parameters
    ----------
    optimizer : Optimizer
    schedulers : list of LRScheduler
        All built on ``optimizer``; not ReduceLROnPlateau.
    milestones : list of int
        ``len(schedulers) - 1`` switching epochs.
    last_epoch : int, default -1

    Examples
    --------
    >>> warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
    >>> decay = ExponentialLR(opt, gamma=0.9)
    >>> sched = SequentialLR(opt, schedulers=[warmup, decay], milestones=[5])
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        _check_optimizer(optimizer)
        if len(schedulers) < 1:
            raise ValueError(f"{self.__class__.__name__} expects at least one scheduler, but "
                             "got no scheduler.")
        _check_schedulers(self.__class__.__name__, optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got number of schedulers {len(schedulers)} and the "
                f"number of milestones to be equal to {len(milestones)}")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer

        # Reset learning rates back to initial values
        for group in self.optimizer.param_groups:
            _update_param_group_val(group, "lr", group["initial_lr"])

        # "Undo" the step performed by the other schedulers' constructors
        self.recursive_undo()

        # Perform the initial step for only the scheduler meant to run at step 0.
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def recursive_undo(self, sched=None):
        """Recursively undo the step each wrapped scheduler's constructor took."""
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def step(self):
        """Step the scheduler in charge of the next epoch."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class PolynomialLR(LRScheduler):
    """Decay each group's lr polynomially to 0 over ``total_iters`` epochs.

    ``lr = initial_lr * (1 - min(last_epoch, total_iters) / total_iters) ** power``.

    Parameters
    ----------
    optimizer : Optimizer
    total_iters : int, default 5
    power : float, default 1.0
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.05)
    >>> sched = PolynomialLR(opt, total_iters=50, power=0.9)
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, total_iters=5, power=1.0, last_epoch=-1):
        _check_optimizer(optimizer)
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Multiply the groups' lr by this epoch's decay ratio."""
        _warn_get_lr_called_within_step(self)
        if self._is_initial or self.last_epoch > self.total_iters:
            return _param_groups_val_list(self.optimizer, "lr")
        decay_factor = ((1.0 - self.last_epoch / self.total_iters)
                        / (1.0 - (self.last_epoch - 1) / self.total_iters)) ** self.power
        return [group["lr"] * decay_factor for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (1.0 - min(self.total_iters, self.last_epoch) / self.total_iters)
                ** self.power
                for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Anneal each group's lr from its initial value to ``eta_min`` along a cosine.

    ``lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * last_epoch / T_max)) / 2``,
    computed recursively (torch's chainable form); it rises again after ``T_max``.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Half period, > 0.
    eta_min : float, default 0.0
    last_epoch : int, default -1

    Examples
    --------
    >>> opt = optim.SGD([Parameter(np.zeros(3))], lr=0.05)
    >>> sched = CosineAnnealingLR(opt, T_max=100)
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        _check_optimizer(optimizer)
        if not _is_real(T_max) or not T_max > 0:
            # torch divides by T_max at the first step.
            raise ValueError(f"Expected positive T_max, but got {T_max!r}")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Advance the groups' lr one epoch along the cosine (recursively, as torch)."""
        _warn_get_lr_called_within_step(self)
        if self._is_initial:
            return _param_groups_val_list(self.optimizer, "lr")
        elif self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base_lr - self.eta_min)
                    * (1 + math.cos((self.last_epoch) * math.pi / self.T_max)) / 2
                    for base_lr in self.base_lrs]
        elif (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, group in zip(self.base_lrs, self.optimizer.param_groups,
                                              strict=True)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (group["lr"] - self.eta_min) + self.eta_min
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class ChainedScheduler(_NestedStateMixin, LRScheduler):
    """Step several chainable schedulers together, each scaling the lr the previous one set.

    Parameters
    ----------
    schedulers : sequence of LRScheduler
        All built on the same optimizer; not ReduceLROnPlateau.
    optimizer : Optimizer, optional
        Defaults to ``schedulers[0].optimizer``.

    Examples
    --------
    >>> constant = ConstantLR(opt, factor=0.1, total_iters=20)
    >>> decay = ExponentialLR(opt, gamma=0.9)
    >>> sched = ChainedScheduler([constant, decay], optimizer=opt)
    >>> for epoch in range(100):
    ...     opt.step(); sched.step()
    """

    def __init__(self, schedulers, optimizer=None):
        if len(schedulers) < 1:
            raise ValueError(f"{self.__class__.__name__} expects at least one scheduler to be "
                             "chained, but got no scheduler.")
        if optimizer is None:
            optimizer = schedulers[0].optimizer
        _check_optimizer(optimizer)
        _check_schedulers(self.__class__.__name__, optimizer, schedulers)
        self._schedulers = schedulers
        self.optimizer = optimizer
        self._last_lr = _param_groups_val_list(self._schedulers[-1].optimizer, "lr")

    def step(self):
        """Step every wrapped scheduler, in order."""
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _param_groups_val_list(self._schedulers[-1].optimizer, "lr")


class ReduceLROnPlateau(LRScheduler):
    """Reduce each group's lr by ``factor`` when a metric stops improving.

    After more than ``patience`` epochs without an improvement (beyond
    ``threshold``, relative or absolute), ``lr = max(lr * factor, min_lr)`` unless
    that changes lr by less than ``eps``; then wait ``cooldown`` epochs.

    Parameters
    ----------
    optimizer : Optimizer
    mode : {"min", "max"}, default "min"
    factor : float, default 0.1
        In [0, 1).
    patience : int, default 10
    threshold : float, default 1e-4
    threshold_mode : {"rel", "abs"}, default "rel"
    cooldown : int, default 0
    min_lr : float or list of float, default 0
        One per param group when a list.
    eps : float, default 1e-8

    Examples
    --------
    >>> sched = ReduceLROnPlateau(opt, "min", patience=5)
    >>> for epoch in range(100):
    ...     val_loss = train_and_validate()
    ...     sched.step(val_loss)
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.factor = factor

        _check_optimizer(optimizer)
        self.optimizer = optimizer

        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(f"expected {len(optimizer.param_groups)} min_lrs, got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)

        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self):
        """Reset the bad-epoch and cooldown counters."""
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics, epoch=None):
        """Record this epoch's metric and reduce the lr if it has plateaued."""
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch

        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1

        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # ignore any bad epochs in cooldown

        if self.num_bad_epochs > self.patience:
            self._reduce_lr(epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

        self._last_lr = _param_groups_val_list(self.optimizer, "lr")

    def _reduce_lr(self, epoch):
        if len(self.optimizer.param_groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    "The number of param groups in the `optimizer` "
                    f"({len(self.optimizer.param_groups)}) differs "
                    f"from when `ReduceLROnPlateau` was initialized "
                    f"({len(self.min_lrs)}), usually due to a new "
                    "param group being added to the optimizer. Please "
                    "modify the `min_lrs` field to match the length "
                    "of the `optimizer` param groups.")
            self.min_lrs = [self.default_min_lr] * len(self.optimizer.param_groups)

        for i, param_group in enumerate(self.optimizer.param_groups):
            old_lr = float(param_group["lr"])
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                _update_param_group_val(param_group, "lr", new_lr)

    @property
    def in_cooldown(self):
        """Whether the scheduler is waiting out a cooldown."""
        return self.cooldown_counter > 0

    def _is_better(self, a, best):
        if self.mode == "min" and self.threshold_mode == "rel":
            rel_epsilon = 1.0 - self.threshold
            return a < best * rel_epsilon
        elif self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        elif self.mode == "max" and self.threshold_mode == "rel":
            rel_epsilon = self.threshold + 1.0
            return a > best * rel_epsilon
        else:  # mode == "max" and threshold_mode == "abs"
            return a > best + self.threshold

    def _init_is_better(self, mode, threshold, threshold_mode):
        if mode not in {"min", "max"}:
            raise ValueError("mode " + mode + " is unknown!")
        if threshold_mode not in {"rel", "abs"}:
            raise ValueError("threshold mode " + threshold_mode + " is unknown!")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict):
        """Load a state returned by :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        self._init_is_better(mode=self.mode, threshold=self.threshold,
                             threshold_mode=self.threshold_mode)


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


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing from the initial lr to ``eta_min``, restarting every ``T_i`` epochs (SGDR).

    ``lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``, with
    ``T_i = T_0 * T_mult ** restarts``. ``step(epoch)`` accepts fractional epochs.

    Parameters
    ----------
    optimizer : Optimizer
    T_0 : int
        Epochs until the first restart, a positive integer.
    T_mult : int, default 1
        Growth of ``T_i`` after each restart, an integer >= 1.
    eta_min : float, default 0.0
    last_epoch : int, default -1

    Examples
    --------
    >>> sched = CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2)
    >>> for epoch in range(20):
    ...     for i in range(iters):
    ...         opt.step(); sched.step(epoch + i / iters)
    """

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0, last_epoch=-1):
        _check_optimizer(optimizer)
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(
                f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}")
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Return ``eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2`` per group."""
        _warn_get_lr_called_within_step(self)
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for base_lr in self.base_lrs]

    def step(self, epoch=None):
        """Advance one epoch, or jump to ``epoch`` (may be fractional, e.g. ``epoch + i / iters``)."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0

        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult ** (n)
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)

        self._get_lr_called_within_step = True
        try:
            values = self.get_lr()
        finally:
            self._get_lr_called_within_step = False
        for param_group, lr in zip(self.optimizer.param_groups, values, strict=True):
            _update_param_group_val(param_group, "lr", lr)

        self._last_lr = _param_groups_val_list(self.optimizer, "lr")


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
