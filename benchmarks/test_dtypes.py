"""pytest-benchmark rows: complex64 parameters and several dtypes in one optimizer
(benchmarks/dtype_cases.py)."""

import pytest

from .cases import SIZES
from .conftest import bench_sizes
from .dtype_cases import MIXED_SIZES, complex_cases, mixed_cases


def _size(config):
    return "full" if bench_sizes(config) is SIZES else "small"


@pytest.fixture(scope="module")
def complex_steps(request):
    return complex_cases(_size(request.config))


@pytest.fixture(scope="module")
def mixed_steps(request):
    return mixed_cases(_size(request.config))


@pytest.mark.parametrize("which", ["numbaopt Adam complex64", "numbaopt Adam float32",
                                   "torch Adam complex64"])
def test_adam_complex64(benchmark, complex_steps, which):
    label = next((k for k in complex_steps if k.startswith(which)), None)
    if label is None:
        pytest.skip("torch is not installed")
    benchmark.group = "Adam complex64"
    benchmark.extra_info["case"] = label
    benchmark(complex_steps[label])


@pytest.mark.parametrize("model", [0, 1], ids=["small model", "large model"])
@pytest.mark.parametrize("case", ["one optimizer over float32 and float64",
                                  "float32 and float64 optimizers, back to back"])
def test_adam_mixed_dtypes(benchmark, request, mixed_steps, model, case):
    name = MIXED_SIZES[_size(request.config)][model][0]
    benchmark.group = f"Adam float32 + float64 {name}"
    benchmark(mixed_steps[name, case])
