"""Threads: serial against parallel kernel by arena size, and numba.set_num_threads.

The crossover of the serial and the parallel kernel is where
``numbaopt.optim.optimizer.PARALLEL_THRESHOLD`` belongs; ``python -m
benchmarks.report --sections threshold`` measures it interleaved and says where.
"""

import numba
import pytest

from .cases import SIZES, SMALL_SIZES, Size, build
from .conftest import bench_sizes

# One tensor per 4096 elements, as in a model of many small layers.
_CROSSOVER_EXPONENTS = (10, 12, 14, 16, 18, 20, 22)


def pytest_generate_tests(metafunc):
    if "exponent" in metafunc.fixturenames:
        small = bench_sizes(metafunc.config) is SMALL_SIZES
        exps = [e for e in _CROSSOVER_EXPONENTS if not small or e <= 14]
        metafunc.parametrize("exponent", exps, ids=[f"2^{e}" for e in exps])


@pytest.mark.parametrize("kernel", ["serial", "parallel"])
@pytest.mark.parametrize("optimizer,dtype", [("SGD", "float32"), ("Adam", "float32"),
                                             ("Adam", "float64")])
def test_serial_vs_parallel(benchmark, optimizer, dtype, exponent, kernel):
    n = 1 << exponent
    size = Size(f"2^{exponent}", n, max(1, n // 4096), parallel=kernel == "parallel")
    case = build("numbaopt", optimizer, dtype, size)
    benchmark.group = f"threshold {optimizer} {dtype} 2^{exponent}"
    benchmark(case.step)


@pytest.mark.parametrize("threads", ["1", "all"])
def test_num_threads(benchmark, request, threads):
    full = bench_sizes(request.config) is SIZES
    size = (SIZES[3] if full else SMALL_SIZES[3])._replace(parallel=True)
    case = build("numbaopt", "Adam", "float32", size)
    before = numba.get_num_threads()
    numba.set_num_threads(1 if threads == "1" else numba.config.NUMBA_NUM_THREADS)
    try:
        benchmark.group = f"set_num_threads Adam float32 {size.name}"
        benchmark.extra_info["threads"] = numba.get_num_threads()
        benchmark(case.step)
    finally:
        numba.set_num_threads(before)
