"""Adafactor's CUDA backend (device="cuda"): its kernels, and its state and launches on the GPU.

The same passes as the CPU kernels (``_adafactor_kernels``, whose scalar helpers
they share), kept apart as the one part of ``numbaopt.optim.adafactor`` that needs numba.cuda.
"""

import numpy as np

from ..kernels.elementwise import _source_hash, bind
from ..kernels.scalar import lerp
from ._adafactor_kernels import (_clamp_min, _inv_root, _lerp_weights, _mean_square, _schedule,
                                 _step_coefficients)

# ---------------------------------------------------------------------- CUDA kernels
# Plain functions, compiled by _cuda_kernels() with numba.cuda (imported only for
# device="cuda"), the scalar helpers of _adafactor_kernels becoming device functions.
# The passes are the CPU kernel's, one launch each: a thread per parameter for the
# schedule and the step size, a block per task (or matrix) for the others, its threads
# striding through the task's elements and adding up in shared memory, in a fixed order.

#: Most threads per block a launch may use, and the shared memory of the reductions.
MAX_THREADS = 1024
SHARED = 2 * MAX_THREADS


def _block_sums(a, b, shared):
    # The float64 sums of every thread's a and b, in thread order, for thread 0 (two
    # barriers whatever the block size: numba's simulator pays milliseconds for each).
    t = cuda.threadIdx.x   # noqa: F821 (bound by _cuda_kernels)
    n = cuda.blockDim.x   # noqa: F821
    shared[t] = a
    shared[n + t] = b
    cuda.syncthreads()   # noqa: F821
    sa = 0.0
    sb = 0.0
    if t == 0:
        for j in range(n):
            sa += shared[j]
            sb += shared[n + j]
    cuda.syncthreads()   # noqa: F821  (shared is free again)
    return sa, sb


def _cuda_schedule(has_grad, step, chunk_first, group, hyper, coef):
    # A thread per parameter: advances its step count (every chunk of it: the device
    # arena keeps one per chunk) and writes its lerp weight and rho into coef.
    i = cuda.grid(1)   # noqa: F821
    if i < has_grad.shape[0] and has_grad[i]:
        t = step[chunk_first[i]] + 1.0
        for c in range(chunk_first[i], chunk_first[i + 1]):
            step[c] = t
        w, rho = _schedule(hyper[group[i]], t)
        coef[i, 0] = w
        coef[i, 1] = rho


def _cuda_reduce(param, grad, has_grad, group, hyper, ptab, tasks, row_var, variance, colpart,
                 psq, usq, coef):
    # A block per task: _reduce_task's sums and writes.
    shared = cuda.shared.array(SHARED, numba_float64)   # noqa: F821
    T = param.dtype.type
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x   # noqa: F821
    for k in range(cuda.blockIdx.x, tasks.shape[0], cuda.gridDim.x):   # noqa: F821
        i = tasks[k, 0]
        if not has_grad[i]:
            continue
        lo, hi = tasks[k, 6], tasks[k, 7]
        ps = 0.0
        for j in range(lo + tid, hi, nt):
            x = param[j]
            ps += x * x
        us = 0.0
        w, one_minus_w, small = _lerp_weights(coef[i, 0], T)
        if ptab[i, 0]:
            rows, cols, roff, start = ptab[i, 2], ptab[i, 3], ptab[i, 4], ptab[i, 7]
            b_lo, r_lo, r_hi = tasks[k, 1], tasks[k, 3], tasks[k, 4]
            for b in range(b_lo, tasks[k, 2]):
                # a thread per column for the column sums (coalesced), per row for the
                # row sums: no barrier
                cp = tasks[k, 5] + (b - b_lo) * cols
                for c in range(tid, cols, nt):
                    acc = 0.0
                    for r in range(r_lo, r_hi):
                        x = grad[start + (b * rows + r) * cols + c]
                        acc += x * x
                    colpart[cp + c] = acc
                for r in range(r_lo + tid, r_hi, nt):
                    base = start + (b * rows + r) * cols
                    acc = 0.0
                    for c in range(cols):
                        x = grad[base + c]
                        acc += x * x
                    j = roff + b * rows + r
                    row_var[j] = lerp(row_var[j], _mean_square(acc, cols, T), w, one_minus_w,
                                      small)
        else:
            h = hyper[group[i]]
            floor, one = T(h[2] * h[2]), T(1.0)
            shift = ptab[i, 4] - ptab[i, 7]
            for j in range(lo + tid, hi, nt):
                x = grad[j]
                v = lerp(variance[shift + j], x * x, w, one_minus_w, small)
                variance[shift + j] = v
                u = _inv_root(v, floor, one) * x
                us += u * u
        ps, us = _block_sums(ps, us, shared)
        if tid == 0:
            psq[k] = ps
            if not ptab[i, 0]:
                usq[k] = us


def _cuda_matrix(param, has_grad, group, hyper, ptab, mats, row_var, col_var, colpart, rmean,
                 coef):
    # A block per matrix: _reduce_matrix's column factor and clamped row-factor mean.
    T = param.dtype.type
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x   # noqa: F821
    for m in range(cuda.blockIdx.x, mats.shape[0], cuda.gridDim.x):   # noqa: F821
        i = mats[m, 0]
        if not has_grad[i]:
            continue
        b, nq, cp = mats[m, 1], mats[m, 2], mats[m, 3]
        rows, cols = ptab[i, 2], ptab[i, 3]
        w, one_minus_w, small = _lerp_weights(coef[i, 0], T)
        coff = ptab[i, 5] + b * cols
        for c in range(tid, cols, nt):
            s = 0.0
            for q in range(nq):
                s += colpart[cp + q * cols + c]
            col_var[coff + c] = lerp(col_var[coff + c], _mean_square(s, rows, T), w,
                                     one_minus_w, small)
        if tid == 0:   # the mean of the row factor, in the CPU kernel's order
            roff = ptab[i, 4] + b * rows
            s = 0.0
            for r in range(roff, roff + rows):
                s += row_var[r]
            rmean[m] = _clamp_min(T(s) / T(rows), T(hyper[group[i]][2]))


def _cuda_update(param, grad, j, i, k, ptab, tasks, row_var, col_var, rmean, floor, one):
    # Element j (an arena index in factored task k of parameter i) of the update U.
    rows, cols = ptab[i, 2], ptab[i, 3]
    off = j - ptab[i, 7]
    b = off // (rows * cols)
    r = off % (rows * cols) // cols
    c = off % cols
    v = row_var[ptab[i, 4] + b * rows + r] * col_var[ptab[i, 5] + b * cols + c] \
        / rmean[tasks[k, 8] + b - tasks[k, 1]]
    return _inv_root(v, floor, one) * grad[j]


def _cuda_update_norm(param, grad, has_grad, group, hyper, ptab, tasks, row_var, col_var,
                      rmean, usq):
    # A block per factored task: usq[k], its update's sum of squares.
    shared = cuda.shared.array(SHARED, numba_float64)   # noqa: F821
    T = param.dtype.type
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x   # noqa: F821
    for k in range(cuda.blockIdx.x, tasks.shape[0], cuda.gridDim.x):   # noqa: F821
        i = tasks[k, 0]
        if not has_grad[i] or not ptab[i, 0]:
            continue
        h = hyper[group[i]]
        floor, one = T(h[2] * h[2]), T(1.0)
        s = 0.0
        for j in range(tasks[k, 6] + tid, tasks[k, 7], nt):
            u = _cuda_update(param, grad, j, i, k, ptab, tasks, row_var, col_var, rmean, floor,
                             one)
            s += u * u
        s, _ = _block_sums(s, 0.0, shared)
        if tid == 0:
            usq[k] = s


def _cuda_coefficients(param, has_grad, group, hyper, ptab, task_first, psq, usq, coef):
    # A thread per parameter: its step size and decay (coef[i, 2:4]) from its tasks' sums.
    T = param.dtype.type
    i = cuda.grid(1)   # noqa: F821
    if i < has_grad.shape[0] and has_grad[i]:
        psum = 0.0
        usum = 0.0
        for k in range(task_first[i], task_first[i + 1]):
            psum += psq[k]
            usum += usq[k]
        a, decay = _step_coefficients(hyper[group[i]], coef[i, 1], ptab[i, 6], psum, usum, T)
        coef[i, 2] = a
        coef[i, 3] = decay


def _cuda_apply(param, grad, has_grad, group, hyper, ptab, tasks, row_var, col_var, variance,
                rmean, coef):
    # A block per task: p = p * (1 - lr * weight_decay) + a * U.
    T = param.dtype.type
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x   # noqa: F821
    for k in range(cuda.blockIdx.x, tasks.shape[0], cuda.gridDim.x):   # noqa: F821
        i = tasks[k, 0]
        if not has_grad[i]:
            continue
        h = hyper[group[i]]
        floor, one = T(h[2] * h[2]), T(1.0)
        a, decay = T(coef[i, 2]), T(coef[i, 3])
        shift = ptab[i, 4] - ptab[i, 7]
        for j in range(tasks[k, 6] + tid, tasks[k, 7], nt):
            if ptab[i, 0]:
                u = _cuda_update(param, grad, j, i, k, ptab, tasks, row_var, col_var, rmean,
                                 floor, one)
            else:
                u = _inv_root(variance[shift + j], floor, one) * grad[j]
            param[j] = param[j] * decay + a * u


_CUDA_TEMPLATES = ("_cuda_schedule", "_cuda_reduce", "_cuda_matrix", "_cuda_update_norm",
                   "_cuda_coefficients", "_cuda_apply")
_cuda = None


def _cuda_kernels():
    """``{name: kernel}`` of the templates above, for this process's CUDA target."""
    global _cuda
    if _cuda is None:
        from numba import config, cuda, float64

        from ..kernels import scalar
        from ..kernels.elementwise import python_twin, twin
        if config.ENABLE_CUDASIM:
            # the simulator runs kernels as Python: NumPy twins keep float32 in float32
            prepare, compile_ = python_twin, cuda.jit
            device = cuda.jit(device=True)
        else:
            device = cuda.jit(device=True, inline="always")
            prepare = lambda f: twin(f, scalar.CUDA_TWINS, device)   # noqa: E731
            compile_ = cuda.jit(cache=True)
        tag = _source_hash([globals()[name] for name in _CUDA_TEMPLATES])
        env = {"cuda": cuda, "numba_float64": float64}
        env["_block_sums"] = device(bind(_block_sums, env, f"_block_sums_{tag}"))
        env["_cuda_update"] = device(prepare(bind(_cuda_update, env, f"_cuda_update_{tag}")))
        kernels = {}
        for name in _CUDA_TEMPLATES:
            kernels[name] = compile_(prepare(bind(globals()[name], env, f"{name}_{tag}")))
        _cuda = kernels
    return _cuda


class _DeviceBuffers:
    """``_HostBuffers`` in GPU memory, with the launches of one step (device="cuda")."""

    def __init__(self, arena, layout, old=None):
        from numba import cuda
        dtype = arena.dtype
        self.state = tuple(cuda.to_device(np.zeros(layout.sizes[name], dtype=dtype))
                           for name in ("row_var", "col_var", "variance"))
        if old is not None:
            for new, prev in zip(self.state, old.state):
                if prev.size:
                    new[:prev.size].copy_to_device(prev)
        chunk_first = np.searchsorted(arena._chunks[:, 0], np.arange(len(arena) + 1))
        self.chunk_first = cuda.to_device(chunk_first.astype(np.int64))
        self.tables = tuple(cuda.to_device(t) for t in
                            (layout.ptab, layout.tasks, layout.task_first, layout.mats))
        ntasks, nmats, nparams = layout.tasks.shape[0], layout.mats.shape[0], len(arena)
        self.workspace = tuple(cuda.to_device(w) for w in (
            np.zeros(layout.colpart, dtype=np.float64), np.zeros(ntasks, dtype=np.float64),
            np.zeros(ntasks, dtype=np.float64), np.zeros(nmats, dtype=dtype),
            np.zeros((nparams, 4), dtype=np.float64)))
        self.layout = layout

    def piece(self, name, lo, hi, shape, copy):
        buf = self.state[("row_var", "col_var", "variance").index(name)]
        if copy:
            host = buf[lo:hi].copy_to_host() if hi > lo else np.zeros(0, buf.dtype)
            return np.asarray(host).reshape(shape)
        return buf[lo:hi].reshape(shape)

    def load(self, staged):
        for name, buf in zip(("row_var", "col_var", "variance"), self.state):
            if buf.size:
                buf.copy_to_device(staged[name])

    def prepare(self, optimizer, hyper):
        from ..kernels import cuda as launch
        arena = optimizer.arena
        from numba import cuda
        k = _cuda_kernels()
        d_has_grad, d_group = arena._d_has_grad, arena._d_group
        d_hyper = cuda.to_device(hyper)
        ptab, tasks, task_first, mats = self.tables
        row_var, col_var, variance = self.state
        colpart, psq, usq, rmean, coef = self.workspace
        param, grad, step = arena.data, arena.grad, arena.step
        has_grad = arena.has_grad
        nparams, ntasks, nmats = len(arena), tasks.shape[0], mats.shape[0]
        chunk_first = self.chunk_first
        empty = self.layout.empty

        def step_fn():
            if empty.any() and np.any(has_grad & empty):
                raise ZeroDivisionError("float division by zero (a parameter with no elements "
                                        "has a gradient: torch's Adafactor divides by "
                                        "sqrt(numel))")
            tpb = min(int(launch.THREADS_PER_BLOCK), MAX_THREADS)
            d_has_grad.copy_to_device(has_grad)
            per_param = (-(-nparams // tpb), tpb)
            k["_cuda_schedule"][per_param](d_has_grad, step, chunk_first, d_group, d_hyper, coef)
            if ntasks:
                k["_cuda_reduce"][ntasks, tpb](param, grad, d_has_grad, d_group, d_hyper, ptab,
                                               tasks, row_var, variance, colpart, psq, usq, coef)
            if nmats:
                k["_cuda_matrix"][nmats, tpb](param, d_has_grad, d_group, d_hyper, ptab, mats,
                                              row_var, col_var, colpart, rmean, coef)
            if ntasks:
                k["_cuda_update_norm"][ntasks, tpb](param, grad, d_has_grad, d_group, d_hyper,
                                                    ptab, tasks, row_var, col_var, rmean, usq)
            k["_cuda_coefficients"][per_param](param, d_has_grad, d_group, d_hyper, ptab,
                                               task_first, psq, usq, coef)
            if ntasks:
                k["_cuda_apply"][ntasks, tpb](param, grad, d_has_grad, d_group, d_hyper, ptab,
                                              tasks, row_var, col_var, variance, rmean, coef)

        def finite():
            d_has_grad.copy_to_device(has_grad)
            return launch.grads_finite(grad, d_has_grad, arena._d_chunks)

        return step_fn, (), finite
