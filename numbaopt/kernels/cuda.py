"""@cuda.jit twins of the kernels in ``cpu.py``, and the host code that launches them.

Imported lazily by the host (``numba.cuda`` comes from the optional ``numba-cuda``
package). Every update kernel takes the CPU kernels' arguments, as device arrays:

    kernel(param, grad, has_grad, step, group, hyper, chunks, *state)

with the same hyper columns (given beside each kernel) and the same arithmetic,
operation by operation, in the parameter's dtype. No fastmath. One difference
the compiler brings and no option of numba-cuda removes: NVVM contracts a
multiply followed by an add into one fused multiply-add (torch's CPU kernels
do too), so on a GPU float32 results agree with the CPU kernels to rounding,
not bit for bit. Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) they match.

A step is ONE launch (``launch``, or the callables ``sgd``, ``adam``, ``adamw``,
``rmsprop``, ``adagrad`` with the CPU kernels' signature). Each block takes chunks
``blockIdx.x, blockIdx.x + gridDim.x, ...`` of the ``chunks`` table and its
threads stride through the chunk (thread ``t`` does elements ``start + t,
start + t + blockDim.x, ...``: coalesced). A chunk never straddles two
parameters, so a block reads its parameter's flag, group and step once per
chunk, with no search per element, and skips whole chunks of parameters
without a gradient.

The one difference from the CPU signature: on the GPU ``step`` holds a count
per CHUNK, not per parameter. Every chunk of a parameter advances together
(they share the has-grad flag), so the counts stay equal, and each block
advances only the counters of its own chunks: no two blocks touch one counter,
so a single launch is race-free (a per-parameter counter would need a second
launch, since blocks of one parameter run in no order). ``chunk_steps`` and
``param_steps`` convert between the two layouts.

The arena's own ``chunks`` table works; ``chunk_table(offsets)`` builds one
with GPU-sized chunks (``CHUNK``), so a mid-sized arena still makes enough
blocks to fill the device.
"""

import math

import numpy as np
from numba import config, cuda

__all__ = ["CHUNK", "THREADS_PER_BLOCK", "Launcher", "adagrad", "adam", "adamw", "chunk_steps",
           "chunk_table", "param_steps",
           "grads_finite", "launch", "rmsprop", "sgd"]

#: Threads per block of every launch, read at each launch (tests set it tiny).
THREADS_PER_BLOCK = 256

#: Elements per chunk for ``chunk_table``: 16 per thread of a 256-thread block, and
#: ~250 blocks for a million elements (the CPU's 16384 would give 61: too few for a GPU).
CHUNK = 1 << 12


def chunk_table(offsets, chunk=None):
    """``(nchunks, 3)`` int64 rows ``(param, start, stop)``: the arena's table with ``chunk``.

    ``offsets`` is ``arena.offsets``; ``chunk`` defaults to the module's ``CHUNK``
    (read at each call). A zero-size parameter keeps one empty chunk, as in
    ``numbaopt.arena``; chunks never straddle two parameters.
    """
    from ..arena import _chunk_table   # the CPU arena's table, with a GPU-sized chunk
    return _chunk_table(offsets, int(CHUNK if chunk is None else chunk))


@cuda.jit(device=True)
def _lerp(start, end, weight, one_minus_weight, small):
    # torch's lerp: the formula switches at |weight| = 0.5 for accuracy.
    if small:
        return start + weight * (end - start)
    return end - (end - start) * one_minus_weight


if config.ENABLE_CUDASIM:
    # The simulator runs device functions as Python, where math.sqrt raises on a
    # negative number; the GPU's sqrt (and np.sqrt) gives NaN, as torch does.
    _sqrt = np.sqrt
else:
    @cuda.jit(device=True)
    def _sqrt(x):
        # math.sqrt: numba-cuda has no np.sqrt in kernels. IEEE sqrt.rn without fastmath.
        return math.sqrt(x)


@cuda.jit(device=True)
def _advance(step, c, increment):
    # The chunk's new count; every thread reads the old one before thread 0 writes it.
    t = step[c] + increment
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        step[c] = t
    return t


def chunk_steps(param_steps, chunks):
    """Per-chunk step counts (the GPU layout) from per-parameter counts."""
    return np.ascontiguousarray(np.asarray(param_steps, dtype=np.float64)[chunks[:, 0]])


def param_steps(chunk_steps, chunks):
    """Per-parameter step counts from per-chunk counts (each parameter's first chunk)."""
    chunk_steps = np.asarray(chunk_steps)
    first = np.ones(chunks.shape[0], dtype=np.bool_)
    first[1:] = chunks[1:, 0] != chunks[:-1, 0]
    return chunk_steps[first]


# ---------------------------------------------------------------------------- SGD
# hyper columns: lr, momentum, dampening, weight_decay, nesterov, maximize
# step counts the steps taken with momentum, so step == 1 means "no buffer yet".

@cuda.jit(cache=True)
def _sgd_cuda(param, grad, has_grad, step, group, hyper, chunks, momentum_buffer):
    # Reads grad, has_grad, step; updates param and momentum_buffer in place.
    T = param.dtype.type
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        g = group[i]
        momentum = hyper[g, 1]
        weight_decay = hyper[g, 3]
        nesterov = hyper[g, 4] != 0.0
        maximize = hyper[g, 5] != 0.0
        neg_lr = T(-hyper[g, 0])
        mom = T(momentum)
        one_minus_dampening = T(1.0 - hyper[g, 2])
        wd = T(weight_decay)
        # torch starts the momentum buffer at the first gradient, without dampening.
        first = _advance(step, c, 1.0 if momentum != 0.0 else 0.0) == 1.0
        for j in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
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


# --------------------------------------------------------------------------- Adam
# hyper columns: lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
#                decoupled_weight_decay (AdamW)

@cuda.jit(cache=True)
def _adam_cuda(param, grad, has_grad, step, group, hyper, chunks,
               exp_avg, exp_avg_sq, max_exp_avg_sq):
    # Reads grad, has_grad, step; updates param and the three moments in place.
    T = param.dtype.type
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        g = group[i]
        lr = hyper[g, 0]
        beta1 = hyper[g, 1]
        beta2 = hyper[g, 2]
        weight_decay = hyper[g, 4]
        amsgrad = hyper[g, 5] != 0.0
        maximize = hyper[g, 6] != 0.0
        decoupled = hyper[g, 7] != 0.0
        # Python floats in torch (float64 here), cast to the dtype where they meet tensors.
        t = _advance(step, c, 1.0)
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
        for j in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
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
            denom = T(_sqrt(v)) / bias_correction2_sqrt + eps
            param[j] = p + neg_step_size * m / denom


# ------------------------------------------------------------------------ RMSprop
# hyper columns: lr, alpha, eps, weight_decay, momentum, centered, maximize

@cuda.jit(cache=True)
def _rmsprop_cuda(param, grad, has_grad, step, group, hyper, chunks,
                  square_avg, momentum_buffer, grad_avg):
    # Reads grad, has_grad; updates param, square_avg, momentum_buffer, grad_avg and the
    # chunk step counts in place.
    T = param.dtype.type
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        _advance(step, c, 1.0)
        g = group[i]
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
        for j in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
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
                avg = T(_sqrt(sq + minus_one * ga * ga))
            else:
                avg = T(_sqrt(sq))
            avg = avg + eps
            if momentum > 0.0:
                buf = momentum_buffer[j] * mom + d / avg
                momentum_buffer[j] = buf
                param[j] = p + neg_lr * buf
            else:
                param[j] = p + neg_lr * d / avg


# ------------------------------------------------------------------------ Adagrad
# hyper columns: lr, lr_decay, weight_decay, eps, maximize

@cuda.jit(cache=True)
def _adagrad_cuda(param, grad, has_grad, step, group, hyper, chunks, state_sum):
    # Reads grad, has_grad, step; updates param and state_sum in place.
    T = param.dtype.type
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        g = group[i]
        weight_decay = hyper[g, 2]
        maximize = hyper[g, 4] != 0.0
        t = _advance(step, c, 1.0)
        clr = hyper[g, 0] / (1.0 + (t - 1.0) * hyper[g, 1])
        neg_clr = T(-clr)
        eps = T(hyper[g, 3])
        wd = T(weight_decay)
        for j in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
            d = grad[j]
            if maximize:
                d = -d
            p = param[j]
            if weight_decay != 0.0:
                d = d + wd * p
            s = state_sum[j] + d * d
            state_sum[j] = s
            std = T(_sqrt(s)) + eps
            param[j] = p + neg_clr * d / std


# ------------------------------------------------------------------ skip_nonfinite

@cuda.jit(cache=True)
def _grads_nonfinite_cuda(grad, has_grad, chunks, found):
    # Reads grad over the chunks of parameters with a gradient; sets found[0] = 1 at a
    # NaN or inf (every writer writes the same value, so the race is benign).
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        if not has_grad[chunks[c, 0]]:
            continue
        for j in range(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x):
            if not math.isfinite(grad[j]):
                found[0] = 1


def grads_finite(grad, has_grad, chunks, threads_per_block=None, blocks=None, stream=0):
    """Twin of ``finite.grads_finite``: True when every gradient the step would read is finite.

    Device arrays in; returns a Python bool, so it waits for the stream (one small
    device-to-host copy).
    """
    tpb = int(THREADS_PER_BLOCK if threads_per_block is None else threads_per_block)
    nchunks = chunks.shape[0]
    if nchunks == 0:
        return True
    found = cuda.to_device(np.zeros(1, dtype=np.int32), stream=stream)
    nblocks = nchunks if blocks is None else max(1, min(int(blocks), nchunks))
    _grads_nonfinite_cuda[nblocks, tpb, stream](grad, has_grad, chunks, found)
    return not found.copy_to_host(stream=stream)[0]


# ------------------------------------------------------------------------ launching

class Launcher:
    """One optimizer step on device arrays, callable like the CPU kernels.

    ``launcher(param, grad, has_grad, step, group, hyper, chunks, *state)`` with
    ``numba.cuda`` device arrays (host arrays would be copied both ways at every
    launch; ``step`` per chunk, see the module docstring) makes one launch on
    ``stream`` (default: the default stream; asynchronous). ``threads_per_block``
    defaults to the module's ``THREADS_PER_BLOCK``; ``blocks`` (default: one per
    chunk) may be smaller, each block then walks several chunks.
    """

    def __init__(self, name, update):
        self.name = name
        self.update = update

    def __call__(self, *args, threads_per_block=None, blocks=None, stream=0):
        tpb = int(THREADS_PER_BLOCK if threads_per_block is None else threads_per_block)
        nchunks = args[6].shape[0]
        if nchunks == 0:
            return
        nblocks = nchunks if blocks is None else max(1, min(int(blocks), nchunks))
        self.update[nblocks, tpb, stream](*args)

    def __repr__(self):
        return f"<numbaopt CUDA step {self.name!r}>"


sgd = Launcher("sgd", _sgd_cuda)
adam = Launcher("adam", _adam_cuda)
adamw = adam    # AdamW is Adam with decoupled_weight_decay set in its hyper row
rmsprop = Launcher("rmsprop", _rmsprop_cuda)
adagrad = Launcher("adagrad", _adagrad_cuda)

_LAUNCHERS = {"sgd": sgd, "adam": adam, "adamw": adamw, "rmsprop": rmsprop, "adagrad": adagrad}


def launch(algorithm, args, threads_per_block=None, blocks=None, stream=0):
    """One step of ``algorithm`` ("sgd", "adam", "adamw", "rmsprop", "adagrad") on ``args``.

    ``args`` is the CPU kernels' argument tuple as device arrays; see ``Launcher``.
    """
    _LAUNCHERS[algorithm.lower()](*args, threads_per_block=threads_per_block, blocks=blocks,
                                  stream=stream)


# ------------------------------------------------------------ data parallel (distributed.py)

@cuda.jit(cache=True)
def _zero_missing_grads_cuda(grad, has_grad, offsets):
    # Zeroes element j of grad when its parameter has no gradient (one thread per element;
    # a binary search of offsets finds the parameter).
    j = cuda.grid(1)
    if j >= grad.shape[0]:
        return
    lo, hi = 0, has_grad.shape[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if offsets[mid] <= j:
            lo = mid
        else:
            hi = mid
    if not has_grad[lo]:
        grad[j] = 0


@cuda.jit(cache=True)
def _scale_cuda(grad, size):
    # grad /= size, one thread per element (the average after a SUM Allreduce).
    j = cuda.grid(1)
    if j < grad.shape[0]:
        grad[j] = grad[j] / size
