"""The flat arena: every parameter, gradient and state buffer of an optimizer in
one contiguous 1-D array each, plus the offset tables the kernels walk.

Layout: parameters are placed group by group, in the order given, at
``offsets[i]:offsets[i + 1]``. ``param_group[i]`` is the group of parameter
``i``; ``chunks`` splits the arena into pieces of at most ``CHUNK`` elements
that never straddle two parameters, so a parallel kernel can hand out chunks
to threads and each chunk knows its parameter (and so its hyperparameters,
step count and has-grad flag).
"""

import numpy as np

__all__ = ["Arena", "CHUNK", "check_no_overlap"]

try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds   # NumPy >= 2
except ImportError:   # pragma: no cover
    _byte_bounds = np.byte_bounds

#: Largest number of elements in one chunk of work (64 KiB of float32 per array).
CHUNK = 1 << 14


class Arena:
    """Flat storage for the parameters of one optimizer.

    Attributes
    ----------
    data, grad : ndarray
        1-D contiguous buffers of every parameter value and gradient. Each
        ``Parameter.data`` / ``.grad`` is a reshaped view into them.
    has_grad : ndarray of bool, one per parameter
        Whether the parameter has a gradient (torch's ``p.grad is not None``).
        ``p.grad = g`` sets it, ``p.grad = None`` and ``zero_grad()`` clear it.
        Code that writes gradients straight into ``grad`` sets the flags
        itself, e.g. ``arena.has_grad[:] = True``.
    step : ndarray of float64, one per parameter
        Per-parameter step counts (torch's ``state["step"]``).
    offsets : ndarray of int64, ``nparams + 1``
        Start of each parameter in the buffers; ``offsets[-1]`` is the size.
    param_group : ndarray of int64
        Group index of each parameter.
    group_offsets : ndarray of int64, ``ngroups + 1``
        Parameters ``group_offsets[g]:group_offsets[g + 1]`` form group ``g``.
    state : dict of str to ndarray
        Optimizer state buffers in the same layout as ``data``, allocated when
        a group first needs them (``momentum_buffer`` only with momentum, ...).
    """

    def __init__(self, groups, dtype, previous=None):
        params = [p for group in groups for p in group]
        sizes = np.fromiter((p.size for p in params), dtype=np.int64, count=len(params))
        self.dtype = np.dtype(dtype)
        self.params = params
        self.shapes = [p.shape for p in params]
        self.offsets = np.zeros(len(params) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        self.group_offsets = np.zeros(len(groups) + 1, dtype=np.int64)
        np.cumsum([len(g) for g in groups], out=self.group_offsets[1:])
        self.param_group = np.repeat(np.arange(len(groups), dtype=np.int64),
                                     np.diff(self.group_offsets))
        self.chunks = _chunk_table(self.offsets)
        n = int(self.offsets[-1])
        self.data = np.zeros(n, dtype=self.dtype)
        self.grad = np.zeros(n, dtype=self.dtype)
        self.has_grad = np.zeros(len(params), dtype=np.bool_)
        self.step = np.zeros(len(params), dtype=np.float64)
        self.state = {}
        self.stale = None   # set to a message when another optimizer took a parameter over

        kept = 0
        if previous is not None:
            # add_param_group appends, so the previous arena is a prefix of this one.
            kept = len(previous.params)
            m = int(previous.offsets[-1])
            self.data[:m] = previous.data
            self.grad[:m] = previous.grad
            self.has_grad[:kept] = previous.has_grad
            self.step[:kept] = previous.step
            for name, buf in previous.state.items():
                self.state[name] = np.zeros(n, dtype=self.dtype)
                self.state[name][:m] = buf
            previous.stale = "its parameters were moved into a larger arena by add_param_group"

        self._grad_views = []
        for i, p in enumerate(params):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            if i >= kept:
                self.data[lo:hi] = p.data.reshape(-1)
                old_grad = p.grad
                if old_grad is not None:
                    self.grad[lo:hi] = old_grad.reshape(-1)
                    self.has_grad[i] = True
                if p._arena is not None and p._arena is not previous:
                    p._arena.stale = (
                        "one of its parameters was placed into another optimizer's arena; "
                        "a parameter can be stepped by one optimizer at a time")
            p._data = self.data[lo:hi].reshape(p.shape)
            p._grad = None
            p._arena = self
            p._index = i
            self._grad_views.append(self.grad[lo:hi].reshape(p.shape))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_grad_views"}

    def __setstate__(self, state):
        # Pickle and deepcopy copy the buffers; re-point every parameter at the copies.
        self.__dict__.update(state)
        self._grad_views = []
        for i, p in enumerate(self.params):
            p._data = self.view(self.data, i)
            p._grad = None
            p._arena = self
            p._index = i
            self._grad_views.append(self.view(self.grad, i))

    @property
    def size(self):
        """Number of elements in the arena."""
        return int(self.offsets[-1])

    def __len__(self):
        return len(self.params)

    def ensure_state(self, names, fill=0.0):
        """Allocate the state buffers in ``names`` that do not exist yet, filled with ``fill``.

        Returns True when something was allocated (the kernel arguments must then be rebuilt).
        """
        missing = [name for name in names if name not in self.state]
        for name in missing:
            self.state[name] = np.full(self.size, fill, dtype=self.dtype)
        return bool(missing)

    def view(self, buffer, i):
        """Parameter ``i``'s slice of the flat ``buffer``, shaped like the parameter."""
        return buffer[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])


def check_no_overlap(params):
    """Refuse parameters whose arrays share memory (e.g. views of one array).

    Packing copies each parameter into its own slot of the arena, which would
    silently untie them. Sorting by memory bounds keeps this O(n log n).
    """
    spans = []
    for i, p in enumerate(params):
        if p.size:
            lo, hi = _byte_bounds(p.data)
            spans.append((lo, hi, i))
    spans.sort()
    reach, owner = -1, -1
    for lo, hi, i in spans:
        if lo < reach and np.shares_memory(params[owner].data, params[i].data):
            a, b = sorted((owner, i))
            raise ValueError(
                f"parameters {a} and {b} share memory (views of one array?). Each parameter is "
                "copied into its own slot of the arena, which would untie them: pass tied "
                "weights as one Parameter")
        if hi > reach:
            reach, owner = hi, i


def _chunk_table(offsets):
    """(nchunks, 3) int64 rows ``(param, start, stop)`` covering every parameter."""
    sizes = np.diff(offsets)
    counts = np.maximum(1, -(-sizes // CHUNK))   # zero-size parameters keep one empty chunk
    param = np.repeat(np.arange(sizes.size, dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(param.size, dtype=np.int64) - first
    start = offsets[param] + k * CHUNK
    stop = np.minimum(start + CHUNK, offsets[param + 1])
    return np.ascontiguousarray(np.stack([param, start, stop], axis=1), dtype=np.int64)
