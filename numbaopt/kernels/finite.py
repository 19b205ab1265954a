"""@njit check that every gradient the step will read is finite (``skip_nonfinite``).

Reads ``grad`` over the chunks of parameters whose ``has_grad`` flag is set;
writes nothing. The element loop has no early exit and an unsigned range, so
LLVM vectorizes it; the parallel variant hands chunks to numba's thread pool.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy", inline="always")
def _count_nonfinite(c, grad, has_grad, chunks):
    bad = 0
    if has_grad[chunks[c, 0]]:
        for j in range(np.uint64(chunks[c, 1]), np.uint64(chunks[c, 2])):
            x = grad[j]
            bad += (x - x) != 0     # inf - inf and NaN - NaN are NaN; finite x - x is 0
    return bad


@njit(cache=True, error_model="numpy")
def grads_finite(grad, has_grad, chunks):
    bad = 0
    for c in range(chunks.shape[0]):
        bad += _count_nonfinite(c, grad, has_grad, chunks)
    return bad == 0


@njit(cache=True, error_model="numpy", parallel=True)
def grads_finite_parallel(grad, has_grad, chunks):
    bad = 0
    for c in prange(chunks.shape[0]):
        bad += _count_nonfinite(c, grad, has_grad, chunks)
    return bad == 0
