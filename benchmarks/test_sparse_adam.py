"""SparseAdam on an embedding table: numbaopt against torch.optim.SparseAdam.

A float32 table of ``rows x 64``; each step a batch touches ``TOUCHED`` rows
(drawn with replacement, so with duplicates). The timed call assigns the
step's gradient (``p.grad = RowSparseGrad(...)``, torch: ``t.grad = sparse COO
tensor``) and steps, cycling through 8 pre-drawn gradients. One group holds
both implementations at 100k and 1M rows: a step costs what it touches, so
numbaopt's row for 1M rows should read like its row for 100k. torch runs with
its default threads (``torch``) and with one (``torch_1thread``), since
numbaopt's step at this size is serial.

``--benchmark-disable`` (CI) runs each body once on small stand-ins (2k and
20k rows, 100 touched).
"""

import numpy as np
import pytest

import numbaopt
from numbaopt.optim.sparse_adam import SparseAdam
from numbaopt.sparse import RowSparseGrad

from .cases import SMALL_SIZES, torch
from .conftest import bench_sizes

WIDTH = 64
FULL = {"rows": (100_000, 1_000_000), "touched": 1000}
SMALL = {"rows": (2_000, 20_000), "touched": 100}


def pytest_generate_tests(metafunc):
    if "rows" in metafunc.fixturenames:
        small = bench_sizes(metafunc.config) is SMALL_SIZES
        sizes = SMALL if small else FULL
        metafunc.parametrize("rows", sizes["rows"], ids=[f"{r // 1000}k" for r in sizes["rows"]])
        metafunc.parametrize("touched", [sizes["touched"]], ids=[f"{sizes['touched']}touched"])


def _build(impl, rows, touched):
    rng = np.random.default_rng(0)
    init = rng.standard_normal((rows, WIDTH)).astype(np.float32)
    grads = [(rng.integers(0, rows, touched), rng.standard_normal((touched, WIDTH),
                                                                  dtype=np.float32))
             for _ in range(8)]
    if impl == "numbaopt":
        p = numbaopt.Parameter(init)
        opt = SparseAdam([p], lr=1e-3)
        staged = [RowSparseGrad(i, v) for i, v in grads]

        def assign(k):
            p.grad = staged[k]
    else:
        t = torch.tensor(init, requires_grad=True)
        opt = torch.optim.SparseAdam([t], lr=1e-3)
        staged = [torch.sparse_coo_tensor(torch.tensor(i).reshape(1, -1), torch.tensor(v),
                                          (rows, WIDTH), check_invariants=False)
                  for i, v in grads]

        def assign(k):
            t.grad = staged[k]
    state = {"k": 0}

    def step():
        k = state["k"] = (state["k"] + 1) % 8
        assign(k)
        opt.step()

    for _ in range(3):   # compile, allocate the state and the stage's buffers
        step()
    return step


@pytest.mark.parametrize("impl", ["numbaopt", "torch", "torch_1thread"])
def test_sparse_adam_step(benchmark, impl, rows, touched):
    if impl != "numbaopt" and torch is None:
        pytest.skip("torch is not installed")
    threads = torch.get_num_threads() if torch is not None else None
    if impl == "torch_1thread":
        torch.set_num_threads(1)   # numbaopt's step at this size is serial: one thread each
    try:
        step = _build(impl, rows, touched)
        benchmark.group = f"SparseAdam float32 x{WIDTH}, {touched} rows touched"
        benchmark.extra_info["implementation"] = impl
        benchmark.extra_info["table rows"] = rows
        benchmark(step)
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
