"""pytest-benchmark rows: Adam on complex64 (benchmarks/complex_cases.py)."""

import pytest

from .complex_cases import cases
from .conftest import bench_sizes
from .cases import SIZES


@pytest.fixture(scope="module")
def steps(request):
    full = bench_sizes(request.config) is SIZES
    return cases("full" if full else "small")


@pytest.mark.parametrize("which", ["numbaopt complex64", "numbaopt float32", "torch"])
def test_adam_complex64(benchmark, steps, which):
    label = next((k for k in steps if k.startswith(which.split()[0]) and
                  which.split()[-1] in k), None)
    if label is None:
        pytest.skip("torch is not installed")
    benchmark.group = "Adam complex64"
    benchmark.extra_info["case"] = label
    benchmark(steps[label])
