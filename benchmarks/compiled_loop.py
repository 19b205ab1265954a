"""The optimizer's share of a step taken inside a compiled loop (numbaopt.compiled).

Three ways to run N steps of Adam on 1k parameters in 10 tensors, gradients already
in the arena: ``compiled.step(h)`` in an ``@njit`` loop; the optimizer's kernel
called directly in an ``@njit`` loop (the kernel's own work: the floor); and
``opt.step()`` from a Python loop. torch's fused Adam from Python for scale.
The first two should differ by ~0.01 us: the compiled step adds two flag reads
and a counter to the kernel's call, and no reference counting (numbaopt/compiled.py).

``sparse_cases()``: SparseAdam on an embedding table, each step staging a batch's rows
(``compiled.sparse_grad`` against ``p.grad = RowSparseGrad(...)``), stepping and clearing.
"""

import numpy as np
from numba import njit

import numbaopt
from numbaopt import compiled, optim
from numbaopt.sparse import RowSparseGrad

from .cases import torch

STEPS = 1000


@njit(cache=True)
def compiled_steps(h, n):
    for _ in range(n):
        compiled.step(h)


_loops = {}


def kernel_loop(kernel, n_args):
    """An @njit loop calling ``kernel`` with ``n_args`` arrays: the kernel's own work."""
    key = (kernel, n_args)
    if key not in _loops:
        names = ", ".join(f"a{k}" for k in range(n_args))
        env = {"kernel": kernel}
        exec(f"def loop(n, {names}):\n    for _ in range(n):\n        kernel({names})\n", env)
        _loops[key] = njit(env["loop"])
    return _loops[key]


def cases(numel=1000, tensors=10, name="Adam"):
    """``{label: callable running STEPS steps}`` for one optimizer and size."""
    rng = np.random.default_rng(0)
    params = [numbaopt.Parameter(rng.standard_normal(numel // tensors).astype(np.float32))
              for _ in range(tensors)]
    opt = getattr(optim, name)(params, lr=1e-4)
    opt.set_grads([np.full(p.shape, 1e-3, np.float32) for p in params])
    opt.step()
    handle = opt.compiled()
    loop = kernel_loop(opt._kernel, len(opt._args))
    args = opt._args
    compiled_steps(handle, 1)
    loop(1, *args)

    def python_loop():
        for _ in range(STEPS):
            opt.step()

    out = {"compiled.step(h) in an @njit loop": lambda: compiled_steps(handle, STEPS),
           "the kernel alone in an @njit loop": lambda: loop(STEPS, *args),
           "opt.step() in a Python loop": python_loop}
    if torch is not None:
        ts = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
        for t in ts:
            t.grad = torch.full_like(t, 1e-3)
        topt = getattr(torch.optim, name)(ts, lr=1e-4, fused=True)
        topt.step()

        def torch_loop():
            for _ in range(STEPS):
                topt.step()

        out["torch (fused) opt.step() in a Python loop"] = torch_loop
    return out


def mixed_cases(numel=1000, tensors=10, name="Adam"):
    """``{label: callable running STEPS steps}`` for one optimizer over float32 and float64
    (half the tensors each): its handle steps two lanes, each a kernel call."""
    rng = np.random.default_rng(0)
    params = [numbaopt.Parameter(rng.standard_normal(numel // tensors).astype(
        np.float32 if k % 2 == 0 else np.float64)) for k in range(tensors)]
    opt = getattr(optim, name)(params, lr=1e-4)
    opt.set_grads([np.full(p.shape, 1e-3, p.dtype) for p in params])
    opt.step()
    handle = opt.compiled()
    lanes = opt._lanes
    sizes = [len(lane._args) for lane in lanes]
    names = [[f"a{k}_{j}" for j in range(n)] for k, n in enumerate(sizes)]
    env = {f"kernel{k}": lane._kernel for k, lane in enumerate(lanes)}
    flat = ", ".join(a for group in names for a in group)
    calls = "".join(f"        kernel{k}({', '.join(group)})\n" for k, group in enumerate(names))
    exec(f"def loop(n, {flat}):\n    for _ in range(n):\n{calls}", env)
    loop = njit(env["loop"])
    args = [a for lane in lanes for a in lane._args]
    compiled_steps(handle, 1)
    loop(1, *args)

    def python_loop():
        for _ in range(STEPS):
            opt.step()

    return {"compiled.step(h) in an @njit loop": lambda: compiled_steps(handle, STEPS),
            "the two lanes' kernels alone in an @njit loop": lambda: loop(STEPS, *args),
            "opt.step() in a Python loop": python_loop}


@njit(cache=True)
def sparse_steps(h, rows, values, n):
    for _ in range(n):
        compiled.sparse_grad(h, 0, rows, values)
        compiled.step(h)
        compiled.zero_grad(h)


def sparse_cases(num_rows=10_000, dim=64, batch=32):
    """``{label: callable running STEPS steps}`` of SparseAdam, ``batch`` rows a step."""
    rng = np.random.default_rng(0)
    table = numbaopt.Parameter(rng.standard_normal((num_rows, dim)).astype(np.float32))
    opt = optim.SparseAdam([table], lr=1e-4)
    rows = rng.integers(0, num_rows, batch)
    values = np.full((batch, dim), 1e-3, np.float32)
    handle = opt.compiled()
    sparse_steps(handle, rows, values, 1)
    grad = RowSparseGrad(rows, values)

    def python_loop():
        for _ in range(STEPS):
            table.grad = grad
            opt.step()
            opt.zero_grad()

    out = {"sparse_grad + step in an @njit loop": lambda: sparse_steps(handle, rows, values,
                                                                        STEPS),
           "p.grad = RowSparseGrad + opt.step() in a Python loop": python_loop}
    if torch is not None:
        t = torch.tensor(table.data.copy(), requires_grad=True)
        tgrad = torch.sparse_coo_tensor(torch.from_numpy(rows)[None], torch.from_numpy(values),
                                        (num_rows, dim), check_invariants=False)
        topt = torch.optim.SparseAdam([t], lr=1e-4)

        def torch_loop():
            for _ in range(STEPS):
                t.grad = tgrad
                topt.step()
                topt.zero_grad()

        out["torch SparseAdam: p.grad = sparse + opt.step()"] = torch_loop
    return out
