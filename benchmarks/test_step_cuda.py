"""Step time on a GPU: numbaopt's device="cuda" arena beside torch's fused CUDA optimizers.

Skipped without a real GPU (numba's simulator is no place to time anything).
Each timed call synchronizes, so it times the whole step: the has-grad upload
and the one kernel launch. ``extra_info`` records the bytes the update must
move and the achieved GB/s; ``python -m benchmarks.gpu_report`` prints them as
fractions of the device's memory bandwidth.
"""

import numpy as np
import pytest

from .roofline import bytes_moved

try:
    import torch
except ImportError:
    torch = None

OPTIMIZERS = {"SGD_momentum": ("SGD", dict(lr=1e-3, momentum=0.9), "p,g,s->p,s"),
              "Adam": ("Adam", dict(lr=1e-3), "p,g,m,v->p,m,v"),
              "AdamW": ("AdamW", dict(lr=1e-3, weight_decay=1e-2), "p,g,m,v->p,m,v")}
#: (elements, tensors): from launch-bound to bandwidth-bound.
GPU_SIZES = [(100_000, 100), (1_000_000, 100), (16_000_000, 1000), (128_000_000, 100)]


def _gpu():
    try:
        from numba import config, cuda
    except ImportError:
        return None
    if config.ENABLE_CUDASIM or not cuda.is_available():
        return None
    return cuda


def build_numbaopt(name, numel, tensors, dtype=np.float32):
    import numbaopt
    from numbaopt import optim
    cuda = _gpu()
    cls, kwargs, _ = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    sizes = np.full(tensors, numel // tensors)
    params = [numbaopt.Parameter(rng.standard_normal(int(n)).astype(dtype)) for n in sizes]
    opt = getattr(optim, cls)(params, device="cuda", **kwargs)
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(dtype)

    def step():
        opt.step()
        cuda.synchronize()

    step()
    return step


def build_torch(name, numel, tensors):
    cls, kwargs, _ = OPTIMIZERS[name]
    params = [torch.randn(numel // tensors, device="cuda", requires_grad=True)
              for _ in range(tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = getattr(torch.optim, cls)(params, fused=True, **kwargs)

    def step():
        opt.step()
        torch.cuda.synchronize()

    step()
    return step


@pytest.mark.parametrize("impl", ["numbaopt", "torch_fused"])
@pytest.mark.parametrize("gpu_size", GPU_SIZES, ids=[f"{n // 1000}k/{t}" for n, t in GPU_SIZES])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_cuda(benchmark, name, gpu_size, impl):
    if _gpu() is None:
        pytest.skip("needs a real CUDA GPU")
    if impl == "torch_fused" and (torch is None or not torch.cuda.is_available()):
        pytest.skip("needs torch with CUDA")
    numel, tensors = gpu_size
    step = build_numbaopt(name, numel, tensors) if impl == "numbaopt" else \
        build_torch(name, numel, tensors)
    nbytes = bytes_moved(OPTIMIZERS[name][2], numel, 4)
    benchmark.group = f"cuda {name} {numel // 1000}k/{tensors}"
    benchmark.extra_info["bytes"] = nbytes
    benchmark(step)
    if benchmark.enabled:
        benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9
