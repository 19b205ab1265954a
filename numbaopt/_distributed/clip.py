"""Gradient clipping of a DistributedOptimizer: of the averaged gradients, as in torch's DDP.

``numbaopt.utils.clip_grad_norm_(dist_opt, ...)`` (and ``clip_grad_value_``,
``clip_grads_with_norm_``) land here: ``synchronize()`` averages the gradients
first, so every rank clips the same gradient, the one a single process would
have. Plain, that is the wrapped optimizer's ``arena.grad`` and the ordinary
clipping. Sharded, each rank holds the averaged gradient of its slice only; the
total norm is then built from per-parameter partial reductions (the float64 sums
of ``|g|**p``, or max / min, or counts) of every slice, combined with one
Allreduce and finished exactly as ``numbaopt.utils`` finishes a norm.
"""

import math

import numpy as np
from mpi4py import MPI
from numba import njit, prange

from .. import utils
from ..kernels.cpu import (_chunk_reduce, _clamp_grads_cpu, _clamp_grads_cpu_parallel, _combine,
                           _finish_norm, _scale_grads_cpu, _scale_grads_cpu_parallel)
from .control import CLIP


@njit(cache=True, error_model="numpy")
def _row_partials(grad, chunks, mask, norm_type, out):
    """Per row owner (a parameter, or a piece of one) of ``chunks``: the un-rooted reduction
    of its gradient, as ``utils``' norm kernels form it. Reads ``grad``; writes ``out``."""
    start = np.inf if norm_type == -np.inf else 0.0
    out[:] = start
    for c in range(chunks.shape[0]):
        i = chunks[c, 0]
        if mask[i]:
            out[i] = _combine(out[i], _chunk_reduce(c, grad, chunks, norm_type), norm_type)


@njit(cache=True, error_model="numpy", parallel=True)
def _row_partials_parallel(grad, chunks, mask, norm_type, out):
    start = np.inf if norm_type == -np.inf else 0.0
    partial = np.zeros(chunks.shape[0], dtype=np.float64)
    for c in prange(chunks.shape[0]):
        if mask[chunks[c, 0]]:
            partial[c] = _chunk_reduce(c, grad, chunks, norm_type)
    out[:] = start
    for c in range(chunks.shape[0]):
        i = chunks[c, 0]
        if mask[i]:
            out[i] = _combine(out[i], partial[c], norm_type)


def clip_grad_norm(dist, max_norm, norm_type, error_if_nonfinite):
    """``utils.clip_grad_norm_`` of the gradients averaged over the ranks; the total norm."""
    norm_type, max_norm = float(norm_type), float(max_norm)
    dist.synchronize()
    if not dist.shard:
        return utils.clip_grad_norm_(dist.optimizer, max_norm, norm_type, error_if_nonfinite)
    total = global_norm(dist, norm_type)
    utils._check_finite(total, norm_type, error_if_nonfinite)
    _scale_slice(dist, max_norm, total)
    return total


def clip_grads_with_norm(dist, max_norm, total_norm):
    """``utils.clip_grads_with_norm_`` of the averaged gradients."""
    max_norm = float(max_norm)
    total = utils._as_total_norm(total_norm)
    dist.synchronize()
    if not dist.shard:
        utils.clip_grads_with_norm_(dist.optimizer, max_norm, total)
        return
    _scale_slice(dist, max_norm, total)


def clip_grad_value(dist, clip_value):
    """``utils.clip_grad_value_`` of the averaged gradients (elementwise: no communication)."""
    clip_value = float(clip_value)
    dist.synchronize()
    if not dist.shard:
        return utils.clip_grad_value_(dist.optimizer, clip_value)
    if dist._arena.is_complex[dist._arena.has_grad].any():
        raise RuntimeError("clamp is not supported for complex types (clip_grad_value_ of a "
                           "complex gradient, as in torch)")
    la = dist._local.arena
    if not isinstance(la.grad, np.ndarray):
        from ..kernels import cuda_clip
        cuda_clip.clamp_grads(la, la.has_grad, clip_value)
        return None
    parallel = la.size >= dist._local.parallel_threshold
    (_clamp_grads_cpu_parallel if parallel else _clamp_grads_cpu)(
        la.grad, la.chunks, la.has_grad, clip_value)
    return None


def global_norm(dist, norm_type):
    """The total norm of the averaged gradient, sharded: every rank gets the same value."""
    arena, local = dist._arena, dist._local
    la = local.arena
    mask = arena.has_grad                 # OR-ed over the ranks by synchronize()
    if not mask.any():
        return np.array(0.0, dtype=np.float32)
    if norm_type == math.inf or norm_type < 0:
        sizes = np.diff(arena.offsets)
        utils._check_empty([(i, sizes[i]) for i in np.flatnonzero(mask & (sizes == 0))],
                           norm_type)
    if norm_type != 2 and arena.is_complex[mask].any():
        # (every rank sees the same flags and norm_type, so every rank raises)
        raise NotImplementedError(
            f"clip_grad_norm_ of order {norm_type:g} over complex parameters with shard=True: "
            "a shard may end between the real and imaginary part of an element, and this "
            "norm needs their modulus. Use norm_type=2 (the same for pairs and moduli) or "
            "shard=False")
    dist._round(CLIP)
    n = len(arena)
    pieces = np.empty(len(la), dtype=np.float64)
    if not isinstance(la.grad, np.ndarray):
        from ..kernels import cuda_clip           # a GPU slice: reduced on the device
        cuda_clip.row_partials(la, la.has_grad, norm_type, pieces)
    else:
        kernel = _row_partials_parallel if la.size >= local.parallel_threshold \
            else _row_partials
        kernel(la.grad, la.chunks, la.has_grad, norm_type, pieces)
    # One vector: the partials, then NaN flags. MPI's MAX and MIN need not propagate NaN,
    # so a NaN travels as a flag (MAX of 1, or MIN of -1) and is put back after.
    if norm_type == math.inf:
        op, identity, flag = MPI.MAX, 0.0, 1.0
    elif norm_type == -math.inf:
        op, identity, flag = MPI.MIN, math.inf, -1.0
    else:
        op, identity, flag = MPI.SUM, 0.0, 0.0   # a sum carries NaN by itself
    vector = np.zeros(2 * n, dtype=np.float64)
    vector[:n] = identity
    nan = np.isnan(pieces)
    vector[dist._piece_param] = np.where(nan, identity, pieces) if flag else pieces
    if flag:
        vector[n + dist._piece_param] = np.where(nan, flag, 0.0)
    dist._comm.Allreduce(MPI.IN_PLACE, vector, op=op)
    partial = vector[:n]
    if flag:
        partial[vector[n:] != 0] = np.nan
    rows = np.zeros((n, 3), dtype=np.int64)     # one "chunk" per parameter: its partial
    rows[:, 0] = np.arange(n)
    norms = np.empty(n, dtype=np.float64)
    total = _finish_norm(np.empty(0, arena.dtype), rows, mask, norm_type, partial, norms)
    return np.array(total, dtype=arena.dtype)


def _scale_slice(dist, max_norm, total):
    with np.errstate(all="ignore"):
        coef = utils._clip_coef(total, max_norm)
    if coef == 1:
        return            # multiplying by 1 changes no bit
    local = dist._local
    la = local.arena
    if not isinstance(la.grad, np.ndarray):
        from ..kernels import cuda_clip
        cuda_clip.scale_grads(la, la.has_grad, coef)
        return
    parallel = la.size >= local.parallel_threshold
    (_scale_grads_cpu_parallel if parallel else _scale_grads_cpu)(
        la.grad, la.chunks, la.has_grad, float(coef))


class ClippingCalls:
    """The clipping entry points of DistributedOptimizer (``numbaopt.utils`` calls them)."""

    def _clip_grad_norm_(self, max_norm, norm_type=2.0, error_if_nonfinite=False):
        if self._parts is not None:
            return self._mixed_clip_grad_norm(max_norm, norm_type, error_if_nonfinite)
        return clip_grad_norm(self, max_norm, norm_type, error_if_nonfinite)

    def _clip_grads_with_norm_(self, max_norm, total_norm):
        if self._parts is not None:
            for part in self._parts:
                part._clip_grads_with_norm_(max_norm, total_norm)
            return None
        return clip_grads_with_norm(self, max_norm, total_norm)

    def _clip_grad_value_(self, clip_value):
        if self._parts is not None:
            for part in self._parts:
                part._clip_grad_value_(clip_value)
            return None
        return clip_grad_value(self, clip_value)

    def _clipping_parameters(self):
        """utils clips this optimizer's parameters (or the wrapped optimizer) directly."""
        if self.shard:
            raise NotImplementedError(
                "these parameters belong to a sharded DistributedOptimizer, whose averaged "
                "gradient lives in slices: clip through the optimizer itself, "
                "clip_grad_norm_(opt, ...), for the total norm over every rank's slice")
        self.synchronize()
