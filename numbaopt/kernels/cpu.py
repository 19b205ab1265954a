"""@njit kernels over the gradient arena: gradient clipping and the data-parallel helper.

The optimizer updates are built per rule by ``numbaopt.kernels.elementwise``.
Element loops follow the same rules as there: no fastmath, torch's operation
order in the gradient's dtype, ``prange`` over chunks for large arenas.
"""

import numpy as np
from numba import njit, prange

_OPTS = dict(cache=True, error_model="numpy")
_PARALLEL_OPTS = dict(cache=True, error_model="numpy", parallel=True)

# ------------------------------------------------------------ data parallel (distributed.py)

@njit(**_OPTS)
def _zero_missing_grads(grad, has_grad, offsets):
    # zero_grad() only clears the flags, so a parameter without a gradient may
    # hold an old one in the buffer; it must enter the sum as zero (torch's DDP).
    for i in range(has_grad.shape[0]):
        if not has_grad[i]:
            grad[offsets[i]:offsets[i + 1]] = 0


# --------------------------------------------------------- gradient clipping (utils.py)
# A norm is reduced in three stages, the same in the kernels and in the NumPy fallback:
#   term(x) = |x|**p in the grad's dtype (torch's float32 squares overflow, ours too),
#   summed (counted for p = 0, max / min for p = +-inf) in float64,
#   root(s) = s cast back to the dtype, then s**(1/p) in the dtype.
# The total norm applies the same three stages to the per-parameter norms.

@njit(**_OPTS)
def _chunk_reduce(c, grad, chunks, norm_type):
    # Reads one chunk of grad; returns its float64 partial sum (or max / min / count).
    T = grad.dtype.type
    lo, hi = chunks[c, 1], chunks[c, 2]
    g_ = grad[lo:hi]
    n = hi - lo
    if norm_type == np.inf:
        acc = 0.0
        for j in range(n):
            a = abs(g_[j])
            if a > acc or a != a:   # NaN wins and stays (a > NaN is False)
                acc = a
        return acc
    if norm_type == -np.inf:
        acc = np.inf
        for j in range(n):
            a = abs(g_[j])
            if a < acc or a != a:
                acc = a
        return acc
    acc = 0.0
    if norm_type == 0.0:
        for j in range(n):
            if g_[j] != 0:
                acc += 1.0
    elif norm_type == 1.0:
        for j in range(n):
            acc += abs(g_[j])
    elif norm_type == 2.0:
        for j in range(n):
            acc += g_[j] * g_[j]
    else:
        p = T(norm_type)
        for j in range(n):
            acc += abs(g_[j]) ** p
    return acc


@njit(**_OPTS)
def _combine(acc, value, norm_type):
    if norm_type == np.inf:
        return value if (value > acc or value != value) else acc
    if norm_type == -np.inf:
        return value if (value < acc or value != value) else acc
    return acc + value


@njit(**_OPTS)
def _root(like, s, norm_type):
    # s (float64) cast to the dtype of the array ``like``, then its 1/p-th power there.
    T = like.dtype.type
    t = T(s)
    if norm_type == 2.0:
        return np.sqrt(t)
    if norm_type == 1.0 or norm_type == 0.0 or norm_type == np.inf or norm_type == -np.inf:
        return t
    return t ** T(1.0 / norm_type)


@njit(**_OPTS)
def _term(like, value, norm_type):
    # |x|**p of a norm (non-negative), x = value cast to the dtype of ``like``; as float64.
    T = like.dtype.type
    x = T(value)
    if norm_type == np.inf or norm_type == -np.inf or norm_type == 1.0:
        return float(x)
    if norm_type == 0.0:
        return 1.0 if x != 0 else 0.0
    if norm_type == 2.0:
        return float(x * x)
    return float(x ** T(norm_type))


@njit(**_OPTS)
def _finish_norm(grad, chunks, mask, norm_type, partial, norms):
    # partial[c] holds the reduction of chunk c (masked chunks only); writes each masked
    # parameter's norm into norms (float64 holding a value of grad's dtype) and returns
    # the total norm likewise.
    start = np.inf if norm_type == -np.inf else 0.0
    for i in range(norms.shape[0]):
        norms[i] = start
    for c in range(chunks.shape[0]):
        i = chunks[c, 0]
        if mask[i]:
            norms[i] = _combine(norms[i], partial[c], norm_type)
    total = start
    for i in range(norms.shape[0]):
        if mask[i]:
            norms[i] = float(_root(grad, norms[i], norm_type))
            total = _combine(total, _term(grad, norms[i], norm_type), norm_type)
    return float(_root(grad, total, norm_type))


@njit(**_OPTS)
def _grad_norm_cpu(grad, chunks, mask, norm_type, norms):
    """Total ``norm_type``-norm of the masked parameters' gradients (one pass, serial).

    Reads ``grad``; writes the per-parameter norms into ``norms`` (float64, one per
    parameter); returns the total norm (a float64 holding a value of grad's dtype).
    """
    partial = np.zeros(chunks.shape[0], dtype=np.float64)
    for c in range(chunks.shape[0]):
        if mask[chunks[c, 0]]:
            partial[c] = _chunk_reduce(c, grad, chunks, norm_type)
    return _finish_norm(grad, chunks, mask, norm_type, partial, norms)


@njit(**_PARALLEL_OPTS)
def _grad_norm_cpu_parallel(grad, chunks, mask, norm_type, norms):
    """As ``_grad_norm_cpu``, chunks reduced in parallel; the same numbers bit for bit."""
    partial = np.zeros(chunks.shape[0], dtype=np.float64)
    for c in prange(chunks.shape[0]):
        if mask[chunks[c, 0]]:
            partial[c] = _chunk_reduce(c, grad, chunks, norm_type)
    return _finish_norm(grad, chunks, mask, norm_type, partial, norms)


@njit(**_OPTS)
def _scale_chunk(c, grad, chunks, mask, coef):
    if not mask[chunks[c, 0]]:
        return
    T = grad.dtype.type
    k = T(coef)
    lo, hi = chunks[c, 1], chunks[c, 2]
    g_ = grad[lo:hi]
    for j in range(hi - lo):
        g_[j] = g_[j] * k


@njit(**_OPTS)
def _scale_grads_cpu(grad, chunks, mask, coef):
    """Multiply the masked parameters' gradients by ``coef`` in place (in grad's dtype)."""
    for c in range(chunks.shape[0]):
        _scale_chunk(c, grad, chunks, mask, coef)


@njit(**_PARALLEL_OPTS)
def _scale_grads_cpu_parallel(grad, chunks, mask, coef):
    for c in prange(chunks.shape[0]):
        _scale_chunk(c, grad, chunks, mask, coef)


@njit(**_OPTS)
def _clamp_chunk(c, grad, chunks, mask, clip_value):
    if not mask[chunks[c, 0]]:
        return
    T = grad.dtype.type
    low = T(-clip_value)
    high = T(clip_value)
    lo, hi = chunks[c, 1], chunks[c, 2]
    g_ = grad[lo:hi]
    for j in range(hi - lo):
        # torch's clamp: NaN grads stay NaN, a NaN bound gives NaN, min > max gives max.
        x = g_[j]
        if x < low or low != low:
            x = low
        if x > high:
            x = high
        g_[j] = x


@njit(**_OPTS)
def _clamp_grads_cpu(grad, chunks, mask, clip_value):
    """Clamp the masked parameters' gradients to ``[-clip_value, clip_value]`` in place."""
    for c in range(chunks.shape[0]):
        _clamp_chunk(c, grad, chunks, mask, clip_value)


@njit(**_PARALLEL_OPTS)
def _clamp_grads_cpu_parallel(grad, chunks, mask, clip_value):
    for c in prange(chunks.shape[0]):
        _clamp_chunk(c, grad, chunks, mask, clip_value)
