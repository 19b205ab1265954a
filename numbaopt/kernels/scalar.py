"""Scalar helpers for elementwise rules, with torch's semantics on every backend.

Each is an ``@njit(inline="always")`` function the CPU kernels inline. A CUDA
kernel calls its twin in ``CUDA_TWINS`` as an inlined device function, and
under numba's CUDA simulator, or in plain Python, the rule's functions run as
Python and call the NumPy twin in ``PYTHON_TWINS`` (so float32 stays float32,
and the square root of a negative number is NaN, not a ValueError).

Import them by name (``from numbaopt.optim.elementwise import sqrt``): the
backends swap a rule's global names, not attributes of a module.
"""

import math

import numpy as np
from numba import njit

__all__ = ["sqrt", "lerp", "maximum", "clamp", "PYTHON_TWINS", "CUDA_TWINS"]

_INLINE = dict(inline="always", error_model="numpy")


@njit(**_INLINE)
def sqrt(x):
    """IEEE square root in ``x``'s dtype; NaN for negative ``x``."""
    return np.sqrt(x)   # LLVM's sqrt intrinsic: vectorizes (math.sqrt calls libm's sqrtf)


@njit(**_INLINE)
def lerp(start, end, weight, one_minus_weight, small):
    """torch's lerp: ``start + weight * (end - start)``, from the other end when ``weight >= 0.5``.

    ``one_minus_weight`` is ``1 - weight`` in the dtype and ``small`` is
    ``abs(weight) < 0.5``, both computed once per chunk by the caller.
    """
    if small:
        return start + weight * (end - start)
    return end - (end - start) * one_minus_weight


@njit(**_INLINE)
def maximum(a, b):
    """torch.maximum: the larger value, NaN if either is NaN."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a > b else b


@njit(**_INLINE)
def clamp(x, low, high):
    """torch.clamp: NaN stays NaN, and ``high`` wins when ``low > high``."""
    if x < low:
        x = low
    if x > high:
        x = high
    return x


def _sqrt_cuda(x):
    return math.sqrt(x)   # numba-cuda has no np.sqrt; this is IEEE sqrt.rn


#: What a rule's helper names mean when the rule runs as Python (simulator, reference runs).
PYTHON_TWINS = {sqrt: sqrt.py_func, lerp: lerp.py_func, maximum: maximum.py_func,
                clamp: clamp.py_func}

#: ... and in a CUDA kernel, where they become inlined device functions.
CUDA_TWINS = {**PYTHON_TWINS, sqrt: _sqrt_cuda}
