"""RMSprop (torch.optim.RMSprop)."""

from ..kernels.cpu import _rmsprop_cpu, _rmsprop_cpu_parallel
from .optimizer import Optimizer, check_flag, check_option

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop), optionally centered and with momentum.

    Per parameter, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g * g
        avg = sqrt(v - g_avg**2) + eps  with g_avg = lerp(g_avg, g, 1 - alpha)  if centered
        avg = sqrt(v) + eps                                                      otherwise
        b = momentum * b + g / avg;  p = p - lr * b      if momentum > 0
        p = p - lr * g / avg                             otherwise

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-2
    alpha : float, default 0.99
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum : float, default 0
    centered : bool, default False
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``Optimizer``).
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena (parameters, gradients, state) lives; "cuda" needs numba-cuda.

    Examples
    --------
    >>> opt = RMSprop(model.parameters(), lr=1e-2, momentum=0.9)
    """

    _state_keys = ("square_avg", "momentum_buffer", "grad_avg")
    _kernels = (_rmsprop_cpu, _rmsprop_cpu_parallel)
    _kernel_name = "rmsprop"
    _load_defaults = {"momentum": 0, "centered": False, "maximize": False}

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False, skip_nonfinite=False, device="cpu"):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_option(group, "momentum", "Invalid momentum value", index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_option(group, "alpha", "Invalid alpha value", high=1.0, index=index, where=where)
        check_flag(group, "centered", index, where)
        check_flag(group, "maximize", index, where)

    def _hyper_row(self, group):
        return (float(group["lr"]), float(group["alpha"]), float(group["eps"]),
                float(group["weight_decay"]), float(group["momentum"]),
                float(group["centered"]), float(group["maximize"]))

    def _group_state_keys(self, group):
        keys = ["square_avg"]
        if group["momentum"] > 0:
            keys.append("momentum_buffer")
        if group["centered"]:
            keys.append("grad_avg")
        return tuple(keys)
