"""The arena in GPU memory: the same layout and methods as ``Arena``, with
numba.cuda device arrays as buffers. Imported only for ``device="cuda"``.

``p.data`` and ``p.grad`` are device-array views into the arena, exposing
``__cuda_array_interface__`` so CuPy or torch can wrap them without a copy.
A step uploads the per-parameter has-grad flags (one byte per parameter) and
launches the kernels of ``numbaopt.kernels.cuda``; the hyperparameter table is
uploaded only when a group changed. Nothing else crosses the bus.
"""

import numpy as np
from numba import config, cuda

from .arena import Arena
from .kernels import cuda as kernels

__all__ = ["CudaArena"]

_NO_GPU = ("device='cuda' needs a CUDA GPU with its driver (numba.cuda.is_available() is "
           "False here), or numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 before numba "
           "is imported")


def _device_source(value):
    """A numba device array for a GPU array ``value`` (any __cuda_array_interface__)."""
    if hasattr(value, "copy_to_host"):        # numba's own (and the simulator's) arrays
        return value
    return cuda.as_cuda_array(value)


class CudaArena(Arena):
    """``Arena`` with its buffers (data, grad, step, state) in GPU memory.

    ``has_grad`` stays a host array (users and ``p.grad = ...`` set it) and is
    uploaded at each step; the offset tables are uploaded once. ``step`` holds
    one count per chunk of the GPU chunk table (so one launch can advance them
    without races); ``step_counts()`` gives the per-parameter counts.
    """

    device = "cuda"
    plain_grads = False

    def __init__(self, groups, dtype, previous=None):
        if not cuda.is_available():
            raise RuntimeError(_NO_GPU)
        super().__init__(groups, dtype, previous)
        self._chunks = kernels.chunk_table(self.offsets, kernels.CHUNK)
        self.step = cuda.to_device(kernels.chunk_steps(self.step.copy_to_host(), self._chunks))
        self.scalars = self._adopt_scalars(self._host_scalars)
        self._d_group = cuda.to_device(self.param_group)
        self._d_chunks = cuda.to_device(self._chunks)
        self._d_has_grad = cuda.to_device(self.has_grad)

    def _adopt(self, host_array):
        return cuda.to_device(host_array)

    def _adopt_scalars(self, host_scalars):
        # Per parameter on the host; per chunk on the device, as the step counts.
        if not hasattr(self, "_chunks"):   # during Arena.__init__, before the chunk table
            self._host_scalars = host_scalars
            return None
        per_chunk = np.ascontiguousarray(kernels.chunk_steps(host_scalars, self._chunks).reshape(
            self._chunks.shape[0], host_scalars.shape[1]))
        if per_chunk.size == 0:
            return cuda.device_array(per_chunk.shape, dtype=np.float64)
        return cuda.to_device(per_chunk)

    def scalar_values(self):
        k = self.scalars.shape[1]
        if k == 0:
            return np.zeros((len(self.params), 0), dtype=np.float64)
        return np.asarray(kernels.param_steps(self.scalars.copy_to_host(), self._chunks))

    def to_host(self, buffer):
        return buffer.copy_to_host()

    def param_to_host(self, buffer, i):
        return np.asarray(self.view(buffer, i).copy_to_host())

    def fill_state(self, name, start, value):
        n = self.size - start
        if n:
            self.state[name][start:].copy_to_device(np.full(n, value, dtype=self.dtype))

    def load(self, step, buffers, scalars):
        self.step.copy_to_device(kernels.chunk_steps(step, self._chunks))
        self.scalars = self._adopt_scalars(np.array(scalars, dtype=np.float64))
        for name, buf in buffers.items():
            if name in self.state:
                if buf.size:
                    self.state[name].copy_to_device(buf)
            else:
                self.state[name] = self._adopt(buf.copy())
        for name in self.state:
            if name not in buffers:
                _zero(self.state[name])

    def _copy_into(self, view, value):
        if hasattr(value, "__cuda_array_interface__") or hasattr(value, "copy_to_host"):
            source = _device_source(value)
            if np.dtype(source.dtype) != np.dtype(view.dtype):
                raise TypeError(f"a GPU array of dtype {source.dtype} cannot be copied into a "
                                f"{view.dtype} parameter on the GPU without a host round "
                                f"trip; cast it on the device first")
            if view.size:
                view.copy_to_device(source)
        elif view.size:
            view.copy_to_device(np.ascontiguousarray(value, dtype=view.dtype))

    def set_data(self, i, value):
        self._copy_into(self.view(self.data, i), value)

    def set_grad(self, i, value):
        self._copy_into(self._grad_views[i], value)
        self.has_grad[i] = True

    def zero_grad(self):
        _zero(self.grad)

    def step_counts(self):
        return kernels.param_steps(self.step.copy_to_host(), self._chunks)

    def step_view(self, i):
        # A host copy: a GPU scalar would cost a round trip per read.
        return np.array(self.step_counts()[i])

    def prepare(self, optimizer, hyper):
        empty = cuda.device_array(0, dtype=self.dtype)
        d_has_grad, d_chunks = self._d_has_grad, self._d_chunks
        state = tuple(self.state.get(k, empty) for k in optimizer._state_keys)
        args = (self.data, self.grad, d_has_grad, self.step, self._d_group,
                cuda.to_device(hyper), d_chunks, self.scalars) + state
        launcher = optimizer._rule.cuda()
        has_grad, grad = self.has_grad, self.grad

        def step(*args):
            d_has_grad.copy_to_device(has_grad)
            launcher(*args)

        def finite():
            d_has_grad.copy_to_device(has_grad)
            return kernels.grads_finite(grad, d_has_grad, d_chunks)

        return step, args, finite


def _zero(buffer):
    """Zero a device buffer: a driver memset on a GPU, a copy under the simulator."""
    if not buffer.size:
        return
    if config.ENABLE_CUDASIM:
        buffer.copy_to_device(np.zeros(buffer.shape, dtype=buffer.dtype))
    else:
        cuda.driver.device_memset(buffer, 0, buffer.size * buffer.dtype.itemsize)
