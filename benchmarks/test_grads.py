"""Gradients in: the host cost of handing an optimizer its gradients, per parameter.

A training loop that computes gradients outside the arena pays this once per parameter
per step, before the one-call step, so for many small parameters it can outweigh the
step itself. 1000 float32 parameters of 100 elements (Adam), as vectors (100,) and as
matrices (10, 10), assigned one by one (``p.grad = g``, the issue's target is 0.3 µs per
parameter; a vector's copy is one memoryview assignment, a matrix's NumPy's), all at once
(``opt.set_grads(grads)``, one concatenate into the grad arena), and as one flat vector
(``opt.set_grads(vector)``, one copy). Run::

    python -m pytest benchmarks/test_grads.py

and divide the median by 1000 for the time per parameter.
"""

import numpy as np
import pytest

import numbaopt
from numbaopt.optim.adam import Adam

NPARAMS, NUMEL = 1000, 100


@pytest.fixture(params=[(NUMEL,), (10, 10)], ids=["vectors", "matrices"])
def case(request):
    rng = np.random.default_rng(0)
    shape = request.param
    params = [numbaopt.Parameter(rng.standard_normal(shape).astype(np.float32))
              for _ in range(NPARAMS)]
    opt = Adam(params, lr=1e-3)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(NPARAMS)]
    return opt, params, grads


def _check(opt, grads):
    np.testing.assert_array_equal(opt.arena.grad, np.concatenate([g.ravel() for g in grads]))
    assert opt.arena.has_grad.all()


def test_grad_setter(benchmark, case):
    opt, params, grads = case
    pairs = list(zip(params, grads))

    def assign():
        for p, g in pairs:
            p.grad = g

    benchmark.group = "gradients in"
    benchmark.extra_info["parameters"] = NPARAMS
    benchmark(assign)
    _check(opt, grads)


def test_set_grads(benchmark, case):
    opt, params, grads = case
    benchmark.group = "gradients in"
    benchmark.extra_info["parameters"] = NPARAMS
    benchmark(opt.set_grads, grads)
    _check(opt, grads)


def test_set_grads_flat_vector(benchmark, case):
    opt, params, grads = case
    vector = np.concatenate([g.ravel() for g in grads])
    benchmark.group = "gradients in"
    benchmark.extra_info["parameters"] = NPARAMS
    benchmark(opt.set_grads, vector)
    _check(opt, grads)
