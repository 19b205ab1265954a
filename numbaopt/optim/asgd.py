"""ASGD (torch.optim.ASGD)."""

import math

import numpy as np

from .elementwise import ElementwiseOptimizer
from .optimizer import check_flag, check_implementation_flags, check_option

__all__ = ["ASGD"]


class ASGD(ElementwiseOptimizer):
    """Averaged SGD (torch.optim.ASGD; Polyak & Juditsky 1992).

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        p = p * (1 - lambd * eta) - eta * g
        ax = p  if mu == 1  else  ax + (p - ax) * mu
        eta = lr / (1 + lambd * lr * t)**alpha;  mu = 1 / max(1, t - t0)

    ``eta`` (starting at ``lr``) and ``mu`` (starting at 1) are per-parameter state,
    kept in float32 as torch keeps them; ``ax`` is the running average of ``p``.

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-2
    lambd : float, default 1e-4
        Decay term.
    alpha : float, default 0.75
        Power for the eta update.
    t0 : float, default 1e6
        Step at which averaging starts.
    weight_decay : float, default 0
    foreach, capturable, differentiable
        torch's implementation flags, accepted so torch code ports unchanged; numbaopt
        has one implementation, and ``differentiable=True`` is refused.
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ElementwiseOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"

    Examples
    --------
    >>> opt = ASGD(model.parameters(), lr=0.01, t0=100)
    """

    hyperparameters = ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize")
    _state_keys = ("ax",)
    _scalar_state = ("eta", "mu")
    _implementation_flags = dict(foreach=None, differentiable=False, capturable=False)

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0,
                 foreach=None, maximize=False, differentiable=False, capturable=False, *,
                 skip_nonfinite=False, device="cpu"):
        flags = check_implementation_flags("ASGD", foreach=foreach, capturable=capturable,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=False,
                        capturable=flags["capturable"])
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        # torch checks no range for these; the kernel needs finite numbers.
        for name in ("lambd", "alpha", "t0"):
            check_option(group, name, f"Invalid {name} value", low=-math.inf, index=index,
                         where=where)
        check_flag(group, "maximize", index, where)

    # -- the rule (h: lr, lambd, alpha, t0, weight_decay, maximize; s[i]: eta, mu) --------

    @staticmethod
    def coefficients(h, t, s, i, T):
        if t == 1.0:   # torch creates eta = lr (as float32) and mu = 1 at the first step
            eta = float(np.float32(h[0]))
            mu = 1.0
        else:
            eta = s[i, 0]
            mu = s[i, 1]
        return T(1.0 - h[1] * eta), T(-eta), T(mu), mu != 1.0, T(h[4]), h[4] != 0.0, h[5] != 0.0

    @staticmethod
    def advance(h, t, s, i):
        lr, lambd, alpha, t0 = h[0], h[1], h[2], h[3]
        s[i, 0] = float(np.float32(lr / ((1.0 + lambd * lr * t) ** alpha)))
        s[i, 1] = float(np.float32(1.0 / max(1.0, t - t0)))

    @staticmethod
    def update(lo, hi, stride, k, param, grad, ax):
        decay, neg_eta, mu, averaging, wd, weight_decay, maximize = k
        for j in range(lo, hi, stride):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay:
                d = d + wd * p
            p = p * decay
            p = p + neg_eta * d
            param[j] = p
            if averaging:
                a = ax[j]
                ax[j] = a + (p - a) * mu
            else:
                ax[j] = p
