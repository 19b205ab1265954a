"""The schedulers that drive other schedulers: SequentialLR and ChainedScheduler.

They hold no schedule of their own; their state_dict nests the wrapped schedulers' ones.
"""

from __future__ import annotations

import copy
from bisect import bisect_right

from ._lr_scheduler_plateau import ReduceLROnPlateau
from .lr_scheduler import (LRScheduler, _check_optimizer, _param_groups_val_list,
                           _state_without, _update_param_group_val)


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
