"""RAdam (torch.optim.RAdam)."""

from .elementwise import ElementwiseOptimizer, lerp, sqrt
from .optimizer import check_betas, check_flag, check_implementation_flags, check_option

__all__ = ["RAdam"]


class RAdam(ElementwiseOptimizer):
    """RAdam (torch.optim.RAdam): Adam with a rectified adaptive learning rate (Liu et al. 2019).

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p          (p = p * (1 - lr * weight_decay) if decoupled)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)
        p = p - m / (1 - beta1**t) * lr * sqrt(1 - beta2**t) / (sqrt(v) + eps) * r_t  if rho_t > 5
        p = p - m / (1 - beta1**t) * lr                                               otherwise

    with ``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``.

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    decoupled_weight_decay : bool, default False
        Decay the parameter directly (RAdamW) instead of adding to the gradient.
    foreach, capturable, differentiable
        torch's implementation flags, accepted so torch code ports unchanged; numbaopt
        has one implementation, and ``differentiable=True`` is refused.
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ElementwiseOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"

    Examples
    --------
    >>> opt = RAdam(model.parameters(), lr=1e-3)
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay",
                       "maximize")
    _state_keys = ("exp_avg", "exp_avg_sq")
    _load_defaults = {"maximize": False, "decoupled_weight_decay": False}
    _implementation_flags = dict(foreach=None, capturable=False, differentiable=False)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False,
                 capturable=False, differentiable=False, skip_nonfinite=False, device="cpu"):
        flags = check_implementation_flags("RAdam", foreach=foreach, capturable=capturable,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, capturable=flags["capturable"],
                        decoupled_weight_decay=decoupled_weight_decay, differentiable=False)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_betas(group, index, where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_flag(group, "decoupled_weight_decay", index, where)
        check_flag(group, "maximize", index, where)

    # -- the rule (h: lr, beta1, beta2, eps, weight_decay, decoupled, maximize) ------------

    @staticmethod
    def coefficients(h, t, s, i, T):
        lr, beta1, beta2, weight_decay = h[0], h[1], h[2], h[4]
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * (beta2 ** t) / bias_correction2
        rectified = rho_t > 5.0
        rect = 0.0
        if rectified:
            rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5
        w1 = T(1.0 - beta1)
        return (T(bias_correction1), T(lr), T(bias_correction2 ** 0.5), T(rect), T(h[3]),
                w1, T(1.0) - w1, abs(1.0 - beta1) < 0.5, T(beta2), T(1.0 - beta2),
                T(weight_decay), T(1.0 - lr * weight_decay), T(1.0),
                weight_decay != 0.0, h[5] != 0.0, h[6] != 0.0, rectified)

    @staticmethod
    def update(lo, hi, stride, k, param, grad, exp_avg, exp_avg_sq):
        (bias_correction1, lr, bias_correction2_sqrt, rect, eps, w1, one_minus_w1, small, b2,
         one_minus_b2, wd, decay, one, weight_decay, decoupled, maximize, rectified) = k
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
            x = m / bias_correction1 * lr
            if rectified:
                # torch: float / tensor is tensor.reciprocal() * float
                x = x * ((one / (sqrt(v) + eps)) * bias_correction2_sqrt) * rect
            param[j] = p - x
