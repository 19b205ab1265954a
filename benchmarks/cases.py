"""The benchmark cases: sizes, optimizers, and one step function per implementation.

Every implementation starts from the same random parameters and gradients and
is warmed up (compiled, first step taken) before it is returned, so timing the
returned ``step()`` times steady-state steps only. The pytest-benchmark suite
and ``report.py`` both build their cases here.

Implementations:

- ``numbaopt``: ``opt.step()`` of the numbaopt optimizer, Python call included.
- ``torch``: ``opt.step()`` of torch.optim with ``fused=True`` where torch has a
  fused CPU kernel for the optimizer, else ``foreach=True``.
- ``numpy``: a naive NumPy step, a Python loop over the tensors with NumPy
  expressions (torch's single-tensor formulas).
- ``roofline``: a kernel that only moves the bytes the update must move
  (see ``roofline.py``), serial or ``prange`` by numbaopt's own size rule.
"""

import functools
import math
from typing import NamedTuple

import numpy as np

import numbaopt
from numbaopt.optim import optimizer as _optimizer_module

from .roofline import PATTERNS, bytes_moved, roofline_kernel

try:
    import torch
except ImportError:   # the torch variants are skipped
    torch = None

__all__ = ["Size", "Spec", "Case", "SIZES", "SMALL_SIZES", "OPTIMIZERS", "DTYPES",
           "IMPLEMENTATIONS", "build", "set_parallel", "torch", "torch_variant"]


class Size(NamedTuple):
    name: str
    numel: int
    tensors: int
    #: None: numbaopt picks its serial or parallel kernel by its threshold;
    #: True/False forces one (the small stand-ins of the 16M cases use True so
    #: the parallel kernels are exercised in quick runs too).
    parallel: object = None


#: The sizes of the issue: total elements in how many equal tensors.
SIZES = (
    Size("1k/10", 1_000, 10),
    Size("100k/100", 100_000, 100),
    Size("16M/1000", 16_000_000, 1000),
    Size("16M/1", 16_000_000, 1),
)

#: Stand-ins used with ``--benchmark-disable`` (each body runs once: only checks it works).
SMALL_SIZES = (
    Size("1k/10", 1_000, 10),
    Size("10k/100", 10_000, 100),
    Size("64k/1000", 64_000, 1000, parallel=True),
    Size("64k/1", 64_000, 1, parallel=True),
)


class Spec(NamedTuple):
    cls: str        # class name in numbaopt.optim and torch.optim
    kwargs: dict
    pattern: str    # roofline traffic pattern


OPTIMIZERS = {
    "SGD": Spec("SGD", dict(lr=1e-3), "p,g->p"),
    "SGD_momentum": Spec("SGD", dict(lr=1e-3, momentum=0.9), "p,g,s->p,s"),
    "Adam": Spec("Adam", dict(lr=1e-3), "p,g,m,v->p,m,v"),
    "AdamW": Spec("AdamW", dict(lr=1e-3, weight_decay=1e-2), "p,g,m,v->p,m,v"),
    "RMSprop": Spec("RMSprop", dict(lr=1e-2), "p,g,s->p,s"),
    "Adagrad": Spec("Adagrad", dict(lr=1e-2), "p,g,s->p,s"),
    # torch's default lr for each; torch has no fused CPU step for these (foreach is used)
    "Adadelta": Spec("Adadelta", dict(lr=1.0), "p,g,m,v->p,m,v"),       # square_avg, acc_delta
    "Adamax": Spec("Adamax", dict(lr=2e-3), "p,g,m,v->p,m,v"),          # exp_avg, exp_inf
    "NAdam": Spec("NAdam", dict(lr=2e-3), "p,g,m,v->p,m,v"),            # exp_avg, exp_avg_sq
    "RAdam": Spec("RAdam", dict(lr=1e-3), "p,g,m,v->p,m,v"),            # exp_avg, exp_avg_sq
    # Before t0 (1e6 by default) ASGD only stores ax = p (torch: ax.copy_(param)), after
    # it ax += (p - ax) * mu reads ax too. Measured on the 2-core Xeon of report.py, a loop
    # that stores a buffer without reading it runs slower than one that reads it too
    # (16M float32: 11.9 ms against 9.7 ms): the read-and-write loop is the tighter roofline.
    "ASGD": Spec("ASGD", dict(lr=1e-2), "p,g,s->p,s"),                 # ax
    "Rprop": Spec("Rprop", dict(lr=1e-2), "p,g,m,v->p,m,v"),            # prev, step_size
}

DTYPES = ("float32", "float64")
IMPLEMENTATIONS = ("numbaopt", "torch", "numpy", "roofline")


class Case(NamedTuple):
    step: object     # zero-argument callable: one optimizer step
    nbytes: int      # bytes the update must move (the roofline's traffic)
    label: str       # e.g. "torch (fused)"
    handle: object   # the optimizer (or None), for callers that look inside


def build(impl, optimizer, dtype, size, warmup=2):
    """A warmed-up :class:`Case` of ``impl`` for ``OPTIMIZERS[optimizer]`` at ``size``."""
    spec = OPTIMIZERS[optimizer]
    dtype = np.dtype(dtype)
    case = _BUILDERS[impl](spec, dtype, size)
    for _ in range(warmup):
        case.step()
    return case


@functools.lru_cache(maxsize=1)
def _initial(dtype, numel, tensors):
    """The shared starting point: flat parameters and gradients, split into equal tensors."""
    if numel % tensors:
        raise ValueError(f"{numel} elements do not split into {tensors} equal tensors")
    rng = np.random.default_rng(0)
    param = rng.standard_normal(numel).astype(dtype)
    grad = (0.1 * rng.standard_normal(numel)).astype(dtype)
    for a in (param, grad):
        a.flags.writeable = False
    return param, grad


def _split(flat, tensors):
    return np.split(flat, tensors)


def _nbytes(spec, dtype, size):
    return bytes_moved(spec.pattern, size.numel, dtype.itemsize)


# -- numbaopt ---------------------------------------------------------------------------
def set_parallel(opt, parallel):
    """Force the serial (False) or parallel (True) kernel; None keeps numbaopt's choice."""
    if parallel is None:
        return
    opt.parallel_threshold = 0 if parallel else np.iinfo(np.int64).max
    group = opt.param_groups[0]
    group["lr"] = group["lr"]     # marks the groups changed: the next step re-picks the kernel


def _build_numbaopt(spec, dtype, size):
    flat_p, flat_g = _initial(dtype, size.numel, size.tensors)
    params = [numbaopt.Parameter(p.copy()) for p in _split(flat_p, size.tensors)]
    opt = getattr(numbaopt.optim, spec.cls)(params, **spec.kwargs)
    for p, g in zip(params, _split(flat_g, size.tensors)):
        p.grad = g
    set_parallel(opt, size.parallel)
    return Case(opt.step, _nbytes(spec, dtype, size), "numbaopt", opt)


# -- torch ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def torch_variant(cls_name):
    """``"fused"`` if torch has a fused CPU step for ``cls_name``, else ``"foreach"``."""
    cls = getattr(torch.optim, cls_name)
    try:
        p = torch.nn.Parameter(torch.zeros(4))
        p.grad = torch.ones(4)
        cls([p], fused=True).step()
    except (TypeError, RuntimeError, ValueError):
        return "foreach"
    return "fused"


def _build_torch(spec, dtype, size):
    if torch is None:
        raise ImportError("torch is not installed")
    flat_p, flat_g = _initial(dtype, size.numel, size.tensors)
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in _split(flat_p, size.tensors)]
    for p, g in zip(params, _split(flat_g, size.tensors)):
        p.grad = torch.from_numpy(g.copy())
    variant = torch_variant(spec.cls)
    opt = getattr(torch.optim, spec.cls)(params, **spec.kwargs, **{variant: True})
    return Case(opt.step, _nbytes(spec, dtype, size), f"torch ({variant})", opt)


# -- naive NumPy ------------------------------------------------------------------------
def _build_numpy(spec, dtype, size):
    flat_p, flat_g = _initial(dtype, size.numel, size.tensors)
    params = [p.copy() for p in _split(flat_p, size.tensors)]
    grads = [g.copy() for g in _split(flat_g, size.tensors)]
    step = _NUMPY_STEPS[spec.cls](params, grads, **spec.kwargs)
    return Case(step, _nbytes(spec, dtype, size), "numpy (naive)", None)


def _numpy_sgd(params, grads, lr, momentum=0.0):
    bufs = [None] * len(params)

    def step():
        for k, (p, g) in enumerate(zip(params, grads)):
            d = g
            if momentum:
                if bufs[k] is None:
                    bufs[k] = g.copy()
                else:
                    bufs[k] *= momentum
                    bufs[k] += g
                d = bufs[k]
            p -= lr * d
    return step


def _numpy_adam(params, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                decoupled=False):
    beta1, beta2 = betas
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    t = [0]

    def step():
        t[0] += 1
        bias_correction1 = 1 - beta1 ** t[0]
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** t[0])
        for p, g, m, v in zip(params, grads, ms, vs):
            if weight_decay:
                if decoupled:
                    p *= 1 - lr * weight_decay
                else:
                    g = g + weight_decay * p
            m += (1 - beta1) * (g - m)
            v *= beta2
            v += (1 - beta2) * g * g
            denom = np.sqrt(v) / bias_correction2_sqrt + eps
            p -= (lr / bias_correction1) * m / denom
    return step


def _numpy_adamw(params, grads, lr, weight_decay=1e-2, **kwargs):
    return _numpy_adam(params, grads, lr, weight_decay=weight_decay, decoupled=True, **kwargs)


def _numpy_rmsprop(params, grads, lr, alpha=0.99, eps=1e-8):
    squares = [np.zeros_like(p) for p in params]

    def step():
        for p, g, v in zip(params, grads, squares):
            v *= alpha
            v += (1 - alpha) * g * g
            p -= lr * g / (np.sqrt(v) + eps)
    return step


def _numpy_adagrad(params, grads, lr, lr_decay=0.0, eps=1e-10):
    sums = [np.zeros_like(p) for p in params]
    t = [0]

    def step():
        t[0] += 1
        clr = lr / (1 + (t[0] - 1) * lr_decay)
        for p, g, s in zip(params, grads, sums):
            s += g * g
            p -= clr * g / (np.sqrt(s) + eps)
    return step


def _numpy_adadelta(params, grads, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    square_avgs = [np.zeros_like(p) for p in params]
    acc_deltas = [np.zeros_like(p) for p in params]

    def step():
        for p, g, v, u in zip(params, grads, square_avgs, acc_deltas):
            if weight_decay:
                g = g + weight_decay * p
            v *= rho
            v += (1 - rho) * g * g
            std = np.sqrt(v + eps)
            delta = np.sqrt(u + eps)
            delta /= std
            delta *= g
            u *= rho
            u += (1 - rho) * delta * delta
            p -= lr * delta
    return step


def _numpy_adamax(params, grads, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    beta1, beta2 = betas
    ms = [np.zeros_like(p) for p in params]
    us = [np.zeros_like(p) for p in params]
    t = [0]

    def step():
        t[0] += 1
        clr = lr / (1 - beta1 ** t[0])
        for p, g, m, u in zip(params, grads, ms, us):
            if weight_decay:
                g = g + weight_decay * p
            m += (1 - beta1) * (g - m)
            u *= beta2
            np.maximum(u, np.abs(g) + eps, out=u)
            p -= clr * m / u
    return step


def _numpy_nadam(params, grads, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False):
    beta1, beta2 = betas
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    t = [0]
    # torch keeps mu_product per parameter, as a float32 tensor; every parameter steps
    # together here, so one suffices
    mu_product = [1.0]

    def step():
        t[0] += 1
        bias_correction2 = 1 - beta2 ** t[0]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t[0] * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t[0] + 1) * momentum_decay))
        mu_product[0] = float(np.float32(np.float32(mu_product[0]) * np.float32(mu)))
        grad_coef = -lr * (1.0 - mu) / (1.0 - mu_product[0])
        exp_avg_coef = -lr * mu_next / (1.0 - mu_product[0] * mu_next)
        for p, g, m, v in zip(params, grads, ms, vs):
            if weight_decay:
                if decoupled_weight_decay:
                    p *= 1 - lr * weight_decay
                else:
                    g = g + weight_decay * p
            m += (1 - beta1) * (g - m)
            v *= beta2
            v += (1 - beta2) * g * g
            denom = np.sqrt(v / bias_correction2)
            denom += eps
            p += grad_coef * g / denom
            p += exp_avg_coef * m / denom
    return step


def _numpy_radam(params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
    beta1, beta2 = betas
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    t = [0]
    rho_inf = 2 / (1 - beta2) - 1

    def step():
        t[0] += 1
        bias_correction1 = 1 - beta1 ** t[0]
        bias_correction2 = 1 - beta2 ** t[0]
        rho_t = rho_inf - 2 * t[0] * beta2 ** t[0] / bias_correction2
        rect = None
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                             / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        for p, g, m, v in zip(params, grads, ms, vs):
            if weight_decay:
                if decoupled_weight_decay:
                    p *= 1 - lr * weight_decay
                else:
                    g = g + weight_decay * p
            m += (1 - beta1) * (g - m)
            v *= beta2
            v += (1 - beta2) * g * g
            update = m / bias_correction1 * lr
            if rect is not None:
                denom = np.sqrt(v)
                denom += eps
                update *= math.sqrt(bias_correction2) / denom * rect
            p -= update
    return step


def _numpy_asgd(params, grads, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0):
    axs = [np.zeros_like(p) for p in params]
    t = [0]
    # torch keeps eta and mu per parameter, as float32 tensors; every parameter steps
    # together here, so one pair suffices
    eta_mu = [float(np.float32(lr)), 1.0]

    def step():
        t[0] += 1
        eta, mu = eta_mu
        for p, g, ax in zip(params, grads, axs):
            if weight_decay:
                g = g + weight_decay * p
            p *= 1 - lambd * eta
            p -= eta * g
            if mu != 1:
                ax += (p - ax) * mu
            else:
                ax[...] = p
        eta_mu[0] = float(np.float32(lr / ((1 + lambd * lr * t[0]) ** alpha)))
        eta_mu[1] = float(np.float32(1 / max(1, t[0] - t0)))
    return step


def _numpy_rprop(params, grads, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50)):
    etaminus, etaplus = etas
    step_size_min, step_size_max = step_sizes
    prevs = [np.zeros_like(p) for p in params]
    sizes = [np.full_like(p, lr) for p in params]

    def step():
        for p, g, prev, size in zip(params, grads, prevs, sizes):
            sign = np.sign(g * prev)
            sign[sign > 0] = etaplus
            sign[sign < 0] = etaminus
            sign[sign == 0] = 1
            size *= sign
            np.clip(size, step_size_min, step_size_max, out=size)
            g = g.copy()
            g[sign == etaminus] = 0
            p -= np.sign(g) * size
            prev[...] = g
    return step


_NUMPY_STEPS = {"SGD": _numpy_sgd, "Adam": _numpy_adam, "AdamW": _numpy_adamw,
                "RMSprop": _numpy_rmsprop, "Adagrad": _numpy_adagrad,
                "Adadelta": _numpy_adadelta, "Adamax": _numpy_adamax, "NAdam": _numpy_nadam,
                "RAdam": _numpy_radam, "ASGD": _numpy_asgd, "Rprop": _numpy_rprop}


# -- roofline ---------------------------------------------------------------------------
def _build_roofline(spec, dtype, size):
    flat_p, flat_g = _initial(dtype, size.numel, size.tensors)
    nstate = PATTERNS[spec.pattern][2]
    arrays = (flat_p.copy(), flat_g.copy()) + tuple(np.zeros_like(flat_p) for _ in range(nstate))
    parallel = size.parallel
    if parallel is None:     # numbaopt's rule (ElementwiseOptimizer._after_init)
        scale = getattr(getattr(numbaopt.optim, spec.cls), "_parallel_scale", 1)
        parallel = size.numel >= _optimizer_module.PARALLEL_THRESHOLD * scale
    kernel = roofline_kernel(spec.pattern, parallel)
    step = functools.partial(kernel, *arrays, dtype.type(1e-3))
    return Case(step, _nbytes(spec, dtype, size),
                "roofline (parallel)" if parallel else "roofline (serial)", None)


_BUILDERS = {"numbaopt": _build_numbaopt, "torch": _build_torch, "numpy": _build_numpy,
             "roofline": _build_roofline}
