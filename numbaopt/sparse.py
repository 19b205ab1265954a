"""Row-sparse gradients: the form an embedding's backward gives, and where an optimizer keeps them.

An embedding lookup touches a few rows of a large table, so its gradient is a
list of row indices and the gradient of each of those rows, not a dense array
of the table's shape. That is torch's ``nn.Embedding(sparse=True)`` gradient:
a COO tensor whose ``grad._indices()[0]`` are the rows and ``grad._values()``
their values. ``RowSparseGrad(indices, values)`` is the same pair for NumPy
users; assign it to ``p.grad`` of a parameter held by ``numbaopt.optim.SparseAdam``.

Indices may repeat (duplicates are summed at the step, like torch's
``coalesce()``) and need not be sorted. The optimizer copies the rows into its
``SparseGradStage``: growable buffers shared by all its parameters, so a step
reads them in one compiled call and, once the buffers are large enough,
assigning and stepping allocate nothing.
"""

import numpy as np
from numba import njit

__all__ = ["RowSparseGrad", "SparseGradStage"]

# SparseGradStage.used: its counters, in an array that compiled code (numbaopt.compiled's
# SparseAdam handle) shares
USED_ROWS, USED_VALUES, LIVE, GENERATION = range(4)


class RowSparseGrad:
    """A gradient that touches only some rows of a parameter: row indices and their values.

    ``values[k]`` is the gradient of row ``indices[k]`` of the parameter (its
    first axis), so ``values`` has shape ``(nnz, *param.shape[1:])``. Rows not
    listed have no gradient: SparseAdam leaves their parameter values and state
    untouched. Indices may repeat (their values are summed, as torch's
    ``coalesce()`` does) and come in any order.

    It is torch's embedding gradient: for a torch sparse COO gradient ``g``,
    ``RowSparseGrad(g._indices().numpy(), g._values().numpy())`` (indices of
    shape ``(1, nnz)`` are accepted as given). Assigning ``p.grad = RowSparseGrad(...)``
    copies the rows in (values cast to the parameter's dtype), after checking
    the index range and the values' shape; reading ``p.grad`` back gives a
    RowSparseGrad with copies of the rows as assigned (not coalesced).

    Parameters
    ----------
    indices : array_like of int, shape (nnz,) or (1, nnz)
        Rows of the parameter (``0 <= index < param.shape[0]``).
    values : array_like of real numbers, shape (nnz, *row_shape)
        Gradient of each listed row.

    Examples
    --------
    >>> table = numbaopt.Parameter(np.zeros((1000, 16), np.float32))
    >>> opt = SparseAdam([table], lr=0.01)
    >>> rows = np.array([3, 17, 3])              # looked up in this batch; 3 twice
    >>> table.grad = RowSparseGrad(rows, grad_of_lookups)   # shape (3, 16)
    >>> opt.step()                                # touches rows 3 and 17 only
    """

    __slots__ = ("indices", "values")

    def __init__(self, indices, values):
        indices = np.asarray(indices)
        values = np.asarray(values)
        if indices.ndim == 2 and indices.shape[0] == 1:
            indices = indices[0]      # torch's grad._indices(): (sparse_dim=1, nnz)
        if indices.ndim != 1:
            raise ValueError("RowSparseGrad indices must be a 1-D array of row indices (or "
                             f"torch's (1, nnz) form), got shape {indices.shape}")
        if indices.dtype.kind not in "iu":
            raise TypeError(f"RowSparseGrad indices must be integers, got dtype {indices.dtype}")
        if values.ndim < 1 or values.shape[0] != indices.shape[0]:
            raise ValueError(f"RowSparseGrad values must have one row per index: "
                             f"{indices.shape[0]} indices, values of shape {values.shape}")
        if values.dtype.kind not in "fiub":
            raise TypeError(f"RowSparseGrad values must be a real numeric array, got dtype "
                            f"{values.dtype}")
        self.indices = indices
        self.values = values

    @property
    def nnz(self):
        """Number of listed rows (duplicates counted)."""
        return int(self.indices.shape[0])

    @property
    def row_shape(self):
        """Shape of one row: ``param.shape[1:]``."""
        return tuple(self.values.shape[1:])

    def coalesce(self):
        """Sorted unique indices with duplicates summed (torch's ``coalesce``)."""
        rows, inverse = np.unique(self.indices, return_inverse=True)
        summed = np.zeros((rows.shape[0],) + self.row_shape, dtype=self.values.dtype)
        np.add.at(summed, inverse.reshape(-1), self.values)
        return RowSparseGrad(rows, summed)

    def to_dense(self, num_rows):
        """The dense gradient of a parameter with ``num_rows`` rows (duplicates summed)."""
        dense = np.zeros((int(num_rows),) + self.row_shape, dtype=self.values.dtype)
        np.add.at(dense, self.indices, self.values)
        return dense

    @classmethod
    def from_dense(cls, dense):
        """The rows of ``dense`` that hold a nonzero (torch's ``dense.to_sparse(1)``)."""
        dense = np.asarray(dense)
        if dense.ndim < 1:
            raise ValueError("a 0-d array has no rows")
        rows = np.flatnonzero(dense.reshape(dense.shape[0], -1).any(axis=1))
        return cls(rows, dense[rows])

    def __add__(self, other):
        """Concatenation, as torch accumulates two sparse gradients (not coalesced)."""
        if not isinstance(other, RowSparseGrad):
            return NotImplemented
        if other.row_shape != self.row_shape:
            raise ValueError(f"cannot add RowSparseGrads with rows of shape {self.row_shape} "
                             f"and {other.row_shape}")
        return RowSparseGrad(np.concatenate([self.indices, other.indices]),
                             np.concatenate([self.values, other.values]))

    def __repr__(self):
        return (f"RowSparseGrad(indices={np.array2string(self.indices, threshold=8)}, "
                f"values of shape {self.values.shape} and dtype {self.values.dtype})")


class SparseGradStage:
    """The row-sparse gradients of one optimizer's parameters, staged for its compiled step.

    Attached to the arena as ``arena.sparse_grads`` by the optimizer that accepts
    sparse gradients; ``Parameter.grad`` assigns into it, reads from it and clears it.

    Layout (host arrays, read by the step kernel): parameter ``i`` has ``count[i]``
    staged rows (-1: no sparse gradient), their indices at
    ``indices[start[i]:start[i] + count[i]]`` and their values, flattened, at
    ``values[vstart[i]:vstart[i] + count[i] * row_len[i]]``. Assigning appends;
    when a buffer is full the live rows are compacted to the front and, if that
    is not enough, the buffers grow geometrically. ``clear_all()`` (the
    optimizer's ``zero_grad``) empties everything without freeing.
    """

    def __init__(self, arena):
        self.indices = np.zeros(0, dtype=np.int64)
        self.values = np.zeros(0, dtype=arena.dtype)
        # rows and values in use, parameters with a staged gradient, and a generation
        # bumped when a buffer is reallocated
        self.used = np.zeros(4, dtype=np.int64)
        self.bind(arena)

    def __setstate__(self, state):
        if "used" not in state:        # pickled before the counters became an array
            state = dict(state)
            state["used"] = np.array([state.pop("used_rows", 0), state.pop("used_values", 0),
                                      state.pop("live", 0), state.pop("generation", 0)],
                                     dtype=np.int64)
            state["ndims"] = np.array([len(s) for s in state["shapes"]], dtype=np.int64)
        self.__dict__.update(state)

    used_rows = property(lambda self: int(self.used[USED_ROWS]),
                         lambda self, n: self.used.__setitem__(USED_ROWS, n))
    used_values = property(lambda self: int(self.used[USED_VALUES]),
                           lambda self, n: self.used.__setitem__(USED_VALUES, n))
    live = property(lambda self: int(self.used[LIVE]),
                    lambda self, n: self.used.__setitem__(LIVE, n))
    generation = property(lambda self: int(self.used[GENERATION]))

    def bind(self, arena):
        """Follow the optimizer to a (grown) arena; parameters keep their indices and rows."""
        n = len(arena)
        old = getattr(self, "count", np.zeros(0, dtype=np.int64))
        self.arena_dtype = arena.dtype
        self.shapes = list(arena.shapes)
        self.row_len = np.array([int(np.prod(s[1:], dtype=np.int64)) if len(s) else 0
                                 for s in self.shapes], dtype=np.int64)
        self.num_rows = np.array([s[0] if len(s) else 0 for s in self.shapes], dtype=np.int64)
        self.ndims = np.array([len(s) for s in self.shapes], dtype=np.int64)
        count = np.full(n, -1, dtype=np.int64)
        start = np.zeros(n, dtype=np.int64)
        vstart = np.zeros(n, dtype=np.int64)
        kept = min(n, old.shape[0])
        if kept:
            count[:kept] = old[:kept]
            start[:kept] = self.start[:kept]
            vstart[:kept] = self.vstart[:kept]
        self.count, self.start, self.vstart = count, start, vstart
        self.used[GENERATION] += 1     # compiled handles of the old arrays are stale
        arena.sparse_grads = self
        arena.plain_grads = False

    # -- what Parameter.grad calls ------------------------------------------------------
    def assign(self, i, grad):
        """Stage ``grad`` (a RowSparseGrad) as parameter ``i``'s gradient, after checking it."""
        shape = self.shapes[i]
        if len(shape) == 0:
            raise ValueError("a 0-d parameter has no rows: give it a dense gradient, or "
                             "keep it in another optimizer")
        if grad.row_shape != tuple(shape[1:]):
            raise ValueError(f"sparse gradient rows of shape {grad.row_shape} do not match the "
                             f"parameter's rows {tuple(shape[1:])} (parameter shape {shape}; "
                             "values must have shape (nnz, *param.shape[1:]))")
        n = grad.nnz
        if n:
            lo, hi = int(grad.indices.min()), int(grad.indices.max())
            if lo < 0 or hi >= shape[0]:
                bad = lo if lo < 0 else hi
                raise ValueError(f"sparse gradient index {bad} is out of range for a parameter "
                                 f"with {shape[0]} rows (shape {shape})")
        length = n * int(self.row_len[i])
        if self.count[i] < 0:
            self.live += 1
        self.count[i] = -1             # the old rows of i are dead before any compaction
        self._reserve(n, length)
        r, v = self.used_rows, self.used_values
        self.indices[r:r + n] = grad.indices
        np.copyto(self.values[v:v + length], grad.values.reshape(-1), casting="unsafe")
        self.start[i], self.vstart[i], self.count[i] = r, v, n
        self.used_rows, self.used_values = r + n, v + length

    def get(self, i):
        """Parameter ``i``'s staged gradient as a RowSparseGrad of copies, or None."""
        n = int(self.count[i])
        if n < 0:
            return None
        r, v = int(self.start[i]), int(self.vstart[i])
        length = n * int(self.row_len[i])
        values = self.values[v:v + length].reshape((n,) + tuple(self.shapes[i][1:]))
        return RowSparseGrad(self.indices[r:r + n].copy(), values.copy())

    def clear(self, i):
        """Parameter ``i`` has no sparse gradient any more."""
        if self.count[i] >= 0:
            self.count[i] = -1
            self.live -= 1
            if self.live == 0:
                self.used_rows = self.used_values = 0

    def clear_all(self):
        self.count.fill(-1)
        self.live = 0
        self.used_rows = self.used_values = 0

    def empty_all(self):
        """Staged gradients keep their parameters, lose their rows (torch's sparse ``zero_()``)."""
        np.minimum(self.count, 0, out=self.count)
        self.used_rows = self.used_values = 0    # empty gradients hold no rows

    # -- storage ------------------------------------------------------------------------
    def _reserve(self, n, length):
        if self.used_rows + n <= self.indices.shape[0] and \
                self.used_values + length <= self.values.shape[0]:
            return
        self._compact()
        need_rows, need_values = self.used_rows + n, self.used_values + length
        if need_rows > self.indices.shape[0]:
            indices = np.zeros(max(2 * self.indices.shape[0], need_rows, 16), dtype=np.int64)
            indices[:self.used_rows] = self.indices[:self.used_rows]
            self.indices = indices
            self.used[GENERATION] += 1
        if need_values > self.values.shape[0]:
            values = np.zeros(max(2 * self.values.shape[0], need_values, 16),
                              dtype=self.arena_dtype)
            values[:self.used_values] = self.values[:self.used_values]
            self.values = values
            self.used[GENERATION] += 1

    def _compact(self):
        """Move the live rows to the front of the buffers, in order of their position."""
        compact(self.count, self.start, self.vstart, self.row_len, self.indices, self.values,
                self.used)


@njit(cache=True)
def compact(count, start, vstart, row_len, indices, values, used):
    """Move the live rows of a stage to the front of its buffers, in order of position
    (``SparseGradStage._compact``, and compiled code staging rows into a full stage)."""
    live = np.flatnonzero(count >= 0)
    live = live[np.argsort(start[live], kind="mergesort")]
    r = v = 0
    for i in live:
        n = count[i]
        length = n * row_len[i]
        s, t = start[i], vstart[i]
        # forward copies: a live block only ever moves towards the front
        if s != r:
            for k in range(n):
                indices[r + k] = indices[s + k]
        if t != v:
            for k in range(length):
                values[v + k] = values[t + k]
        start[i], vstart[i] = r, v
        r, v = r + n, v + length
    used[USED_ROWS], used[USED_VALUES] = r, v


STALE = ("the optimizer's sparse-gradient stage was reallocated since this handle was made (a "
         "RowSparseGrad assigned from Python outgrew it): get a new one with opt.compiled()")


@njit(cache=True)
def stage_rows(count, used, start, vstart, indices, values, row_len, num_rows, ndims,
               generation, i, rows, grads):
    """Stage ``rows`` and their gradient ``grads`` (``len(rows) * row_len[i]`` values in row
    order) as parameter ``i``'s sparse gradient: ``SparseGradStage.assign`` for compiled
    code (``numbaopt.compiled.sparse_grad``), in buffers that cannot grow. Checks
    everything before writing anything."""
    if used[GENERATION] != generation:
        raise RuntimeError(STALE)
    if ndims[i] == 0:
        raise ValueError("a 0-d parameter has no rows: give it a dense gradient, or keep it in "
                         "another optimizer")
    n = rows.shape[0]
    length = n * row_len[i]
    if grads.size != length:
        raise ValueError("sparse_grad: the values must be one row of the parameter per index "
                         "(len(rows) * row size elements, in row order)")
    for k in range(n):
        if rows[k] < 0 or rows[k] >= num_rows[i]:
            raise ValueError("sparse_grad: a row index is out of range for the parameter")
    full = used[USED_ROWS] + n > indices.shape[0] or \
        used[USED_VALUES] + length > values.shape[0]
    if full:
        # compacting frees the dead rows, parameter i's own current ones included
        live_rows = n
        live_values = length
        for j in range(count.shape[0]):
            if j != i and count[j] > 0:
                live_rows += count[j]
                live_values += count[j] * row_len[j]
        if live_rows > indices.shape[0] or live_values > values.shape[0]:
            raise ValueError("sparse_grad: the handle's sparse-gradient stage is full: get a "
                             "handle with room for more rows, opt.compiled(sparse_rows=...)")
    if count[i] < 0:
        used[LIVE] += 1
    count[i] = -1                  # the old rows of i are dead before any compaction
    if full:
        compact(count, start, vstart, row_len, indices, values, used)
    r, v = used[USED_ROWS], used[USED_VALUES]
    for k in range(n):
        indices[r + k] = rows[k]
    flat = grads.ravel()
    for k in range(length):
        values[v + k] = flat[k]
    start[i], vstart[i], count[i] = r, v, n
    used[USED_ROWS], used[USED_VALUES] = r + n, v + length
