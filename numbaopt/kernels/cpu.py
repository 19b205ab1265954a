"""@njit kernels over the flat arena: the optimizer updates, then gradient clipping and
the data-parallel helper. Nothing else lives here.

Every kernel has the signature

    kernel(param, grad, has_grad, step, group, hyper, chunks, *state)

- ``param``, ``grad``, ``*state``: 1-D arena buffers of one float dtype;
  ``param`` and ``state`` are updated in place, ``grad`` is only read.
- ``has_grad`` (bool, per parameter): parameters without a gradient are skipped.
- ``step`` (float64, per parameter): incremented for each parameter stepped.
- ``group`` (int64, per parameter) and ``hyper`` (float64, groups x options):
  the hyperparameters of parameter ``i`` are ``hyper[group[i]]``, in the column
  order given beside each kernel.
- ``chunks`` (int64, n x 3): ``(param, start, stop)`` pieces of the arena.

Each algorithm has a body, ``_<algo>_chunks(first, last, ...)``, that steps
chunks ``first:last``; it is inlined into two drivers with the kernel
signature: ``_<algo>_cpu`` runs it over all chunks (small arenas: no thread
dispatch), ``_<algo>_cpu_parallel`` runs it on one chunk per iteration of a
``prange`` over the chunks (numba's thread pool). Arithmetic follows torch's
single-tensor implementation operation by operation, in the parameter's dtype;
scalars torch computes as Python floats (bias corrections, step sizes) are
computed in float64 and then cast, as torch casts them. No fastmath: it would
drop NaN/inf semantics.

What keeps the loops fast (measured with benchmarks/):

- Element loops run over ``range(uint64, uint64)`` of the whole buffers:
  numba guards a signed index with a check for negative values, and that
  keeps LLVM from vectorizing the loop (4-5x slower for data in cache).
- Nothing per chunk slices an array or passes one to a function: each costs
  reference counting, ~40 ns per chunk in all, which was most of a step at
  1k parameters in 10 tensors. Bodies are inlined, and SGD's loop is an
  inner function (a closure over the buffers, inlined by numba).
- SGD's loop is cheap enough for its branches to show, so its usual options
  get their own copy of the loop, with the flags passed as constants (LLVM
  does not unswitch five flags by itself). The other algorithms are bound by
  their divisions and square roots, and one loop is as fast.
"""

import numpy as np
from numba import njit, prange

_OPTS = dict(cache=True, error_model="numpy")
_PARALLEL_OPTS = dict(cache=True, error_model="numpy", parallel=True)
_INLINE_OPTS = dict(cache=True, error_model="numpy", inline="always")


@njit(**_OPTS)
def _count_steps(has_grad, step):
    for i in range(has_grad.shape[0]):
        if has_grad[i]:
            step[i] += 1.0


@njit(**_OPTS)
def _lerp(start, end, weight, one_minus_weight, small):
    # torch's lerp: the formula switches at |weight| = 0.5 for accuracy.
    if small:
        return start + weight * (end - start)
    return end - (end - start) * one_minus_weight


# ----------------------------------------------------------------------------- SGD
# hyper columns: lr, momentum, dampening, weight_decay, nesterov, maximize
# step[i] counts the steps taken with momentum, so step == 1 means "no buffer yet".

@njit(**_OPTS)
def _sgd_count_steps(has_grad, step, group, hyper):
    for i in range(has_grad.shape[0]):
        if has_grad[i] and hyper[group[i], 1] != 0.0:
            step[i] += 1.0


@njit(**_INLINE_OPTS)
def _sgd_chunks(first, last, param, grad, has_grad, step, group, hyper, chunks,
                momentum_buffer):
    # Reads grad; updates param and (with momentum) momentum_buffer in place.
    def update(lo, hi, neg_lr, mom, one_minus_dampening, wd,
               maximize, weight_decay, momentum, first_step, nesterov):
        for j in range(lo, hi):
            d = grad[j]
            if maximize:
                d = -d
            if weight_decay:
                d = d + wd * param[j]
            if momentum:
                if first_step:
                    buf = d
                else:
                    buf = momentum_buffer[j] * mom + one_minus_dampening * d
                momentum_buffer[j] = buf
                if nesterov:
                    d = d + mom * buf
                else:
                    d = buf
            param[j] = param[j] + neg_lr * d

    T = param.dtype.type
    for c in range(first, last):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        h = hyper[group[i]]
        momentum = h[1] != 0.0
        weight_decay = h[3] != 0.0
        nesterov = h[4] != 0.0
        maximize = h[5] != 0.0
        neg_lr = T(-h[0])
        mom = T(h[1])
        one_minus_dampening = T(1.0 - h[2])
        wd = T(h[3])
        # torch starts the momentum buffer at the first gradient, without dampening.
        first_step = step[i] == 1.0
        lo, hi = np.uint64(chunks[c, 1]), np.uint64(chunks[c, 2])
        # Steady-state steps of the usual options run a copy of the loop with constant
        # flags (the general loop computes every branch and selects: ~1.4x slower).
        if maximize or nesterov or (momentum and first_step):
            update(lo, hi, neg_lr, mom, one_minus_dampening, wd,
                   maximize, weight_decay, momentum, first_step, nesterov)
        elif momentum and weight_decay:
            update(lo, hi, neg_lr, mom, one_minus_dampening, wd,
                   False, True, True, False, False)
        elif momentum:
            update(lo, hi, neg_lr, mom, one_minus_dampening, wd,
                   False, False, True, False, False)
        elif weight_decay:
            update(lo, hi, neg_lr, mom, one_minus_dampening, wd,
                   False, True, False, False, False)
        else:
            update(lo, hi, neg_lr, mom, one_minus_dampening, wd,
                   False, False, False, False, False)


@njit(**_OPTS)
def _sgd_cpu(param, grad, has_grad, step, group, hyper, chunks, momentum_buffer):
    _sgd_count_steps(has_grad, step, group, hyper)
    _sgd_chunks(0, chunks.shape[0], param, grad, has_grad, step, group, hyper, chunks,
                momentum_buffer)


@njit(**_PARALLEL_OPTS)
def _sgd_cpu_parallel(param, grad, has_grad, step, group, hyper, chunks, momentum_buffer):
    _sgd_count_steps(has_grad, step, group, hyper)
    for c in prange(chunks.shape[0]):
        _sgd_chunks(c, c + 1, param, grad, has_grad, step, group, hyper, chunks,
                    momentum_buffer)


# ---------------------------------------------------------------------------- Adam
# hyper columns: lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
#                decoupled_weight_decay (AdamW)

@njit(**_INLINE_OPTS)
def _adam_chunks(first, last, param, grad, has_grad, step, group, hyper, chunks,
                 exp_avg, exp_avg_sq, max_exp_avg_sq):
    # Reads grad; updates param, exp_avg, exp_avg_sq and (amsgrad) max_exp_avg_sq in place.
    # Without amsgrad max_exp_avg_sq is empty, and never read.
    T = param.dtype.type
    for c in range(first, last):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        h = hyper[group[i]]
        lr = h[0]
        beta1 = h[1]
        beta2 = h[2]
        weight_decay = h[4]
        amsgrad = h[5] != 0.0
        maximize = h[6] != 0.0
        decoupled = h[7] != 0.0
        # Python floats in torch (float64 here), cast to the dtype where they meet tensors.
        t = step[i]
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        neg_step_size = T(-(lr / bias_correction1))
        bias_correction2_sqrt = T(bias_correction2 ** 0.5)
        eps = T(h[3])
        w1 = T(1.0 - beta1)
        one_minus_w1 = T(1.0) - w1
        small = abs(1.0 - beta1) < 0.5
        b2 = T(beta2)
        one_minus_b2 = T(1.0 - beta2)
        wd = T(weight_decay)
        decay = T(1.0 - lr * weight_decay)
        for j in range(np.uint64(chunks[c, 1]), np.uint64(chunks[c, 2])):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay != 0.0:
                if decoupled:
                    p = p * decay
                else:
                    d = d + wd * p
            m = _lerp(exp_avg[j], d, w1, one_minus_w1, small)
            v = exp_avg_sq[j] * b2 + one_minus_b2 * d * d
            exp_avg[j] = m
            exp_avg_sq[j] = v
            if amsgrad:
                vmax = max_exp_avg_sq[j]
                if v > vmax or v != v:    # torch.maximum propagates NaN from either side
                    vmax = v
                max_exp_avg_sq[j] = vmax
                v = vmax
            denom = np.sqrt(v) / bias_correction2_sqrt + eps
            param[j] = p + neg_step_size * m / denom


@njit(**_OPTS)
def _adam_cpu(param, grad, has_grad, step, group, hyper, chunks,
              exp_avg, exp_avg_sq, max_exp_avg_sq):
    _count_steps(has_grad, step)
    _adam_chunks(0, chunks.shape[0], param, grad, has_grad, step, group, hyper, chunks,
                 exp_avg, exp_avg_sq, max_exp_avg_sq)


@njit(**_PARALLEL_OPTS)
def _adam_cpu_parallel(param, grad, has_grad, step, group, hyper, chunks,
                       exp_avg, exp_avg_sq, max_exp_avg_sq):
    _count_steps(has_grad, step)
    for c in prange(chunks.shape[0]):
        _adam_chunks(c, c + 1, param, grad, has_grad, step, group, hyper, chunks,
                     exp_avg, exp_avg_sq, max_exp_avg_sq)


# ------------------------------------------------------------------------- RMSprop
# hyper columns: lr, alpha, eps, weight_decay, momentum, centered, maximize

@njit(**_INLINE_OPTS)
def _rmsprop_chunks(first, last, param, grad, has_grad, step, group, hyper, chunks,
                    square_avg, momentum_buffer, grad_avg):
    # Reads grad; updates param, square_avg and, when used, momentum_buffer and grad_avg
    # (empty buffers otherwise, never read).
    T = param.dtype.type
    minus_one = T(-1.0)
    for c in range(first, last):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        h = hyper[group[i]]
        alpha = h[1]
        weight_decay = h[3]
        momentum = h[4]
        centered = h[5] != 0.0
        maximize = h[6] != 0.0
        neg_lr = T(-h[0])
        eps = T(h[2])
        a = T(alpha)
        w = T(1.0 - alpha)
        one_minus_w = T(1.0) - w
        small = abs(1.0 - alpha) < 0.5
        mom = T(momentum)
        wd = T(weight_decay)
        for j in range(np.uint64(chunks[c, 1]), np.uint64(chunks[c, 2])):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay != 0.0:
                d = d + wd * p
            sq = square_avg[j] * a + w * d * d
            square_avg[j] = sq
            if centered:
                ga = _lerp(grad_avg[j], d, w, one_minus_w, small)
                grad_avg[j] = ga
                avg = np.sqrt(sq + minus_one * ga * ga)
            else:
                avg = np.sqrt(sq)
            avg = avg + eps
            if momentum > 0.0:
                buf = momentum_buffer[j] * mom + d / avg
                momentum_buffer[j] = buf
                param[j] = p + neg_lr * buf
            else:
                param[j] = p + neg_lr * d / avg


@njit(**_OPTS)
def _rmsprop_cpu(param, grad, has_grad, step, group, hyper, chunks,
                 square_avg, momentum_buffer, grad_avg):
    _count_steps(has_grad, step)
    _rmsprop_chunks(0, chunks.shape[0], param, grad, has_grad, step, group, hyper, chunks,
                    square_avg, momentum_buffer, grad_avg)


@njit(**_PARALLEL_OPTS)
def _rmsprop_cpu_parallel(param, grad, has_grad, step, group, hyper, chunks,
                          square_avg, momentum_buffer, grad_avg):
    _count_steps(has_grad, step)
    for c in prange(chunks.shape[0]):
        _rmsprop_chunks(c, c + 1, param, grad, has_grad, step, group, hyper, chunks,
                        square_avg, momentum_buffer, grad_avg)


# ------------------------------------------------------------------------- Adagrad
# hyper columns: lr, lr_decay, weight_decay, eps, maximize

@njit(**_INLINE_OPTS)
def _adagrad_chunks(first, last, param, grad, has_grad, step, group, hyper, chunks,
                    state_sum):
    # Reads grad; updates param and state_sum in place.
    T = param.dtype.type
    for c in range(first, last):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        h = hyper[group[i]]
        weight_decay = h[2]
        maximize = h[4] != 0.0
        clr = h[0] / (1.0 + (step[i] - 1.0) * h[1])
        neg_clr = T(-clr)
        eps = T(h[3])
        wd = T(weight_decay)
        for j in range(np.uint64(chunks[c, 1]), np.uint64(chunks[c, 2])):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay != 0.0:
                d = d + wd * p
            s = state_sum[j] + d * d
            state_sum[j] = s
            std = np.sqrt(s) + eps
            param[j] = p + neg_clr * d / std


@njit(**_OPTS)
def _adagrad_cpu(param, grad, has_grad, step, group, hyper, chunks, state_sum):
    _count_steps(has_grad, step)
    _adagrad_chunks(0, chunks.shape[0], param, grad, has_grad, step, group, hyper, chunks,
                    state_sum)


@njit(**_PARALLEL_OPTS)
def _adagrad_cpu_parallel(param, grad, has_grad, step, group, hyper, chunks, state_sum):
    _count_steps(has_grad, step)
    for c in prange(chunks.shape[0]):
        _adagrad_chunks(c, c + 1, param, grad, has_grad, step, group, hyper, chunks,
                        state_sum)


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
