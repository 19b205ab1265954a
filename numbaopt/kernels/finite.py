"""@njit check that every gradient the step will read is finite (``skip_nonfinite``).

Reads ``grad`` over the chunks of parameters whose ``has_grad`` flag is set;
writes nothing. The parallel variant hands chunks to numba's thread pool.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy")
def _chunk_finite(c, grad, has_grad, chunks):
    if not has_grad[chunks[c, 0]]:
        return True
    for j in range(chunks[c, 1], chunks[c, 2]):
        if not np.isfinite(grad[j]):
            return False
    return True


@njit(cache=True, error_model="numpy")
def grads_finite(grad, has_grad, chunks):
    for c in range(chunks.shape[0]):
        if not _chunk_finite(c, grad, has_grad, chunks):
            return False
    return True


@njit(cache=True, error_model="numpy", parallel=True)
def grads_finite_parallel(grad, has_grad, chunks):
    bad = 0
    for c in prange(chunks.shape[0]):
        if not _chunk_finite(c, grad, has_grad, chunks):
            bad += 1
    return bad == 0
