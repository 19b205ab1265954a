"""``numbaopt.utils.parameters_to_vector`` and ``vector_to_parameters``: an optimizer's
parameters already are one flat vector (its arena), so these are views and one copy,
apart from the norms and clipping of ``numbaopt.utils``.
"""

import numpy as np

from ._utils_params import _parameter_list, _typename
from .parameter import Parameter


def _arena_run(params):
    """``(arena, lo, hi)`` when ``params`` are consecutive parameters of one arena in its
    order (their values are ``arena.data[lo:hi]``), else None."""
    arena = params[0]._arena
    if arena is None:
        return None
    first = params[0]._index
    for k, p in enumerate(params):
        if p._arena is not arena or p._index != first + k:
            return None
    return arena, int(arena.offsets[first]), int(arena.offsets[first + len(params)])


def _same_memory(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def parameters_to_vector(parameters):
    """The parameters' values flattened into one vector, in order (torch's parameters_to_vector).

    numbaopt keeps an optimizer's parameters in one flat arena, so for them the vector
    already exists. **A view, no copy**, when the parameters are consecutive parameters
    of one optimizer in its order: the optimizer itself, all of its parameters as
    listed in its param groups, one group's ``params``, or any consecutive run of them.
    The result is then ``opt.arena.data`` itself (all parameters) or a slice of it:
    writing into it writes the parameters, and it shows every later step. In every other
    case (parameters in no optimizer or in two, another order, a gap, a repeat) it is a
    new array, a copy, as torch's always is.

    Parameters
    ----------
    parameters : Optimizer, Parameter or iterable of Parameter

    Returns
    -------
    ndarray, 1-D
        The parameters' dtype (promoted, as ``np.concatenate`` does, for a copy).

    Examples
    --------
    >>> vec = numbaopt.utils.parameters_to_vector(opt)      # opt.arena.data, no copy
    >>> np.shares_memory(vec, w.data)
    True
    """
    params = _parameter_list(parameters)
    if not params:
        raise ValueError("parameters_to_vector(): expected a non-empty list of Parameters "
                         "(torch.cat refuses an empty list too)")
    run = _arena_run(params)
    if run is not None:
        arena, lo, hi = run
        return arena.data if (lo, hi) == (0, arena.size) else arena.data[lo:hi]
    return np.concatenate([p.data.reshape(-1) for p in params])


def vector_to_parameters(vec, parameters):
    """Copy slices of one vector into the parameters, in order (torch's vector_to_parameters).

    Parameter ``i`` receives the next ``p.size`` elements of ``vec``, reshaped and cast
    to its dtype, written in place (``p.data`` stays the arena's view; torch instead
    makes each parameter a view of ``vec``). Consecutive parameters of one optimizer
    are filled with one copy into ``opt.arena.data``. Unlike torch, ``vec`` must be
    1-D and hold exactly as many elements as the parameters: a longer one is refused,
    not cut. On any error no parameter changes.

    Parameters
    ----------
    vec : ndarray, 1-D
    parameters : Optimizer, Parameter or iterable of Parameter

    Examples
    --------
    >>> vec = numbaopt.utils.parameters_to_vector([w, b]).copy()
    >>> numbaopt.utils.vector_to_parameters(vec * 0.5, [w, b])
    """
    if isinstance(vec, Parameter):
        vec = vec.data
    if hasattr(vec, "__cuda_array_interface__") or hasattr(vec, "copy_to_host"):
        raise NotImplementedError("vector_to_parameters works on host arrays and device='cpu' "
                                  f"optimizers only; got a {type(vec).__name__}")
    if not isinstance(vec, np.ndarray):
        raise TypeError(f"expected numpy.ndarray, but got: {_typename(vec)}")
    params = _parameter_list(parameters)
    if vec.ndim == 0:
        raise IndexError("slice() cannot be applied to a 0-dim array: vec must be a 1-D array")
    if vec.ndim != 1:
        raise RuntimeError(f"vec must be a 1-D array (one vector), got shape {vec.shape}")
    if vec.dtype.kind not in "fiub":
        raise TypeError(f"vec must be a real numeric array, got dtype {vec.dtype}")
    pointer = 0
    for p in params:
        if pointer + p.size > vec.size:   # torch's view_as error, before anything is written
            raise RuntimeError(f"shape '{list(p.shape)}' is invalid for input of size "
                               f"{vec.size - pointer}")
        pointer += p.size
    if pointer != vec.size:
        raise RuntimeError(f"vec has {vec.size} elements but the parameters have {pointer} "
                           "(torch ignores the rest; numbaopt refuses a vector that does not fit)")
    run = _arena_run(params) if params else None
    if run is not None:
        arena, lo, hi = run
        dest = arena.data[lo:hi]
        if not _same_memory(vec, dest):    # e.g. the vector parameters_to_vector returned
            np.copyto(dest, vec, casting="unsafe")   # NumPy handles a partial overlap
        return
    if any(np.may_share_memory(vec, p.data) for p in params):
        vec = vec.copy()                   # writing one parameter must not change the source
    pointer = 0
    for p in params:
        p.data = vec[pointer:pointer + p.size].reshape(p.shape)
        pointer += p.size
