"""LBFGS's passes on the GPU: the interface of ``_lbfgs_passes.HostPasses``, as CUDA kernels.

Imported only for ``LBFGS(device="cuda")``. The vectors (the arena, the history
ring, the direction) stay in GPU memory; a reduction writes one float64 partial
per thread (thread ``t`` takes elements ``t, t + T, ...``: coalesced), and the
host adds the partials in a fixed order, so results do not depend on the launch.
Only those partials, the direction's coefficients and the loss cross the bus.
NVVM contracts multiply-adds, so float32 agrees with the CPU to rounding.
"""

import numpy as np
from numba import cuda

from ..kernels.cuda import _zero_missing_grads_cuda
from ._lbfgs_passes import _max_keep_nan

#: Threads of every reduction and their block size, read at each launch (the tests
#: under the simulator set them tiny).
REDUCE_THREADS = 4096
THREADS_PER_BLOCK = 128


_nan_max = _max_keep_nan.py_func                       # on the host
_max_keep_nan_device = cuda.jit(device=True, inline="always")(_nan_max)  # in kernels


@cuda.jit
def _abs_stats(g, partial):
    t = cuda.grid(1)
    T = partial.shape[0]
    if t < T:
        mx = 0.0
        sm = 0.0
        for e in range(t, g.size, T):
            a = abs(float(g[e]))
            sm += a
            mx = _max_keep_nan_device(mx, a)
        partial[t, 0] = mx
        partial[t, 1] = sm


@cuda.jit
def _new_pair(g, prev, d, t_step, W, partial):
    t = cuda.grid(1)
    T = partial.shape[0]
    if t < T:
        ys = 0.0
        yy = 0.0
        gs = 0.0
        gy = 0.0
        for e in range(t, g.size, T):
            s = d[e] * t_step
            y = g[e] - prev[e]
            W[0, e] = s
            W[1, e] = y
            W[2, e] = g[e]
            ys += float(y) * float(s)
            yy += float(y) * float(y)
            gs += float(g[e]) * float(s)
            gy += float(g[e]) * float(y)
        partial[t, 0] = ys
        partial[t, 1] = yy
        partial[t, 2] = gs
        partial[t, 3] = gy


@cuda.jit
def _history_dots(R, W, partial):
    # partial[k, t, c] = sum over thread t's elements of R[1 + k] * W[c]
    t, k = cuda.grid(2)
    T = partial.shape[1]
    if t < T and k < partial.shape[0]:
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        for e in range(t, R.shape[1], T):
            x = float(R[1 + k, e])
            a0 += x * float(W[0, e])
            a1 += x * float(W[1, e])
            a2 += x * float(W[2, e])
        partial[k, t, 0] = a0
        partial[k, t, 1] = a1
        partial[k, t, 2] = a2


@cuda.jit
def _direction(g, R, c, rows, d):
    e = cuda.grid(1)
    if e < g.size:
        R[0, e] = g[e]
        acc = c[0] * float(g[e])
        for k in range(1, rows):
            acc += c[k] * float(R[k, e])
        d[e] = acc


@cuda.jit
def _dot_max(a, b, partial):
    # partial[t] = (sum a * b, max |b|) over thread t's elements
    t = cuda.grid(1)
    T = partial.shape[0]
    if t < T:
        s = 0.0
        mx = 0.0
        for e in range(t, a.size, T):
            v = float(b[e])
            s += float(a[e]) * v
            w = abs(v)
            mx = _max_keep_nan_device(mx, w)
        partial[t, 0] = s
        partial[t, 1] = mx


@cuda.jit
def _move(x, base, d, t_step):
    e = cuda.grid(1)
    if e < x.size:
        x[e] = base[e] + t_step * d[e]


def _launch(n):
    tpb = THREADS_PER_BLOCK
    return max(1, -(-n // tpb)), tpb


class CudaPasses:
    """The passes of ``HostPasses`` on device arrays (see ``_lbfgs_passes``)."""

    device = "cuda"

    def __init__(self, n, dtype, history, offsets):
        self.n = n
        self._offsets = cuda.to_device(np.asarray(offsets, np.int64))
        self._c = cuda.device_array(2 * history + 5, np.float64)
        self.dtype = np.dtype(dtype)
        self.T = max(1, min(REDUCE_THREADS, n))
        self._p2 = cuda.device_array((self.T, 2), np.float64)
        self._p4 = cuda.device_array((self.T, 4), np.float64)
        self._hist = cuda.device_array((2 * history + 4, self.T, 3), np.float64)

    def zeros(self, shape):
        return cuda.to_device(np.zeros(shape, self.dtype))

    def to_host(self, a):
        return a.copy_to_host()

    def copy(self, dst, src):
        dst.copy_to_device(src)

    def abs_stats(self, g):
        _abs_stats[_launch(self.T)](g, self._p2)
        p = self._p2.copy_to_host()
        mx = 0.0
        for a in p[:, 0]:
            mx = _nan_max(mx, a)
        return mx, float(p[:, 1].sum())

    def new_pair(self, g, prev, d, t, W):
        _new_pair[_launch(self.T)](g, prev, d, t, W, self._p4)
        return tuple(float(v) for v in self._p4.copy_to_host().sum(axis=0))

    def history_dots(self, R, W, rows, out):
        partial = self._hist[:rows]
        blocks, tpb = _launch(self.T)
        _history_dots[(blocks, rows), (tpb, 1)](R, W, partial)
        out[:rows] = partial.copy_to_host().sum(axis=1)

    def direction(self, g, R, c, rows, d):
        self._c[:rows].copy_to_device(np.ascontiguousarray(c[:rows]))
        _direction[_launch(g.size)](g, R, self._c, rows, d)
        _dot_max[_launch(self.T)](g, d, self._p2)
        p = self._p2.copy_to_host()
        mx = 0.0
        for a in p[:, 1]:
            mx = _nan_max(mx, a)
        return float(p[:, 0].sum()), mx

    def dot(self, a, b):
        _dot_max[_launch(self.T)](a, b, self._p2)
        return float(self._p2.copy_to_host()[:, 0].sum())

    def move(self, x, base, d, t):
        _move[_launch(x.size)](x, base, d, t)

    def zero_missing(self, arena):
        arena._d_has_grad.copy_to_device(arena.has_grad)
        _zero_missing_grads_cuda[_launch(arena.size)](arena.grad, arena._d_has_grad,
                                                      self._offsets)
