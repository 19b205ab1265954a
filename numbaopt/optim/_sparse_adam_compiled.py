"""SparseAdam stepped from ``@njit`` code: its ``numbaopt.compiled`` handle and the step the
handle runs.

The handle holds the arena, SparseAdam's state, the sparse-gradient stage
(``numbaopt.sparse.SparseGradStage``) and the kernels' workspace, all shared with the
Python optimizer. Compiled code stages gradients with ``compiled.sparse_grad(h, i, rows,
values)`` (``p.grad = RowSparseGrad(rows, values)``) and steps with ``compiled.step(h)``:
the same checks, counts and kernels as ``opt.step()``. The stage cannot grow from compiled
code, so a handle is made with room for a number of staged rows (``sparse_rows``), and a
stage reallocated from Python afterwards makes the handle stale (it raises, asking for a
new one).
"""

import numpy as np
from numba import njit

from .. import compiled as _compiled
from ..sparse import GENERATION, STALE, USED_VALUES
from .sparse_adam import _DENSE_GRAD, _staged_finite, _step_parallel, _step_serial

# how many rows a handle's stage holds by default: every row of every parameter, up to this
DEFAULT_ROWS = 4096

_KERNEL_FIELDS = ("has_grad", "flags", "stage_used", "generation", "threshold", "data",
                  "exp_avg", "exp_avg_sq", "steps", "groups", "hyper", "offsets", "row_len",
                  "row_base", "stage_count", "stage_start", "stage_vstart", "stage_indices",
                  "stage_values", "slot", "table", "gsum", "coef")


@njit(cache=True)
def _step(has_grad, flags, used, generation, threshold, param, exp_avg, exp_avg_sq, step,
          group, hyper, offsets, row_len, row_base, count, start, vstart, indices, values,
          slot, table, gsum, coef):
    """SparseAdam.step() after its sync: refuse dense gradients, skip_nonfinite, then the
    serial or threaded kernel as the staged values' count says; False if skipped."""
    if used[GENERATION] != generation:
        raise RuntimeError(STALE)
    for i in range(has_grad.shape[0]):
        if has_grad[i]:
            raise RuntimeError(_DENSE_GRAD)
    if flags[_compiled.SKIP_NONFINITE] and not _compiled.note_finite(
            flags, _staged_finite(count, vstart, row_len, values)):
        return False
    if used[USED_VALUES] >= threshold:
        _step_parallel(param, exp_avg, exp_avg_sq, step, group, hyper, offsets, row_len,
                       row_base, count, start, vstart, indices, values, slot, table, gsum, coef)
    else:
        _step_serial(param, exp_avg, exp_avg_sq, step, group, hyper, offsets, row_len,
                     row_base, count, start, vstart, indices, values, slot, table, gsum, coef)
    return True


_FIELDS = _compiled._FIXED + _compiled.SPARSE_FIELDS
_KIND = _compiled.Kind(_step, tuple(_FIELDS.index(f) for f in _KERNEL_FIELDS),
                       _compiled._sync_only, (_FIELDS.index("flags"),))


def reserve(optimizer, sparse_rows):
    """Give the optimizer's stage room for ``sparse_rows`` staged rows (of its widest
    parameter) before a handle is made."""
    stage = optimizer._stage
    if sparse_rows is None:
        sparse_rows = max(stage.indices.shape[0],
                          min(int(stage.num_rows.sum()), DEFAULT_ROWS))
    elif isinstance(sparse_rows, (bool, np.bool_)) or not isinstance(
            sparse_rows, (int, np.integer)) or sparse_rows < 0:
        raise ValueError(f"sparse_rows must be a non-negative int, got {sparse_rows!r}")
    widest = int(stage.row_len.max()) if stage.row_len.shape[0] else 0
    stage._reserve(max(0, int(sparse_rows) - stage.used_rows),
                   max(0, int(sparse_rows) * widest - stage.used_values))


def handle_parts(optimizer):
    """``ArenaOptimizer._handle_parts`` of SparseAdam (see ``numbaopt.compiled.make_handle``)."""
    arena, stage = optimizer.arena, optimizer._stage
    work = optimizer._workspace()
    extra = dict(exp_avg=arena.state["exp_avg"], exp_avg_sq=arena.state["exp_avg_sq"],
                 steps=arena.step, groups=arena.param_group, row_len=stage.row_len,
                 row_base=work.row_base, num_rows=stage.num_rows, ndims=stage.ndims,
                 stage_start=stage.start, stage_vstart=stage.vstart,
                 stage_indices=stage.indices, stage_values=stage.values, slot=work.slot,
                 table=work.table, gsum=work.gsum, coef=work.coef,
                 generation=stage.generation, threshold=int(optimizer.parallel_threshold))
    return "SparseAdamHandle", _KIND, extra, dict(stage_count=stage.count,
                                                  stage_used=stage.used)
