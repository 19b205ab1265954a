"""pytest-benchmark rows for the compiled loop (benchmarks/compiled_loop.py): per 1000 steps."""

import pytest

from .compiled_loop import cases, mixed_cases, sparse_cases

CASES = cases()
MIXED = mixed_cases()
SPARSE = sparse_cases()


@pytest.mark.parametrize("label", list(CASES))
def test_compiled_loop(benchmark, label):
    benchmark.group = "Adam float32 1k/10, 1000 steps"
    benchmark(CASES[label])


@pytest.mark.parametrize("label", list(SPARSE))
def test_compiled_sparse_loop(benchmark, label):
    benchmark.group = "SparseAdam float32 10000x64, 32 rows a step, 1000 steps"
    benchmark(SPARSE[label])


@pytest.mark.parametrize("label", list(MIXED))
def test_compiled_mixed_loop(benchmark, label):
    benchmark.group = "Adam float32 + float64 1k/10, 1000 steps"
    benchmark(MIXED[label])
