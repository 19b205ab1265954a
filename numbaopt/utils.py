"""Gradient clipping (torch.nn.utils.clip_grad_norm_ / clip_grad_value_) over the arena.

Given an optimizer, or parameters that all live in one optimizer's arena, each
function is one compiled call over ``arena.grad`` restricted to the parameters
whose ``has_grad`` flag is set (plus, for the norm, one more call that scales
the gradients when they need clipping). Parameters in no arena fall back to
NumPy with the same arithmetic.

Numbers follow torch 2.13: the total norm is the norm of the per-parameter
norms; the per-element powers, the per-parameter root and the clipping
coefficient ``max_norm / (total_norm + 1e-6)`` (clamped to 1) are computed in
the gradients' dtype, as torch does, so float32 overflows where torch's does.
Only the sums are accumulated in float64 (torch accumulates float32 sums in
float32 and loses about 1e-5 relative over a million elements).
"""

import math
import types
import warnings

import numpy as np

from .kernels.cpu import (_clamp_grads_cpu, _clamp_grads_cpu_parallel, _grad_norm_cpu,
                          _grad_norm_cpu_parallel, _scale_grads_cpu, _scale_grads_cpu_parallel)
from .optim.optimizer import PARALLEL_THRESHOLD, Optimizer
from .parameter import Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_"]

_NONFINITE_MESSAGE = (
    "The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it "
    "cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
    "anyway, set `error_if_nonfinite=False`")


# ------------------------------------------------------------------------- host code
def _collect(parameters):
    """``(params, arena, mask, threshold)`` for the arena fast path, or ``(params, None, ...)``.

    ``mask`` selects, per arena parameter, those that were passed *and* have a gradient.
    """
    threshold = PARALLEL_THRESHOLD
    if isinstance(parameters, Optimizer):
        threshold = getattr(parameters, "parallel_threshold", PARALLEL_THRESHOLD)
        arena = parameters.arena
        _check_host(arena)
        if arena.stale is None:
            return arena.params, arena, arena.has_grad, threshold
        params = [p for g in parameters.param_groups for p in g["params"]]
    elif isinstance(parameters, Parameter):
        params = [parameters]
    elif isinstance(parameters, np.ndarray):
        raise TypeError("expected numbaopt.Parameter objects (or an optimizer), got a "
                        "numpy.ndarray: wrap it, numbaopt.Parameter(array)")
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        params = list(parameters)
        if is_generator and not params:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.",
                          stacklevel=3)
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError("expected numbaopt.Parameter objects (or an optimizer), got "
                            f"{type(p).__module__}.{type(p).__qualname__}")
        if p._arena is not None:
            _check_host(p._arena)
    if not params:
        return params, None, None, threshold
    arena = params[0]._arena
    if arena is None or any(p._arena is not arena for p in params):
        return params, None, None, threshold
    selected = np.zeros(len(arena), dtype=np.bool_)
    index = [p._index for p in params]
    selected[index] = True
    if int(selected.sum()) != len(params):
        # A parameter listed twice: torch counts (and scales) it twice; so does the
        # NumPy path, which walks the list as given.
        return params, None, None, threshold
    return params, arena, selected & arena.has_grad, threshold


def _check_host(arena):
    stage = getattr(arena, "sparse_grads", None)
    if stage is not None and stage.live:
        raise NotImplementedError(
            "gradient clipping of sparse gradients (RowSparseGrad) is not supported; "
            "clip the rows' values before assigning them")
    if not isinstance(arena.grad, np.ndarray):
        raise NotImplementedError(
            "gradient clipping works on optimizers with device='cpu' (host arenas) only; "
            f"this arena's gradients are a {type(arena.grad).__name__}")


def _check_empty(sizes, norm_type):
    """torch refuses norms without an identity (inf, -inf, p < 0) of zero-size gradients."""
    if norm_type == math.inf or norm_type < 0:
        for i, size in sizes:
            if size == 0:
                name = "infinity" if norm_type == math.inf else f"{norm_type:g}"
                raise RuntimeError(
                    f"cannot compute the {name} norm of the empty gradient of parameter {i} "
                    "because the operation does not have an identity (torch refuses it too)")


def _vector_norm(x, norm_type):
    """NumPy twin of the kernels' three stages over one array (any shape)."""
    T = x.dtype.type
    a = np.abs(x.reshape(-1))
    if norm_type == math.inf:          # np.max and np.min propagate NaN, as torch does
        s = np.max(a, initial=0.0)
    elif norm_type == -math.inf:
        s = np.min(a, initial=np.inf)
    elif norm_type == 0:
        s = float(np.count_nonzero(a))
    elif norm_type == 1:
        s = np.sum(a, dtype=np.float64)
    elif norm_type == 2:
        s = np.sum(a * a, dtype=np.float64)
    else:
        s = np.sum(a ** T(norm_type), dtype=np.float64)
    t = T(s)
    if norm_type == 2:
        return np.sqrt(t)
    if norm_type in (0, 1, math.inf, -math.inf):
        return t
    return t ** T(1.0 / norm_type)


def _total_norm_numpy(grads, norm_type):
    norms = [_vector_norm(g, norm_type) for g in grads]
    dtype = np.result_type(*[g.dtype for g in grads])   # torch.stack promotes the norms
    return _vector_norm(np.array(norms, dtype=dtype), norm_type)


def _clip_coef(total, max_norm):
    # torch: max_norm / (total + 1e-6) is Tensor.__rtruediv__, reciprocal() * max_norm,
    # in the norm's dtype; then clamp(max=1.0), which keeps a NaN.
    T = total.dtype.type
    coef = (T(1) / (total + T(1e-6))) * T(max_norm)
    return np.minimum(coef, T(1))


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Clip the gradients' total norm to ``max_norm``, in place (torch.nn.utils.clip_grad_norm_).

    The total norm is the ``norm_type``-norm of the per-parameter gradient norms (as
    if all gradients were one vector); parameters without a gradient are left out.
    Every gradient is multiplied by ``min(max_norm / (total_norm + 1e-6), 1)``.

    Parameters
    ----------
    parameters : Optimizer, Parameter or iterable of Parameter
        Given an optimizer (or parameters that share one optimizer), the norm is one
        compiled pass over ``optimizer.arena.grad``.
    max_norm : float
    norm_type : float or "inf", default 2.0
    error_if_nonfinite : bool, default False
        Raise ``RuntimeError`` instead of scaling when the total norm is nan or inf.
    foreach : None or bool
        Accepted for torch compatibility and ignored: there is one implementation.

    Returns
    -------
    ndarray, 0-d
        The total norm before clipping, in the gradients' dtype (float32 when no
        parameter has a gradient, as torch's ``tensor(0.)``).

    Examples
    --------
    >>> w.grad = dw; b.grad = db
    >>> total = numbaopt.utils.clip_grad_norm_(opt, max_norm=1.0)
    >>> opt.step()
    """
    norm_type = float(norm_type)
    max_norm = float(max_norm)
    params, arena, mask, threshold = _collect(parameters)
    if arena is not None:
        if not mask.any():
            return np.array(0.0, dtype=np.float32)
        if norm_type == math.inf or norm_type < 0:
            sizes = np.diff(arena.offsets)
            _check_empty([(i, sizes[i]) for i in np.flatnonzero(mask & (sizes == 0))], norm_type)
        parallel = arena.size >= threshold
        kernel = _grad_norm_cpu_parallel if parallel else _grad_norm_cpu
        norms = np.empty(len(arena), dtype=np.float64)
        with np.errstate(all="ignore"):
            total = np.array(kernel(arena.grad, arena.chunks, mask, norm_type, norms),
                             dtype=arena.dtype)
    else:
        grads = [p.grad for p in params]
        _check_empty([(i, g.size) for i, g in enumerate(grads) if g is not None], norm_type)
        grads = [g for g in grads if g is not None]
        if not grads:
            return np.array(0.0, dtype=np.float32)
        with np.errstate(all="ignore"):
            total = np.asarray(_total_norm_numpy(grads, norm_type))
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(_NONFINITE_MESSAGE.format(norm_type=norm_type))
    with np.errstate(all="ignore"):
        coef = _clip_coef(total, max_norm)
    if coef == 1:
        return total      # multiplying by 1 changes no bit: skip the pass
    if arena is not None:
        kernel = _scale_grads_cpu_parallel if parallel else _scale_grads_cpu
        kernel(arena.grad, arena.chunks, mask, float(coef))
    else:
        with np.errstate(all="ignore"):
            for g in grads:
                g *= coef.astype(g.dtype)   # in place: the grad is the parameter's storage
    return total


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient to ``[-clip_value, clip_value]``, in place (torch's clip_grad_value_).

    Parameters
    ----------
    parameters : Optimizer, Parameter or iterable of Parameter
    clip_value : float
    foreach : None or bool
        Accepted for torch compatibility and ignored.

    Examples
    --------
    >>> numbaopt.utils.clip_grad_value_(opt, 0.5)
    """
    clip_value = float(clip_value)
    params, arena, mask, threshold = _collect(parameters)
    if arena is not None:
        kernel = _clamp_grads_cpu_parallel if arena.size >= threshold else _clamp_grads_cpu
        kernel(arena.grad, arena.chunks, mask, clip_value)
        return None
    for p in params:
        g = p.grad
        if g is not None:
            T = g.dtype.type
            low, high = T(-clip_value), T(clip_value)
            if np.isnan(low):
                g[...] = low
            else:
                # torch's clamp: NaN stays, and with low > high everything becomes high
                np.minimum(np.maximum(g, low, out=g), high, out=g)
    return None
