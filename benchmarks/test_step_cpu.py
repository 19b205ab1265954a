"""Step time on the CPU: numbaopt, torch.optim (fused or foreach), naive NumPy and the roofline.

One benchmark group per optimizer, dtype and size, so pytest-benchmark's table
puts the four implementations of one case side by side. For ratios measured
interleaved in one run, use ``python -m benchmarks.report``.
"""

import pytest

from .cases import DTYPES, IMPLEMENTATIONS, OPTIMIZERS, build, torch


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_step(benchmark, optimizer, dtype, size, impl):
    if impl == "torch" and torch is None:
        pytest.skip("torch is not installed")
    case = build(impl, optimizer, dtype, size)
    benchmark.group = f"{optimizer} {dtype} {size.name}"
    benchmark.extra_info["implementation"] = case.label
    benchmark.extra_info["bytes"] = case.nbytes
    benchmark(case.step)
    if benchmark.enabled:
        benchmark.extra_info["GB/s"] = case.nbytes / benchmark.stats.stats.median / 1e9
