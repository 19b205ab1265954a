"""LBFGS's compiled passes over the arena and the history ring (``numbaopt.optim.lbfgs``).

Every pass works in blocks of ``BLOCK`` elements, so its float64 sums do not depend
on the number of threads, and exists twice, serial and parallel (``_compile``).
The two over the history take four stored rows per sweep of a block: each
element of the block is then loaded once per four history elements, which lets
the history stream at memory speed. None calls BLAS: OpenBLAS's threads spin
after a call and would take the cores numba's threads need.
"""

import types

import numpy as np
from numba import njit, prange

from ..kernels.cpu import _zero_missing_grads

#: Elements per block of the compiled reductions (fixed, so the sums do not depend on
#: the number of threads).
BLOCK = 2048

#: The sums may be reassociated (as BLAS's are) so LLVM vectorizes them.
#: No other fastmath flag: NaN and inf still propagate.
_REDUCE = {"reassoc"}
#: The history's dot products also fuse multiply and add (more exact, as BLAS's FMA).
_REDUCE_CONTRACT = {"reassoc", "contract"}
#: ``x + t * d`` as one fused multiply-add: torch's ``p.add_(d, alpha=t)`` is vec::fmadd.
_CONTRACT = {"contract"}


def _max_keep_nan(mx, a):
    """``max(mx, a)``, where a NaN once seen stays (torch's ``abs().max()`` propagates it)."""
    if a > mx or a != a:
        return a if mx == mx else mx
    return mx


_max_keep_nan = njit(cache=True, error_model="numpy", inline="always")(_max_keep_nan)


def _abs_stats(g, partial):
    """``(max |g|, sum |g|)`` in float64, NaN kept; ``partial`` is a (blocks, 2) scratch table."""
    n = g.size
    for b in prange(partial.shape[0]):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        mx = 0.0
        sm = 0.0
        for e in range(lo, hi):
            a = abs(np.float64(g[e]))
            sm += a
            mx = _max_keep_nan(mx, a)
        partial[b, 0] = mx
        partial[b, 1] = sm
    mx = 0.0
    sm = 0.0
    for b in range(partial.shape[0]):
        a = partial[b, 0]
        mx = _max_keep_nan(mx, a)
        sm += partial[b, 1]
    return mx, sm


def _new_pair(g, prev, d, t, W, partial):
    """``W = [t * d, g - prev, g]`` (torch's ``s`` and ``y``, and the gradient, side by side
    for the pass over the history); returns ``(y.s, y.y, g.s, g.y)`` in float64."""
    n = g.size
    for b in prange(partial.shape[0]):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        ys = 0.0
        yy = 0.0
        gs = 0.0
        gy = 0.0
        for e in range(lo, hi):
            s = d[e] * t
            y = g[e] - prev[e]
            W[0, e] = s
            W[1, e] = y
            W[2, e] = g[e]
            s64 = np.float64(s)
            y64 = np.float64(y)
            g64 = np.float64(g[e])
            ys += y64 * s64
            yy += y64 * y64
            gs += g64 * s64
            gy += g64 * y64
        partial[b, 0] = ys
        partial[b, 1] = yy
        partial[b, 2] = gs
        partial[b, 3] = gy
    ys = 0.0
    yy = 0.0
    gs = 0.0
    gy = 0.0
    for b in range(partial.shape[0]):
        ys += partial[b, 0]
        yy += partial[b, 1]
        gs += partial[b, 2]
        gy += partial[b, 3]
    return ys, yy, gs, gy


def _dots4(r, q, p, o, w0, w1, w2):
    """The 12 dot products of four stored rows with the three rows of ``W`` (float64 sums).

    Four rows at a time, so each element of ``W`` is loaded once per four history
    elements: the pass then streams the history at memory speed (BLAS's GEMM with
    three columns reaches about half of it).
    """
    a0 = a1 = a2 = b0 = b1 = b2 = c0 = c1 = c2 = d0 = d1 = d2 = 0.0
    for e in range(r.size):
        u0 = np.float64(w0[e])
        u1 = np.float64(w1[e])
        u2 = np.float64(w2[e])
        x = np.float64(r[e])
        a0 += x * u0
        a1 += x * u1
        a2 += x * u2
        x = np.float64(q[e])
        b0 += x * u0
        b1 += x * u1
        b2 += x * u2
        x = np.float64(p[e])
        c0 += x * u0
        c1 += x * u1
        c2 += x * u2
        x = np.float64(o[e])
        d0 += x * u0
        d1 += x * u1
        d2 += x * u2
    return a0, a1, a2, b0, b1, b2, c0, c1, c2, d0, d1, d2


_dots4 = njit(cache=True, error_model="numpy", fastmath=_REDUCE_CONTRACT)(_dots4)


def _history_dots(R, W, rows, partial, out):
    """``out[k] = R[1 + k] . (W[0], W[1], W[2])`` for ``k < rows``, in float64, blocked.

    ``rows`` is even (pairs s, y); a last pair beyond a multiple of four reads the
    ring's next pair too (rows are allocated for it), and its sums are ignored.
    """
    n = R.shape[1]
    for b in prange(partial.shape[0]):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        w0 = W[0, lo:hi]
        w1 = W[1, lo:hi]
        w2 = W[2, lo:hi]
        for k in range(0, rows, 4):
            r = 1 + k
            v = _dots4(R[r, lo:hi], R[r + 1, lo:hi], R[r + 2, lo:hi], R[r + 3, lo:hi],
                       w0, w1, w2)
            for j in range(4):
                for c in range(3):
                    partial[b, k + j, c] = v[3 * j + c]
    for k in range(rows):
        for c in range(3):
            acc = 0.0
            for b in range(partial.shape[0]):
                acc += partial[b, k, c]
            out[k, c] = acc


def _combine4(w, r, q, p, o, c0, c1, c2, c3):
    """``w += c0 r + c1 q + c2 p + c3 o`` in float64: four stored rows per sweep of ``w``."""
    for e in range(w.size):
        w[e] += (c0 * np.float64(r[e]) + c1 * np.float64(q[e])) \
            + (c2 * np.float64(p[e]) + c3 * np.float64(o[e]))


_combine4 = njit(cache=True, error_model="numpy")(_combine4)


def _direction(g, R, c, rows, d, acc, partial):
    """``prev = g`` (row 0 of ``R``), then ``d = sum_k c[k] R[k]`` over rows ``0:rows``.

    Formed in float64 per block (``acc``, one row per block, cache-resident while the
    block is formed) and rounded once into ``d``. Returns ``(g . d, max |d|)``.
    ``rows`` is 1 + an even number; a tail beyond a multiple of four reads the ring's
    next pair with coefficient zero.
    """
    n = g.size
    for b in prange(partial.shape[0]):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        w = acc[b, :hi - lo]
        c0 = c[0]
        for e in range(hi - lo):
            R[0, lo + e] = g[lo + e]
            w[e] = c0 * np.float64(g[lo + e])
        for k in range(1, rows, 4):
            _combine4(w, R[k, lo:hi], R[k + 1, lo:hi], R[k + 2, lo:hi], R[k + 3, lo:hi],
                      c[k], c[k + 1], c[k + 2], c[k + 3])
        gtd = 0.0
        mx = 0.0
        for e in range(hi - lo):
            d[lo + e] = w[e]
            v = np.float64(d[lo + e])
            gtd += np.float64(g[lo + e]) * v
            a = abs(v)
            mx = _max_keep_nan(mx, a)
        partial[b, 0] = gtd
        partial[b, 1] = mx
    gtd = 0.0
    mx = 0.0
    for b in range(partial.shape[0]):
        gtd += partial[b, 0]
        a = partial[b, 1]
        mx = _max_keep_nan(mx, a)
    return gtd, mx


def _dot(a, b, partial):
    """``a . b`` in float64, blocked as the other passes."""
    n = a.size
    for blk in prange(partial.shape[0]):
        lo = blk * BLOCK
        hi = min(lo + BLOCK, n)
        s = 0.0
        for e in range(lo, hi):
            s += np.float64(a[e]) * np.float64(b[e])
        partial[blk, 0] = s
    s = 0.0
    for blk in range(partial.shape[0]):
        s += partial[blk, 0]
    return s


def _move(x, base, d, t):
    """``x = base + t * d`` (torch's ``p.add_(d, alpha=t)`` on ``p == base``); ``base`` may be ``x``."""
    for e in prange(x.size):
        x[e] = base[e] + t * d[e]


def _compile(function, reduce=True, contract=False):
    """A serial and a parallel dispatcher of ``function``, cached under two names.

    numba's cache index does not key on ``parallel``: two dispatchers of one function
    would share one cache entry, and the second would load the first one's code.
    """
    fastmath = _REDUCE if reduce else (_CONTRACT if contract else False)
    flags = dict(cache=True, error_model="numpy", fastmath=fastmath)
    out = []
    for suffix, parallel in (("serial", False), ("parallel", True)):
        copy = types.FunctionType(function.__code__, function.__globals__,
                                  f"{function.__name__}_{suffix}", function.__defaults__,
                                  function.__closure__)
        copy.__qualname__ = copy.__name__
        out.append(njit(parallel=parallel, **flags)(copy))
    return tuple(out)


_ABS_STATS = _compile(_abs_stats)
_NEW_PAIR = _compile(_new_pair)
_MOVE = _compile(_move, reduce=False, contract=True)
_HISTORY_DOTS = _compile(_history_dots)
_DIRECTION = _compile(_direction)
_DOT = _compile(_dot)


@njit(cache=True, error_model="numpy")
def _round(x, single):
    return np.float64(np.float32(x)) if single else x


@njit(cache=True, error_model="numpy")
def _two_loop(m, slots, SY, YY, gs, gy, rho, H, single, al, coef_s, coef_y):
    """The L-BFGS two-loop recursion in the coefficients of ``{s_k, y_k, g}``.

    ``SY[a, b] = s_a . y_b`` and ``YY`` over rows of the history, ``gs[k] = g . s_k``
    and ``gy[k] = g . y_k`` for the ``m`` stored pairs (oldest first). Writes
    torch's ``al`` and the coefficients of the direction; returns that of ``g``.
    Scalars are rounded to float32 where torch holds float32 tensors.
    """
    for k in range(m):
        coef_s[k] = 0.0
        coef_y[k] = 0.0
    # q = -g + sum_k coef_y[k] y_k
    for i in range(m - 1, -1, -1):
        si = slots[i]
        sq = -gs[i]
        for j in range(i + 1, m):
            sq += coef_y[j] * SY[si, slots[j]]
        a = _round(_round(sq, single) * rho[si], single)
        al[i] = a
        coef_y[i] = -a
    # r = H q
    coef_g = -H
    for k in range(m):
        coef_y[k] *= H
    for i in range(m):
        yi = slots[i]
        yr = coef_g * gy[i]
        for j in range(m):
            yr += coef_s[j] * SY[slots[j], yi] + coef_y[j] * YY[yi, slots[j]]
        be = _round(_round(yr, single) * rho[yi], single)
        coef_s[i] += _round(al[i] - be, single)
    return coef_g




class HostPasses:
    """The passes LBFGS runs, on host arrays: serial or threaded kernels and their scratch.

    ``numbaopt.optim._lbfgs_cuda.CudaPasses`` has the same methods on device arrays.
    """

    device = "cpu"

    def __init__(self, n, dtype, history, parallel):
        self.dtype = np.dtype(dtype)
        self.k = 1 if parallel else 0
        nblocks = max(1, -(-n // BLOCK))
        self._small = np.zeros((nblocks, 2))
        self._small4 = np.zeros((nblocks, 4))
        self._partial = np.zeros((nblocks, 2 * history + 4, 3))
        self._acc = np.zeros((nblocks, BLOCK))

    def zeros(self, shape):
        return np.zeros(shape, self.dtype)

    def to_host(self, a):
        return np.array(a)

    def copy(self, dst, src):
        np.copyto(dst, src)

    def abs_stats(self, g):
        return _ABS_STATS[self.k](g, self._small)

    def new_pair(self, g, prev, d, t, W):
        return _NEW_PAIR[self.k](g, prev, d, t, W, self._small4)

    def history_dots(self, R, W, rows, out):
        _HISTORY_DOTS[self.k](R, W, rows, self._partial, out)

    def direction(self, g, R, c, rows, d):
        return _DIRECTION[self.k](g, R, c, rows, d, self._acc, self._small)

    def dot(self, a, b):
        return _DOT[self.k](a, b, self._small)

    def move(self, x, base, d, t):
        _MOVE[self.k](x, base, d, t)

    def zero_missing(self, arena):
        # torch reads a parameter without gradient as zeros
        _zero_missing_grads(arena.grad, arena.has_grad, arena.offsets)
