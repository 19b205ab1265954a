"""NAdam (torch.optim.NAdam)."""

import numpy as np
from numba import njit

from .elementwise import ElementwiseOptimizer, lerp, sqrt
from .optimizer import check_betas, check_flag, check_implementation_flags, check_option

__all__ = ["NAdam"]


class NAdam(ElementwiseOptimizer):
    """NAdam (torch.optim.NAdam): Adam with Nesterov momentum (Dozat 2016).

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p          (p = p * (1 - lr * weight_decay) if decoupled)
        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay));  mu_product *= mu_t
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        denom = sqrt(v / (1 - beta2**t)) + eps
        p = p - lr * (1 - mu_t) / (1 - mu_product) * g / denom
              - lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m / denom

    ``mu_product`` is per-parameter state, kept in float32 as torch keeps it.

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 2e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    momentum_decay : float, default 4e-3
    decoupled_weight_decay : bool, default False
        Decay the parameter directly (NAdamW) instead of adding to the gradient.
    foreach, capturable, differentiable
        torch's implementation flags, accepted so torch code ports unchanged; numbaopt
        has one implementation, and ``differentiable=True`` is refused.
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ElementwiseOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"

    Examples
    --------
    >>> opt = NAdam(model.parameters(), lr=2e-3, momentum_decay=4e-3)
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay", "momentum_decay",
                       "decoupled_weight_decay", "maximize")
    _state_keys = ("exp_avg", "exp_avg_sq")
    _scalar_state = ("mu_product",)
    _load_defaults = {"maximize": False, "decoupled_weight_decay": False}
    _implementation_flags = dict(foreach=None, capturable=False, differentiable=False)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, skip_nonfinite=False,
                 device="cpu"):
        flags = check_implementation_flags("NAdam", foreach=foreach, capturable=capturable,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, capturable=flags["capturable"], differentiable=False)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_betas(group, index, where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_option(group, "momentum_decay", "Invalid momentum_decay value", index=index,
                     where=where)
        check_flag(group, "decoupled_weight_decay", index, where)
        check_flag(group, "maximize", index, where)

    # -- the rule (h: lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled,
    #              maximize; s[i, 0]: mu_product) --------------------------------------

    @staticmethod
    def coefficients(h, t, s, i, T):
        lr, beta1, beta2, weight_decay = h[0], h[1], h[2], h[4]
        mu, mu_product = _mu_product(h, t, s, i)
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((t + 1.0) * h[5])))
        w1 = T(1.0 - beta1)
        return (T(-lr * (1.0 - mu) / (1.0 - mu_product)),
                T((-lr * mu_next) / (1.0 - mu_product * mu_next)),
                T(1.0 - beta2 ** t), T(h[3]), w1, T(1.0) - w1, abs(1.0 - beta1) < 0.5,
                T(beta2), T(1.0 - beta2), T(weight_decay), T(1.0 - lr * weight_decay),
                weight_decay != 0.0, h[6] != 0.0, h[7] != 0.0)

    @staticmethod
    def advance(h, t, s, i):
        s[i, 0] = _mu_product(h, t, s, i)[1]

    @staticmethod
    def update(lo, hi, stride, k, param, grad, exp_avg, exp_avg_sq):
        (grad_coef, exp_avg_coef, bias_correction2, eps, w1, one_minus_w1, small, b2,
         one_minus_b2, wd, decay, weight_decay, decoupled, maximize) = k
        for j in range(lo, hi, stride):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay:
                if decoupled:
                    p = p * decay
                else:
                    d = d + wd * p
            m = lerp(exp_avg[j], d, w1, one_minus_w1, small)
            v = exp_avg_sq[j] * b2 + one_minus_b2 * d * d
            exp_avg[j] = m
            exp_avg_sq[j] = v
            denom = sqrt(v / bias_correction2) + eps
            p = p + grad_coef * d / denom
            param[j] = p + exp_avg_coef * m / denom


@njit(inline="always", error_model="numpy")
def _mu_product(h, t, s, i):
    # (mu_t, the new mu_product). torch keeps mu_product in a float32 tensor (1 before the
    # first step) and multiplies it by the float mu_t in float32.
    mu = h[1] * (1.0 - 0.5 * (0.96 ** (t * h[5])))
    previous = 1.0 if t == 1.0 else s[i, 0]
    return mu, float(np.float32(np.float32(previous) * np.float32(mu)))
