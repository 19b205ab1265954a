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

This module holds the base class and the helpers every scheduler shares; the schedulers
themselves live by family in ``_lr_scheduler_*.py`` next to it and are imported from here.
"""

from __future__ import annotations

import copy
import numbers
import types
import warnings
from functools import wraps
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


# -- the schedulers, one private module per family ------------------------------------------------
# They subclass LRScheduler and use the helpers above, so they are imported after both exist.
# Importing one of them directly is safe too: that first imports numbaopt.optim, which imports
# this module, and with it every scheduler module, to the end.
from ._lr_scheduler_annealing import CosineAnnealingLR, CosineAnnealingWarmRestarts  # noqa: E402
from ._lr_scheduler_composite import ChainedScheduler, SequentialLR  # noqa: E402
from ._lr_scheduler_cyclic import CyclicLR, OneCycleLR  # noqa: E402
from ._lr_scheduler_factor import (  # noqa: E402
    ConstantLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)
from ._lr_scheduler_plateau import ReduceLROnPlateau  # noqa: E402
