"""Adafactor's per-element math and its CPU kernels (for ``numbaopt.optim.adafactor``).

The one compiled call of a step, over the tables of ``adafactor._Layout``, kept apart from
the class; the scalar helpers here are also the CUDA kernels' (``_adafactor_cuda``).
"""

import numpy as np
from numba import njit, prange

from ..kernels.elementwise import _source_hash, bind
from ..kernels.scalar import lerp, sqrt

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


# ------------------------------------------------------------------- per-element math

# Shared by the CPU kernels and the CUDA ones (_adafactor_cuda).

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
