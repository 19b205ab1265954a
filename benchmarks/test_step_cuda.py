"""Step time on a GPU: numbaopt's device="cuda" arena beside torch's CUDA optimizers and a copy.

Skipped without a real GPU (numba's simulator is no place to time anything).
Each timed call synchronizes, so it times the whole step: the has-grad upload
and the one kernel launch. torch runs ``fused=True`` where it has a fused CUDA
kernel, else ``foreach=True`` (``extra_info["variant"]`` says which).
``extra_info`` records the bytes the update must move and the achieved GB/s;
``scripts/gpu_check.sh`` (``benchmarks.gpu_report``) times the issue's sizes
interleaved and prints them beside the copy's bandwidth.

Sizes: ``GPU_SIZES`` when timing; with ``--benchmark-disable`` (each body runs
once, a check that it works) the small ``SMALL_GPU_SIZES``, unless
``--bench-sizes=full`` (see ``benchmarks/conftest.py``).
"""

import numpy as np
import pytest

from .cases import OPTIMIZERS as CASES
from .cases import SIZES
from .conftest import bench_sizes
from .gpu_report import (GPU_OPTIMIZERS, build_copy, build_numbaopt, build_torch, gpu,
                         synchronize)
from .roofline import bytes_moved

try:
    import torch
except ImportError:
    torch = None

#: name -> benchmarks.cases.Spec (class, kwargs, roofline pattern)
OPTIMIZERS = {name: CASES[name] for name in GPU_OPTIMIZERS}
#: (elements, tensors): from launch-bound to bandwidth-bound.
GPU_SIZES = [(100_000, 100), (1_000_000, 100), (16_000_000, 1000), (128_000_000, 100)]
SMALL_GPU_SIZES = [(10_000, 10), (100_000, 100)]
IMPLEMENTATIONS = ("numbaopt", "torch", "copy")


def _gpu():
    """numba.cuda on a real GPU, else None (kept for callers of the old name)."""
    return gpu()


def pytest_generate_tests(metafunc):
    if "gpu_size" in metafunc.fixturenames:
        sizes = GPU_SIZES if bench_sizes(metafunc.config) == SIZES else SMALL_GPU_SIZES
        metafunc.parametrize("gpu_size", sizes, ids=[f"{n // 1000}k/{t}" for n, t in sizes])


def _synchronized(step):
    def run():
        step()
        synchronize()
    return run


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", ["float32"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_cuda(benchmark, name, dtype, gpu_size, impl):
    if gpu() is None:
        pytest.skip("needs a real CUDA GPU (numba.cuda.is_available() is False, or the "
                    "simulator is on)")
    if impl == "torch" and (torch is None or not torch.cuda.is_available()):
        pytest.skip("needs torch with CUDA")
    numel, tensors = gpu_size
    nbytes = bytes_moved(OPTIMIZERS[name].pattern, numel, np.dtype(dtype).itemsize)
    if impl == "numbaopt":
        step, _ = build_numbaopt(name, numel, tensors, dtype)
    elif impl == "torch":
        step, variant = build_torch(name, numel, tensors, dtype)
        benchmark.extra_info["variant"] = variant
    else:
        step = build_copy(nbytes)
    step = _synchronized(step)
    benchmark.group = f"cuda {name} {dtype} {numel // 1000}k/{tensors}"
    benchmark.extra_info["bytes"] = nbytes
    benchmark(step)
    if benchmark.enabled:
        benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9
