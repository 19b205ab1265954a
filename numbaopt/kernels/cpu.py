"""@njit update kernels over the flat arena. Nothing else lives here.

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

Each algorithm has a chunk body and two drivers with the same signature:
``_<algo>_cpu`` loops over chunks serially (small arenas: no thread dispatch),
``_<algo>_cpu_parallel`` hands chunks to numba's thread pool with ``prange``.
Arithmetic follows torch's single-tensor implementation operation by
operation, in the parameter's dtype; scalars torch computes as Python floats
(bias corrections, step sizes) are computed in float64 and then cast, as
torch casts them. No fastmath: it would drop NaN/inf semantics.
"""

import numpy as np
from numba import njit, prange

_OPTS = dict(cache=True, error_model="numpy")
_PARALLEL_OPTS = dict(cache=True, error_model="numpy", parallel=True)


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


@njit(**_OPTS)
def _sgd_chunk(c, param, grad, has_grad, step, group, hyper, chunks, momentum_buffer):
    i = chunks[c, 0]
    if not has_grad[i]:
        return
    g = group[i]
    T = param.dtype.type
    momentum = hyper[g, 1]
    weight_decay = hyper[g, 3]
    nesterov = hyper[g, 4] != 0.0
    maximize = hyper[g, 5] != 0.0
    neg_lr = T(-hyper[g, 0])
    mom = T(momentum)
    one_minus_dampening = T(1.0 - hyper[g, 2])
    wd = T(weight_decay)
    # torch starts the momentum buffer at the first gradient, without dampening.
    first = step[i] == 1.0
    for j in range(chunks[c, 1], chunks[c, 2]):
        d = grad[j]
        if maximize:
            d = -d
        if weight_decay != 0.0:
            d = d + wd * param[j]
        if momentum != 0.0:
            if first:
                buf = d
            else:
                buf = momentum_buffer[j] * mom + one_minus_dampening * d
            momentum_buffer[j] = buf
            if nesterov:
                d = d + mom * buf
            else:
                d = buf
        param[j] = param[j] + neg_lr * d


@njit(**_OPTS)
def _sgd_cpu(param, grad, has_grad, step, group, hyper, chunks, momentum_buffer):
    _sgd_count_steps(has_grad, step, group, hyper)
    for c in range(chunks.shape[0]):
        _sgd_chunk(c, param, grad, has_grad, step, group, hyper, chunks, momentum_buffer)


@njit(**_PARALLEL_OPTS)
def _sgd_cpu_parallel(param, grad, has_grad, step, group, hyper, chunks, momentum_buffer):
    _sgd_count_steps(has_grad, step, group, hyper)
    for c in prange(chunks.shape[0]):
        _sgd_chunk(c, param, grad, has_grad, step, group, hyper, chunks, momentum_buffer)


# ---------------------------------------------------------------------------- Adam
# hyper columns: lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
#                decoupled_weight_decay (AdamW)

@njit(**_OPTS)
def _adam_chunk(c, param, grad, has_grad, step, group, hyper, chunks,
                exp_avg, exp_avg_sq, max_exp_avg_sq):
    i = chunks[c, 0]
    if not has_grad[i]:
        return
    g = group[i]
    T = param.dtype.type
    lr = hyper[g, 0]
    beta1 = hyper[g, 1]
    beta2 = hyper[g, 2]
    weight_decay = hyper[g, 4]
    amsgrad = hyper[g, 5] != 0.0
    maximize = hyper[g, 6] != 0.0
    decoupled = hyper[g, 7] != 0.0
    # Python floats in torch (float64 here), cast to the dtype where they meet tensors.
    t = step[i]
    bias_correction1 = 1.0 - beta1 ** t
    bias_correction2 = 1.0 - beta2 ** t
    neg_step_size = T(-(lr / bias_correction1))
    bias_correction2_sqrt = T(bias_correction2 ** 0.5)
    eps = T(hyper[g, 3])
    w1 = T(1.0 - beta1)
    one_minus_w1 = T(1.0) - w1
    small = abs(1.0 - beta1) < 0.5
    b2 = T(beta2)
    one_minus_b2 = T(1.0 - beta2)
    wd = T(weight_decay)
    decay = T(1.0 - lr * weight_decay)
    for j in range(chunks[c, 1], chunks[c, 2]):
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
    for c in range(chunks.shape[0]):
        _adam_chunk(c, param, grad, has_grad, step, group, hyper, chunks,
                    exp_avg, exp_avg_sq, max_exp_avg_sq)


@njit(**_PARALLEL_OPTS)
def _adam_cpu_parallel(param, grad, has_grad, step, group, hyper, chunks,
                       exp_avg, exp_avg_sq, max_exp_avg_sq):
    _count_steps(has_grad, step)
    for c in prange(chunks.shape[0]):
        _adam_chunk(c, param, grad, has_grad, step, group, hyper, chunks,
                    exp_avg, exp_avg_sq, max_exp_avg_sq)


# ------------------------------------------------------------------------- RMSprop
# hyper columns: lr, alpha, eps, weight_decay, momentum, centered, maximize

@njit(**_OPTS)
def _rmsprop_chunk(c, param, grad, has_grad, step, group, hyper, chunks,
                   square_avg, momentum_buffer, grad_avg):
    i = chunks[c, 0]
    if not has_grad[i]:
        return
    g = group[i]
    T = param.dtype.type
    alpha = hyper[g, 1]
    weight_decay = hyper[g, 3]
    momentum = hyper[g, 4]
    centered = hyper[g, 5] != 0.0
    maximize = hyper[g, 6] != 0.0
    neg_lr = T(-hyper[g, 0])
    eps = T(hyper[g, 2])
    a = T(alpha)
    w = T(1.0 - alpha)
    one_minus_w = T(1.0) - w
    small = abs(1.0 - alpha) < 0.5
    minus_one = T(-1.0)
    mom = T(momentum)
    wd = T(weight_decay)
    for j in range(chunks[c, 1], chunks[c, 2]):
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
    for c in range(chunks.shape[0]):
        _rmsprop_chunk(c, param, grad, has_grad, step, group, hyper, chunks,
                       square_avg, momentum_buffer, grad_avg)


@njit(**_PARALLEL_OPTS)
def _rmsprop_cpu_parallel(param, grad, has_grad, step, group, hyper, chunks,
                          square_avg, momentum_buffer, grad_avg):
    _count_steps(has_grad, step)
    for c in prange(chunks.shape[0]):
        _rmsprop_chunk(c, param, grad, has_grad, step, group, hyper, chunks,
                       square_avg, momentum_buffer, grad_avg)


# ------------------------------------------------------------------------- Adagrad
# hyper columns: lr, lr_decay, weight_decay, eps, maximize

@njit(**_OPTS)
def _adagrad_chunk(c, param, grad, has_grad, step, group, hyper, chunks, state_sum):
    i = chunks[c, 0]
    if not has_grad[i]:
        return
    g = group[i]
    T = param.dtype.type
    weight_decay = hyper[g, 2]
    maximize = hyper[g, 4] != 0.0
    clr = hyper[g, 0] / (1.0 + (step[i] - 1.0) * hyper[g, 1])
    neg_clr = T(-clr)
    eps = T(hyper[g, 3])
    wd = T(weight_decay)
    for j in range(chunks[c, 1], chunks[c, 2]):
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
    for c in range(chunks.shape[0]):
        _adagrad_chunk(c, param, grad, has_grad, step, group, hyper, chunks, state_sum)


@njit(**_PARALLEL_OPTS)
def _adagrad_cpu_parallel(param, grad, has_grad, step, group, hyper, chunks, state_sum):
    _count_steps(has_grad, step)
    for c in prange(chunks.shape[0]):
        _adagrad_chunk(c, param, grad, has_grad, step, group, hyper, chunks, state_sum)
