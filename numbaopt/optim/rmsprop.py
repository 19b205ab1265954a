"""RMSprop (torch.optim.RMSprop)."""

import numpy as np

from .elementwise import ElementwiseOptimizer, lerp, sqrt
from .optimizer import check_flag, check_implementation_flags, check_option

__all__ = ["RMSprop"]


class RMSprop(ElementwiseOptimizer):
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
        Skip the whole step when any gradient is NaN or inf (see ``ElementwiseOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena (parameters, gradients, state) lives; "cuda" needs numba-cuda.
    foreach, capturable, differentiable
        torch's implementation flags, accepted so torch code ports unchanged; numbaopt
        has one implementation, and ``differentiable=True`` is refused.

    Examples
    --------
    >>> opt = RMSprop(model.parameters(), lr=1e-2, momentum=0.9)
    """

    hyperparameters = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")
    _state_keys = ("square_avg", "momentum_buffer", "grad_avg")
    _load_defaults = {"momentum": 0, "centered": False, "maximize": False}
    _implementation_flags = dict(capturable=False, foreach=None, differentiable=False)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, skip_nonfinite=False, device="cpu"):
        flags = check_implementation_flags("RMSprop", foreach=foreach, capturable=capturable,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=flags["capturable"],
                        foreach=foreach, maximize=maximize, differentiable=False)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_option(group, "momentum", "Invalid momentum value", index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_option(group, "alpha", "Invalid alpha value", high=1.0, index=index, where=where)
        check_flag(group, "centered", index, where)
        check_flag(group, "maximize", index, where)

    def _group_state_keys(self, group):
        keys = ["square_avg"]
        if group["momentum"] > 0:
            keys.append("momentum_buffer")
        if group["centered"]:
            keys.append("grad_avg")
        return tuple(keys)

    # -- the rule (h: lr, alpha, eps, weight_decay, momentum, centered, maximize) ----------

    @staticmethod
    def coefficients(h, t, s, i, T):
        alpha = h[1]
        w = T(1.0 - alpha)
        return (T(-h[0]), T(h[2]), T(alpha), w, T(1.0) - w, abs(1.0 - alpha) < 0.5,
                T(h[4]), T(h[3]), T(np.inf), h[3] != 0.0, h[4] > 0.0, h[5] != 0.0, h[6] != 0.0)

    @staticmethod
    def update(lo, hi, stride, k, param, grad, square_avg, momentum_buffer, grad_avg):
        (neg_lr, eps, a, w, one_minus_w, small, mom, wd, inf, weight_decay, momentum, centered,
         maximize) = k
        for j in range(lo, hi, stride):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay:
                d = d + wd * p
            sq = square_avg[j] * a + w * d * d
            square_avg[j] = sq
            if centered:
                ga = lerp(grad_avg[j], d, w, one_minus_w, small)
                grad_avg[j] = ga
                var = sq - ga * ga
                if sq == inf and ga - ga == 0:
                    # g * g overflowed into sq and ga * ga: torch's addcmul is a fused
                    # multiply-add, where inf - (a finite ga times itself) stays inf
                    var = sq
                avg = sqrt(var)
            else:
                avg = sqrt(sq)
            avg = avg + eps
            if momentum:
                buf = momentum_buffer[j] * mom + d / avg
                momentum_buffer[j] = buf
                param[j] = p + neg_lr * buf
            else:
                param[j] = p + neg_lr * d / avg
