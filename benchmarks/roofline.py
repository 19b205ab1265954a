"""Roofline kernels: the cheapest loops that move the bytes an optimizer step must move.

An optimizer step is memory bound at large sizes: it must read the parameter,
the gradient and every state buffer once and write back the parameter and the
state. Each kernel here does exactly that traffic with one multiply-add per
buffer, so ``roofline time / numbaopt time`` is the fraction of the machine's
memory bandwidth numbaopt reaches.

==================  ==================  =========
traffic pattern     optimizers          buffers
==================  ==================  =========
``p, g -> p``       SGD                 2 read, 1 written
``p, g, s -> p, s`` SGD momentum,       3 read, 2 written
                    RMSprop, Adagrad,
                    ASGD
``p, g, m, v ->``   Adam, AdamW,        4 read, 3 written
``p, m, v``         Adadelta, Adamax,
                    NAdam, RAdam, Rprop
==================  ==================  =========

``s``, ``m`` and ``v`` stand for any state buffers: ASGD's ax, Adadelta's
square_avg and acc_delta, Adamax's exp_avg and exp_inf, Rprop's prev and
step_size. ASGD only writes ax before its t0, but on the machine measured a
loop that stores a buffer without reading it is slower than one that reads
it too, so ``p, g, s -> p, s`` is its tighter roofline.

Like the optimizers, the kernels run serially below a size threshold and over
numba's thread pool (``prange``) above it.
"""

from numba import njit, prange

__all__ = ["PATTERNS", "bytes_moved", "roofline_kernel"]

_OPTS = dict(cache=True, error_model="numpy")
_PARALLEL_OPTS = dict(cache=True, error_model="numpy", parallel=True)


# Serial and parallel twins are separate functions on purpose: numba's cache key
# is the function's name and bytecode, not its flags, so njit(parallel=True) and
# njit() of one function would load each other's cached code.

@njit(**_OPTS)
def _p_g(param, grad, a):
    for i in range(param.shape[0]):
        param[i] = param[i] + a * grad[i]


@njit(**_PARALLEL_OPTS)
def _p_g_parallel(param, grad, a):
    for i in prange(param.shape[0]):
        param[i] = param[i] + a * grad[i]


@njit(**_OPTS)
def _p_g_s(param, grad, s, a):
    for i in range(param.shape[0]):
        b = a * s[i] + grad[i]
        s[i] = b
        param[i] = param[i] + a * b


@njit(**_PARALLEL_OPTS)
def _p_g_s_parallel(param, grad, s, a):
    for i in prange(param.shape[0]):
        b = a * s[i] + grad[i]
        s[i] = b
        param[i] = param[i] + a * b


@njit(**_OPTS)
def _p_g_m_v(param, grad, m, v, a):
    for i in range(param.shape[0]):
        g = grad[i]
        mi = a * m[i] + g
        vi = a * v[i] + g
        m[i] = mi
        v[i] = vi
        param[i] = param[i] + a * (mi + vi)


@njit(**_PARALLEL_OPTS)
def _p_g_m_v_parallel(param, grad, m, v, a):
    for i in prange(param.shape[0]):
        g = grad[i]
        mi = a * m[i] + g
        vi = a * v[i] + g
        m[i] = mi
        v[i] = vi
        param[i] = param[i] + a * (mi + vi)


#: pattern name -> (serial kernel, parallel kernel, number of state buffers,
#: bytes per element in units of the dtype's itemsize: reads + writes)
PATTERNS = {
    "p,g->p": (_p_g, _p_g_parallel, 0, 3),
    "p,g,s->p,s": (_p_g_s, _p_g_s_parallel, 1, 5),
    "p,g,m,v->p,m,v": (_p_g_m_v, _p_g_m_v_parallel, 2, 7),
}


def bytes_moved(pattern, n, itemsize):
    """Bytes one step over ``n`` elements must read and write."""
    return PATTERNS[pattern][3] * n * itemsize


def roofline_kernel(pattern, parallel):
    """The serial or ``prange`` kernel of ``pattern``; call it as ``k(param, grad, *state, a)``."""
    serial, par, _, _ = PATTERNS[pattern]
    return par if parallel else serial
