"""The ``parameters`` argument of ``numbaopt.utils``' functions: an optimizer, a Parameter
or an iterable, checked and matched to one arena for the compiled path. Shared by the
clipping functions and by parameters_to_vector / vector_to_parameters, so it is its own module.
"""

import types
import warnings
import weakref

import numpy as np

from .optim.optimizer import PARALLEL_THRESHOLD, Optimizer
from .parameter import Parameter


def _typename(obj):
    """torch.typename's spelling: ``list``, ``numpy.ndarray``."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _parameter_list(parameters, warn_empty=False, device_ok=False):
    """The Parameters in ``parameters`` (an optimizer, one Parameter or an iterable), checked
    (GPU arenas refused unless ``device_ok``)."""
    if isinstance(parameters, Optimizer) and getattr(parameters, "_lanes", None) is not None:
        params = parameters._ordered_params()     # several dtypes: one arena each
        for arena in parameters.arenas.values():
            _check_host(arena)
        return params
    if isinstance(parameters, Optimizer):
        _check_host(parameters.arena, device_ok)
        if parameters.arena.stale is None:
            return parameters.arena.params
        return [p for g in parameters.param_groups for p in g["params"]]
    if isinstance(parameters, Parameter):
        params = [parameters]
    elif isinstance(parameters, np.ndarray):
        raise TypeError("expected numbaopt.Parameter objects (or an optimizer), got a "
                        "numpy.ndarray: wrap it, numbaopt.Parameter(array)")
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        params = list(parameters)
        if warn_empty and is_generator and not params:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.",
                          stacklevel=4)
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError("expected numbaopt.Parameter objects (or an optimizer), got "
                            f"{type(p).__module__}.{type(p).__qualname__}")
        if p._arena is not None:
            _check_host(p._arena, device_ok)
    return params


def _collect(parameters, warn_empty=False):
    """``(params, arena, mask, threshold)`` for the arena fast path, or ``(params, None, ...)``.

    ``mask`` selects, per arena parameter, those that were passed *and* have a gradient.
    """
    threshold = PARALLEL_THRESHOLD
    if isinstance(parameters, Optimizer):
        threshold = getattr(parameters, "parallel_threshold", PARALLEL_THRESHOLD)
        arena = parameters.arena
        _check_host(arena, device_ok=True)
        _average_first(arena)
        if arena.stale is None:
            return arena.params, arena, arena.has_grad, threshold
    params = _parameter_list(parameters, warn_empty, device_ok=True)
    if not params:
        return params, None, None, threshold
    arena = params[0]._arena
    _average_first(arena)
    if arena is None or any(p._arena is not arena for p in params):
        for p in params:                  # (the NumPy path reads host gradients)
            if p._arena is not None:
                _check_host(p._arena)
        return params, None, None, threshold
    selected = np.zeros(len(arena), dtype=np.bool_)
    index = [p._index for p in params]
    selected[index] = True
    if int(selected.sum()) != len(params):
        # A parameter listed twice: torch counts (and scales) it twice; so does the
        # NumPy path, which walks the list as given.
        return params, None, None, threshold
    return params, arena, selected & arena.has_grad, threshold


def _collective(parameters, name):
    """A DistributedOptimizer's own clipping (it averages the gradients first), or None."""
    return getattr(parameters, name, None) if isinstance(parameters, Optimizer) else None


# arena -> weakref to the numbaopt.distributed.DistributedOptimizer that wraps its optimizer
_DISTRIBUTED = weakref.WeakKeyDictionary()


def _average_first(arena):
    """Parameters (or the wrapped optimizer) of a DistributedOptimizer: average their
    gradients across the ranks before clipping them, or refuse where that cannot be."""
    owner = _DISTRIBUTED.get(arena) if _DISTRIBUTED and arena is not None else None
    owner = owner() if owner is not None else None
    if owner is not None:
        owner._clipping_parameters()


def _check_host(arena, device_ok=False):
    stage = getattr(arena, "sparse_grads", None)
    if stage is not None and stage.live:
        raise NotImplementedError(
            "gradient clipping of sparse gradients (RowSparseGrad) is not supported; "
            "clip the rows' values before assigning them")
    if not device_ok and not isinstance(arena.grad, np.ndarray):
        raise NotImplementedError(
            "this works on host arrays only (device='cpu' arenas; clipping takes the "
            "parameters of one GPU optimizer, or the optimizer itself); this arena's "
            f"gradients are a {type(arena.grad).__name__}")

