"""The functions of ``numbaopt.compiled`` that compiled code calls on a handle, besides ``step``.

Each takes the handle of an optimizer over one arena and, where it can, the handle of one
over several dtypes (``numbaopt._compiled_mixed``: one lane handle per dtype). From
compiled code an ``@overload`` picks the implementation by the handle's type when the
caller compiles; from Python the function picks it by the handle's class.
"""

import numpy as np
from numba import literal_unroll, njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from . import _compiled_mixed as mixed
from .compiled import LR_WRITTEN, SKIPPED
from .sparse import LIVE, USED_ROWS, USED_VALUES, stage_rows

__all__ = ["set_lr", "get_lr", "num_params", "params", "grad", "mark_grad", "zero_grad",
           "skipped_steps", "sparse_grad"]


def _of(h, one, several):
    """The implementation for the handle ``h`` (from Python)."""
    return several if type(h) in mixed.classes else one


def _typed(h, one, several):
    """The implementation for a handle of numba type ``h`` (when compiled code is typed)."""
    return several if getattr(h, "instance_class", None) in mixed.classes else one


def _lanes_only(name):
    return (f"compiled.{name} of a handle over several dtypes: a parameter's values and "
            "gradient have its dtype, so take them from its dtype's lane, "
            f"compiled.{name}(h.lanes[k], j) (k: the dtype's place in opt.arenas, j: "
            "h.param_index[i])")


# -- one arena ------------------------------------------------------------------------------
@njit(cache=True)
def _check_lr(lr, low_open):
    if not ((lr > 0.0 if low_open else lr >= 0.0) and lr < np.inf):
        if low_open:
            raise ValueError("Invalid learning rate: a compiled set_lr got a value that is not "
                             "positive and finite (this optimizer needs lr > 0)")
        raise ValueError("Invalid learning rate: a compiled set_lr got a negative or "
                         "non-finite value")


@njit(cache=True)
def _set_lr(h, g, lr):
    _check_lr(lr, h.lr_open)
    h.hyper[g, h.lr_col] = lr
    h.lr_mask[g] = 1
    h.flags[LR_WRITTEN] = 1


@njit(cache=True)
def _get_lr(h, g):
    return h.hyper[g, h.lr_col]


@njit(cache=True)
def _num_params(h):
    return h.offsets.shape[0] - 1


@njit(cache=True)
def _params(h, i):
    return h.data[h.offsets[i]:h.offsets[i + 1]]


@njit(cache=True)
def _grad(h, i):
    return h.grad_buf[h.offsets[i]:h.offsets[i + 1]]


@njit(cache=True)
def _mark_grad(h, i):
    h.has_grad[i] = True


@njit(cache=True)
def _zero_grad(h, set_to_none):
    count, used = h.stage_count, h.stage_used
    if set_to_none:
        h.has_grad[:] = False
        if count.shape[0]:
            count[:] = -1
            used[LIVE] = 0
    elif count.shape[0] == 0:
        h.grad_buf[:] = 0              # Optimizer.zero_grad(False): every gradient a zero one
        h.has_grad[:] = True
    else:                              # SparseAdam.zero_grad(False): empty sparse gradients
        if h.has_grad.any():           # (dense ones stay, refused; the buffer is unused else)
            h.grad_buf[:] = 0
        for i in range(count.shape[0]):
            count[i] = min(count[i], 0)
    if count.shape[0]:
        used[USED_ROWS] = 0
        used[USED_VALUES] = 0


# -- several dtypes: the same on each lane ----------------------------------------------------
@njit(cache=True)
def _set_lr_lanes(h, g, lr):
    for lane in literal_unroll(h.lanes):      # every check before any write
        _check_lr(lr, lane.lr_open)
    lane_number = 0
    for lane in literal_unroll(h.lanes):
        k = h.group_map[g, lane_number]
        if k >= 0:
            _set_lr(lane, k, lr)
        lane_number += 1
    h.flags[LR_WRITTEN] = 1


@njit(cache=True)
def _get_lr_lanes(h, g):
    lr = np.nan
    lane_number = 0
    for lane in literal_unroll(h.lanes):
        k = h.group_map[g, lane_number]
        if k >= 0 and lr != lr:
            lr = _get_lr(lane, k)
        lane_number += 1
    return lr


@njit(cache=True)
def _num_params_lanes(h):
    return h.param_lane.shape[0]


@njit(cache=True)
def _mark_grad_lanes(h, i):
    lane_number = 0
    for lane in literal_unroll(h.lanes):
        if h.param_lane[i] == lane_number:
            _mark_grad(lane, h.param_index[i])
        lane_number += 1


@njit(cache=True)
def _zero_grad_lanes(h, set_to_none):
    for lane in literal_unroll(h.lanes):
        _zero_grad(lane, set_to_none)


def _refuse(name):
    def refuse(h, i):
        raise TypeError(_lanes_only(name))
    return refuse


_REFUSE_PARAMS, _REFUSE_GRAD = _refuse("params"), _refuse("grad")


# -- the public functions ---------------------------------------------------------------------
def set_lr(h, g, lr):
    """Set group ``g``'s lr from compiled code; ``param_groups`` and ``state_dict()`` see it."""
    _of(h, _set_lr, _set_lr_lanes)(h, g, lr)


def get_lr(h, g):
    """Group ``g``'s current lr."""
    return _of(h, _get_lr, _get_lr_lanes)(h, g)


def num_params(h):
    """The number of parameters (arena order: group by group, as given)."""
    return _of(h, _num_params, _num_params_lanes)(h)


def params(h, i):
    """Parameter ``i``'s values: a flat view into the arena."""
    return _of(h, _params, _REFUSE_PARAMS)(h, i)


def grad(h, i):
    """Parameter ``i``'s gradient buffer: a flat view into the arena (write it, then mark_grad)."""
    return _of(h, _grad, _REFUSE_GRAD)(h, i)


def mark_grad(h, i):
    """Say that parameter ``i`` has a gradient (torch's ``p.grad is not None``)."""
    _of(h, _mark_grad, _mark_grad_lanes)(h, i)


def zero_grad(h, set_to_none=True):
    """``opt.zero_grad(set_to_none)``: clear the has-grad flags, or zero the gradients (every
    parameter then has a zero gradient, which writes into ``grad(h, i)`` fill). Of a
    SparseAdam handle: no sparse gradients, or empty ones (torch's sparse ``zero_()``: the
    step still counts them)."""
    _of(h, _zero_grad, _zero_grad_lanes)(h, set_to_none)


@njit(cache=True)
def skipped_steps(h):
    """How many steps ``skip_nonfinite`` skipped (``opt.skipped_steps``)."""
    return h.flags[SKIPPED]


@overload(set_lr)
def _overload_set_lr(h, g, lr):
    f = _typed(h, _set_lr, _set_lr_lanes)
    return lambda h, g, lr: f(h, g, lr)


@overload(get_lr)
def _overload_get_lr(h, g):
    f = _typed(h, _get_lr, _get_lr_lanes)
    return lambda h, g: f(h, g)


@overload(num_params)
def _overload_num_params(h):
    f = _typed(h, _num_params, _num_params_lanes)
    return lambda h: f(h)


@overload(params)
def _overload_params(h, i):
    if _typed(h, False, True):
        raise TypingError(_lanes_only("params"))
    return lambda h, i: _params(h, i)


@overload(grad)
def _overload_grad(h, i):
    if _typed(h, False, True):
        raise TypingError(_lanes_only("grad"))
    return lambda h, i: _grad(h, i)


@overload(mark_grad)
def _overload_mark_grad(h, i):
    f = _typed(h, _mark_grad, _mark_grad_lanes)
    return lambda h, i: f(h, i)


@overload(zero_grad)
def _overload_zero_grad(h, set_to_none=True):
    f = _typed(h, _zero_grad, _zero_grad_lanes)
    return lambda h, set_to_none=True: f(h, set_to_none)


# -- SparseAdam -------------------------------------------------------------------------------
def sparse_grad(h, i, rows, values):
    """Stage parameter ``i``'s row-sparse gradient, from compiled code: ``p.grad =
    RowSparseGrad(rows, values)`` (SparseAdam handles). ``rows``: 1-D integer row indices
    (repeats are summed at the step); ``values``: their gradients, ``len(rows)`` rows of the
    parameter in row order (shape ``(nnz, *row_shape)``, ``(nnz, row_size)`` or flat).
    Replaces the parameter's previous sparse gradient. The handle's stage holds the rows
    ``opt.compiled(sparse_rows=...)`` made room for; past that it raises."""
    if "stage_indices" not in getattr(type(h), "_fields", ()):
        raise TypeError(_NOT_SPARSE.format(type(h).__name__))
    rows, values = np.asarray(rows), np.asarray(values)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise TypeError(_BAD_ROWS.format(f"{rows.dtype} array of shape {rows.shape}"))
    if values.dtype.kind not in "fiub":
        raise TypeError(_BAD_VALUES.format(f"{values.dtype} array"))
    stage_rows(h.stage_count, h.stage_used, h.stage_start, h.stage_vstart, h.stage_indices,
               h.stage_values, h.row_len, h.num_rows, h.ndims, h.generation, i, rows, values)


_NOT_SPARSE = ("compiled.sparse_grad takes the handle of a SparseAdam (got {}): other "
               "optimizers take dense gradients, compiled.grad(h, i)")
_BAD_ROWS = "compiled.sparse_grad: rows must be a 1-D integer array, got {}"
_BAD_VALUES = "compiled.sparse_grad: values must be a real numeric array, got {}"


@overload(sparse_grad)
def _overload_sparse_grad(h, i, rows, values):
    if not (isinstance(h, types.BaseNamedTuple) and "stage_indices" in getattr(h, "fields", ())):
        raise TypingError(_NOT_SPARSE.format(h))
    if not (isinstance(rows, types.Array) and rows.ndim == 1 and isinstance(rows.dtype,
                                                                            types.Integer)):
        raise TypingError(_BAD_ROWS.format(rows))
    if not (isinstance(values, types.Array) and isinstance(
            values.dtype, (types.Float, types.Integer, types.Boolean))):
        raise TypingError(_BAD_VALUES.format(values))

    def impl(h, i, rows, values):
        stage_rows(h.stage_count, h.stage_used, h.stage_start, h.stage_vstart,
                   h.stage_indices, h.stage_values, h.row_len, h.num_rows, h.ndims,
                   h.generation, i, rows, values)
    return impl
