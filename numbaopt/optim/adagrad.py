"""Adagrad (torch.optim.Adagrad)."""

from .elementwise import ElementwiseOptimizer, sqrt
from .optimizer import check_flag, check_implementation_flags, check_option

__all__ = ["Adagrad"]


class Adagrad(ElementwiseOptimizer):
    """Adagrad (torch.optim.Adagrad).

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        s = s + g * g
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)

    The accumulator ``s`` ("sum") starts at ``initial_accumulator_value`` for every
    parameter, including those added later by ``add_param_group``. As in torch,
    the constructor's value is used even where a group sets its own.

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-2
    lr_decay : float, default 0
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
    eps : float, default 1e-10
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ElementwiseOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena (parameters, gradients, state) lives; "cuda" needs numba-cuda.
    foreach, fused, differentiable
        torch's implementation flags, accepted so torch code ports unchanged; numbaopt
        has one implementation, and ``differentiable=True`` is refused.

    Examples
    --------
    >>> opt = Adagrad(model.parameters(), lr=0.1)
    """

    hyperparameters = ("lr", "lr_decay", "weight_decay", "eps", "maximize")
    _state_keys = ("sum",)
    _implementation_flags = dict(foreach=None, differentiable=False, fused=None)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 skip_nonfinite=False, device="cpu"):
        flags = check_implementation_flags("Adagrad", foreach=foreach, fused=fused,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value,
                        foreach=foreach, maximize=maximize, differentiable=False,
                        fused=flags["fused"])
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "lr_decay", "Invalid lr_decay value", index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_option(group, "initial_accumulator_value", "Invalid initial_accumulator_value value",
                     index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_flag(group, "maximize", index, where)

    _state_from_start = True

    def _init_state(self, first):
        # torch creates Adagrad's state eagerly, from the constructor's value.
        arena = self.arena
        arena.ensure_state(("sum",))
        arena.fill_state("sum", int(arena.offsets[first]), self.defaults["initial_accumulator_value"])

    def _fresh_state(self, buffers, groups):
        buffers["sum"][:] = self.defaults["initial_accumulator_value"]

    # -- the rule (h: lr, lr_decay, weight_decay, eps, maximize) --------------------------

    @staticmethod
    def coefficients(h, t, s, i, T):
        clr = h[0] / (1.0 + (t - 1.0) * h[1])
        return T(-clr), T(h[3]), T(h[2]), h[2] != 0.0, h[4] != 0.0

    @staticmethod
    def update(lo, hi, stride, k, param, grad, state_sum):
        neg_clr, eps, wd, weight_decay, maximize = k
        for j in range(lo, hi, stride):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay:
                d = d + wd * p
            s = state_sum[j] + d * d
            state_sum[j] = s
            param[j] = p + neg_clr * d / (sqrt(s) + eps)
