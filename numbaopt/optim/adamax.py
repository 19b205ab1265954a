"""Adamax (torch.optim.Adamax)."""

from .elementwise import ElementwiseOptimizer, lerp, maximum
from .optimizer import check_betas, check_flag, check_implementation_flags, check_option

__all__ = ["Adamax"]


class Adamax(ElementwiseOptimizer):
    """Adamax (torch.optim.Adamax): Adam with the infinity norm (Kingma & Ba 2014).

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        m = lerp(m, g, 1 - beta1)
        u = max(beta2 * u, |g| + eps)
        p = p - lr / (1 - beta1**t) * m / u

    with ``m`` the state "exp_avg" and ``u`` "exp_inf".

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 2e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
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
    >>> opt = Adamax(model.parameters(), lr=2e-3)
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay", "maximize")
    _state_keys = ("exp_avg", "exp_inf")
    _implementation_flags = dict(foreach=None, differentiable=False, capturable=False)

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 foreach=None, *, maximize=False, differentiable=False, capturable=False,
                 skip_nonfinite=False, device="cpu"):
        flags = check_implementation_flags("Adamax", foreach=foreach, capturable=capturable,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=False, capturable=flags["capturable"])
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_betas(group, index, where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_flag(group, "maximize", index, where)

    # -- the rule (h: lr, beta1, beta2, eps, weight_decay, maximize) -----------------------

    @staticmethod
    def coefficients(h, t, s, i, T):
        beta1 = h[1]
        clr = h[0] / (1.0 - beta1 ** t)
        w1 = T(1.0 - beta1)
        return (T(-clr), w1, T(1.0) - w1, abs(1.0 - beta1) < 0.5, T(h[2]), T(h[3]), T(h[4]),
                h[4] != 0.0, h[5] != 0.0)

    @staticmethod
    def update(lo, hi, stride, k, param, grad, exp_avg, exp_inf):
        neg_clr, w1, one_minus_w1, small, b2, eps, wd, weight_decay, maximize = k
        for j in range(lo, hi, stride):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay:
                d = d + wd * p
            m = lerp(exp_avg[j], d, w1, one_minus_w1, small)
            exp_avg[j] = m
            u = maximum(exp_inf[j] * b2, abs(d) + eps)
            exp_inf[j] = u
            param[j] = p + neg_clr * m / u
