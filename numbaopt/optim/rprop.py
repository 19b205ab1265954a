"""Rprop (torch.optim.Rprop)."""

from .elementwise import ElementwiseOptimizer, clamp
from .optimizer import check_flag, check_implementation_flags, check_option, is_finite_real

__all__ = ["Rprop"]


class Rprop(ElementwiseOptimizer):
    """Resilient backpropagation (torch.optim.Rprop; Riedmiller & Braun 1993).

    Per element, with ``g`` the gradient (negated when ``maximize``) and ``g_prev``
    the one kept from the previous step::

        f = etaplus if g * g_prev > 0, etaminus if g * g_prev < 0, else 1
        step_size = clamp(step_size * f, *step_sizes)       (starts at lr)
        g = 0 where f == etaminus
        p = p - sign(g) * step_size;  g_prev = g

    As torch's ``sign``, a NaN gradient counts as 0: the element does not move.

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-2
    etas : (float, float), default (0.5, 1.2)
        (etaminus, etaplus), with ``0 < etaminus < 1 < etaplus``.
    step_sizes : (float, float), default (1e-6, 50)
        Smallest and largest step size.
    capturable, foreach, differentiable
        torch's implementation flags, accepted so torch code ports unchanged; numbaopt
        has one implementation, and ``differentiable=True`` is refused.
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ElementwiseOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"

    Examples
    --------
    >>> opt = Rprop(model.parameters(), lr=0.01)
    """

    hyperparameters = ("lr", "etas", "step_sizes", "maximize")
    _state_keys = ("prev", "step_size")
    _implementation_flags = dict(foreach=None, differentiable=False, capturable=False)

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *,
                 capturable=False, foreach=None, maximize=False, differentiable=False,
                 skip_nonfinite=False, device="cpu"):
        flags = check_implementation_flags("Rprop", foreach=foreach, capturable=capturable,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach,
                        maximize=maximize, differentiable=False, capturable=flags["capturable"])
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        suffix = f" ({where} {index})" if index is not None else ""
        for key in ("etas", "step_sizes"):
            pair = group[key]
            if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(
                    is_finite_real(v) for v in pair):
                raise ValueError(f"{key} must be a pair of finite floats, got {pair!r}{suffix}")
        etaminus, etaplus = group["etas"]
        if not 0.0 < etaminus < 1.0 < etaplus:
            raise ValueError(f"Invalid eta values: {etaminus}, {etaplus}{suffix}")
        check_flag(group, "maximize", index, where)

    # -- the rule (h: lr, etaminus, etaplus, step_size_min, step_size_max, maximize) ------

    @staticmethod
    def coefficients(h, t, s, i, T):
        # torch starts step_size at the lr of the parameter's first step.
        return (T(h[0]), T(h[1]), T(h[2]), T(h[3]), T(h[4]), T(1.0), T(0.0), t == 1.0,
                h[5] != 0.0)

    @staticmethod
    def update(lo, hi, stride, k, param, grad, prev, step_size):
        lr, etaminus, etaplus, step_size_min, step_size_max, one, zero, first, maximize = k
        for j in range(lo, hi, stride):
            d = grad[j]
            if maximize:
                d = -d
            product = d * prev[j]
            size = lr if first else step_size[j]
            if product > 0:
                size = size * etaplus
            elif product < 0:
                size = size * etaminus
                d = zero   # torch zeroes the gradient where the sign flipped
            else:
                size = size * one
            size = clamp(size, step_size_min, step_size_max)
            step_size[j] = size
            if d > 0:
                param[j] = param[j] - size
            elif d < 0:
                param[j] = param[j] + size
            prev[j] = d

