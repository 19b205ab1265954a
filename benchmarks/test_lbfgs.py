"""Time per L-BFGS iteration: numbaopt, torch.optim.LBFGS and scipy's L-BFGS-B.

The problem is a separable quadratic with curvatures from 1e-3 to 1e3 (it does
not converge within the run, so every iteration uses a full history), over
1M parameters in 100 tensors (``--bench-sizes=small``: 10k in 10). Each
implementation takes its natural path: numbaopt's closure writes the gradient
into the arena, torch's sets ``p.grad`` per tensor, scipy's gets one flat
vector. numbaopt and torch run ``step(closure)`` with ``max_iter=1``,
``history_size=100``, after filling the history; scipy's time is that of
``minimize(method="L-BFGS-B", maxcor=100)`` divided by its iterations.

    python -m pytest benchmarks/test_lbfgs.py --benchmark-only
"""

import numpy as np
import pytest

import numbaopt
from numbaopt.optim import LBFGS

from .cases import SMALL_SIZES
from .conftest import bench_sizes

try:
    import torch
except ImportError:   # pragma: no cover
    torch = None

try:
    import scipy.optimize
except ImportError:   # pragma: no cover
    scipy = None

HISTORY = 100


def _sizes(config):
    return (10_000, 10) if bench_sizes(config) is SMALL_SIZES else (1_000_000, 100)


@pytest.fixture
def problem(request):
    n, tensors = _sizes(request.config)
    rng = np.random.default_rng(0)
    curv = np.logspace(-3, 3, n)[rng.permutation(n)]
    x0 = rng.standard_normal(n)
    return n, tensors, curv, x0


def _numbaopt(n, tensors, curv, x0, dtype):
    params = [numbaopt.Parameter(c.astype(dtype)) for c in np.split(x0, tensors)]
    opt = LBFGS(params, max_iter=1, history_size=HISTORY)
    arena = opt.arena
    a = curv.astype(dtype)

    def closure():
        np.multiply(a, arena.data, out=arena.grad)     # the zero-copy gradient path
        arena.has_grad[:] = True
        return 0.5 * float(np.dot(arena.grad, arena.data))
    return lambda: opt.step(closure)


def _torch(n, tensors, curv, x0, dtype):
    tdtype = getattr(torch, dtype)
    params = [torch.tensor(c.astype(dtype), requires_grad=True) for c in np.split(x0, tensors)]
    curvs = [torch.tensor(c.astype(dtype)) for c in np.split(curv, tensors)]
    opt = torch.optim.LBFGS(params, max_iter=1, history_size=HISTORY)

    def closure():
        loss = torch.zeros((), dtype=tdtype)
        with torch.no_grad():
            for p, a in zip(params, curvs):
                p.grad = a * p
                loss += 0.5 * torch.dot(p.grad, p)
        return loss
    return lambda: opt.step(closure)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("impl", ["numbaopt", "torch"])
def test_lbfgs_iteration(benchmark, problem, impl, dtype):
    if impl == "torch" and torch is None:
        pytest.skip("torch is not installed")
    n, tensors, curv, x0 = problem
    step = (_numbaopt if impl == "numbaopt" else _torch)(n, tensors, curv, x0, dtype)
    for _ in range(HISTORY + 5 if benchmark.enabled else 3):   # fill the history
        step()
    benchmark.group = f"LBFGS iteration {dtype} {n} in {tensors}"
    benchmark.extra_info["implementation"] = impl
    benchmark.pedantic(step, rounds=10 if benchmark.enabled else 1, iterations=1)


def test_lbfgs_iteration_scipy(benchmark, problem):
    if scipy is None:
        pytest.skip("scipy is not installed (pip install scipy)")
    n, tensors, curv, x0 = problem
    iters = 10 if benchmark.enabled else 3

    def fun(x):
        g = curv * x
        return 0.5 * float(g @ x), g

    def run():
        res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                      options=dict(maxcor=HISTORY, maxiter=iters, gtol=0,
                                                   ftol=0))
        return res.nit

    benchmark.group = f"LBFGS iteration float64 {n} in {tensors}"
    benchmark.extra_info["implementation"] = f"scipy L-BFGS-B (time per call / {iters})"
    nit = benchmark.pedantic(run, rounds=2 if benchmark.enabled else 1, iterations=1)
    benchmark.extra_info["iterations"] = nit
