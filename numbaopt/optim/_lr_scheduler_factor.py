"""The schedules that set each group's lr to ``initial_lr`` times a factor of the epoch.

LambdaLR, MultiplicativeLR, StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR and
PolynomialLR: each a chainable rule and (most) a closed form, no state beyond a few numbers.
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from collections import Counter

from .lr_scheduler import (LRScheduler, _callables_state, _check_gamma, _check_optimizer,
                           _check_positive_int, _param_groups_val_list, _state_without,
                           _warn_get_lr_called_within_step)


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
