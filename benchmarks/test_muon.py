"""Muon's step time: numbaopt (float32 and bfloat16-emulating Newton–Schulz) against torch.

The step is matrix products (15 per matrix with torch's 5 Newton–Schulz steps), so
the size is a count of square-ish matrices. Full sizes: 16 matrices of 1024x1024 and
16 of 256x128, float32; with ``--benchmark-disable`` (what CI runs) only 4 of 64x32.

numbaopt's products go through SciPy's OpenBLAS (its threads: ``OPENBLAS_NUM_THREADS``),
torch's through oneDNN in bfloat16 (``torch.get_num_threads()``); the benchmark records
both thread counts in ``extra_info``. Run::

    python -m pytest benchmarks/test_muon.py --bench-sizes=full
"""

import os

import numba
import numpy as np
import pytest

import numbaopt
from numbaopt.optim.muon import Muon

from .cases import torch

FULL = (("16x1024x1024", 16, (1024, 1024)), ("16x256x128", 16, (256, 128)))
SMALL = (("4x64x32", 4, (64, 32)),)
IMPLEMENTATIONS = ("numbaopt", "numbaopt-bfloat16", "torch")


def _full(config):
    choice = config.getoption("--bench-sizes", default=None) \
        or os.environ.get("NUMBAOPT_BENCH_SIZES")
    if choice is None:
        return not config.getoption("benchmark_disable", default=False)
    return choice == "full"


def pytest_generate_tests(metafunc):
    if "muon_size" in metafunc.fixturenames:
        sizes = FULL if _full(metafunc.config) else SMALL
        metafunc.parametrize("muon_size", sizes, ids=[s[0] for s in sizes])


def _build(impl, count, shape):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]
    if impl == "torch":
        params = [torch.tensor(a, requires_grad=True) for a in init]
        opt = torch.optim.Muon(params, lr=0.02)
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
    else:
        params = [numbaopt.Parameter(a) for a in init]
        opt = Muon(params, lr=0.02, ns_dtype="bfloat16" if impl.endswith("bfloat16") else None)
        for p, g in zip(params, grads):
            p.grad = g
    opt.step()   # warm up: compile (or load the cache), first-touch the workspaces
    return opt.step


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_muon_step(benchmark, impl, muon_size):
    if impl == "torch" and torch is None:
        pytest.skip("torch is not installed")
    name, count, shape = muon_size
    step = _build(impl, count, shape)
    benchmark.group = f"Muon float32 {name}"
    benchmark.extra_info["implementation"] = impl
    benchmark.extra_info["numba_threads"] = numba.get_num_threads()
    benchmark.extra_info["openblas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    if torch is not None:
        benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    m, n = min(shape), max(shape)
    flops = count * 5 * (4 * m * m * n + 2 * m ** 3)   # 5 Newton–Schulz steps, 3 products each
    benchmark.extra_info["flops"] = flops
    if shape[0] * shape[1] >= 1 << 20:
        benchmark.pedantic(step, rounds=3, iterations=1)   # seconds per step
    else:
        benchmark(step)
    if benchmark.enabled:
        benchmark.extra_info["GFLOP/s"] = flops / benchmark.stats.stats.median / 1e9
