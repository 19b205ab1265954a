"""Parameter: an ndarray with a ``.grad``, the unit numbaopt optimizers update."""

import math

import numpy as np

from .sparse import RowSparseGrad

__all__ = ["Parameter"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_COMPLEX_DTYPES = (np.dtype(np.complex64), np.dtype(np.complex128))
_ndarray = np.ndarray


def _check_float_dtype(dtype, what):
    dtype = np.dtype(dtype)
    if dtype in _FLOAT_DTYPES or dtype in _COMPLEX_DTYPES:
        return
    why = ""
    if dtype == np.float16:
        why = (" (float16 has no arena kernels: NumPy computes float16 in software, and torch "
               "steps it with float32 arithmetic; keep a float32 master copy, or cast)")
    raise TypeError(f"{what} must be float32, float64, complex64 or complex128, got dtype "
                    f"{dtype}{why}")


class Parameter:
    """An array the optimizer updates, with a gradient slot.

    ``p.data`` is the value (an ndarray), ``p.grad`` the gradient or ``None``.
    Assigning ``p.grad = g`` copies ``g`` in (the shape must match exactly;
    values are cast to the parameter's dtype); ``p.grad = None`` means "no
    gradient", and optimizers then skip the parameter, as torch does.
    A complex parameter (complex64 or complex128) is stepped as torch steps
    it, as ``view_as_real`` pairs: in the arena it is ``2 * size`` reals of
    its real dtype, and ``p.data`` and ``p.grad`` are complex views of them.
    A parameter of ``numbaopt.optim.SparseAdam`` takes a row-sparse gradient
    instead, ``p.grad = numbaopt.sparse.RowSparseGrad(rows, values)`` (the
    form of an embedding's gradient); other optimizers refuse one.

    Once an optimizer is built over the parameter, ``p.data`` and ``p.grad``
    are views into the optimizer's flat arena. The array originally passed in
    is no longer updated: always read values through ``p.data``.

    Examples
    --------
    >>> w = Parameter(np.zeros((5, 2), np.float32))
    >>> w.grad = np.ones((5, 2))
    >>> w.grad.dtype
    dtype('float32')
    """

    # _fast: (grad view, shape, dtype, memoryview of a 1-D real grad view or None, has_grad
    # memoryview, index, the dtype kinds it casts from) while the parameter is in a plain host
    # arena (set by Arena._bind), else None: what `p.grad = g` needs, in one load
    __slots__ = ("_data", "_grad", "_arena", "_index", "_fast", "__weakref__")

    def __init__(self, data):
        if isinstance(data, Parameter):
            data = data.data
        if not isinstance(data, np.ndarray):
            data = np.asarray(data)
            if data.dtype.kind in "iub":
                data = data.astype(np.float64)
        _check_float_dtype(data.dtype, "Parameter data")
        if not data.flags.writeable:
            raise ValueError("Parameter data must be a writeable array (got a read-only one)")
        self._data = data
        self._grad = None          # only used while the parameter is in no arena
        self._arena = None
        self._index = -1
        self._fast = None

    # -- value -------------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        value = _as_array(value)
        _check_assignable(value, self.shape, "data", self.dtype)
        if self._arena is None:
            np.copyto(self._data, value, casting="unsafe")
        else:
            # Copy in place: the arena's slice must stay the parameter's storage.
            self._arena.set_data(self._index, value)

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return np.dtype(self._data.dtype)

    @property
    def ndim(self):
        return len(self._data.shape)

    @property
    def size(self):
        return math.prod(self._data.shape)

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(p)`` is ``p.data``: a view of the arena on the CPU (a host copy of
        a GPU parameter), so NumPy functions take a Parameter as they take an array."""
        data = self._data
        if not isinstance(data, np.ndarray):
            if copy is False:
                raise ValueError("a GPU parameter cannot be viewed as a host array without "
                                 "a copy")
            data = data.copy_to_host()
        if dtype is not None and np.dtype(dtype) != data.dtype:
            if copy is False:
                raise ValueError(f"casting the parameter to {np.dtype(dtype)} needs a copy")
            return data.astype(dtype)
        return data.copy() if copy else data

    def numpy(self):
        """The value as a host ndarray (``p.data``, or a copy of it for a GPU parameter)."""
        data = self._data
        return data if isinstance(data, np.ndarray) else data.copy_to_host()

    # -- gradient ----------------------------------------------------------------
    @property
    def grad(self):
        arena = self._arena
        if arena is None:
            return self._grad
        if arena.has_grad[self._index]:
            return arena._grad_views[self._index]
        sparse = getattr(arena, "sparse_grads", None)
        return None if sparse is None else sparse.get(self._index)

    @grad.setter
    def grad(self, value):
        fast = self._fast
        if fast is not None:
            # the common case, kept short: a host array of the parameter's shape into a plain
            # host arena's grad view, cast from a real dtype (the checks of _check_assignable,
            # at a few attribute loads; anything else below)
            if type(value) is _ndarray:
                view, shape, dtype, flat, has_grad, i, kinds = fast
                vdtype = value.dtype
                if flat is not None and vdtype is dtype:
                    # 1-D: a memoryview's assignment checks the exact shape (and format) in C,
                    # in the time NumPy takes to copy alone (a wrong shape, rare, raises)
                    try:
                        flat[:] = value
                    except (ValueError, TypeError):
                        pass
                    else:
                        has_grad[i] = True
                        return
                if value.shape == shape and (vdtype is dtype or vdtype.kind in kinds):
                    view[...] = value           # cast to the arena's dtype, as np.copyto(unsafe)
                    has_grad[i] = True
                    return
            elif value is None:
                fast[4][fast[5]] = False
                return
        arena = self._arena
        sparse = None if arena is None else getattr(arena, "sparse_grads", None)
        if value is None:
            if arena is None:
                self._grad = None
            else:
                arena.has_grad[self._index] = False
                if sparse is not None:
                    sparse.clear(self._index)
            return
        if isinstance(value, RowSparseGrad):
            if sparse is None:
                raise RuntimeError(_no_sparse_message(arena))
            sparse.assign(self._index, value)
            arena.has_grad[self._index] = False
            return
        value = _as_array(value)
        _check_assignable(value, self.shape, "gradient", self.dtype)
        if arena is None:
            if not isinstance(value, np.ndarray):
                value = value.copy_to_host()
            self._grad = value.astype(self._data.dtype, copy=True)
        else:
            arena.set_grad(self._index, value)
            if sparse is not None:
                sparse.clear(self._index)

    def __getstate__(self):
        # Inside an arena, the value and grad are views the arena restores on unpickling.
        state = {"_arena": self._arena, "_index": self._index}
        if self._arena is None:
            state.update(_data=self._data, _grad=self._grad)
        return state

    def __setstate__(self, state):
        self._arena = state["_arena"]
        self._index = state["_index"]
        try:
            self._fast          # set already when the arena was unpickled first (its _bind)
        except AttributeError:
            self._fast = None
        if "_data" in state:
            self._data = state["_data"]
            self._grad = state["_grad"]

    def __repr__(self):
        return f"Parameter({np.array2string(self._data, prefix='Parameter(')})"


def _no_sparse_message(arena):
    if arena is None:
        return ("a sparse gradient (RowSparseGrad) can be assigned once the parameter is held "
                "by SparseAdam: build the optimizer first, then assign p.grad")
    # torch's words for Adam; numbaopt refuses sparse gradients in every optimizer but SparseAdam
    owner = getattr(arena, "owner", None) or "this parameter's optimizer"
    return (f"{owner} does not support sparse gradients, please consider SparseAdam instead "
            "(numbaopt's SparseAdam is the one optimizer that takes a RowSparseGrad)")


def _is_device_array(value):
    return hasattr(value, "__cuda_array_interface__") or hasattr(value, "copy_to_host")


def _as_array(value):
    """``value`` as an ndarray, or as itself when it is a GPU array."""
    if isinstance(value, Parameter):
        value = value.data
    return value if _is_device_array(value) else np.asarray(value)


def _check_assignable(value, shape, what, dtype=None):
    """Refuse a value that cannot go into a parameter of ``shape`` (and ``dtype``) unchanged:
    another shape, a non-numeric dtype, or a complex value for a real parameter (casting
    would drop its imaginary part)."""
    if tuple(value.shape) != shape:
        name = "gradient" if what == "gradient" else "data"
        raise ValueError(f"{name} shape {tuple(value.shape)} does not match parameter shape {shape}"
                         " (no broadcasting)")
    kind = np.dtype(value.dtype).kind
    if kind == "c" and dtype is not None and np.dtype(dtype).kind == "c":
        return
    if kind not in "fiub":
        raise TypeError(f"{what} must be a real numeric array, got dtype {value.dtype}"
                        + (" (the parameter is real: casting would drop the imaginary part)"
                           if kind == "c" else ""))
