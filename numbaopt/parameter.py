"""Parameter: an ndarray with a ``.grad``, the unit numbaopt optimizers update."""

import numpy as np

__all__ = ["Parameter"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_float_dtype(dtype, what):
    if np.dtype(dtype) not in _FLOAT_DTYPES:
        raise TypeError(f"{what} must be float32 or float64, got dtype {np.dtype(dtype)}")


class Parameter:
    """An array the optimizer updates, with a gradient slot.

    ``p.data`` is the value (an ndarray), ``p.grad`` the gradient or ``None``.
    Assigning ``p.grad = g`` copies ``g`` in (the shape must match exactly;
    values are cast to the parameter's dtype); ``p.grad = None`` means "no
    gradient", and optimizers then skip the parameter, as torch does.

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

    __slots__ = ("_data", "_grad", "_arena", "_index", "__weakref__")

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

    # -- value -------------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        value = np.asarray(value)
        if value.shape != self._data.shape:
            raise ValueError(
                f"cannot assign data of shape {value.shape} to a Parameter of shape {self._data.shape}")
        _check_numeric(value, "data")
        # Copy in place: the arena view must stay the parameter's storage.
        np.copyto(self._data, value, casting="unsafe")

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        return self._data.size

    def numpy(self):
        """The value as an ndarray (``p.data``)."""
        return self._data

    # -- gradient ----------------------------------------------------------------
    @property
    def grad(self):
        arena = self._arena
        if arena is None:
            return self._grad
        return arena._grad_views[self._index] if arena.has_grad[self._index] else None

    @grad.setter
    def grad(self, value):
        arena = self._arena
        if value is None:
            if arena is None:
                self._grad = None
            else:
                arena.has_grad[self._index] = False
            return
        if isinstance(value, Parameter):
            value = value.data
        value = np.asarray(value)
        if value.shape != self._data.shape:
            raise ValueError(
                f"gradient shape {value.shape} does not match parameter shape {self._data.shape}")
        _check_numeric(value, "gradient")
        if arena is None:
            self._grad = value.astype(self._data.dtype, copy=True)
        else:
            np.copyto(arena._grad_views[self._index], value, casting="unsafe")
            arena.has_grad[self._index] = True

    def __getstate__(self):
        # Inside an arena, the value and grad are views the arena restores on unpickling.
        state = {"_arena": self._arena, "_index": self._index}
        if self._arena is None:
            state.update(_data=self._data, _grad=self._grad)
        return state

    def __setstate__(self, state):
        self._arena = state["_arena"]
        self._index = state["_index"]
        if "_data" in state:
            self._data = state["_data"]
            self._grad = state["_grad"]

    def __repr__(self):
        return f"Parameter({np.array2string(self._data, prefix='Parameter(')})"


def _check_numeric(value, what):
    if value.dtype.kind not in "fiub":
        raise TypeError(f"{what} must be a real numeric array, got dtype {value.dtype}")
