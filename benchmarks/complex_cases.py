"""Adam on complex64 parameters: numbaopt against torch with complex tensors.

A complex parameter is its real pairs in the float32 arena, so its step is the float32
step of twice the elements; the rows show that, and torch's complex step (torch's fused
Adam refuses complex tensors, so its foreach path).
"""

import numpy as np

import numbaopt

from .cases import torch

#: (label, complex elements, tensors): the issue's size, and a stand-in for quick runs
SIZES = {"full": ("16M/1000", "32M/1000", 16_000_000, 1000),
         "small": ("64k/1000", "128k/1000", 64_000, 1000)}


def cases(size="full", warmup=2):
    """``{label: zero-argument step}``, each warmed up."""
    name, real_name, numel, tensors = SIZES[size]
    rng = np.random.default_rng(0)
    n = numel // tensors
    values = [(rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
              for _ in range(tensors)]
    grads = [(0.1 * (rng.standard_normal(n) + 1j * rng.standard_normal(n))).astype(np.complex64)
             for _ in range(tensors)]
    out = {}
    params = [numbaopt.Parameter(v.copy()) for v in values]
    opt = numbaopt.optim.Adam(params, lr=1e-3)
    opt.set_grads(grads)
    out[f"numbaopt Adam complex64 {name}"] = opt.step
    reals = [numbaopt.Parameter(v.view(np.float32).copy()) for v in values]
    ropt = numbaopt.optim.Adam(reals, lr=1e-3)
    ropt.set_grads([g.view(np.float32) for g in grads])
    out[f"numbaopt Adam float32, the same reals ({real_name})"] = ropt.step
    if torch is not None:
        tparams = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
        for t, g in zip(tparams, grads):
            t.grad = torch.from_numpy(g.copy())
        topt = torch.optim.Adam(tparams, lr=1e-3, foreach=True)
        out[f"torch Adam complex64 {name} (foreach)"] = topt.step
    for step in out.values():
        for _ in range(warmup):
            step()
    return out
