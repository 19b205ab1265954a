"""pytest-benchmark rows for the compiled loop (benchmarks/compiled_loop.py): per 1000 steps."""

import pytest

from .compiled_loop import cases

CASES = cases()


@pytest.mark.parametrize("label", list(CASES))
def test_compiled_loop(benchmark, label):
    benchmark.group = "Adam float32 1k/10, 1000 steps"
    benchmark(CASES[label])
