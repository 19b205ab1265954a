"""SparseAdam (torch.optim.SparseAdam): Adam on the rows a row-sparse gradient touches.

The class (torch's signature, validation, state keys), its update rule written
once for the CPU kernel and the CUDA kernel, and both backends. A step is one
``@njit`` call over every parameter: it sums duplicate rows (torch's
``coalesce()``), then updates the parameter, ``exp_avg`` and ``exp_avg_sq`` at
the touched rows only, so it costs what the gradients touch, not the size of
the arena. Gradients come as ``numbaopt.sparse.RowSparseGrad``.
"""

import math

import numpy as np
from numba import njit, prange

from ..kernels.scalar import sqrt
from ..sparse import SparseGradStage
from . import hooks as _hooks
from .arena_optimizer import ArenaOptimizer
from .optimizer import check_betas, check_flag, check_option

__all__ = ["SparseAdam"]

_INLINE = dict(error_model="numpy", inline="always")
_OPTS = dict(cache=True, error_model="numpy")

_DENSE_GRAD = "SparseAdam does not support dense gradients, please consider Adam instead"


class SparseAdam(ArenaOptimizer):
    """SparseAdam (torch.optim.SparseAdam): Adam masked to the rows a sparse gradient touches.

    For embedding tables: a gradient ``p.grad = RowSparseGrad(rows, values)``
    (``numbaopt.sparse``) lists the rows a batch looked up. Per parameter with
    a gradient, at its step ``t`` (counted only on steps where it had one),
    with ``g`` the gradient summed over duplicate rows (negated when ``maximize``),
    at the listed rows only::

        m = m + (1 - beta1) * (g - m);  v = v + (1 - beta2) * (g * g - v)
        p = p - lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)

    Other rows keep their values and their state. Dense gradients are refused
    at ``step()`` (torch's RuntimeError), before anything changes.

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float or 1-element float ndarray, default 1e-3
        An ndarray stands for torch's Tensor lr (read at every step; a float32
        one gives torch's float32 step size).
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any staged gradient value is NaN or inf.
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena lives; gradients are given as host arrays either way.

    Examples
    --------
    >>> emb = numbaopt.Parameter(rng.standard_normal((10_000, 64)).astype(np.float32))
    >>> opt = SparseAdam([emb], lr=0.01)
    >>> emb.grad = RowSparseGrad(batch_rows, grad_rows)   # (nnz,), (nnz, 64)
    >>> opt.step(); opt.zero_grad()
    """

    hyperparameters = ("lr", "betas", "eps", "maximize")
    _state_keys = ("exp_avg", "exp_avg_sq")
    _lr_low_open = True      # torch: "Invalid learning rate" unless lr > 0
    _load_defaults = {"maximize": False}
    _implementation_flags = {}
    _complex_refusal = (ValueError, "Complex params at indices {indices}: SparseAdam does not "
                                    "support complex parameters")
    # Threads pay off from 4x Adam's threshold of staged elements (64Ki): a step's rows are
    # scattered and its duplicate summing is serial. Estimated, not measured: the shared
    # 2-core machine gave no clean crossover (dense Adam's parallel kernel lost there too).
    _parallel_scale = 4

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False, *,
                 skip_nonfinite=False, device="cpu"):
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        lr = group["lr"]
        if isinstance(lr, np.ndarray):
            if lr.size != 1:
                raise ValueError("Tensor lr must be 1-element")
            if lr.dtype not in (np.float32, np.float64):
                raise ValueError(f"a Tensor lr must be float32 or float64, got {lr.dtype}")
            lr = lr.reshape(()).item()
        check_option({"lr": lr}, "lr", "Invalid learning rate", low_open=True, index=index,
                     where=where)
        check_option(group, "eps", "Invalid epsilon value", low_open=True, index=index,
                     where=where)
        check_betas(group, index, where)
        check_flag(group, "maximize", index, where)

    def _hyper_row(self, group):
        # h: lr, beta1, beta2, eps, maximize, lr is a float32 array (torch's float32 Tensor lr)
        lr = group["lr"]
        tensor32 = isinstance(lr, np.ndarray) and lr.dtype == np.float32
        lr = lr.reshape(()).item() if isinstance(lr, np.ndarray) else lr
        beta1, beta2 = group["betas"]
        return [float(lr), float(beta1), float(beta2), float(group["eps"]),
                float(group["maximize"]), float(tensor32)]

    # -- setup ---------------------------------------------------------------------
    def _after_init(self):
        self._stage = SparseGradStage(self.arena)
        self._work = None
        super()._after_init()

    def _after_add_group(self, first):
        self._stage.bind(self.arena)
        self._work = None
        super()._after_add_group(first)

    def _prepare(self, hyper):
        if self.device == "cuda":
            from numba import cuda
            self._d_hyper = cuda.to_device(hyper)
            return self._step_cuda, (hyper,), self._staged_finite
        return self._step_cpu, (hyper,), self._staged_finite

    # -- stepping ------------------------------------------------------------------
    @_hooks.runs_hooks
    def step(self, closure=None):
        """Perform one optimization step over every parameter with a sparse gradient.

        ``closure`` (optional) re-evaluates the model and returns the loss; it is
        called once, before the update. Raises RuntimeError, changing nothing,
        when a parameter has a dense gradient.
        """
        if self._hooks_on:
            return _hooks.call_with_hooks(SparseAdam.step,
                                          (self,) if closure is None else (self, closure), {})
        loss = None
        if closure is not None:
            loss = closure()
        with self._step_lock:          # save() and state_dict() in another thread wait
            if self._dirty[0] or self.arena.stale is not None:
                self._sync()
            if self.arena.has_grad.any():
                raise RuntimeError(_DENSE_GRAD)
            if self.skip_nonfinite:
                self.found_nonfinite = not self._finite()
                if self.found_nonfinite:
                    self.skipped_steps += 1
                    return None
            self._kernel(*self._args)
        return loss

    def compiled(self, sparse_rows=None):
        """A handle to step this optimizer from ``@njit`` code (``numbaopt.compiled``).

        Compiled code stages gradients with ``compiled.sparse_grad(h, i, rows, values)``.
        The stage cannot grow from compiled code: the handle has room for ``sparse_rows``
        staged rows in all (duplicates count; default: every row of every parameter, up
        to 4096, or more if the stage already holds more), and past that sparse_grad
        raises, changing nothing.
        """
        from .. import compiled
        if self.device != "cpu":
            raise NotImplementedError(
                "SparseAdam cannot be stepped from compiled code with device='cuda': a kernel "
                "launch cannot be made from CPU-compiled code")
        if self._dirty[0] or self.arena.stale is not None:
            self._sync()
        from . import _sparse_adam_compiled
        _sparse_adam_compiled.reserve(self, sparse_rows)
        return compiled.make_handle(self)

    def _handle_parts(self):
        from . import _sparse_adam_compiled
        return _sparse_adam_compiled.handle_parts(self)

    def zero_grad(self, set_to_none=True):
        """Clear the gradients: to None (default), or, with ``set_to_none=False``, to
        empty sparse gradients (torch's sparse ``zero_()``: the step still counts)."""
        stage = self._stage
        if set_to_none:
            self.arena.has_grad.fill(False)
            stage.clear_all()
        else:
            if self.arena.has_grad.any():   # dense gradients stay (and stay refused)
                self.arena.zero_grad()
            stage.empty_all()

    def _staged_finite(self):
        stage = self._stage
        return _staged_finite(stage.count, stage.vstart, stage.row_len, stage.values)

    def _workspace(self):
        """The kernels' scratch arrays, sized for the arena and the stage's capacity."""
        work, arena, stage = self._work, self.arena, self._stage
        if work is None or work.arena is not arena:
            work = self._work = _Workspace(arena, stage)
        if work.generation != stage.generation:
            work.resize(stage)
        return work

    def _step_cpu(self, hyper):
        arena, stage = self.arena, self._stage
        work = self._workspace()
        kernel = _step_parallel if stage.used_values >= self.parallel_threshold else _step_serial
        kernel(arena.data, arena.state["exp_avg"], arena.state["exp_avg_sq"], arena.step,
               arena.param_group, hyper, arena.offsets, stage.row_len, work.row_base,
               stage.count, stage.start, stage.vstart, stage.indices, stage.values,
               work.slot, work.table, work.gsum, work.coef)

    def _step_cuda(self, hyper):
        from ..kernels import cuda as kernels
        arena, stage = self.arena, self._stage
        work = self._workspace()
        rows, counts = _cuda_kernels()
        nrows, nvalues = _coalesce_all(stage.count, stage.start, stage.vstart, stage.row_len,
                                       work.row_base, arena.offsets, stage.indices,
                                       stage.values, work.slot, work.table, work.gsum)
        d_table, d_gsum = work.device_buffers(nrows, nvalues)
        tpb = int(kernels.THREADS_PER_BLOCK)
        if nrows:
            d_table[:nrows].copy_to_device(work.table[:nrows])
            if nvalues:
                d_gsum[:nvalues].copy_to_device(work.gsum[:nvalues])
            widest = int(stage.row_len[stage.count > 0].max())
            threads = max(1, min(tpb, -(-widest // 32) * 32))
            rows[min(nrows, 1 << 16), threads](
                arena.data, arena.state["exp_avg"], arena.state["exp_avg_sq"], arena.step,
                work.d_first_chunk, arena._d_group, self._d_hyper, d_table, nrows,
                work.d_row_len, d_gsum)
        # then the step counts: every chunk of a parameter with a gradient (one count each)
        np.greater_equal(stage.count, 0, out=work.active)
        work.d_active.copy_to_device(work.active)
        nchunks = arena._chunks.shape[0]
        counts[-(-nchunks // tpb), tpb](arena.step, arena._d_chunks, work.d_active)

    # -- state ---------------------------------------------------------------------
    def _param_state(self, i, group, copy, steps, scalars, buffers=None):
        out = super()._param_state(i, group, copy, steps, scalars, buffers)
        if out is not None:
            out["step"] = int(steps[i])   # torch keeps SparseAdam's step a Python int
        return out

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_work", None)
        state.pop("_d_hyper", None)
        return state

    def __setstate__(self, state):
        self._work = None
        super().__setstate__(state)


class _Workspace:
    """Scratch arrays of the step kernels, allocated once per arena and stage capacity.

    ``slot`` maps every row of every parameter to its place in ``table`` during
    a step (-1 otherwise; the kernel resets what it set), ``table`` lists the
    unique touched rows ``(param, arena offset, gsum offset, row)``, ``gsum``
    holds their summed gradients, ``coef`` each parameter's step coefficients.
    """

    def __init__(self, arena, stage):
        self.arena = arena
        n = len(arena)
        self.row_base = np.zeros(n, dtype=np.int64)
        np.cumsum(stage.num_rows[:-1], out=self.row_base[1:])
        self.slot = np.full(int(stage.num_rows.sum()), -1, dtype=np.int64)
        self.coef = np.zeros((n, 5), dtype=np.float64)
        self.active = np.zeros(n, dtype=np.bool_)
        self.generation = -1
        self.resize(stage)
        if arena.device == "cuda":
            from numba import cuda
            first = np.ones(arena._chunks.shape[0], dtype=np.bool_)
            first[1:] = arena._chunks[1:, 0] != arena._chunks[:-1, 0]
            self.d_first_chunk = cuda.to_device(np.flatnonzero(first).astype(np.int64))
            self.d_row_len = cuda.to_device(stage.row_len)
            self.d_active = cuda.to_device(self.active)
            self.d_table = self.d_gsum = None

    def resize(self, stage):
        self.table = np.zeros((stage.indices.shape[0], 4), dtype=np.int64)
        self.gsum = np.zeros(stage.values.shape[0], dtype=stage.arena_dtype)
        self.generation = stage.generation

    def device_buffers(self, nrows, nvalues):
        """Device copies of ``table`` and ``gsum`` with room for ``nrows`` and ``nvalues``."""
        from numba import cuda
        if self.d_table is None or self.d_table.shape[0] < max(nrows, 1):
            self.d_table = cuda.device_array((max(nrows, 1, self.table.shape[0]), 4), np.int64)
        if self.d_gsum is None or self.d_gsum.shape[0] < max(nvalues, 1):
            self.d_gsum = cuda.device_array(max(nvalues, 1, self.gsum.shape[0]),
                                            self.gsum.dtype)
        return self.d_table, self.d_gsum


# ------------------------------------------------------------------------------ the rule

@njit(**_INLINE)
def _coefficients(h, t):
    """``(-step_size, 1 - beta1, 1 - beta2, eps, maximize)`` in float64 at step ``t``.

    torch computes the bias corrections as Python floats; a float32 Tensor lr
    makes its step size a float32 tensor, computed in float32.
    """
    lr, beta1, beta2 = h[0], h[1], h[2]
    bias_correction1 = 1.0 - beta1 ** t
    bias_correction2 = 1.0 - beta2 ** t
    if h[5] != 0.0:
        s = np.float32(lr) * np.float32(math.sqrt(bias_correction2))
        step_size = float(s / np.float32(bias_correction1))
    else:
        step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    return -step_size, 1.0 - beta1, 1.0 - beta2, h[3], h[4]


@njit(**_INLINE)
def _update_row(first, n, stride, lo, g0, c, param, exp_avg, exp_avg_sq, grad):
    # Elements first, first + stride, ... < n of the row at arena offset lo, gradient at
    # grad[g0:]: reads grad, updates param, exp_avg and exp_avg_sq there in place.
    T = param.dtype.type
    neg_step_size, w1, w2, eps, maximize = T(c[0]), T(c[1]), T(c[2]), T(c[3]), c[4] != 0.0
    for e in range(first, n, stride):
        j = lo + e
        g = grad[g0 + e]
        if maximize:
            g = -g
        m = exp_avg[j]
        v = exp_avg_sq[j]
        # torch: old += (1 - b) * (new - old), and numer, denom from the same update values
        dm = (g - m) * w1
        dv = (g * g - v) * w2
        exp_avg[j] = m + dm
        exp_avg_sq[j] = v + dv
        param[j] = param[j] + neg_step_size * ((dm + m) / (sqrt(dv + v) + eps))


@njit(**_INLINE)
def _coalesce(count, start, vstart, row_len, row_base, offsets, indices, values, slot, table,
              gsum):
    # Reads the staged rows; writes one table row (param, arena offset, gsum offset, row)
    # per unique row of each parameter and its summed gradient into gsum (duplicates
    # summed in order of appearance, into the first). slot is all -1 before and after.
    nrows = 0
    nvalues = 0
    for i in range(count.shape[0]):
        n = count[i]
        if n <= 0:
            continue
        width = row_len[i]
        base = row_base[i]
        first = nrows
        for k in range(n):
            r = indices[start[i] + k]
            src = vstart[i] + k * width
            u = slot[base + r]
            if u < 0:
                slot[base + r] = nrows
                table[nrows, 0] = i
                table[nrows, 1] = offsets[i] + r * width
                table[nrows, 2] = nvalues
                table[nrows, 3] = r
                for e in range(width):
                    gsum[nvalues + e] = values[src + e]
                nrows += 1
                nvalues += width
            else:
                dst = table[u, 2]
                for e in range(width):
                    gsum[dst + e] += values[src + e]
        for u in range(first, nrows):
            slot[base + table[u, 3]] = -1
    return nrows, nvalues


@njit(**_INLINE)
def _count_and_coefficients(step, group, hyper, count, coef):
    # torch counts a step of every parameter with a gradient, empty ones included.
    for i in range(count.shape[0]):
        if count[i] >= 0:
            t = step[i] + 1.0
            step[i] = t
            c = _coefficients(hyper[group[i]], t)
            for q in range(5):
                coef[i, q] = c[q]


@njit(**_OPTS)
def _step_serial(param, exp_avg, exp_avg_sq, step, group, hyper, offsets, row_len, row_base,
                 count, start, vstart, indices, values, slot, table, gsum, coef):
    # The whole step: counts, coalesces the staged rows, updates the touched rows.
    _count_and_coefficients(step, group, hyper, count, coef)
    nrows, _ = _coalesce(count, start, vstart, row_len, row_base, offsets, indices, values,
                         slot, table, gsum)
    for u in range(nrows):
        i = table[u, 0]
        _update_row(np.uint64(0), np.uint64(row_len[i]), np.uint64(1), np.uint64(table[u, 1]),
                    np.uint64(table[u, 2]), coef[i], param, exp_avg, exp_avg_sq, gsum)


@njit(parallel=True, **_OPTS)
def _step_parallel(param, exp_avg, exp_avg_sq, step, group, hyper, offsets, row_len, row_base,
                   count, start, vstart, indices, values, slot, table, gsum, coef):
    # As _step_serial, with the touched rows handed out to threads (rows are disjoint).
    _count_and_coefficients(step, group, hyper, count, coef)
    nrows, _ = _coalesce(count, start, vstart, row_len, row_base, offsets, indices, values,
                         slot, table, gsum)
    for u in prange(nrows):
        i = table[u, 0]
        _update_row(np.uint64(0), np.uint64(row_len[i]), np.uint64(1), np.uint64(table[u, 1]),
                    np.uint64(table[u, 2]), coef[i], param, exp_avg, exp_avg_sq, gsum)


@njit(**_OPTS)
def _coalesce_all(count, start, vstart, row_len, row_base, offsets, indices, values, slot,
                  table, gsum):
    # The CUDA step's host half: the unique rows and their summed gradients, to upload.
    return _coalesce(count, start, vstart, row_len, row_base, offsets, indices, values, slot,
                     table, gsum)


@njit(**_OPTS)
def _staged_finite(count, vstart, row_len, values):
    # Reads the staged values of every live gradient; True when none is NaN or inf.
    bad = 0
    for i in range(count.shape[0]):
        if count[i] > 0:
            for j in range(vstart[i], vstart[i] + count[i] * row_len[i]):
                x = values[j]
                bad += (x - x) != 0
    return bad == 0


# ------------------------------------------------------------------------------ CUDA
# Templates: ``cuda``, ``coefficients`` and ``update_row`` are bound by _cuda_kernels().

def _rows_cuda(param, exp_avg, exp_avg_sq, step, first_chunk, group, hyper, table, nrows,
               row_len, gsum):
    # One block per touched row (grid-stride), its threads over the row's elements. Reads
    # the step count at the parameter's first chunk (advanced by the next launch).
    for r in range(cuda.blockIdx.x, nrows, cuda.gridDim.x):  # noqa: F821
        i = table[r, 0]
        c = coefficients(hyper[group[i]], step[first_chunk[i]] + 1.0)  # noqa: F821
        update_row(cuda.threadIdx.x, row_len[i], cuda.blockDim.x, table[r, 1],  # noqa: F821
                   table[r, 2], c, param, exp_avg, exp_avg_sq, gsum)


def _counts_cuda(step, chunks, active):
    # One thread per chunk: the GPU arena keeps one step count per chunk.
    c = cuda.grid(1)  # noqa: F821
    if c < chunks.shape[0] and active[chunks[c, 0]]:
        step[c] += 1.0


_CUDA = {}


def _cuda_kernels():
    """``(rows, counts)``: the two CUDA kernels of a step, built on first use."""
    if not _CUDA:
        from numba import cuda

        from ..kernels.cuda import device_functions
        from ..kernels.elementwise import bind
        env = device_functions({"coefficients": _coefficients.py_func,
                                "update_row": _update_row.py_func})
        env["cuda"] = cuda
        _CUDA["rows"] = cuda.jit(cache=True)(bind(_rows_cuda, env, "_rows_cuda_sparse_adam"))
        _CUDA["counts"] = cuda.jit(cache=True)(bind(_counts_cuda, {"cuda": cuda},
                                                    "_counts_cuda_sparse_adam"))
    return _CUDA["rows"], _CUDA["counts"]
