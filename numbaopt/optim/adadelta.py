"""Adadelta (torch.optim.Adadelta)."""


from .elementwise import ElementwiseOptimizer, sqrt
from .optimizer import check_flag, check_implementation_flags, check_option

__all__ = ["Adadelta"]


class Adadelta(ElementwiseOptimizer):
    """Adadelta (torch.optim.Adadelta; Zeiler 2012).

    Per parameter, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        v = rho * v + (1 - rho) * g * g
        delta = sqrt(u + eps) / sqrt(v + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        p = p - lr * delta

    with ``v`` the state "square_avg" and ``u`` "acc_delta".

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1.0
    rho : float, default 0.9
    eps : float, default 1e-6
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
    >>> opt = Adadelta(model.parameters(), lr=1.0)
    >>> opt.zero_grad(); model.backward(criterion.backward()); opt.step()
    """

    hyperparameters = ("lr", "rho", "eps", "weight_decay", "maximize")
    _state_keys = ("square_avg", "acc_delta")
    _implementation_flags = dict(capturable=False, foreach=None, differentiable=False)

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False, skip_nonfinite=False,
                 device="cpu"):
        flags = check_implementation_flags("Adadelta", foreach=foreach, capturable=capturable,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=flags["capturable"], foreach=foreach, differentiable=False)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "rho", "Invalid rho value", high=1.0, index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_flag(group, "maximize", index, where)

    # -- the rule (h: lr, rho, eps, weight_decay, maximize) --------------------------------

    @staticmethod
    def coefficients(h, t, s, i, T):
        return T(-h[0]), T(h[1]), T(1.0 - h[1]), T(h[2]), T(h[3]), h[3] != 0.0, h[4] != 0.0

    @staticmethod
    def update(lo, hi, stride, k, param, grad, square_avg, acc_delta):
        neg_lr, rho, one_minus_rho, eps, wd, weight_decay, maximize = k
        for j in range(lo, hi, stride):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay:
                d = d + wd * p
            v = square_avg[j] * rho + one_minus_rho * d * d
            square_avg[j] = v
            u = acc_delta[j]
            delta = sqrt(u + eps) / sqrt(v + eps) * d
            acc_delta[j] = u * rho + one_minus_rho * delta * delta
            param[j] = p + neg_lr * delta


