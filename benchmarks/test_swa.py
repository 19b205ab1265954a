"""AveragedModel.update_parameters with an EMA: numbaopt against torch.optim.swa_utils.

1M float32 parameters in 100 equal tensors, ``multi_avg_fn=get_ema_multi_avg_fn(0.999)``,
timed after warm-up (the first update copies; every timed one averages). Rows:

- ``numbaopt_arena``: the model's parameters are one optimizer's arena, so the compiled
  pass reads that arena's span directly;
- ``numbaopt_views``: parameters in no arena, read through a typed List of views;
- ``numbaopt_serial``: ``numbaopt_arena`` with the serial kernel forced (numbaopt picks
  the threaded one from ``4 * PARALLEL_THRESHOLD`` elements); on a loaded 2-core machine
  the threaded pass can lose a time slice and this row is the steadier one;
- ``numpy``: a naive NumPy loop, ``a += w * (c - a)`` per tensor (torch's lerp formula);
- ``torch`` / ``torch_1thread``: torch's AveragedModel (``_foreach_lerp_``, on the CPU a
  loop of ``lerp_``), with torch's default threads and with one.

``--benchmark-disable`` (CI) runs each body once on 10k parameters in 100 tensors.
"""

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from numbaopt.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .cases import SMALL_SIZES, torch
from .conftest import bench_sizes

TENSORS = 100
DECAY = 0.999


def pytest_generate_tests(metafunc):
    if "numel" in metafunc.fixturenames:
        small = bench_sizes(metafunc.config) is SMALL_SIZES
        numel = 10_000 if small else 1_000_000
        metafunc.parametrize("numel", [numel], ids=[f"{numel // 1000}k/{TENSORS}"])


def _values(numel):
    rng = np.random.default_rng(0)
    per = numel // TENSORS
    return ([rng.standard_normal(per).astype(np.float32) for _ in range(TENSORS)],
            [rng.standard_normal(per).astype(np.float32) for _ in range(TENSORS)])


def _build(impl, numel):
    start, moved = _values(numel)
    if impl.startswith("numbaopt"):
        params = [numbaopt.Parameter(a) for a in start]
        if impl != "numbaopt_views":
            optim.SGD(params, lr=0.1)             # the parameters now live in its arena
        averaged = AveragedModel(params, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
        if impl == "numbaopt_serial":
            averaged.parallel_threshold = 1 << 62
        averaged.update_parameters(params)
        for p, value in zip(params, moved):
            p.data = value

        def update():
            averaged.update_parameters(params)
    elif impl == "numpy":
        averaged = [a.copy() for a in start]
        w = np.float32(1 - DECAY)

        def update():
            for a, c in zip(averaged, moved):
                a += w * (c - a)
    else:
        from torch.optim import swa_utils
        model = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(a.copy()))
                                        for a in start])
        averaged = swa_utils.AveragedModel(
            model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(DECAY))
        averaged.update_parameters(model)
        with torch.no_grad():
            for p, value in zip(model, moved):
                p.copy_(torch.from_numpy(value))

        def update():
            averaged.update_parameters(model)
    for _ in range(3):      # compile, build the plan
        update()
    return update


@pytest.mark.parametrize("impl", ["numbaopt_arena", "numbaopt_views", "numbaopt_serial",
                                  "numpy", "torch", "torch_1thread"])
def test_ema_update_parameters(benchmark, impl, numel):
    if impl.startswith("torch") and torch is None:
        pytest.skip("torch is not installed")
    threads = torch.get_num_threads() if torch is not None else None
    if impl == "torch_1thread":
        torch.set_num_threads(1)
    try:
        update = _build(impl, numel)
        benchmark.group = f"AveragedModel EMA update, float32, {numel} params in {TENSORS} tensors"
        benchmark.extra_info["implementation"] = impl
        benchmark(update)
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
