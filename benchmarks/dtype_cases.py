"""Steps over complex parameters and over several dtypes in one optimizer.

``complex_cases``: Adam on complex64 parameters against torch with complex tensors. A
complex parameter is its real pairs in the float32 arena, so its step is the float32 step
of twice the elements; torch's fused Adam refuses complex tensors, so its foreach path.

``mixed_cases``: Adam over float32 and float64 parameters in one optimizer (one arena and
one kernel call per dtype) against the two single-dtype optimizers stepped back to back.
"""

import numpy as np

import numbaopt

from .cases import torch

#: (label, label of the real pairs, complex elements, tensors)
COMPLEX_SIZES = {"full": ("16M/1000", "32M/1000", 16_000_000, 1000),
                 "small": ("64k/1000", "128k/1000", 64_000, 1000)}
#: (label, elements, tensors), half of each in float32 and half in float64
MIXED_SIZES = {"full": (("1k/10", 1_000, 10), ("16M/1000", 16_000_000, 1000)),
               "small": (("1k/10", 1_000, 10), ("64k/1000", 64_000, 1000))}


def _warm(steps, warmup):
    for step in steps.values():
        for _ in range(warmup):
            step()
    return steps


def complex_cases(size="full", warmup=2):
    """``{label: zero-argument step}`` of Adam on complex64, each warmed up."""
    name, real_name, numel, tensors = COMPLEX_SIZES[size]
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
    return _warm(out, warmup)


def mixed_cases(size="full", warmup=2):
    """``{(size label, case): step}``: Adam over float32 and float64 halves, in one optimizer
    and in two, for each size."""
    out = {}
    for name, numel, tensors in MIXED_SIZES[size]:
        rng = np.random.default_rng(0)
        n = numel // tensors
        dtypes = [np.float32, np.float64] * (tensors // 2)
        values = [rng.standard_normal(n).astype(d) for d in dtypes]
        grads = [(0.1 * rng.standard_normal(n)).astype(d) for d in dtypes]
        params = [numbaopt.Parameter(v.copy()) for v in values]
        mixed = numbaopt.optim.Adam(params, lr=1e-3)
        mixed.set_grads(grads)
        singles = []
        for dtype in (np.float32, np.float64):
            ps = [numbaopt.Parameter(v.copy()) for v in values if v.dtype == dtype]
            opt = numbaopt.optim.Adam(ps, lr=1e-3)
            opt.set_grads([g for g in grads if g.dtype == dtype])
            singles.append(opt)

        def both(a=singles[0].step, b=singles[1].step):
            a()
            b()

        out[name, "one optimizer over float32 and float64"] = mixed.step
        out[name, "float32 and float64 optimizers, back to back"] = both
        out[name, "the float32 optimizer alone"] = singles[0].step
        out[name, "the float64 optimizer alone"] = singles[1].step
    return _warm(out, warmup)
