"""Adam and AdamW (torch.optim.Adam / torch.optim.AdamW)."""

from numbers import Real

import numpy as np

from .elementwise import ElementwiseOptimizer, lerp, maximum, sqrt
from .optimizer import check_betas, check_flag, check_implementation_flags, check_option

__all__ = ["Adam", "AdamW"]


class Adam(ElementwiseOptimizer):
    """Adam (torch.optim.Adam), with AMSGrad and decoupled weight decay options.

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p          (p = p * (1 - lr * weight_decay) if decoupled)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        v_hat = max(v_hat, v) if amsgrad else v
        p = p - lr / (1 - beta1**t) * m / (sqrt(v_hat) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad : bool, default False
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ElementwiseOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena (parameters, gradients, state) lives; "cuda" needs numba-cuda.
    decoupled_weight_decay : bool, default False
        True gives AdamW.
    foreach, fused, capturable, differentiable
        torch's implementation flags, accepted so torch code ports unchanged; numbaopt
        has one implementation, and ``differentiable=True`` is refused.

    Examples
    --------
    >>> opt = Adam(model.parameters(), lr=0.01)
    >>> opt.zero_grad(); model.backward(criterion.backward()); opt.step()
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                       "decoupled_weight_decay")
    _state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _load_defaults = {"amsgrad": False, "maximize": False, "decoupled_weight_decay": False}
    _implementation_flags = dict(foreach=None, capturable=False, differentiable=False,
                                 fused=None)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 skip_nonfinite=False, device="cpu"):
        flags = check_implementation_flags(type(self).__name__, foreach=foreach, fused=fused,
                                           capturable=capturable, differentiable=differentiable)
        betas = _check_tensor_options(lr, betas, foreach, capturable)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, **flags,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_betas(group, index, where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        for flag in ("amsgrad", "maximize", "decoupled_weight_decay"):
            check_flag(group, flag, index, where)

    def _group_state_keys(self, group):
        return self._state_keys if group["amsgrad"] else self._state_keys[:2]

    # -- the rule (h: lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled) ---

    @staticmethod
    def coefficients(h, t, s, i, T):
        lr, beta1, beta2, weight_decay = h[0], h[1], h[2], h[4]
        # Python floats in torch (float64 here), cast to the dtype where they meet tensors.
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        w1 = T(1.0 - beta1)
        return (T(-(lr / bias_correction1)), T(bias_correction2 ** 0.5), T(h[3]),
                w1, T(1.0) - w1, abs(1.0 - beta1) < 0.5, T(beta2), T(1.0 - beta2),
                T(weight_decay), T(1.0 - lr * weight_decay),
                weight_decay != 0.0, h[5] != 0.0, h[6] != 0.0, h[7] != 0.0)

    @staticmethod
    def update(lo, hi, stride, k, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
        (neg_step_size, bias_correction2_sqrt, eps, w1, one_minus_w1, small, b2, one_minus_b2,
         wd, decay, weight_decay, amsgrad, maximize, decoupled) = k
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
            if amsgrad:
                v = maximum(max_exp_avg_sq[j], v)    # torch.maximum: NaN from either side
                max_exp_avg_sq[j] = v
            denom = sqrt(v) / bias_correction2_sqrt + eps
            param[j] = p + neg_step_size * m / denom


def _check_tensor_options(lr, betas, foreach, capturable):
    """torch's Adam rules for array (torch: Tensor) lr and betas; returns betas as a tuple."""
    if isinstance(lr, np.ndarray):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.size != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair of floats, got {betas!r}")
    arrays = [isinstance(b, np.ndarray) for b in betas]
    floats = [isinstance(b, Real) and not isinstance(b, bool) for b in betas]
    if not (all(floats) or all(arrays)):
        raise ValueError("betas must be either both floats or both Tensors")
    for k, beta in enumerate(betas):
        if arrays[k]:
            if foreach and not capturable:
                raise ValueError(f"betas[{k}] as a Tensor is not supported for "
                                 "capturable=False and foreach=True")
            if beta.size != 1:
                raise ValueError(f"Tensor betas[{k}] must be 1-element")
    # torch's _to_scalar: a 1-element tensor becomes 0-d
    return tuple(b.reshape(()) if isinstance(b, np.ndarray) else b for b in betas)


class AdamW(Adam):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay.

    The weight decay shrinks the parameter directly, ``p = p * (1 - lr * weight_decay)``,
    instead of entering the gradient. Parameters as :class:`Adam`, except
    ``weight_decay`` defaults to 1e-2.

    Examples
    --------
    >>> opt = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    """

    _load_defaults = {"amsgrad": False, "maximize": False, "decoupled_weight_decay": True}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, skip_nonfinite=False, device="cpu"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, skip_nonfinite=skip_nonfinite,
                         device=device)
