"""The compiled pass behind ``swa_utils.AveragedModel.update_parameters``.

One kernel call updates every averaged element, reading the source model's
parameters either straight from its optimizer's arena (one flat span) or from a
typed List of views built once (``_Plan``).
"""

from operator import attrgetter, is_

import numpy as np
from numba import njit, prange, typed, typeof

from ..parameter import Parameter

_ARENA = attrgetter("_arena")

#: An update is little more than memory traffic (as SGD's step): threads pay off later.
_PARALLEL_SCALE = 4

# The rules of the compiled pass (``_average_into``).
_COPY, _SWA, _LERP, _LERP_FROM_END, _EMA = 0, 1, 2, 3, 4


# ------------------------------------------------------------------------------- kernels

def _average_into(kind, c0, c1, avg, src):
    # Writes avg (1-D) in place from itself and src (1-D, same length); c0 and c1 are
    # already in avg's dtype, so float32 arithmetic stays float32, as torch's.
    n = np.uint64(avg.shape[0])
    if kind == _SWA:               # get_swa_avg_fn: avg + (cur - avg) / (n_averaged + 1)
        for e in range(np.uint64(0), n):
            a = avg[e]
            avg[e] = a + (src[e] - a) / c0
    elif kind == _LERP:            # torch's lerp for |weight| < 0.5
        for e in range(np.uint64(0), n):
            a = avg[e]
            avg[e] = a + c0 * (src[e] - a)
    elif kind == _LERP_FROM_END:   # and from the end point otherwise; c1 = 1 - weight
        for e in range(np.uint64(0), n):
            s = src[e]
            avg[e] = s - (s - avg[e]) * c1
    elif kind == _EMA:             # get_ema_avg_fn: decay * avg + (1 - decay) * cur
        for e in range(np.uint64(0), n):
            avg[e] = c0 * avg[e] + c1 * src[e]
    else:                          # the first update copies
        for e in range(np.uint64(0), n):
            avg[e] = src[e]


_average_into = njit(cache=True, error_model="numpy", inline="always")(_average_into)


@njit(cache=True, error_model="numpy")
def _average_flat(kind, c0, c1, avg, src):
    """Reads ``src`` (the source arena's span, aligned with ``avg``); writes ``avg``."""
    T = avg.dtype.type
    _average_into(kind, T(c0), T(c1), avg, src)


@njit(cache=True, error_model="numpy", parallel=True)
def _average_flat_parallel(kind, c0, c1, avg, src, chunks):
    """``_average_flat`` with threads over the rows ``(param, start, stop)`` of ``chunks``."""
    T = avg.dtype.type
    a = T(c0)
    b = T(c1)
    for r in prange(chunks.shape[0]):
        lo = chunks[r, 1]
        hi = chunks[r, 2]
        _average_into(kind, a, b, avg[lo:hi], src[lo:hi])


@njit(cache=True, error_model="numpy")
def _average_list(kind, c0, c1, avg, srcs, offsets):
    """Reads the 1-D views ``srcs`` (a typed List, one per parameter); writes ``avg``,
    parameter ``k`` at ``offsets[k]:offsets[k + 1]``."""
    T = avg.dtype.type
    a = T(c0)
    b = T(c1)
    for k in range(len(srcs)):
        _average_into(kind, a, b, avg[offsets[k]:offsets[k + 1]], srcs[k])


@njit(cache=True, error_model="numpy", parallel=True)
def _average_list_parallel(kind, c0, c1, avg, srcs, offsets, chunks):
    """``_average_list`` with threads over the rows ``(param, start, stop)`` of ``chunks``."""
    T = avg.dtype.type
    a = T(c0)
    b = T(c1)
    for r in prange(chunks.shape[0]):
        k = chunks[r, 0]
        lo = chunks[r, 1]
        hi = chunks[r, 2]
        src = srcs[k]
        _average_into(kind, a, b, avg[lo:hi], src[lo - offsets[k]:hi - offsets[k]])


# ------------------------------------------------------------------ averaging functions


def _check_parameters(params):
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError("AveragedModel averages numbaopt.Parameter objects, but one of the "
                            f"params is {type(p).__module__}.{type(p).__qualname__}")


class _Plan:
    """How ``update_parameters`` reads one source model, built when the source changes.

    When the source parameters are one arena's, contiguous and in order (a model
    whose optimizer holds exactly its parameters), the pass reads that arena's flat
    span directly. Otherwise it reads a typed List of 1-D views, one per parameter,
    built once here; a parameter with no such view (non-contiguous, or on the GPU)
    is copied into a staging buffer before each pass.
    """

    def __init__(self, source, averaged):
        mine = averaged._params
        if len(source) != len(mine):
            raise ValueError(f"the model has {len(source)} parameters, the AveragedModel "
                             f"{len(mine)}; update_parameters needs the model it averages")
        _check_parameters(source)
        dtype = averaged.arena.dtype
        for i, (p, q) in enumerate(zip(source, mine)):
            if p.dtype != dtype:
                raise RuntimeError(f"parameter {i} of the model is {p.dtype}, its average is "
                                   f"{dtype}; numbaopt never casts silently")
            if p.shape != q.shape:
                raise RuntimeError(f"parameter {i} of the model has shape {p.shape}, its "
                                   f"average {q.shape}")
        self.params = source
        self.arenas = [p._arena for p in source]
        self.span = None
        self.views = None
        self.staged = []
        first = self.arenas[0] if source else None
        if first is not None and all(map(is_, self.arenas, [first] * len(source))):
            start = source[0]._index
            if [p._index for p in source] == list(range(start, start + len(source))):
                self.span = (int(first.offsets[start]), int(first.offsets[start + len(source)]))
        if self.span is None and source:
            views = typed.List.empty_list(typeof(np.empty(0, dtype)))
            for p in source:
                data = p.data
                if isinstance(data, np.ndarray) and data.flags.c_contiguous:
                    views.append(data.reshape(-1))
                else:
                    buf = np.empty(p.size, dtype)
                    views.append(buf)
                    self.staged.append((buf, p))
            self.views = views

    def matches(self, source):
        return (len(source) == len(self.params) and all(map(is_, source, self.params))
                and all(map(is_, map(_ARENA, source), self.arenas)))

    def run(self, averaged, kind, c0, c1):
        """One compiled pass of rule ``kind`` over the averaged arena."""
        arena = averaged.arena
        avg = arena.data
        if avg.size == 0:
            return
        parallel = avg.size >= averaged.parallel_threshold
        if self.span is not None:
            src = self.arenas[0].data[self.span[0]:self.span[1]]
            if not isinstance(src, np.ndarray):
                src = src.copy_to_host()       # a GPU arena: its span comes to the host
            if parallel:
                _average_flat_parallel(kind, c0, c1, avg, src, arena.chunks)
            else:
                _average_flat(kind, c0, c1, avg, src)
            return
        for buf, p in self.staged:
            np.copyto(buf.reshape(p.shape), p.numpy())
        if parallel:
            _average_list_parallel(kind, c0, c1, avg, self.views, arena.offsets, arena.chunks)
        else:
            _average_list(kind, c0, c1, avg, self.views, arena.offsets)

    def source_arrays(self):
        """The source values as host arrays, for a Python avg_fn (live views on the CPU)."""
        return [p.numpy() for p in self.params]
