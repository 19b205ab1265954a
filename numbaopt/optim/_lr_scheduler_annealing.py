"""Cosine annealing: CosineAnnealingLR and CosineAnnealingWarmRestarts (SGDR).

Kept together because both follow ``eta_min + (initial_lr - eta_min) * (1 + cos(.)) / 2``.
"""

from __future__ import annotations

import math

from .lr_scheduler import (LRScheduler, _check_optimizer, _is_real, _param_groups_val_list,
                           _update_param_group_val, _warn_get_lr_called_within_step)


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
