"""Arena buffers meeting MPI: host arrays, or GPU arrays staged or handed over directly.

Each function takes ``mode``: None for host arenas, ``"cuda-aware"`` to give device
buffers to MPI (small kernels zero missing gradients and divide by N on the
device), or a ``Staging`` to copy through page-locked host buffers. Everything here
is a collective on ``comm`` except the copies.
"""

import ctypes
import os

import numpy as np
from mpi4py import MPI

from ..kernels.cpu import _zero_missing_grads


# -- averaging ------------------------------------------------------------------------------
def average(comm, grad, own_flags, offsets, mode):
    """``grad`` becomes the mean over ranks, counting zero where a rank had no gradient
    (``own_flags``: this rank's has-grad flags, before they were OR-ed)."""
    size = comm.Get_size()
    if mode is None:
        _zero_missing_grads(grad, own_flags, offsets)
        comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        if size > 1:
            np.divide(grad, size, out=grad)
        return
    device = device_array(grad)
    if mode == "cuda-aware":
        zero_missing_on_device(device, own_flags, offsets)
        comm.Allreduce(MPI.IN_PLACE, mpi_buffer(device), op=MPI.SUM)
        divide_on_device(device, size)
        return
    host = mode.host("full", device.size, device.dtype)
    device.copy_to_host(host)
    _zero_missing_grads(host, own_flags, offsets)
    comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
    if size > 1:
        np.divide(host, size, out=host)
    device.copy_to_device(host)


def reduce_scatter(comm, grad, own_flags, offsets, out, counts, mode):
    """``out`` (this rank's slice, ``counts`` elements per rank) becomes the mean over ranks
    of that slice of ``grad``; missing gradients count as zero, as in ``average``."""
    size = comm.Get_size()
    if mode is None:
        _zero_missing_grads(grad, own_flags, offsets)
        comm.Reduce_scatter(grad, out, recvcounts=counts, op=MPI.SUM)
        if size > 1:
            np.divide(out, size, out=out)
        return
    device = device_array(grad)
    if mode == "cuda-aware":
        zero_missing_on_device(device, own_flags, offsets)
        comm.Reduce_scatter(mpi_buffer(device), mpi_buffer(out), recvcounts=counts, op=MPI.SUM)
        divide_on_device(out, size)
        return
    host = mode.host("full", device.size, device.dtype)
    mine = mode.host("slice", out.size, device.dtype)
    device.copy_to_host(host)
    _zero_missing_grads(host, own_flags, offsets)
    comm.Reduce_scatter(host, mine, recvcounts=counts, op=MPI.SUM)
    if size > 1:
        np.divide(mine, size, out=mine)
    if out.size:
        out.copy_to_device(mine)


def allgather(comm, mine, full, counts, displs, mode):
    """Every rank's slice ``mine`` into ``full`` (the whole arena buffer) on every rank."""
    if mode is None:
        comm.Allgatherv(mine, [full, (counts, displs)])
        return
    if mode == "cuda-aware":
        cuda().synchronize()       # the step's kernel wrote ``mine``
        comm.Allgatherv(mpi_buffer(mine), [mpi_buffer(device_array(full)), (counts, displs)])
        return
    device = device_array(full)
    part = mode.host("slice", mine.size, device.dtype)
    host = mode.host("full", device.size, device.dtype)
    if mine.size:
        mine.copy_to_host(part)
    comm.Allgatherv(part, [host, (counts, displs)])
    device.copy_to_device(host)


def broadcast(comm, data, root, cuda_aware):
    """Rank ``root``'s ``data`` (an arena buffer, host or GPU) on every rank."""
    if not on_device(data):
        comm.Bcast(data, root=root)
        return
    device = device_array(data)
    if query_cuda_aware() if cuda_aware is None else cuda_aware:
        cuda().synchronize()
        comm.Bcast(mpi_buffer(device), root=root)
    else:
        host = device.copy_to_host()
        comm.Bcast(host, root=root)
        device.copy_to_device(host)


def to_host(array):
    """A host ndarray of ``array``'s values (itself on the host, a copy of a GPU array)."""
    return array if isinstance(array, np.ndarray) else device_array(array).copy_to_host()


# -- GPU buffers ----------------------------------------------------------------------------
class Staging:
    """Host buffers for staged transfers, allocated once per size (page-locked on a GPU)."""

    def __init__(self):
        self._buffers = {}

    def host(self, name, n, dtype):
        dtype = np.dtype(dtype)
        buf = self._buffers.get(name)
        if buf is None or buf.size != n or buf.dtype != dtype:
            buf = self._buffers[name] = _host_buffer(n, dtype)
        return buf


def on_device(array):
    # numba device arrays (and the simulator's, which lack __cuda_array_interface__), CuPy, torch
    return not isinstance(array, np.ndarray) and (
        hasattr(array, "__cuda_array_interface__") or hasattr(array, "copy_to_host"))


def device_array(array):
    """A numba device array for a GPU array (any ``__cuda_array_interface__``), without a copy."""
    return array if hasattr(array, "copy_to_host") else cuda().as_cuda_array(array)


def mpi_buffer(device):
    """What CUDA-aware MPI is handed: the device array itself. numba's CUDA simulator keeps
    "device" arrays in host memory without a ``__cuda_array_interface__``; ``np.asarray``
    is then a view of that memory, so the CUDA-aware code path runs under the simulator too."""
    if hasattr(device, "__cuda_array_interface__"):
        return device
    return np.asarray(device)


def zero_missing_on_device(device, own_flags, offsets):
    if device.size == 0:
        return
    kernel = _cuda_kernels()[0]
    threads, blocks = _launch_shape(device.size)
    c = cuda()
    kernel[blocks, threads](device, c.to_device(np.ascontiguousarray(own_flags)),
                            c.to_device(np.ascontiguousarray(offsets)))
    c.synchronize()          # MPI reads the buffer next, outside the stream


def divide_on_device(device, size):
    if size > 1 and device.size:
        threads, blocks = _launch_shape(device.size)
        _cuda_kernels()[1][blocks, threads](device, device.dtype.type(size))
    cuda().synchronize()


def _launch_shape(n):
    threads = 256 if n >= 256 else 32
    return threads, max(1, (n + threads - 1) // threads)


def cuda():
    from numba import cuda as numba_cuda
    return numba_cuda


def _host_buffer(n, dtype):
    """A host staging buffer, page-locked when a GPU is there (faster copies)."""
    try:
        return cuda().pinned_array(n, dtype=dtype)
    except Exception:   # noqa: BLE001 - the simulator or no driver: pageable memory works too
        return np.empty(n, dtype=dtype)


def _cuda_kernels():
    """``(zero_missing, scale)``: device twins of the host steps around the Allreduce."""
    from ..kernels import cuda as kernels
    return kernels._zero_missing_grads_cuda, kernels._scale_cuda


_CUDA_AWARE = None


def query_cuda_aware():
    """Whether the MPI library reads and writes CUDA device memory.

    ``NUMBAOPT_MPI_CUDA_AWARE=1`` or ``0`` decides; otherwise Open MPI's and
    MPICH's (4.0+) ``MPIX_Query_cuda_support()`` is asked at run time, which
    also tells whether CUDA support is enabled (MPICH: ``MPIR_CVAR_ENABLE_GPU``).
    Libraries without that call are taken as not CUDA-aware: host staging is
    always correct, only slower.
    """
    global _CUDA_AWARE
    if _CUDA_AWARE is None:
        env = os.environ.get("NUMBAOPT_MPI_CUDA_AWARE", "").strip().lower()
        if env in ("1", "true", "yes", "on"):
            _CUDA_AWARE = True
        elif env in ("0", "false", "no", "off"):
            _CUDA_AWARE = False
        else:
            _CUDA_AWARE = _mpix_query_cuda_support()
    return _CUDA_AWARE


def _mpix_query_cuda_support():
    try:
        with open("/proc/self/maps") as maps:
            libraries = sorted({line.split()[-1] for line in maps
                                if "libmpi" in line and ".so" in line})
    except OSError:
        return False
    for path in libraries:
        try:
            query = ctypes.CDLL(path).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        return bool(query())
    return False
