"""SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

import math

from ..kernels.cpu import _sgd_cpu, _sgd_cpu_parallel
from .optimizer import Optimizer, check_flag, check_option

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (torch.optim.SGD).

    Per parameter, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        b = g                         on the first step with momentum
        b = momentum * b + (1 - dampening) * g
        g = g + momentum * b  if nesterov  else  b
        p = p - lr * g

    Parameters
    ----------
    params : iterable of Parameter or of dicts
        Parameters, or parameter groups: dicts with ``"params"`` and any option below.
    lr : float, default 1e-3
    momentum : float, default 0
    dampening : float, default 0
    weight_decay : float, default 0
        L2 penalty added to the gradient.
    nesterov : bool, default False
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``Optimizer``).
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena (parameters, gradients, state) lives; "cuda" needs numba-cuda.
        Ascend instead of descend.

    Examples
    --------
    >>> opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    >>> opt.zero_grad(); model.backward(criterion.backward()); opt.step()
    """

    _state_keys = ("momentum_buffer",)
    _step_in_state = False
    _kernels = (_sgd_cpu, _sgd_cpu_parallel)
    _kernel_name = "sgd"
    _parallel_scale = 4
    _load_defaults = {"nesterov": False, "maximize": False}

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, skip_nonfinite=False, device="cpu"):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "momentum", "Invalid momentum value", index=index, where=where)
        check_option(group, "dampening", "Invalid dampening value", low=-math.inf, index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_flag(group, "nesterov", index, where)
        check_flag(group, "maximize", index, where)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            suffix = f" ({where} {index})" if index is not None else ""
            raise ValueError("Nesterov momentum requires a momentum and zero dampening" + suffix)

    def _hyper_row(self, group):
        return (float(group["lr"]), float(group["momentum"]), float(group["dampening"]),
                float(group["weight_decay"]), float(group["nesterov"]), float(group["maximize"]))

    def _group_state_keys(self, group):
        return self._state_keys if group["momentum"] != 0 else ()

