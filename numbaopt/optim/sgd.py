"""SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""

import math

from numba import njit

from .elementwise import ElementwiseOptimizer
from .optimizer import check_flag, check_implementation_flags, check_option

__all__ = ["SGD"]


class SGD(ElementwiseOptimizer):
    """Stochastic gradient descent, optionally with momentum (torch.optim.SGD).

    Per parameter, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        b = g                         on the first step with momentum
        b = momentum * b + (1 - dampening) * g
        g = g + momentum * b  if nesterov  else  b
        p = p - lr * g

    Parameters
    ----------
    params : iterable of Parameter or of dicts
        Parameters, or parameter groups: dicts with ``"params"`` and any option below.
    lr : float, default 1e-3
    momentum : float, default 0
    dampening : float, default 0
    weight_decay : float, default 0
        L2 penalty added to the gradient.
    nesterov : bool, default False
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ElementwiseOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena (parameters, gradients, state) lives; "cuda" needs numba-cuda.
    foreach, fused, capturable, differentiable
        torch's implementation flags, accepted so torch code ports unchanged; numbaopt
        has one implementation, and ``differentiable=True`` is refused.

    Examples
    --------
    >>> opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    >>> opt.zero_grad(); model.backward(criterion.backward()); opt.step()
    """

    hyperparameters = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
    _state_keys = ("momentum_buffer",)
    _step_in_state = False
    _parallel_scale = 4
    _load_defaults = {"nesterov": False, "maximize": False, "fused": False}   # torch's __setstate__
    _implementation_flags = dict(foreach=None, differentiable=False, fused=None)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, skip_nonfinite=False, device="cpu"):
        flags = check_implementation_flags("SGD", foreach=foreach, fused=fused,
                                           differentiable=differentiable)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=flags["foreach"], differentiable=False, fused=flags["fused"])
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "momentum", "Invalid momentum value", index=index, where=where)
        check_option(group, "dampening", "Invalid dampening value", low=-math.inf, index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_flag(group, "nesterov", index, where)
        check_flag(group, "maximize", index, where)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            suffix = f" ({where} {index})" if index is not None else ""
            raise ValueError("Nesterov momentum requires a momentum and zero dampening" + suffix)

    def _group_state_keys(self, group):
        return self._state_keys if group["momentum"] != 0 else ()

    # -- the rule (h: lr, momentum, dampening, weight_decay, nesterov, maximize) -----------
    # step counts the steps taken with momentum, so step == 1 means "no buffer yet".

    @staticmethod
    def counts_step(hyper, g):
        return hyper[g, 1] != 0.0

    @staticmethod
    def coefficients(h, t, s, i, T):
        # torch starts the momentum buffer at the first gradient, without dampening.
        return (T(-h[0]), T(h[1]), T(1.0 - h[2]), T(h[3]),
                h[5] != 0.0, h[3] != 0.0, h[1] != 0.0, t == 1.0, h[4] != 0.0)

    @staticmethod
    def update(lo, hi, stride, k, param, grad, momentum_buffer):
        # SGD's loop is cheap enough for its branches to show: on chunks of a few hundred
        # elements or more, steady-state steps of the usual options run a copy of the loop
        # with constant flags (LLVM does not unswitch them by itself; the general loop is
        # ~1.2-1.4x slower in cache at 100k parameters in 100 tensors). The copies are
        # calls, not inlined: inlined, their array arguments cost reference counting on
        # every chunk, which at 1k parameters in 10 tensors cost more than they saved.
        neg_lr, mom, omd, wd, maximize, weight_decay, momentum, first, nesterov = k
        if hi - lo < 256 or maximize or nesterov or (momentum and first):
            _sgd_loop(lo, hi, stride, neg_lr, mom, omd, wd, param, grad, momentum_buffer,
                      maximize, weight_decay, momentum, first, nesterov)
        elif momentum and weight_decay:
            _sgd_loop_call(lo, hi, stride, neg_lr, mom, omd, wd, param, grad, momentum_buffer,
                           False, True, True, False, False)
        elif momentum:
            _sgd_loop_call(lo, hi, stride, neg_lr, mom, omd, wd, param, grad, momentum_buffer,
                           False, False, True, False, False)
        elif weight_decay:
            _sgd_loop_call(lo, hi, stride, neg_lr, mom, omd, wd, param, grad, momentum_buffer,
                           False, True, False, False, False)
        else:
            _sgd_loop_call(lo, hi, stride, neg_lr, mom, omd, wd, param, grad, momentum_buffer,
                           False, False, False, False, False)


@njit(inline="always", error_model="numpy")
def _sgd_loop(lo, hi, stride, neg_lr, mom, one_minus_dampening, wd, param, grad,
              momentum_buffer, maximize, weight_decay, momentum, first, nesterov):
    for j in range(lo, hi, stride):
        d = grad[j]
        if maximize:
            d = -d
        if weight_decay:
            d = d + wd * param[j]
        if momentum:
            if first:
                buf = d
            else:
                buf = momentum_buffer[j] * mom + one_minus_dampening * d
            momentum_buffer[j] = buf
            if nesterov:
                d = d + mom * buf
            else:
                d = buf
        param[j] = param[j] + neg_lr * d


_sgd_loop_call = njit(error_model="numpy")(_sgd_loop.py_func)
