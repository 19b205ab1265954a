"""Adafactor step time: numbaopt against torch.optim.Adafactor, float32, 2-D parameters.

Sizes (total elements in equal square-ish matrices): 1k in 10 tensors (10 x 10),
1M in 100 (100 x 100), 16M in 16 (1024 x 1024). torch runs its default path
(``foreach=None``, which for Adafactor is the for-loop one), ``foreach=False``
(the same path, named) and ``foreach=True``. numbaopt picks its serial or
parallel kernel by its threshold; ``numbaopt_serial`` forces the serial one.

``--benchmark-disable`` (CI) runs each body once on small stand-ins (1k/10,
10k/100 and 64k/16 of 64 x 64, the last on the parallel kernel).
"""

import numpy as np
import pytest

import numbaopt
from numbaopt.optim.adafactor import Adafactor

from .cases import SMALL_SIZES, set_parallel, torch
from .conftest import bench_sizes

# (name, tensors, shape of each)
FULL = (("1k/10", 10, (10, 10)), ("1M/100", 100, (100, 100)), ("16M/16", 16, (1024, 1024)))
SMALL = (("1k/10", 10, (10, 10)), ("10k/100", 100, (10, 10)), ("64k/16", 16, (64, 64)))
IMPLEMENTATIONS = ("numbaopt", "numbaopt_serial", "torch_default", "torch_forloop",
                   "torch_foreach")


def pytest_generate_tests(metafunc):
    if "adafactor_size" in metafunc.fixturenames:
        sizes = SMALL if bench_sizes(metafunc.config) is SMALL_SIZES else FULL
        metafunc.parametrize("adafactor_size", sizes, ids=[s[0] for s in sizes])


def _build(impl, tensors, shape, small):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(shape).astype(np.float32) for _ in range(tensors)]
    grads = [(0.1 * rng.standard_normal(shape)).astype(np.float32) for _ in range(tensors)]
    if impl.startswith("numbaopt"):
        params = [numbaopt.Parameter(a) for a in init]
        opt = Adafactor(params)
        for p, g in zip(params, grads):
            p.grad = g
        if impl == "numbaopt_serial":
            set_parallel(opt, False)
        elif small and tensors == 16:
            set_parallel(opt, True)   # the stand-in of 16M/16 exercises the parallel kernel
    else:
        params = [torch.nn.Parameter(torch.from_numpy(a)) for a in init]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g)
        foreach = {"torch_default": None, "torch_forloop": False, "torch_foreach": True}[impl]
        opt = torch.optim.Adafactor(params, foreach=foreach)
    for _ in range(2):   # compile, allocate the state
        opt.step()
    return opt.step


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_adafactor_step(benchmark, impl, adafactor_size):
    if impl.startswith("torch") and torch is None:
        pytest.skip("torch is not installed")
    name, tensors, shape = adafactor_size
    step = _build(impl, tensors, shape, small=adafactor_size in SMALL)
    benchmark.group = f"Adafactor float32 {name} ({tensors} x {shape[0]}x{shape[1]})"
    benchmark.extra_info["implementation"] = impl
    benchmark.extra_info["elements"] = tensors * shape[0] * shape[1]
    benchmark(step)
