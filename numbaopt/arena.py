"""The flat arena: every parameter, gradient and state buffer of an optimizer in
one contiguous 1-D array each, plus the offset tables the kernels walk.

Layout: parameters are placed group by group, in the order given, at
``offsets[i]:offsets[i + 1]``. ``param_group[i]`` is the group of parameter
``i``; ``chunks`` splits the arena into pieces of at most ``CHUNK`` elements
that never straddle two parameters, so a parallel kernel can hand out chunks
to threads and each chunk knows its parameter (and so its hyperparameters,
step count and has-grad flag).

``Arena`` keeps its buffers in host memory; ``numbaopt.arena_cuda.CudaArena``
keeps them in GPU memory behind the same methods, so the optimizer code does
not care where the numbers live.
"""

import numpy as np

from .kernels.finite import grads_finite, grads_finite_parallel

try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds   # NumPy >= 2
except ImportError:   # pragma: no cover
    _byte_bounds = np.byte_bounds

__all__ = ["Arena", "CHUNK", "check_no_overlap", "make_arena"]

#: Largest number of elements in one chunk of work (32 KiB of float32 per array).
CHUNK = 1 << 13


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
        itself, e.g. ``arena.has_grad[:] = True``. Write it in place: the
        parameters hold a memoryview of it (``_bind_fast``).
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
    is_complex : ndarray of bool, one per parameter
        Whether the parameter is complex. A complex parameter of ``n`` elements
        takes ``2 n`` reals of ``dtype`` (torch's ``view_as_real`` pairs, real
        part first), so the kernels need no complex arithmetic; ``view`` gives
        it back as complex.
    scalars : ndarray of float64, ``(nparams, k)``
        Per-parameter scalar state (NAdam's ``mu_product``, ASGD's ``eta`` and
        ``mu``); ``k`` is 0 for most optimizers.
    """

    device = "cpu"
    sparse_grads = None
    _plain_grads = True

    def __init__(self, groups, dtype, previous=None):
        params = [p for group in groups for p in group]
        self.dtype = np.dtype(dtype)
        self.params = params
        self.shapes = [p.shape for p in params]
        # a complex parameter is stored as its view_as_real pairs, as torch steps it
        self.is_complex = np.fromiter((p.dtype.kind == "c" for p in params), dtype=np.bool_,
                                      count=len(params))
        self.complex_dtype = np.result_type(self.dtype, np.complex64)
        sizes = np.fromiter((p.size for p in params), dtype=np.int64, count=len(params))
        sizes <<= self.is_complex
        self.offsets = np.zeros(len(params) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        self.group_offsets = np.zeros(len(groups) + 1, dtype=np.int64)
        np.cumsum([len(g) for g in groups], out=self.group_offsets[1:])
        self.param_group = np.repeat(np.arange(len(groups), dtype=np.int64),
                                     np.diff(self.group_offsets))
        self.chunks = _chunk_table(self.offsets)
        self.stale = None   # set to a message when another optimizer took a parameter over

        # Pack on the host; a device arena uploads the result.
        n = int(self.offsets[-1])
        data = np.zeros(n, dtype=self.dtype)
        grad = np.zeros(n, dtype=self.dtype)
        self.has_grad = np.zeros(len(params), dtype=np.bool_)
        step = np.zeros(len(params), dtype=np.float64)
        scalars = np.zeros((len(params), 0), dtype=np.float64)
        state = {}
        kept = 0
        if previous is not None:
            # add_param_group appends, so the previous arena is a prefix of this one.
            kept = len(previous.params)
            m = previous.size
            data[:m] = previous.to_host(previous.data)
            grad[:m] = previous.to_host(previous.grad)
            self.has_grad[:kept] = previous.has_grad
            step[:kept] = previous.step_counts()
            old_scalars = previous.scalar_values()
            scalars = np.zeros((len(params), old_scalars.shape[1]), dtype=np.float64)
            scalars[:kept] = old_scalars
            for name, buf in previous.state.items():
                state[name] = np.zeros(n, dtype=self.dtype)
                state[name][:m] = previous.to_host(buf)
            previous.stale = "its parameters were moved into a larger arena by add_param_group"
        for i in range(kept, len(params)):
            p = params[i]
            if p._arena is None:
                self.view(data, i)[...] = p.data
                if p._grad is not None:
                    self.view(grad, i)[...] = p._grad
                    self.has_grad[i] = True
            else:
                old = p._arena
                self.view(data, i)[...] = old.param_to_host(old.data, p._index)
                if old.has_grad[p._index]:
                    self.view(grad, i)[...] = old.param_to_host(old.grad, p._index)
                    self.has_grad[i] = True
                if old is not previous:
                    old.stale = (
                        "one of its parameters was placed into another optimizer's arena; "
                        "a parameter can be stepped by one optimizer at a time")
        self.data = self._adopt(data)
        self.grad = self._adopt(grad)
        self.step = self._adopt(step)
        self.scalars = self._adopt_scalars(scalars)
        self.state = {name: self._adopt(buf) for name, buf in state.items()}
        self._bind()

    def _bind(self):
        """Point every parameter at its slice of this arena."""
        self._grad_views = []
        for i, p in enumerate(self.params):
            p._data = self.view(self.data, i)
            p._grad = None
            p._arena = self
            p._index = i
            self._grad_views.append(self.view(self.grad, i))
        self._bind_fast()

    def _bind_fast(self):
        """Give each parameter what its ``p.grad = g`` fast path needs (``Parameter._fast``),
        or None where gradients are not plain host arrays (a GPU arena, sparse staging).
        Run again whenever ``has_grad`` is replaced or ``plain_grads`` changes: the tuples
        hold a memoryview of ``has_grad`` (a flag store through it costs half of NumPy's)."""
        plain = self.plain_grads and self.sparse_grads is None
        flags = memoryview(self.has_grad) if plain else None
        for i, (p, view, shape) in enumerate(zip(self.params, self._grad_views, self.shapes)):
            if p._arena is not self:    # another optimizer has taken the parameter over since
                continue
            # (a memoryview cannot assign complex formats: complex goes through NumPy)
            flat = memoryview(view) if plain and view.ndim == 1 and view.dtype.kind == "f" \
                else None
            kinds = "fiubc" if view.dtype.kind == "c" else "fiub"   # a real one refuses complex
            p._fast = (view, shape, view.dtype, flat, flags, i, kinds) if plain else None

    @property
    def plain_grads(self):
        """Whether gradients are plain host arrays (no GPU, no sparse staging): the
        condition of Parameter's fast path. Setting it re-binds that path."""
        return self._plain_grads

    @plain_grads.setter
    def plain_grads(self, value):
        self._plain_grads = value
        if "_grad_views" in self.__dict__:
            self._bind_fast()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_grad_views"}

    def __setstate__(self, state):
        # Pickle and deepcopy copy the buffers; re-point every parameter at the copies.
        if "plain_grads" in state:     # pickled before plain_grads became a property
            state = dict(state, _plain_grads=state["plain_grads"])
            del state["plain_grads"]
        self.__dict__.update(state)
        self._bind()

    @property
    def size(self):
        """Number of elements in the arena."""
        return int(self.offsets[-1])

    def __len__(self):
        return len(self.params)

    @property
    def has_complex(self):
        """Whether any parameter is complex (stored as real pairs)."""
        return bool(self.is_complex.any())

    def view(self, buffer, i):
        """Parameter ``i``'s slice of the flat ``buffer``, shaped like the parameter (live):
        a complex view of the real pairs for a complex parameter."""
        flat = buffer[self.offsets[i]:self.offsets[i + 1]]
        if self.is_complex[i]:
            flat = flat.view(self.complex_dtype)
        return flat.reshape(self.shapes[i])

    # -- the buffer operations a device arena overrides ------------------------------------
    def _adopt(self, host_array):
        """Make a buffer of this arena from a host array (the CPU arena keeps it)."""
        return host_array

    def _adopt_scalars(self, host_scalars):
        """Make the scalar-state table from a host ``(nparams, k)`` array."""
        return host_scalars

    def to_host(self, buffer):
        """A host ndarray with ``buffer``'s values (the buffer itself on the CPU)."""
        return buffer

    def ensure_scalars(self, k):
        """Give the scalar-state table ``k`` columns (zeros) if it has none yet."""
        if self.scalar_values().shape[1] != k:
            self.scalars = self._adopt_scalars(np.zeros((len(self.params), k), dtype=np.float64))

    def scalar_values(self):
        """Per-parameter scalar state as a host float64 ``(nparams, k)`` array."""
        return self.scalars

    def param_to_host(self, buffer, i):
        """A host copy of parameter ``i``'s slice of ``buffer``."""
        return self.view(buffer, i).copy()

    def ensure_state(self, names, fill=0.0):
        """Allocate the state buffers in ``names`` that do not exist yet, filled with ``fill``.

        Returns True when something was allocated (the kernel arguments must then be rebuilt).
        """
        missing = [name for name in names if name not in self.state]
        for name in missing:
            self.state[name] = self._adopt(np.full(self.size, fill, dtype=self.dtype))
        return bool(missing)

    def fill_state(self, name, start, value):
        """Set elements ``start:`` of state buffer ``name`` to ``value``."""
        self.state[name][start:] = value

    def load(self, step, buffers, scalars):
        """Replace the step counts, scalar state and state buffers with host arrays (copied in)."""
        self.step[:] = step
        self.scalars = self._adopt_scalars(np.array(scalars, dtype=np.float64))
        for name, buf in buffers.items():
            if name in self.state:
                self.state[name][:] = buf
            else:
                self.state[name] = self._adopt(buf.copy())
        for name in self.state:
            if name not in buffers:
                self.state[name][:] = 0

    def set_data(self, i, value):
        """Copy ``value`` (already shape-checked) into parameter ``i``."""
        np.copyto(self.view(self.data, i), _host_value(value), casting="unsafe")

    def set_grad(self, i, value):
        """Copy ``value`` (already shape-checked) into parameter ``i``'s gradient."""
        np.copyto(self._grad_views[i], _host_value(value), casting="unsafe")
        self.has_grad[i] = True

    def zero_grad(self):
        """Zero every gradient value (the flags stay)."""
        self.grad.fill(0)

    def step_counts(self):
        """Per-parameter step counts as a host float64 array."""
        return self.step

    def step_view(self, i):
        """Parameter ``i``'s step count as a 0-d array (live on the CPU)."""
        return self.step[i:i + 1].reshape(())

    def prepare(self, optimizer, hyper):
        """The step's kernel, its arguments, and a no-argument all-gradients-finite check.

        The arguments are the elementwise kernels' (``numbaopt.kernels.elementwise``):
        ``(data, grad, has_grad, step, group, hyper, chunks, scalars, *buffers)``
        with the optimizer's state buffers last (empty where unused).
        """
        empty = np.empty(0, dtype=self.dtype)
        state = tuple(self.state.get(k, empty) for k in optimizer._state_keys)
        args = (self.data, self.grad, self.has_grad, self.step, self.param_group, hyper,
                self.chunks, self.scalars) + state
        parallel = self.size >= optimizer.parallel_threshold
        check = grads_finite_parallel if parallel else grads_finite
        grad, has_grad, chunks = self.grad, self.has_grad, self.chunks
        return optimizer._rule.cpu()[parallel], args, lambda: check(grad, has_grad, chunks)


def _host_value(value):
    if hasattr(value, "__cuda_array_interface__") or hasattr(value, "copy_to_host"):
        raise TypeError("a GPU array was given to a parameter on the CPU; "
                        "copy it to the host first (e.g. .copy_to_host() or cupy.asnumpy)")
    return value


def make_arena(groups, dtype, device, previous=None):
    """An arena on ``device`` ("cpu" or "cuda")."""
    if device == "cpu":
        return Arena(groups, dtype, previous)
    if device == "cuda":
        try:
            from .arena_cuda import CudaArena
        except ImportError as error:
            raise RuntimeError("device='cuda' needs numba's CUDA target from the numba-cuda "
                               "package: pip install 'numbaopt[cuda]'") from error
        return CudaArena(groups, dtype, previous)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def check_no_overlap(params):
    """Refuse parameters whose arrays share memory (e.g. views of one array).

    Packing copies each parameter into its own slot of the arena, which would
    silently untie them. Sorting by memory bounds keeps this O(n log n).
    """
    spans = []
    for i, p in enumerate(params):
        if p.size and isinstance(p.data, np.ndarray):
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


def _chunk_table(offsets, chunk=CHUNK):
    """(nchunks, 3) int64 rows ``(param, start, stop)`` covering every parameter.

    Chunks hold at most ``chunk`` elements and never straddle two parameters.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    counts = np.maximum(1, -(-sizes // chunk))   # zero-size parameters keep one empty chunk
    param = np.repeat(np.arange(sizes.size, dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(param.size, dtype=np.int64) - first
    start = offsets[param] + k * chunk
    stop = np.minimum(start + chunk, offsets[param + 1])
    return np.ascontiguousarray(np.stack([param, start, stop], axis=1), dtype=np.int64)
