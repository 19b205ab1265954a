"""Muon (torch.optim.Muon): momentum, then Newton–Schulz orthogonalisation of each 2-D update.

The class validates and keeps torch's groups and state; the step is one
``@njit`` call over a per-parameter table (offset, rows, columns) whose
matrix products go through BLAS (``np.dot`` inside the kernel, which numba
takes from SciPy), into workspaces allocated once for the largest matrix.
"""

import math
from numbers import Integral

import numpy as np
from numba import njit

from ..kernels.finite import grads_finite
from .arena_optimizer import ArenaOptimizer
from .optimizer import check_flag, check_option, hyper_float, is_finite_real

__all__ = ["Muon"]

# torch/optim/_muon.py's constants (Keller Jordan's Muon post).
EPS = 1e-7
DEFAULT_A = 3.4445
DEFAULT_B = -4.7750
DEFAULT_C = 2.0315
DEFAULT_NS_STEPS = 5

NS_DTYPES = (None, "float32", "float64", "bfloat16")
_ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
_TILE = 32   # the transposed copies of tall matrices walk 32x32 tiles, for the cache


class Muon(ArenaOptimizer):
    """Muon (torch.optim.Muon): momentum SGD whose 2-D updates are orthogonalised.

    Per parameter ``p`` of shape ``(A, B)`` with a gradient ``g``, as torch's code does
    (``lerp`` is torch's; the docstring's ``mu * B + g`` is not what torch computes)::

        buf = lerp(buf, g, 1 - momentum)
        u = lerp(g, buf, momentum) if nesterov else buf
        o = NS(u): X = u (u.T if A > B) / max(||u||_F, eps), then ns_steps times
                   G = X @ X.T;  X = a * X + (b * G + c * G @ G) @ X   (back to A x B)
        p = p * (1 - lr * weight_decay) - lr * ratio * o
        ratio = sqrt(max(1, A / B))   (adjust_lr_fn None or "original")
                0.2 * sqrt(max(A, B))  ("match_rms_adamw")

    torch runs ``NS`` in bfloat16 on the CPU (rounded after the cast, the norm, the
    division and each matrix product, which accumulates in float32), whatever the
    parameter's dtype. NumPy has no bfloat16, so ``ns_dtype`` chooses, and no choice
    matches torch exactly: ``"bfloat16"`` rounds where torch does, but BLAS sums in
    another order than torch's oneDNN, a few sums round to the other bfloat16, and the
    iteration spreads those one-ulp differences. Measured against torch 2.13
    (``python scripts/make_muon_reference.py --measure``: 16 standard-normal matrices,
    lr 0.02, torch's other defaults, a fresh gradient each step), ``max|p - p_torch| /
    max|p_torch|`` after 1 / 10 / 100 steps, and in brackets the same difference over
    the largest distance torch moved a parameter::

        ns_dtype        params   64x32 (tall)                256x512 (wide)
        float32         float32  6.6e-5 / 1.9e-4 / 5.1e-4    1.7e-5 / 5.1e-5 / 1.5e-4
        (the default)            (2.1e-2 / 7.8e-3 / 2.0e-3)  (7.7e-3 / 2.3e-3 / 6.3e-4)
                        float64  6.6e-5 / 1.9e-4 / 5.1e-4    1.9e-5 / 5.5e-5 / 1.3e-4
        float64         either   as float32, to two digits
        bfloat16        float32  3.5e-5 / 7.3e-5 / 1.2e-4    2.0e-5 / 2.8e-5 / 7.2e-5
                                 (1.1e-2 / 3.0e-3 / 4.5e-4)  (9.1e-3 / 1.3e-3 / 3.0e-4)
                        float64  3.5e-5 / 5.3e-5 / 8.7e-5    2.0e-5 / 3.2e-5 / 6.8e-5

    So bfloat16 emulation halves the drift from torch over many steps (on matrices of a
    few dozen elements it mostly matches torch exactly), for no measurable time: its
    rounding passes are O(mn) against the products' O(m^2 n). float64 buys nothing
    against torch, whose NS is bfloat16, so the default is float32 for float64
    parameters too.

    Momentum, weight decay and the lr adjustment match torch to rounding: with torch's
    ``NS`` swapped for a float64 one, ``ns_dtype="float64"`` agrees to 1e-10 (float64)
    and 1e-5 (float32).

    Parameters
    ----------
    params : iterable of Parameter or of dicts
        2-D parameters only, as in torch (optimize biases and embeddings with AdamW).
    lr : float, default 1e-3
    weight_decay : float, default 0.1
        Decoupled: ``p *= 1 - lr * weight_decay``.
    momentum : float, default 0.95
    nesterov : bool, default True
    ns_coefficients : (float, float, float), default (3.4445, -4.7750, 2.0315)
        ``(a, b, c)`` of the quintic Newton–Schulz iteration.
    eps : float, default 1e-7
        Floor of the Frobenius norm that scales ``u``.
    ns_steps : int, default 5
        Newton–Schulz iterations; torch refuses 100 or more.
    adjust_lr_fn : {None, "original", "match_rms_adamw"}, default None
        The lr's shape ratio (None means "original").
    ns_dtype : {None, "float32", "float64", "bfloat16"}, default None
        What ``NS`` computes in: "float32"; "float64"; or "bfloat16", float32
        products rounded to bfloat16 (nearest, ties to even) where torch rounds.
        None is "float32". Not one of torch's options: an attribute, not a group entry.
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ArenaOptimizer``).
    device : {"cpu"}, default "cpu"
        "cuda" is refused: the step is BLAS matrix products, and numba.cuda kernels have none.

    Examples
    --------
    >>> w = Parameter(np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32))
    >>> opt = Muon([w], lr=0.02, momentum=0.95)
    >>> w.grad = np.ones((256, 128), np.float32)
    >>> opt.step()
    """

    hyperparameters = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps",
                       "ns_steps", "adjust_lr_fn")
    _state_keys = ("momentum_buffer",)
    _lr_message = "Learning rate should be >= 0 but is"   # as _check_group says it
    _step_in_state = False   # torch's Muon keeps no step; arena.step marks "has a buffer"
    _load_defaults = {}

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(DEFAULT_A, DEFAULT_B, DEFAULT_C), eps=EPS,
                 ns_steps=DEFAULT_NS_STEPS, adjust_lr_fn=None, *, ns_dtype=None,
                 skip_nonfinite=False, device="cpu"):
        if device == "cuda":
            raise NotImplementedError(
                "Muon(device='cuda') is not supported: its step is Newton–Schulz matrix "
                "products through BLAS, and numba.cuda kernels have no BLAS to call; "
                "use device='cpu'")
        _require_blas()
        self._ns_dtype = _check_ns_dtype(ns_dtype)
        self._work = None
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    @property
    def ns_dtype(self):
        """What Newton–Schulz computes in (see the class docstring); settable between steps."""
        return self._ns_dtype

    @ns_dtype.setter
    def ns_dtype(self, value):
        self._ns_dtype = _check_ns_dtype(value)
        self._work = None        # workspaces of the new dtype at the next step
        self._dirty[0] = True

    _complex_refusal = (RuntimeError, "Muon does not support complex parameters")

    def _arena_dtype(self, params, expected=None):
        # Called by the constructor and add_param_group before anything is packed.
        for p in params:
            if p.ndim != 2:
                raise ValueError("Muon only supports 2D parameters whereas we found a "
                                 f"parameter with size: {p.shape}")
        return super()._arena_dtype(params, expected)

    def _check_group(self, group, index=None, where="param group"):
        suffix = f" ({where} {index})" if index is not None else ""
        check_option(group, "lr", "Learning rate should be >= 0 but is", index=index,
                     where=where)
        check_option(group, "momentum", "momentum should be >= 0 but is", index=index,
                     where=where)
        check_option(group, "weight_decay", "weight decay should be >= 0 but is", index=index,
                     where=where)
        check_flag(group, "nesterov", index, where)
        fn = group["adjust_lr_fn"]
        if not isinstance(fn, (str, type(None))) or fn not in _ADJUST_LR_FNS:
            raise ValueError(f"Adjust learning rate function {fn} is not supported{suffix}")
        coefficients = group["ns_coefficients"]
        if not isinstance(coefficients, (tuple, list)) or len(coefficients) != 3:
            raise ValueError("Coefficients must be a tuple of exactly 3 values" + suffix)
        if not all(is_finite_real(v) for v in coefficients):
            raise ValueError(f"ns_coefficients must be finite real numbers, got "
                             f"{coefficients!r}{suffix}")
        check_option(group, "eps", "Invalid epsilon value", low=-math.inf, index=index,
                     where=where)
        steps = group["ns_steps"]
        if not isinstance(steps, Integral):
            raise TypeError(f"ns_steps must be an int, got {steps!r}{suffix}")
        if steps >= 100:
            raise ValueError("Number of steps must be less than 100 for computational "
                             "efficiency" + suffix)

    def _hyper_row(self, group):
        a, b, c = group["ns_coefficients"]
        return [hyper_float(group["lr"]), hyper_float(group["weight_decay"]),
                float(group["momentum"]), float(bool(group["nesterov"])), float(a), float(b), float(c),
                float(group["eps"]), float(int(group["ns_steps"])),
                float(group["adjust_lr_fn"] == "match_rms_adamw")]

    def _prepare(self, hyper):
        arena = self.arena
        table, work = self._tables(arena)
        grad, has_grad, chunks = arena.grad, arena.has_grad, arena.chunks
        args = (arena.data, grad, has_grad, arena.step, arena.state["momentum_buffer"], table,
                arena.param_group, hyper) + work + (self.ns_dtype == "bfloat16",)
        return _muon_step, args, lambda: grads_finite(grad, has_grad, chunks)

    def _tables(self, arena):
        """The (offset, rows, cols) table and the workspaces, made again only for a new arena."""
        if self._work is not None and self._work[0] is arena:
            return self._work[1], self._work[2]
        table = np.zeros((len(arena), 3), dtype=np.int64)
        table[:, 0] = arena.offsets[:-1]
        table[:, 1] = [s[0] for s in arena.shapes]
        table[:, 2] = [s[1] for s in arena.shapes]
        short = np.minimum(table[:, 1], table[:, 2])
        largest = (int(np.max(table[:, 1] * table[:, 2], initial=0)),
                   int(np.max(short * short, initial=0)))
        dtype = np.float64 if self.ns_dtype == "float64" else np.float32
        # X and the product that updates it (m x n, m <= n), the gram and its square (m x m)
        work = tuple(np.empty(largest[k // 2], dtype=dtype) for k in range(4))
        self._work = (arena, table, work)
        return table, work

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_work", None)   # workspaces: reallocated after unpickling
        return state

    def __setstate__(self, state):
        state["_work"] = None
        super().__setstate__(state)


def _check_ns_dtype(value):
    if not isinstance(value, (str, type(None))) or value not in NS_DTYPES:
        raise ValueError(f"ns_dtype must be one of {NS_DTYPES}, got {value!r}")
    return value


def _require_blas():
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        raise ImportError(
            "Muon multiplies matrices with np.dot inside its compiled step, and numba takes "
            "BLAS for that from SciPy (scipy.linalg.cython_blas): pip install 'numbaopt[muon]' "
            "(or scipy)") from None


# -- the kernel ---------------------------------------------------------------------------
@njit(inline="always", error_model="numpy")
def _lerp(start, end, weight, one_minus_weight, small):
    """torch's lerp, as ``numbaopt.kernels.scalar.lerp`` (a test holds them equal).

    A copy: numba's cache of ``_muon_step`` watches this file only, so an inlined
    helper from another file could change without the cached kernel noticing.
    """
    if small:
        return start + weight * (end - start)
    return end - (end - start) * one_minus_weight


@njit(inline="always", error_model="numpy")
def _bf16(x):
    """``x`` (float32) rounded to bfloat16, nearest with ties to even (c10's rounding)."""
    u = np.float32(x).view(np.uint32)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.float32(x)   # NaN stays NaN
    u = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return np.uint32(u).view(np.float32)


@njit(cache=True, error_model="numpy")
def _muon_step(data, grad, has_grad, step, momentum_buffer, table, param_group, hyper,
               x_work, y_work, gram_work, square_work, bf16):
    """Step every parameter with a gradient: momentum, NS, decay and update, in place.

    Reads ``grad``; writes ``data``, ``momentum_buffer`` and ``step`` (+1: "has a buffer")
    of the parameters whose ``has_grad`` is set. The workspaces are scratch (``x_work``
    and ``y_work`` hold a matrix's m*n elements, the other two m*m; m <= n).
    """
    T = data.dtype.type
    W = x_work.dtype.type
    for i in range(table.shape[0]):
        if not has_grad[i]:
            continue
        step[i] += 1.0
        lo, r, c = table[i, 0], table[i, 1], table[i, 2]
        size = r * c
        if size == 0:
            continue
        h = hyper[param_group[i]]
        lr, weight_decay, momentum = h[0], h[1], h[2]
        nesterov = h[3] != 0.0
        a, b, cc = W(h[4]), W(h[5]), W(h[6])
        eps, ns_steps, match_rms_adamw = h[7], int(h[8]), h[9] != 0.0
        tall = r > c
        m, n = (c, r) if tall else (r, c)
        x = x_work[:size]

        # buf.lerp_(g, 1 - momentum); u = g.lerp(buf, momentum) or buf; X = u (u.T if tall),
        # in NS's dtype. torch's lerp takes its weight in the parameter's dtype.
        w_buf = T(1.0 - momentum)
        w_nes = T(momentum)
        one_minus_buf, one_minus_nes = T(1.0) - w_buf, T(1.0) - w_nes
        small_buf, small_nes = abs(w_buf) < 0.5, abs(w_nes) < 0.5
        ti, tj = (_TILE, _TILE) if tall else (r, c)
        for i0 in range(0, r, ti):
            for j0 in range(0, c, tj):
                for ii in range(i0, min(i0 + ti, r)):
                    for jj in range(j0, min(j0 + tj, c)):
                        k = lo + ii * c + jj
                        g = grad[k]
                        buf = _lerp(momentum_buffer[k], g, w_buf, one_minus_buf, small_buf)
                        momentum_buffer[k] = buf
                        u = _lerp(g, buf, w_nes, one_minus_nes, small_nes) if nesterov else buf
                        v = W(u)
                        if bf16:
                            v = _bf16(v)
                        x[jj * r + ii if tall else ii * c + jj] = v

        # X /= max(||X||, eps): torch's norm accumulates in float (here float64) and rounds
        # to NS's dtype, and clamp casts eps to that dtype first.
        total = 0.0
        for k in range(size):
            total += float(x[k]) * float(x[k])
        norm = W(np.sqrt(total))
        floor = W(eps)
        if bf16:
            norm, floor = _bf16(norm), _bf16(floor)
        if norm < floor:
            norm = floor
        for k in range(size):
            v = x[k] / norm
            x[k] = _bf16(v) if bf16 else v

        # ns_steps times: G = X X^T; S = b G + c G G; X = a X + S X (bfloat16: each rounded)
        xm = x.reshape(m, n)
        y = y_work[:size]
        ym = y.reshape(m, n)
        gram = gram_work[:m * m]
        square = square_work[:m * m]
        gm = gram.reshape(m, m)
        sm = square.reshape(m, m)
        for _ in range(ns_steps):
            np.dot(xm, xm.T, gm)
            if bf16:
                for k in range(m * m):
                    gram[k] = _bf16(gram[k])
            np.dot(gm, gm, sm)
            for k in range(m * m):
                v = b * gram[k] + cc * square[k]
                square[k] = _bf16(v) if bf16 else v
            np.dot(sm, xm, ym)
            for k in range(size):
                v = a * x[k] + y[k]
                x[k] = _bf16(v) if bf16 else v

        # p *= 1 - lr * weight_decay; p -= lr * ratio * O (O in the parameter's dtype)
        if match_rms_adamw:
            ratio = 0.2 * np.sqrt(float(max(r, c)))
        else:
            ratio = np.sqrt(max(1.0, r / c))
        decay = T(1.0 - lr * weight_decay)
        neg_lr = T(-(lr * ratio))
        for i0 in range(0, r, ti):
            for j0 in range(0, c, tj):
                for ii in range(i0, min(i0 + ti, r)):
                    for jj in range(j0, min(j0 + tj, c)):
                        k = lo + ii * c + jj
                        o = T(x[jj * r + ii if tall else ii * c + jj])
                        data[k] = data[k] * decay + neg_lr * o
