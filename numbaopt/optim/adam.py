"""Adam and AdamW (torch.optim.Adam / torch.optim.AdamW)."""

from ..kernels.cpu import _adam_cpu, _adam_cpu_parallel
from .optimizer import Optimizer, check_flag, check_option

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
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
        Skip the whole step when any gradient is NaN or inf (see ``Optimizer``).
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena (parameters, gradients, state) lives; "cuda" needs numba-cuda.
    decoupled_weight_decay : bool, default False
        True gives AdamW.

    Examples
    --------
    >>> opt = Adam(model.parameters(), lr=0.01)
    >>> opt.zero_grad(); model.backward(criterion.backward()); opt.step()
    """

    _state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _kernels = (_adam_cpu, _adam_cpu_parallel)
    _kernel_name = "adam"
    _load_defaults = {"amsgrad": False, "maximize": False, "decoupled_weight_decay": False}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False,
                 skip_nonfinite=False, device="cpu"):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            suffix = f" ({where} {index})" if index is not None else ""
            raise ValueError(f"betas must be a pair of floats, got {betas!r}{suffix}")
        for k in (0, 1):
            check_option({"betas": betas[k]}, "betas", f"Invalid beta parameter at index {k}",
                         high=1.0, high_open=True, index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        for flag in ("amsgrad", "maximize", "decoupled_weight_decay"):
            check_flag(group, flag, index, where)

    def _hyper_row(self, group):
        beta1, beta2 = group["betas"]
        return (float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                float(group["weight_decay"]), float(group["amsgrad"]),
                float(group["maximize"]), float(group["decoupled_weight_decay"]))

    def _group_state_keys(self, group):
        return self._state_keys if group["amsgrad"] else self._state_keys[:2]


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
                 amsgrad=False, *, maximize=False, skip_nonfinite=False, device="cpu"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         skip_nonfinite=skip_nonfinite, device=device)
