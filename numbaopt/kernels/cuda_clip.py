"""Gradient clipping on ``device="cuda"`` arenas: the norm and the scaling on the GPU.

``numbaopt.utils`` calls these for a CUDA arena. The norm is reduced as on the host
(``kernels.cpu``: ``|x|**p`` in the gradient's dtype, summed in float64, rooted in the
dtype): each thread of the block of a chunk sums its elements, the ``(chunks, threads)``
table of partials (8 bytes per thread, not the gradients) comes to the host, and the
host finishes the chunks, the parameters and the total with the CPU code, so the two
agree but for the order of the float64 sums. Scaling and clamping are one launch each.
"""

import math

import numpy as np
from numba import cuda

from . import cuda as kernels
from .cpu import _finish_norm

__all__ = ["grad_norm", "row_partials", "scale_grads", "clamp_grads"]


@cuda.jit(cache=True)
def _partials_cuda(grad, mask, chunks, norm_type, out):
    # out[c, t]: thread t's float64 reduction of its elements of chunk c (masked chunks).
    t = cuda.threadIdx.x
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        acc = math.inf if norm_type == -math.inf else 0.0
        if mask[chunks[c, 0]]:
            for j in range(chunks[c, 1] + t, chunks[c, 2], cuda.blockDim.x):
                a = abs(grad[j])
                if norm_type == math.inf:
                    if a > acc or a != a:
                        acc = a
                elif norm_type == -math.inf:
                    if a < acc or a != a:
                        acc = a
                elif norm_type == 0.0:
                    if a != 0:
                        acc += 1.0
                elif norm_type == 1.0:
                    acc += a
                elif norm_type == 2.0:
                    acc += grad[j] * grad[j]          # the square in the grad's dtype
                else:
                    acc += a ** grad.dtype.type(norm_type)
        out[c, t] = acc


@cuda.jit(cache=True)
def _scale_cuda(grad, mask, chunks, coef):
    t = cuda.threadIdx.x
    k = grad.dtype.type(coef)
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        if mask[chunks[c, 0]]:
            for j in range(chunks[c, 1] + t, chunks[c, 2], cuda.blockDim.x):
                grad[j] = grad[j] * k


@cuda.jit(cache=True)
def _clamp_cuda(grad, mask, chunks, clip_value):
    t = cuda.threadIdx.x
    low = grad.dtype.type(-clip_value)
    high = grad.dtype.type(clip_value)
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        if mask[chunks[c, 0]]:
            for j in range(chunks[c, 1] + t, chunks[c, 2], cuda.blockDim.x):
                # torch's clamp: NaN stays, a NaN bound gives NaN, min > max gives max
                x = grad[j]
                if x < low or low != low:
                    x = low
                if x > high:
                    x = high
                grad[j] = x


def _launch(arena):
    chunks = arena._chunks
    return max(1, chunks.shape[0]), int(kernels.THREADS_PER_BLOCK)


def _chunk_partials(arena, mask, norm_type):
    """Each chunk's float64 reduction (un-rooted), reduced on the device."""
    chunks = arena._chunks
    blocks, tpb = _launch(arena)
    out = cuda.device_array((chunks.shape[0], tpb), dtype=np.float64)
    _partials_cuda[blocks, tpb](arena.grad, cuda.to_device(mask), arena._d_chunks,
                                float(norm_type), out)
    return _reduce(out.copy_to_host(), norm_type)


def _reduce(table, norm_type):
    """Rows of ``table`` reduced as the norm reduces: max / min keeping NaN, else sums."""
    with np.errstate(all="ignore"):
        if norm_type == math.inf:
            return np.where(np.isnan(table).any(1), np.nan, table.max(1, initial=0.0))
        if norm_type == -math.inf:
            return np.where(np.isnan(table).any(1), np.nan, table.min(1, initial=np.inf))
        return table.sum(1)


def grad_norm(arena, mask, norm_type):
    """The total ``norm_type``-norm of the masked parameters' gradients of a CUDA arena, as a
    0-d host array of the arena's dtype (what the CPU kernels give for a host arena)."""
    chunks = arena._chunks
    if chunks.shape[0] == 0:
        return np.array(0.0, dtype=arena.dtype)
    partial = _chunk_partials(arena, mask, norm_type)
    norms = np.empty(mask.shape[0], dtype=np.float64)
    like = np.empty(0, dtype=arena.dtype)
    return np.array(_finish_norm(like, chunks, mask, float(norm_type), partial, norms),
                    dtype=arena.dtype)


def row_partials(arena, mask, norm_type, out):
    """Into ``out``: each row owner's (parameter's, or piece's) un-rooted reduction, as the
    CPU's ``_row_partials`` gives it (a sharded DistributedOptimizer's slices)."""
    start = np.inf if norm_type == -math.inf else 0.0
    out[:] = start
    chunks = arena._chunks
    if chunks.shape[0] == 0:
        return
    partial = _chunk_partials(arena, mask, norm_type)
    owners = chunks[:, 0]
    keep = mask[owners]
    table = np.full((out.shape[0], np.bincount(owners).max(initial=1)), start)
    rank = np.arange(owners.shape[0]) - np.searchsorted(owners, owners)   # (owners sorted)
    table[owners[keep], rank[keep]] = partial[keep]
    out[:] = _reduce(table, norm_type)


def scale_grads(arena, mask, coef):
    """Multiply the masked parameters' gradients by ``coef`` (in the arena's dtype)."""
    blocks, tpb = _launch(arena)
    _scale_cuda[blocks, tpb](arena.grad, cuda.to_device(mask), arena._d_chunks, float(coef))


def clamp_grads(arena, mask, clip_value):
    """Clamp the masked parameters' gradients to ``[-clip_value, clip_value]``."""
    blocks, tpb = _launch(arena)
    _clamp_cuda[blocks, tpb](arena.grad, cuda.to_device(mask), arena._d_chunks,
                             float(clip_value))
