"""The CUDA kernel of every elementwise rule, and the host code that launches it.

Imported lazily by the host (``numba.cuda`` comes from the optional ``numba-cuda``
package). ``Launcher(rule)`` compiles one kernel per rule from the template
``_kernel`` below, with the rule's own functions (``numbaopt.kernels.elementwise``)
bound into its globals: the per-element math is the same source as on the CPU.
It takes the CPU kernels' arguments, as device arrays:

    kernel(param, grad, has_grad, step, group, hyper, chunks, scalars, *buffers)

No fastmath. One difference the compiler brings and no option of numba-cuda
removes: NVVM contracts a multiply followed by an add into one fused
multiply-add (torch's CPU kernels do too), so on a GPU float32 results agree
with the CPU kernels to rounding, not bit for bit. Under the simulator
(``NUMBA_ENABLE_CUDASIM=1``) the rule runs as Python with NumPy scalars
(``numbaopt.kernels.scalar.PYTHON_TWINS``), and they match.

A step is ONE launch. Each block takes chunks ``blockIdx.x, blockIdx.x +
gridDim.x, ...`` of the ``chunks`` table and its threads stride through the
chunk (thread ``t`` does elements ``start + t, start + t + blockDim.x, ...``:
coalesced). A chunk never straddles two parameters, so a block reads its
parameter's flag, group and step once per chunk, with no search per element,
and skips whole chunks of parameters without a gradient.

The one difference from the CPU layout: on the GPU ``step`` and the rows of
``scalars`` are per CHUNK, not per parameter. Every chunk of a parameter
advances together (they share the has-grad flag), so the copies stay equal,
and each block advances only its own chunks: no two blocks touch one
counter, so a single launch is race-free (a per-parameter counter would need a
second launch, since blocks of one parameter run in no order).
``chunk_steps`` and ``param_steps`` convert between the two layouts.

The arena's own ``chunks`` table works; ``chunk_table(offsets)`` builds one
with GPU-sized chunks (``CHUNK``), so a mid-sized arena still makes enough
blocks to fill the device.
"""

import math

import numpy as np
from numba import config, cuda

from . import scalar
from .elementwise import bind, python_twin, templates, twin

__all__ = ["CHUNK", "THREADS_PER_BLOCK", "Launcher", "chunk_steps", "chunk_table",
           "param_steps", "grads_finite"]

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


def chunk_steps(param_steps, chunks):
    """Per-chunk step counts (the GPU layout) from per-parameter counts."""
    return np.ascontiguousarray(np.asarray(param_steps, dtype=np.float64)[chunks[:, 0]])


def param_steps(chunk_steps, chunks):
    """Per-parameter step counts from per-chunk counts (each parameter's first chunk)."""
    chunk_steps = np.asarray(chunk_steps)
    first = np.ones(chunks.shape[0], dtype=np.bool_)
    first[1:] = chunks[1:, 0] != chunks[:-1, 0]
    return chunk_steps[first]



# ------------------------------------------------------------------------ the template
# counts_step, coefficients, advance and update are bound per rule by Launcher; {args} is
# one argument per state buffer (see numbaopt.kernels.elementwise.templates).

_TEMPLATE = """
def _kernel(param, grad, has_grad, step, group, hyper, chunks, scalars{args}):
    # Reads grad and has_grad; updates param, the buffers, and the chunk's step and scalars.
    T = param.dtype.type
    for c in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        g = group[i]
        t = step[c]
        if counts_step(hyper, g):
            t += 1.0
        h = hyper[g]
        k = coefficients(h, t, scalars, c, T)
        # Every thread has read step[c] and scalars[c] before thread 0 changes them.
        cuda.syncthreads()
        if cuda.threadIdx.x == 0:
            step[c] = t
            advance(h, t, scalars, c)
        update(chunks[c, 1] + cuda.threadIdx.x, chunks[c, 2], cuda.blockDim.x, k, param,
               grad{args})
"""


def _no_advance(h, t, s, i):
    pass


def _always(hyper, g):
    return True


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

    ``Launcher(rule)(param, grad, has_grad, step, group, hyper, chunks, scalars, *buffers)``
    with ``numba.cuda`` device arrays (host arrays would be copied both ways at
    every launch; ``step`` and ``scalars`` per chunk, see the module docstring)
    makes one launch on ``stream`` (default: the default stream; asynchronous).
    ``threads_per_block`` defaults to the module's ``THREADS_PER_BLOCK``;
    ``blocks`` (default: one per chunk) may be smaller, each block then walks
    several chunks. The kernel is compiled on first use (cached on disk).
    """

    def __init__(self, rule):
        self.rule = rule
        self._kernel = None

    @property
    def kernel(self):
        """The rule's ``@cuda.jit`` kernel (compiled at its first launch)."""
        if self._kernel is None:
            self._kernel = cuda.jit(cache=True)(self._bound())
        return self._kernel

    def ptx(self, dtype, cc=(9, 0)):
        """The kernel's PTX for ``dtype`` arenas, compiled without a GPU (needs NVVM)."""
        from numba import types
        from numba.np.numpy_support import from_dtype
        arr = types.Array(from_dtype(np.dtype(dtype)), 1, "C")
        i64, f64 = types.Array(types.int64, 1, "C"), types.Array(types.float64, 1, "C")
        sig = (arr, arr, types.Array(types.boolean, 1, "C"), f64, i64,
               types.Array(types.float64, 2, "C"), types.Array(types.int64, 2, "C"),
               types.Array(types.float64, 2, "C")) + (arr,) * self.rule.n_state
        ptx, _ = cuda.compile_ptx(self._bound(), sig, cc=cc)
        return ptx

    def _bound(self):
        """The template with the rule's functions bound in, for this target."""
        rule = self.rule
        functions = dict(coefficients=rule.coefficients, update=rule.update,
                         advance=rule.advance or _no_advance,
                         counts_step=rule.counts_step or _always)
        env = device_functions(functions)
        template = templates(rule.n_state, _TEMPLATE, globals())["_kernel"]
        return bind(template, env, f"_kernel_{rule.tag}")

    def __call__(self, *args, threads_per_block=None, blocks=None, stream=0):
        tpb = int(THREADS_PER_BLOCK if threads_per_block is None else threads_per_block)
        nchunks = args[6].shape[0]
        if nchunks == 0:
            return
        nblocks = nchunks if blocks is None else max(1, min(int(blocks), nchunks))
        self.kernel[nblocks, tpb, stream](*args)

    def __repr__(self):
        return f"<numbaopt CUDA step {self.rule.name!r}>"


# ------------------------------------------------------------ data parallel (distributed.py)

def device_functions(functions):
    """``{name: function}`` made callable from a kernel on this process's CUDA target.

    The simulator runs kernels as Python: the functions' NumPy twins, so float32
    stays float32. On a GPU every compiled function they call becomes an inlined
    device function, the scalar helpers their CUDA twins (math.sqrt: no np.sqrt
    in kernels).
    """
    if config.ENABLE_CUDASIM:
        return {name: python_twin(f) for name, f in functions.items()}
    device = cuda.jit(device=True, inline="always")
    return {name: device(twin(f, scalar.CUDA_TWINS, device)) for name, f in functions.items()}


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
