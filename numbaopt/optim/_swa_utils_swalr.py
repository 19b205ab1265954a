"""``swa_utils.SWALR``: the learning-rate schedule of the averaging phase. A scheduler,
built on ``lr_scheduler.LRScheduler``, with nothing of the averaged model: its own module.
"""

import copy
import math
import numbers

import numpy as np

from .lr_scheduler import (LRScheduler, _check_optimizer, _format_param, _state_without,
                           _warn_get_lr_called_within_step)


def _is_real(value):
    # a number, or a real 0-d array (numbaopt's counterpart of torch's tensor lr)
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "fiu"
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_MISSING = object()


class SWALR(LRScheduler):
    """Anneal each group's learning rate to a fixed ``swa_lr`` (for SWA, torch's SWALR).

    Over ``anneal_epochs`` steps the rate moves from the group's lr to ``swa_lr``
    by a cosine (``alpha = (1 - cos(pi * t)) / 2``) or linearly (``alpha = t``),
    ``t = step / anneal_epochs``, then stays at ``swa_lr``. It is chainable: each
    step starts from the group's current lr, so it can follow another scheduler.

    Parameters
    ----------
    optimizer : Optimizer
    swa_lr : float or list of float
        The final learning rate, for all groups or one per group.
    anneal_epochs : int, default 10
        Steps of the annealing phase, >= 0.
    anneal_strategy : {"cos", "linear"}, default "cos"
    last_epoch : int, default -1

    Examples
    --------
    >>> scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    >>> swa_scheduler = SWALR(optimizer, swa_lr=0.05, anneal_epochs=5)
    >>> for epoch in range(100):
    ...     train_epoch(model, optimizer)
    ...     if epoch >= 75:
    ...         swa_model.update_parameters(model); swa_scheduler.step()
    ...     else:
    ...         scheduler.step()
    """

    def __init__(self, optimizer, swa_lr, anneal_epochs=10, anneal_strategy="cos",
                 last_epoch=-1):
        _check_optimizer(optimizer)
        swa_lrs = _format_param("swa_lr", optimizer, swa_lr)
        for value in swa_lrs:
            if not _is_real(value):
                raise TypeError(f"swa_lr must be a float or a list of floats, got {value!r}")
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError("anneal_strategy must be one of 'cos' or 'linear', "
                             f"instead got {anneal_strategy}")
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
        # torch writes swa_lr into the groups before its checks; here only valid values
        # are written, and taken back if the base class refuses (e.g. a resume without
        # initial_lr), so a failed construction leaves the optimizer as it was.
        previous = [group.get("swa_lr", _MISSING) for group in optimizer.param_groups]
        for value, group in zip(swa_lrs, optimizer.param_groups, strict=True):
            # torch clones a tensor swa_lr: the group's value does not follow the caller's
            group["swa_lr"] = value.copy() if isinstance(value, np.ndarray) else value
        self._set_anneal_func(anneal_strategy)
        self.anneal_epochs = anneal_epochs
        try:
            super().__init__(optimizer, last_epoch)
        except BaseException:
            for value, group in zip(previous, optimizer.param_groups):
                if value is _MISSING:
                    del group["swa_lr"]
                else:
                    group["swa_lr"] = value
            raise

    @staticmethod
    def _linear_anneal(t):
        return t

    @staticmethod
    def _cosine_anneal(t):
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr, swa_lr, alpha):
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self):
        """Return this step's lr per group, interpolated from the group's lr to its swa_lr."""
        _warn_get_lr_called_within_step(self)
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_t = max(0, min(1, (step - 1) / max(1, self.anneal_epochs)))
        prev_alpha = self.anneal_func(prev_t)
        prev_lrs = [self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha)
                    for group in self.optimizer.param_groups]
        t = max(0, min(1, step / max(1, self.anneal_epochs)))
        alpha = self.anneal_func(t)
        return [group["swa_lr"] * alpha + lr * (1 - alpha)
                for group, lr in zip(self.optimizer.param_groups, prev_lrs, strict=True)]

    def _set_anneal_func(self, anneal_strategy):
        self._anneal_strategy = anneal_strategy
        if anneal_strategy == "cos":
            self.anneal_func = self._cosine_anneal
        else:
            self.anneal_func = self._linear_anneal

    def state_dict(self):
        """Return the scheduler's state: every attribute but the optimizer and anneal_func."""
        return _state_without(self, ("optimizer", "anneal_func"))

    def load_state_dict(self, state_dict):
        """Load a state returned by :meth:`state_dict` (copied, not referenced)."""
        self.__dict__.update(copy.deepcopy(state_dict))
        self._set_anneal_func(self._anneal_strategy)
