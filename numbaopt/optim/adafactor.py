"""Adafactor (torch.optim.Adafactor): factored second moments, one compiled call per step.

A parameter of 2 or more dimensions keeps its second moment as a row factor
(the mean of ``g * g`` over the last dimension) and a column factor (the mean
over the second-to-last), the leading dimensions being a batch of matrices; a
0-d or 1-d parameter keeps a full ``variance``. Those buffers are not shaped
like the arena, so this module keeps them in its own flat buffers (``row_var``,
``col_var``, ``variance``), placed parameter by parameter by ``_Layout``.

Shapes are static, so the per-parameter reductions (row and column means, the
RMS of the parameter and of its update) are driven by tables built once:

- ``ptab[i]``: ``(factored, batch, rows, cols, var_offset, col_offset, numel, start)``;
- ``tasks[k]``: ``(param, b_lo, b_hi, r_lo, r_hi, colpart, lo, hi, matrix)``, a piece
  of one parameter: whole matrices ``b_lo:b_hi`` (small matrices), rows
  ``r_lo:r_hi`` of matrix ``b_lo`` (large ones), or elements ``lo:hi`` of a
  vector; ``lo:hi`` are its arena elements in every case;
- ``mats[m]``: ``(param, b, ntasks, colpart)``, one matrix of a factored parameter
  and where its tasks left their partial column sums.

A step is one call of ``_adafactor_step``: the step counts and schedules, then
four passes (``_passes``, serial or ``prange`` over tasks, one source compiled
twice) around the step sizes: per task, the parameter's sum of squares, the row
factor and partial column sums (a vector's variance and its update's sum of
squares); per matrix, the column factor and the mean of the row factor; per
task, the update's sum of squares; then, per parameter, the step size; last, per
task, the update. The update is recomputed where it is applied rather than
stored, so the workspace stays small (a float64 per task, per matrix and per
partial column sum). The CUDA kernels (below) make the same passes, one launch
each.

Rounding follows torch's ``_single_tensor_adafactor``: hyperparameter scalars
are Python floats (float64 here) cast to the dtype where they meet tensors; the
norms torch takes in the dtype are squared in the dtype, summed in float64 and
cast back before their square root. Sums of squares are reassociated (see
``_REDUCE_FASTMATH``), so they agree with torch's to the dtype's rounding, not
bit for bit.
"""

import math
from collections.abc import Mapping

import numpy as np
from numba import njit, prange

from ..kernels.elementwise import _source_hash, bind
from ..kernels.finite import grads_finite, grads_finite_parallel
from ..kernels.scalar import lerp, sqrt
from .arena_optimizer import ArenaOptimizer, _scalar
from .optimizer import _copy_value, check_flag, check_implementation_flags, check_option, hyper_float

__all__ = ["Adafactor"]

#: Largest number of elements in one task of a factored parameter (several small
#: matrices, or rows of a large one). 16M elements in 1024 x 1024 matrices make 256.
FACTORED_TASK = 1 << 16
#: Fewest rows in a task of a large matrix: bounds the partial column sums to an
#: eighth of the parameter, whatever its shape.
MIN_TASK_ROWS = 8
#: Elements in one task of a 0-d or 1-d parameter (the arena's chunk).
VECTOR_TASK = 1 << 13
#: Columns of a row whose update is computed into the scratch buffer at once.
SEGMENT = 1 << 11

#: The one fastmath flag, on the sum-of-squares loops only: ``reassoc`` lets LLVM
#: vectorize the float64 sum (the order of the additions is all it changes; NaN and
#: inf propagate as before, and no other operation is rewritten). Measured on the
#: 2-core Xeon: the update's sum of squares of 16M float32 elements takes 15 ms
#: instead of 23 ms, and the parameter's 10 ms instead of 12.5 ms.
_REDUCE_FASTMATH = {"reassoc"}

_INLINE = dict(inline="always", error_model="numpy")
# The passes are compiled functions the kernels call once per task (a call costs less
# than inlining four copies costs compile time); numba caches them inside the kernels,
# whose names carry the source hash, so they are not cached on their own.
_PASS = dict(error_model="numpy")
_OPTS = dict(cache=True, error_model="numpy")


class Adafactor(ArenaOptimizer):
    """Adafactor (torch.optim.Adafactor): Adam-like steps with factored second moments.

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when
    ``maximize``) and RMS the root mean square over the parameter::

        beta2_t = 1 - t ** beta2_decay;  rho = min(lr, 1 / sqrt(t))
        alpha = max(eps2, RMS(p)) * rho;  p = p * (1 - lr * weight_decay)
        2-D and up (per matrix of the last two dims):
            R = lerp(R, mean(g * g, dim=-1), 1 - beta2_t)    (row_var, shape [..., rows, 1])
            C = lerp(C, mean(g * g, dim=-2), 1 - beta2_t)    (col_var, shape [..., 1, cols])
            V = R @ C / max(mean(R, dim=-2), eps1)
        0-D, 1-D: V = lerp(V, g * g, 1 - beta2_t)            (variance)
        U = g / sqrt(max(V, eps1 ** 2));  p = p - alpha / max(1, RMS(U) / d) * U

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-2
        The largest relative step size ``rho``, and the weight decay's scale.
    beta2_decay : float, default -0.8
    eps : (float or None, float), default (None, 1e-3)
        ``eps1`` floors the variance estimate (None: the dtype's machine epsilon),
        ``eps2`` the parameter's RMS in the step size.
    d : float, default 1.0
        Clipping threshold of the update's RMS.
    weight_decay : float, default 0.0
    foreach : None or bool
        torch's implementation flag, accepted so torch code ports unchanged.
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ArenaOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"

    Examples
    --------
    >>> w = numbaopt.Parameter(np.zeros((64, 32), np.float32))
    >>> opt = Adafactor([w], lr=1e-2)
    >>> w.grad = np.ones((64, 32), np.float32); opt.step()
    >>> opt.state[w]["row_var"].shape
    (64, 1)
    """

    _load_defaults = {"maximize": False}
    _implementation_flags = dict(foreach=None)
    # load_state_dict checks torch's shapes of row_var and col_var (numbaopt.checkpoint
    # leaves them to it)
    _validates_state_shapes = True
    _lr_message = "Learning rate should be >= 0 but is"   # as _check_group says it

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, foreach=None, maximize=False, skip_nonfinite=False,
                 device="cpu"):
        if isinstance(lr, np.ndarray) and lr.size != 1:
            raise ValueError("Tensor lr must be 1-element")
        check_implementation_flags("Adafactor", foreach=foreach)
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                        weight_decay=weight_decay, foreach=foreach, maximize=maximize)
        self._layout = None
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        # torch's checks, in torch's order and words
        check_option(group, "lr", "Learning rate should be >= 0 but is", index=index,
                     where=where)
        check_option(group, "beta2_decay", "beta2_decay should be <= 0 but is", low=-math.inf,
                     high=0.0, index=index, where=where)
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            suffix = f" ({where} {index})" if index is not None else ""
            raise ValueError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}{suffix}")
        if eps[0] is not None:
            check_option({"eps": eps[0]}, "eps", "epsilon1 should be >= 0 but is",
                         index=index, where=where)
        check_option({"eps": eps[1]}, "eps", "epsilon2 should be >= 0 but is", index=index,
                     where=where)
        check_option(group, "d", "Clipping threshold d should be >= 1 but is", low=1.0,
                     index=index, where=where)
        check_option(group, "weight_decay", "weight_decay should be >= 0 but is", index=index,
                     where=where)
        check_flag(group, "maximize", index, where)

    def _hyper_row(self, group):
        # the kernels' row h: lr, beta2_decay, eps1, eps2, d, weight_decay, maximize
        eps1, eps2 = group["eps"]
        if eps1 is None:   # torch: torch.finfo(param.dtype).eps
            eps1 = float(np.finfo(self.arena.dtype).eps)
        return [hyper_float(group["lr"]), float(group["beta2_decay"]), float(eps1), float(eps2),
                float(group["d"]), hyper_float(group["weight_decay"]),
                float(bool(group["maximize"]))]

    # -- the buffers and tables ----------------------------------------------------------
    def _init_state(self, first):
        """Place parameters ``first:`` in the factored buffers (zeros); earlier ones keep theirs."""
        old = self._buffers if self._layout is not None else None
        layout = _Layout(self.arena.shapes, self.arena.offsets)
        if self.device == "cuda":
            store = _DeviceBuffers(self.arena, layout, old)
        else:
            store = _HostBuffers(self.arena.dtype, layout, old)
        self._layout = layout
        self._buffers = store

    def _prepare(self, hyper):
        arena = self.arena
        store = self._buffers
        if arena.device == "cuda":
            return store.prepare(self, hyper)
        parallel = arena.size >= self.parallel_threshold
        kernel = _cpu_kernels()[parallel]
        args = (arena.data, arena.grad, arena.has_grad, arena.step, arena.param_group, hyper,
                *store.tables, *store.state, *store.workspace)
        check = grads_finite_parallel if parallel else grads_finite
        grad, has_grad, chunks = arena.grad, arena.has_grad, arena.chunks
        finite = lambda: check(grad, has_grad, chunks)   # noqa: E731
        return _guard_empty(kernel, self._layout, has_grad), args, finite

    # -- state in torch's shapes ---------------------------------------------------------
    def _param_state(self, i, group, copy, steps, scalars):
        if steps[i] == 0:
            return None
        arena = self.arena
        out = {"step": np.array(steps[i], dtype=np.float32) if copy else arena.step_view(i)}
        for name, (lo, hi, shape) in self._layout.pieces(i).items():
            out[name] = self._buffers.piece(name, lo, hi, shape, copy)
        return out

    def _load_state_dict(self, state_dict):
        # torch's shapes: ``row_var`` ``[..., rows, 1]``, ``col_var`` ``[..., 1, cols]``,
        # ``variance`` the parameter's. Everything is validated before anything changes.
        self._staged = None
        try:
            super()._load_state_dict(state_dict)
            staged = self._staged
        finally:
            self._staged = None
        self._buffers.load(staged)

    def _fresh_state(self, buffers, groups):
        self._staged = self._layout.zeros(self.arena.dtype)

    def _load_param_state(self, i, entry, group, step, scalars, buffers, key):
        if not isinstance(entry, Mapping):
            raise ValueError(f"loaded state of parameter {key!r} is not a dict")
        pieces = self._layout.pieces(i)
        allowed = {"step"} | set(pieces)
        unknown = (set(entry) & {"row_var", "col_var", "variance"}) - allowed
        if unknown:
            raise ValueError(
                f"loaded state of parameter {key!r} has unexpected keys {sorted(unknown)} for "
                f"Adafactor and a parameter of shape {self.arena.shapes[i]} "
                f"(expected {sorted(allowed)})")
        # other keys are kept as the user's own state (torch keeps any key)
        extra = {k: _copy_value(v) for k, v in entry.items() if k not in allowed}
        if not allowed & set(entry):
            return extra
        missing = allowed - set(entry)
        if missing:
            raise ValueError(f"loaded state of parameter {key!r} lacks {sorted(missing)}")
        step[i] = _scalar(entry["step"], key, "step", non_negative=True)
        for name, (lo, hi, shape) in pieces.items():
            value = np.asarray(entry[name])
            if value.shape != shape:
                raise ValueError(f"loaded '{name}' of parameter {key!r} has shape {value.shape}, "
                                 f"torch's Adafactor keeps shape {shape} for a parameter of "
                                 f"shape {self.arena.shapes[i]}")
            if value.dtype.kind not in "iuf":
                raise ValueError(f"loaded '{name}' of parameter {key!r} has non-real dtype "
                                 f"{value.dtype}")
            self._staged[name][lo:hi] = value.reshape(-1)
        return extra

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_staged", None)
        return state


# ------------------------------------------------------------------------------ layout

class _Layout:
    """Where each parameter's factored state lives, and the kernel's tables (host arrays).

    Built from the arena's shapes and offsets; parameters appended by
    ``add_param_group`` are placed after the existing ones, so the buffers of a
    grown layout start with the old ones.
    """

    def __init__(self, shapes, offsets):
        n = len(shapes)
        self.shapes = [tuple(int(n) for n in s) for s in shapes]   # (device shapes too)
        ptab = np.zeros((n, 8), dtype=np.int64)
        tasks, mats = [], []
        task_first = np.zeros(n + 1, dtype=np.int64)
        sizes = {"row_var": 0, "col_var": 0, "variance": 0}
        colpart = 0
        self.empty = np.zeros(n, dtype=np.bool_)
        for i, shape in enumerate(self.shapes):
            task_first[i] = len(tasks)
            start = int(offsets[i])
            numel = int(offsets[i + 1]) - start
            self.empty[i] = numel == 0
            if len(shape) >= 2:
                rows, cols = int(shape[-2]), int(shape[-1])
                batch = int(np.prod(shape[:-2], dtype=np.int64))
                ptab[i] = (1, batch, rows, cols, sizes["row_var"], sizes["col_var"], numel, start)
                sizes["row_var"] += batch * rows
                sizes["col_var"] += batch * cols
                if numel:
                    colpart = _factored_tasks(i, batch, rows, cols, start, colpart, tasks, mats)
            else:
                ptab[i] = (0, 1, numel, 1, sizes["variance"], 0, numel, start)
                sizes["variance"] += numel
                for lo in range(0, numel, VECTOR_TASK):
                    tasks.append((i, 0, 0, 0, 0, 0, start + lo,
                                  start + min(numel, lo + VECTOR_TASK), -1))
        task_first[n] = len(tasks)
        self.ptab = ptab
        self.tasks = np.array(tasks, dtype=np.int64).reshape(len(tasks), 9)
        self.task_first = task_first
        self.mats = np.array(mats, dtype=np.int64).reshape(len(mats), 4)
        self.sizes = sizes
        self.colpart = colpart

    def pieces(self, i):
        """``{name: (lo, hi, torch's shape)}``: parameter ``i``'s state in the flat buffers."""
        factored, batch, rows, cols, off, coff = (int(v) for v in self.ptab[i, :6])
        shape = tuple(self.shapes[i])
        if factored:
            return {"row_var": (off, off + batch * rows, shape[:-1] + (1,)),
                    "col_var": (coff, coff + batch * cols, shape[:-2] + (1, cols))}
        return {"variance": (off, off + int(self.ptab[i, 6]), shape)}

    def zeros(self, dtype):
        return {name: np.zeros(size, dtype=dtype) for name, size in self.sizes.items()}


def _factored_tasks(i, batch, rows, cols, start, colpart, tasks, mats):
    """Append the tasks and matrices of factored parameter ``i``; returns the next colpart."""
    size = rows * cols
    m0 = len(mats)
    if size <= FACTORED_TASK:
        # several whole matrices per task; each matrix's column sums are in one piece
        per_task = max(1, FACTORED_TASK // size)
        for b_lo in range(0, batch, per_task):
            b_hi = min(batch, b_lo + per_task)
            tasks.append((i, b_lo, b_hi, 0, rows, colpart + b_lo * cols, start + b_lo * size,
                          start + b_hi * size, m0 + b_lo))
        mats.extend((i, b, 1, colpart + b * cols) for b in range(batch))
        return colpart + batch * cols
    # rows of one matrix per task; the matrix adds up its tasks' column sums
    per_task = min(rows, max(MIN_TASK_ROWS, FACTORED_TASK // cols))
    nq = -(-rows // per_task)
    for b in range(batch):
        first = colpart + b * nq * cols
        for q in range(nq):
            r_lo, r_hi = q * per_task, min(rows, (q + 1) * per_task)
            tasks.append((i, b, b + 1, r_lo, r_hi, first + q * cols,
                          start + b * size + r_lo * cols, start + b * size + r_hi * cols, m0 + b))
        mats.append((i, b, nq, first))
    return colpart + batch * nq * cols


class _HostBuffers:
    """The flat state buffers, the kernel's tables and its workspace, in host memory."""

    def __init__(self, dtype, layout, old=None):
        self.state = tuple(np.zeros(layout.sizes[name], dtype=dtype)
                           for name in ("row_var", "col_var", "variance"))
        if old is not None:   # add_param_group: the old parameters keep their state
            for new, prev in zip(self.state, old.state):
                new[:prev.size] = prev
        self.tables = (layout.ptab, layout.tasks, layout.task_first, layout.mats)
        ntasks, nmats, nparams = layout.tasks.shape[0], layout.mats.shape[0], layout.ptab.shape[0]
        self.workspace = (np.zeros(layout.colpart, dtype=np.float64),
                          np.zeros(ntasks, dtype=np.float64), np.zeros(ntasks, dtype=np.float64),
                          np.zeros(nmats, dtype=dtype), np.zeros((nparams, 4), dtype=np.float64))

    def piece(self, name, lo, hi, shape, copy):
        buf = self.state[("row_var", "col_var", "variance").index(name)][lo:hi]
        return buf.reshape(shape).copy() if copy else buf.reshape(shape)

    def load(self, staged):
        for name, buf in zip(("row_var", "col_var", "variance"), self.state):
            buf[:] = staged[name]


def _guard_empty(kernel, layout, has_grad):
    """``kernel``, or a wrapper raising torch's ZeroDivisionError for an empty parameter.

    torch divides the parameter's norm by ``sqrt(numel)`` in Python, so a step over
    a parameter with no elements and a gradient fails; here it fails before anything
    changes.
    """
    if not layout.empty.any():
        return kernel
    empty = layout.empty

    def step(*args):
        if np.any(has_grad & empty):
            i = int(np.flatnonzero(has_grad & empty)[0])
            raise ZeroDivisionError(f"float division by zero (parameter {i} has no elements: "
                                    "torch's Adafactor divides by sqrt(numel))")
        return kernel(*args)

    return step


# ------------------------------------------------------------------- per-element math
# Shared by the CPU kernels and the CUDA ones (below).

@njit(**_INLINE)
def _schedule(h, t):
    # torch's Python floats: 1 - beta2_t = t ** beta2_decay, rho = min(lr, 1 / t ** 0.5)
    r = 1.0 / t ** 0.5
    return t ** h[1], (r if r < h[0] else h[0])


@njit(**_INLINE)
def _mean_square(s, n, T):
    # torch: norm(g, dim).square_().div_(n), the norm in the dtype from the sum s
    r = sqrt(T(s))
    return r * r / T(n)


@njit(**_INLINE)
def _clamp_min(x, low):
    # torch's clamp_(min=low): NaN stays NaN
    return low if x < low else x


@njit(**_INLINE)
def _inv_root(v, floor, one):
    # torch: var_estimate.clamp_(min=eps1 * eps1).rsqrt_(), rsqrt being 1 / sqrt
    return one / sqrt(_clamp_min(v, floor))


@njit(**_INLINE)
def _step_coefficients(h, rho, numel, psum, usum, T):
    # alpha = max(eps2, norm(p) / numel ** 0.5) * rho; denom = max(1, norm(U) / (numel ** 0.5 * d))
    # in Python floats from the dtype's norms; maximize negates the update's sign.
    root_n = numel ** 0.5
    rms = float(sqrt(T(psum))) / root_n
    alpha = (rms if rms > h[3] else h[3]) * rho
    ratio = float(sqrt(T(usum))) / (root_n * h[4])
    a = -alpha / (ratio if ratio > 1.0 else 1.0)
    return (-a if h[6] != 0.0 else a), 1.0 - h[0] * h[5]


# ----------------------------------------------------------------------- CPU kernels

@njit(error_model="numpy", fastmath=_REDUCE_FASTMATH)
def _sum_squares(x, lo, hi):
    # float64 sum of x[j] * x[j] over lo:hi, each square in x's dtype (torch's norm)
    s = 0.0
    for j in range(np.uint64(lo), np.uint64(hi)):
        v = x[j] * x[j]
        s += v
    return s


@njit(**_INLINE)
def _lerp_weights(w, T):
    # torch's lerp_ with a Python-float weight: the weight in the dtype
    wt = T(w)
    return wt, T(1.0) - wt, abs(wt) < T(0.5)


@njit(error_model="numpy", fastmath=_REDUCE_FASTMATH)
def _row_sums(param, grad, base, cols, colpart, cp):
    # One row of a factored task: returns the float64 sums of its squared parameters
    # and squared gradients, and adds the squared gradients to colpart[cp:cp + cols].
    ps = 0.0
    gs = 0.0
    for c in range(np.uint64(0), cols):
        x = param[base + c]
        px = x * x
        ps += px
        g = grad[base + c]
        gx = g * g
        gs += gx
        colpart[cp + c] += gx
    return ps, gs


@njit(**_INLINE)
def _row_update(out, grad, col_var, base, coff, cols, rv, rm, floor, one):
    # out[c] = U of one row: g / sqrt(max(R C / mean(R), eps1 ** 2)) in torch's order
    for c in range(np.uint64(0), cols):
        out[c] = _inv_root(rv * col_var[coff + c] / rm, floor, one) * grad[base + c]


@njit(**_INLINE)
def _row_apply(param, grad, col_var, base, coff, cols, rv, rm, floor, one, a, decay):
    # p = p * (1 - lr * weight_decay) + a * U over one row
    for c in range(np.uint64(0), cols):
        u = _inv_root(rv * col_var[coff + c] / rm, floor, one) * grad[base + c]
        param[base + c] = param[base + c] * decay + a * u


@njit(**_PASS)
def _reduce_task(k, param, grad, has_grad, group, hyper, ptab, tasks, row_var, variance,
                 colpart, psq, usq, coef):
    # Reads param and grad over task k; writes psq[k], and for a factored task the row
    # factor of its rows and its partial column sums, for a vector task the variance of
    # its elements and its update's sum of squares usq[k].
    i = tasks[k, 0]
    if not has_grad[i]:
        return
    T = param.dtype.type
    lo, hi = tasks[k, 6], tasks[k, 7]
    w, one_minus_w, small = _lerp_weights(coef[i, 0], T)
    if ptab[i, 0]:
        rows, cols, roff, start = ptab[i, 2], ptab[i, 3], ptab[i, 4], ptab[i, 7]
        ucols = np.uint64(cols)
        b_lo = tasks[k, 1]
        total = 0.0
        for b in range(b_lo, tasks[k, 2]):
            cp = tasks[k, 5] + (b - b_lo) * cols
            colpart[cp:cp + cols] = 0.0
            for r in range(tasks[k, 3], tasks[k, 4]):
                base = start + (b * rows + r) * cols
                ps, gs = _row_sums(param, grad, np.uint64(base), ucols, colpart, np.uint64(cp))
                total += ps
                j = roff + b * rows + r
                row_var[j] = lerp(row_var[j], _mean_square(gs, cols, T), w, one_minus_w, small)
        psq[k] = total
        return
    psq[k] = _sum_squares(param, lo, hi)
    h = hyper[group[i]]
    floor, one = T(h[2] * h[2]), T(1.0)
    n = np.uint64(hi - lo)
    v0 = ptab[i, 4] + lo - ptab[i, 7]
    g_, v_ = grad[lo:hi], variance[v0:v0 + hi - lo]
    scratch = np.empty(n, dtype=param.dtype)
    for j in range(np.uint64(0), n):
        x = g_[j]
        v = lerp(v_[j], x * x, w, one_minus_w, small)
        v_[j] = v
        scratch[j] = _inv_root(v, floor, one) * x
    usq[k] = _sum_squares(scratch, 0, n)


@njit(**_PASS)
def _reduce_matrix(m, has_grad, group, hyper, ptab, mats, row_var, col_var, colpart, rmean,
                   coef):
    # Adds up matrix m's partial column sums into its column factor; writes the
    # clamped mean of its row factor into rmean[m].
    i = mats[m, 0]
    if not has_grad[i]:
        return
    T = rmean.dtype.type
    b, nq, cp = mats[m, 1], mats[m, 2], mats[m, 3]
    rows, cols = ptab[i, 2], ptab[i, 3]
    total = colpart[cp:cp + cols]
    for q in range(1, nq):
        part = colpart[cp + q * cols:cp + (q + 1) * cols]
        for c in range(np.uint64(0), np.uint64(cols)):
            total[c] += part[c]
    w, one_minus_w, small = _lerp_weights(coef[i, 0], T)
    coff = ptab[i, 5] + b * cols
    for c in range(cols):
        col_var[coff + c] = lerp(col_var[coff + c], _mean_square(total[c], rows, T),
                                 w, one_minus_w, small)
    roff = ptab[i, 4] + b * rows
    s = 0.0
    for r in range(roff, roff + rows):
        s += row_var[r]
    # torch: row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1)
    rmean[m] = _clamp_min(T(s) / T(rows), T(hyper[group[i]][2]))


@njit(**_INLINE)
def _factored_task(k, apply, param, grad, hyper, group, ptab, tasks, row_var, col_var, rmean,
                   coef):
    # Factored task k's update U, row by row: returns its float64 sum of squares, or
    # (apply) writes p = p * decay + a * U.
    i = tasks[k, 0]
    T = param.dtype.type
    h = hyper[group[i]]
    floor, one = T(h[2] * h[2]), T(1.0)
    a, decay = T(coef[i, 2]), T(coef[i, 3])
    rows, cols, roff, start = ptab[i, 2], ptab[i, 3], ptab[i, 4], ptab[i, 7]
    scratch = np.empty(0 if apply else min(SEGMENT, cols), dtype=param.dtype)
    b_lo = tasks[k, 1]
    total = 0.0
    for b in range(b_lo, tasks[k, 2]):
        rm = rmean[tasks[k, 8] + b - b_lo]
        coff = ptab[i, 5] + b * cols
        for r in range(tasks[k, 3], tasks[k, 4]):
            rv = row_var[roff + b * rows + r]
            base = start + (b * rows + r) * cols
            if apply:
                _row_apply(param, grad, col_var, np.uint64(base), np.uint64(coff),
                           np.uint64(cols), rv, rm, floor, one, a, decay)
                continue
            for c0 in range(0, cols, SEGMENT):
                n = min(SEGMENT, cols - c0)
                _row_update(scratch, grad, col_var, np.uint64(base + c0), np.uint64(coff + c0),
                            np.uint64(n), rv, rm, floor, one)
                total += _sum_squares(scratch, 0, n)
    return total


@njit(**_PASS)
def _update_norm_task(k, param, grad, has_grad, group, hyper, ptab, tasks, row_var, col_var,
                      rmean, usq, coef):
    # Writes usq[k], the sum of squares of factored task k's update.
    i = tasks[k, 0]
    if has_grad[i] and ptab[i, 0]:
        usq[k] = _factored_task(k, False, param, grad, hyper, group, ptab, tasks, row_var,
                                col_var, rmean, coef)


@njit(**_PASS)
def _apply_task(k, param, grad, has_grad, group, hyper, ptab, tasks, row_var, col_var,
                variance, rmean, coef):
    # Writes param over task k: p = p * (1 - lr * weight_decay) + a * U (U recomputed).
    i = tasks[k, 0]
    if not has_grad[i]:
        return
    if ptab[i, 0]:
        _factored_task(k, True, param, grad, hyper, group, ptab, tasks, row_var, col_var,
                       rmean, coef)
        return
    T = param.dtype.type
    h = hyper[group[i]]
    floor, one = T(h[2] * h[2]), T(1.0)
    a, decay = T(coef[i, 2]), T(coef[i, 3])
    lo, hi = tasks[k, 6], tasks[k, 7]
    v0 = ptab[i, 4] + lo - ptab[i, 7]
    p_, g_, v_ = param[lo:hi], grad[lo:hi], variance[v0:v0 + hi - lo]
    for j in range(np.uint64(0), np.uint64(hi - lo)):
        u = _inv_root(v_[j], floor, one) * g_[j]
        p_[j] = p_[j] * decay + a * u


def _passes(phase, param, grad, has_grad, group, hyper, ptab, tasks, mats, row_var, col_var,
            variance, colpart, psq, usq, rmean, coef):
    # Pass ``phase`` of a step over every task (every matrix for phase 1), compiled
    # serial and with prange: one parallel loop, so one thread-pool body to compile.
    n = mats.shape[0] if phase == 1 else tasks.shape[0]
    for k in prange(n):
        if phase == 0:
            _reduce_task(k, param, grad, has_grad, group, hyper, ptab, tasks, row_var, variance,
                         colpart, psq, usq, coef)
        elif phase == 1:
            _reduce_matrix(k, has_grad, group, hyper, ptab, mats, row_var, col_var, colpart,
                           rmean, coef)
        elif phase == 2:
            _update_norm_task(k, param, grad, has_grad, group, hyper, ptab, tasks, row_var,
                              col_var, rmean, usq, coef)
        else:
            _apply_task(k, param, grad, has_grad, group, hyper, ptab, tasks, row_var, col_var,
                        variance, rmean, coef)


def _adafactor_step(param, grad, has_grad, step, group, hyper, ptab, tasks, task_first, mats,
                    row_var, col_var, variance, colpart, psq, usq, rmean, coef):
    """One Adafactor step over the arena: the step's one compiled call.

    Reads grad and has_grad; updates param, step, row_var, col_var and variance in
    place; colpart, psq, usq, rmean and coef are workspace. ``passes`` is
    ``_passes`` compiled serial or parallel.
    """
    T = param.dtype.type
    n = has_grad.shape[0]
    for i in range(n):
        if has_grad[i]:
            step[i] += 1.0
            coef[i, 0], coef[i, 1] = _schedule(hyper[group[i]], step[i])
    for phase in range(3):
        passes(phase, param, grad, has_grad, group, hyper, ptab, tasks, mats,  # noqa: F821
               row_var, col_var, variance, colpart, psq, usq, rmean, coef)
    for i in range(n):
        if has_grad[i]:
            psum = 0.0
            usum = 0.0
            for k in range(task_first[i], task_first[i + 1]):
                psum += psq[k]
                usum += usq[k]
            coef[i, 2], coef[i, 3] = _step_coefficients(hyper[group[i]], coef[i, 1], ptab[i, 6],
                                                        psum, usum, T)
    passes(3, param, grad, has_grad, group, hyper, ptab, tasks, mats,  # noqa: F821
           row_var, col_var, variance, colpart, psq, usq, rmean, coef)


_kernels = None


def _cpu_kernels():
    """``(serial, parallel)``: ``_adafactor_step`` over ``_passes`` compiled both ways.

    Cached on disk. The qualified names carry a hash of this file and of the scalar
    helpers' (numba's own cache stamp sees only this file, not the helpers it inlines).
    """
    global _kernels
    if _kernels is None:
        tag = _source_hash([_adafactor_step, _passes])
        kernels = []
        for kind, options in (("serial", {}), ("parallel", {"parallel": True})):
            passes = njit(error_model="numpy", **options)(
                bind(_passes, {}, f"_adafactor_passes_{kind}_{tag}"))
            kernels.append(njit(**_OPTS)(bind(_adafactor_step, {"passes": passes},
                                              f"_adafactor_{kind}_{tag}")))
        _kernels = tuple(kernels)
    return _kernels


# ---------------------------------------------------------------------- CUDA kernels
# Plain functions, compiled by _cuda_kernels() with numba.cuda (imported only for
# device="cuda"), the scalar helpers above becoming device functions. The passes are
# the CPU kernel's, one launch each: a thread per parameter for the schedule and the
# step size, a block per task (or matrix) for the others, its threads striding
# through the task's elements and adding up in shared memory, in a fixed order.

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
