"""torch.nn.utils' optimizer utilities over the arena: gradient norms and clipping,
parameters to and from one vector.

Given an optimizer, or parameters that all live in one optimizer's arena, each
function is one compiled call over ``arena.grad`` restricted to the parameters
whose ``has_grad`` flag is set (plus, for the norm, one more call that scales
the gradients when they need clipping). Parameters in no arena fall back to
NumPy with the same arithmetic. ``clip_grad_norm_`` is ``get_total_norm``
followed by ``clip_grads_with_norm_``, as in torch.

Numbers follow torch 2.13: the total norm is the norm of the per-parameter
norms; the per-element powers, the per-parameter root and the clipping
coefficient ``max_norm / (total_norm + 1e-6)`` (clamped to 1) are computed in
the gradients' dtype, as torch does, so float32 overflows where torch's does.
Only the sums are accumulated in float64 (torch accumulates float32 sums in
float32 and loses about 1e-5 relative over a million elements).

``parameters_to_vector`` of one optimizer's parameters is the arena's ``data``
itself, no copy: the arena already is that vector.

This module holds the norms and the clipping; ``parameters_to_vector`` and
``vector_to_parameters`` live in ``_utils_vector``, and the handling of the
``parameters`` argument that both share in ``_utils_params``.
"""

import math

import numpy as np

# (_DISTRIBUTED: numbaopt.distributed registers its optimizers' arenas in utils._DISTRIBUTED)
from ._utils_params import _DISTRIBUTED, _collect, _collective, _typename  # noqa: F401
from ._utils_vector import parameters_to_vector, vector_to_parameters
from .arena import _chunk_table
from .kernels.cpu import (_clamp_grads_cpu, _clamp_grads_cpu_parallel, _grad_norm_cpu,
                          _grad_norm_cpu_parallel, _scale_grads_cpu, _scale_grads_cpu_parallel)
from .optim.optimizer import PARALLEL_THRESHOLD, Optimizer
from .parameter import Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm",
           "parameters_to_vector", "vector_to_parameters"]

_NONFINITE_MESSAGE = (
    "The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it "
    "cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
    "anyway, set `error_if_nonfinite=False`")
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ------------------------------------------------------------------------- norms
def _check_empty(sizes, norm_type):
    """torch refuses norms without an identity (inf, -inf, p < 0) of zero-size gradients."""
    if norm_type == math.inf or norm_type < 0:
        for i, size in sizes:
            if size == 0:
                name = "infinity" if norm_type == math.inf else f"{norm_type:g}"
                raise RuntimeError(
                    f"cannot compute the {name} norm of the empty gradient of parameter {i} "
                    "because the operation does not have an identity (torch refuses it too)")


def _check_finite(total, norm_type, error_if_nonfinite):
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(_NONFINITE_MESSAGE.format(norm_type=norm_type))


def _vector_norm(x, norm_type):
    """NumPy twin of the kernels' three stages over one array (any shape)."""
    if x.dtype == np.float16:
        # torch computes a half norm in float32 (its opmath type) and rounds the result
        return np.float16(_vector_norm(x.astype(np.float32), norm_type))
    a = np.abs(x.reshape(-1))          # real: a complex norm is the norm of the moduli
    T = a.dtype.type
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
    dtype = np.result_type(*[n.dtype for n in norms])   # torch.stack promotes the norms
    return _vector_norm(np.array(norms, dtype=dtype), norm_type)


def _kernel_norm(buffer, chunks, mask, norm_type, parallel):
    """The total norm of the masked rows of a chunk table over ``buffer``: one compiled pass."""
    kernel = _grad_norm_cpu_parallel if parallel else _grad_norm_cpu
    norms = np.empty(mask.shape[0], dtype=np.float64)
    # the kernel's float64 already holds a value of the buffer's dtype: the cast is exact
    return np.array(kernel(buffer, chunks, mask, norm_type, norms), dtype=buffer.dtype)


def _grads_norm(params, arena, mask, threshold, norm_type):
    """The total norm of the gradients of ``_collect``'s result (float32 0 when there are none)."""
    if arena is not None:
        if not mask.any():
            return np.array(0.0, dtype=np.float32)
        if norm_type == math.inf or norm_type < 0:
            sizes = np.diff(arena.offsets)
            _check_empty([(i, sizes[i]) for i in np.flatnonzero(mask & (sizes == 0))], norm_type)
        if norm_type != 2 and arena.is_complex[mask].any():
            # a complex norm is that of the moduli: the 2-norm of the real pairs is the same,
            # other orders are not, so they take the complex views through NumPy
            with np.errstate(all="ignore"):
                return np.asarray(_total_norm_numpy(
                    [arena.param_to_host(arena.grad, i) for i in np.flatnonzero(mask)],
                    norm_type))
        if not isinstance(arena.grad, np.ndarray):
            from .kernels import cuda_clip     # a GPU arena: reduced on the device
            return cuda_clip.grad_norm(arena, mask, norm_type)
        return _kernel_norm(arena.grad, arena.chunks, mask, norm_type, arena.size >= threshold)
    grads = [p.grad for p in params]
    _check_empty([(i, g.size) for i, g in enumerate(grads) if g is not None], norm_type)
    grads = [g for g in grads if g is not None]
    if not grads:
        return np.array(0.0, dtype=np.float32)
    with np.errstate(all="ignore"):
        return np.asarray(_total_norm_numpy(grads, norm_type))


def _span_table(arrays):
    """``(buffer, chunks, size)`` when every array is a contiguous view of one 1-D float32/64 buffer
    (``p.grad`` of arena parameters: views of ``arena.grad``), else None.

    ``chunks`` is the arena's chunk table with array ``k`` as row owner ``k``, so the norm
    kernels run over the buffer in place; the grads of one optimizer in its order give
    the arena's own table, hence its numbers bit for bit.
    """
    base = arrays[0].base
    if (not isinstance(base, np.ndarray) or base.ndim != 1 or base.dtype not in _KERNEL_DTYPES
            or not base.flags.c_contiguous or not base.flags.writeable):
        return None                    # (a read-only buffer would compile another signature)
    dtype = base.dtype
    addresses, sizes = [], []
    for a in arrays:   # (the address lookup, about 2 us, is most of this function's time)
        if a.base is not base or a.dtype != dtype or not a.flags.c_contiguous:
            return None
        addresses.append(a.__array_interface__["data"][0])
        sizes.append(a.size)
    starts = (np.array(addresses, dtype=np.int64) - base.__array_interface__["data"][0])
    starts //= dtype.itemsize
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    chunks = _chunk_table(offsets)
    shift = starts - offsets[:-1]
    if shift.any():                    # not consecutive from 0: move each row to its array
        chunks[:, 1:] += shift[chunks[:, 0]][:, None]
    return base, chunks, int(offsets[-1])


def _as_arrays(tensors):
    """``tensors`` (one array or Parameter, or an iterable of them) as a list of host arrays."""
    if isinstance(tensors, Optimizer):
        raise TypeError("get_total_norm takes arrays, as torch's takes tensors: for the gradients "
                        "of an optimizer pass [p.grad for p in params if p.grad is not None]")
    if isinstance(tensors, (np.ndarray, Parameter)):
        tensors = [tensors]
    arrays = []
    for t in tensors:
        a = t.data if isinstance(t, Parameter) else t
        if not isinstance(a, np.ndarray):
            if hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host"):
                raise NotImplementedError("get_total_norm works on host (NumPy) arrays only; "
                                          f"got a {type(a).__name__}")
            raise TypeError(f"expected numpy arrays (or numbaopt.Parameter), got {_typename(t)}"
                            + (" (a parameter without a gradient?)" if t is None else ""))
        if a.dtype.kind not in "fc":
            raise RuntimeError("get_total_norm: Expected a floating point or complex array as "
                               f"input. Got {a.dtype}")
        arrays.append(a)
    return arrays


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """The ``norm_type``-norm of arrays taken together (torch.nn.utils.get_total_norm).

    The norm of the arrays' norms, as if they were one concatenated vector. With
    ``clip_grads_with_norm_`` it splits ``clip_grad_norm_`` in two, so the norm can be
    logged, or combined across processes, before clipping. When the arrays are views
    of one arena's gradient buffer (``[p.grad for p in params]`` for parameters of one
    optimizer) the norm is one compiled pass over that buffer; other arrays go through
    NumPy with the same arithmetic.

    Parameters
    ----------
    tensors : ndarray, Parameter or iterable of them
        Float or complex arrays (a Parameter stands for its ``data``, as a tensor in torch).
    norm_type : float or "inf", default 2.0
        ``p`` of the p-norm: any float, ``inf`` or ``-inf``. For 0 each array's norm is its
        count of non-zeros and the total, as in torch, the count of arrays that have any.
    error_if_nonfinite : bool, default False
        Raise ``RuntimeError`` when the total norm is nan or inf.
    foreach : None or bool
        Accepted for torch compatibility and ignored: there is one implementation.

    Returns
    -------
    ndarray, 0-d
        In the arrays' (promoted) real dtype; ``float32`` 0 for an empty list, as
        torch's ``tensor(0.)``.

    Examples
    --------
    >>> total = numbaopt.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    >>> numbaopt.utils.clip_grads_with_norm_(params, 1.0, total)
    """
    norm_type = float(norm_type)
    arrays = _as_arrays(tensors)
    if not arrays:
        return np.array(0.0, dtype=np.float32)
    _check_empty([(i, a.size) for i, a in enumerate(arrays)], norm_type)
    table = _span_table(arrays)
    if table is None:
        with np.errstate(all="ignore"):
            total = np.asarray(_total_norm_numpy(arrays, norm_type))
    else:
        buffer, chunks, size = table
        mask = np.ones(len(arrays), dtype=np.bool_)
        total = _kernel_norm(buffer, chunks, mask, norm_type, size >= PARALLEL_THRESHOLD)
    _check_finite(total, norm_type, error_if_nonfinite)
    return total


def _clip_coef(total, max_norm):
    # torch: max_norm / (total + 1e-6) is Tensor.__rtruediv__, reciprocal() * max_norm,
    # in the norm's dtype; then clamp(max=1.0), which keeps a NaN. NumPy scalars of that
    # dtype round as the 0-d tensors do, at a fraction of a 0-d array's cost.
    T = total.dtype.type
    coef = (T(1) / (total[()] + T(1e-6))) * T(max_norm)
    return T(1) if coef > 1 else coef


def _as_total_norm(total_norm):
    """``total_norm`` as a 0-d real array, refused where torch's clamp refuses it."""
    if not isinstance(total_norm, (np.ndarray, np.generic)):
        raise TypeError("total_norm must be a NumPy array (the 0-d result of get_total_norm), not "
                        f"{_typename(total_norm)}: torch's clamp takes a tensor, and a float "
                        "does not say in which dtype the coefficient is computed")
    total = np.asarray(total_norm)
    if total.ndim != 0:
        raise RuntimeError(f"total_norm: scalar array expected to be 0 dim but it has {total.ndim} "
                           f"dimensions and {total.size} elements.")
    if total.dtype.kind == "c":
        raise NotImplementedError("clamp is not supported for complex types "
                                  f"(total_norm is {total.dtype})")
    if total.dtype.kind in "iub":
        total = total.astype(np.float32)    # torch: an integer tensor + 1e-6 is float32
    elif total.dtype.kind != "f":
        raise TypeError(f"total_norm must be a real number, got dtype {total.dtype}")
    return total


def _clip_grads(params, arena, mask, threshold, max_norm, total):
    """Scale the gradients of ``_collect``'s result by ``min(max_norm / (total + 1e-6), 1)``."""
    if arena is None:
        grads = [p.grad for p in params]
        grads = [g for g in grads if g is not None]
        if not grads:
            return
    # (no mask.any() for an arena: the kernel skips unmasked parameters, and the check
    # would cost clip_grad_norm_ a tenth of its time on small arenas)
    with np.errstate(all="ignore"):
        coef = _clip_coef(total, max_norm)
    if coef == 1:
        return            # multiplying by 1 changes no bit: skip the pass
    if arena is not None and not isinstance(arena.grad, np.ndarray):
        from .kernels import cuda_clip
        cuda_clip.scale_grads(arena, mask, coef)
    elif arena is not None:
        kernel = _scale_grads_cpu_parallel if arena.size >= threshold else _scale_grads_cpu
        kernel(arena.grad, arena.chunks, mask, float(coef))
    else:
        with np.errstate(all="ignore"):
            for g in grads:
                g *= g.dtype.type(coef)     # in place: the grad is the parameter's storage


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    """Scale the gradients by a given total norm, in place (torch.nn.utils.clip_grads_with_norm_).

    Every gradient becomes ``grad * min(max_norm / (total_norm + 1e-6), 1)``: the
    second half of ``clip_grad_norm_``, for a ``total_norm`` computed (and perhaps
    combined across processes) beforehand by ``get_total_norm``. The coefficient is
    computed in ``total_norm``'s dtype and cast to the gradients' dtype, as in torch.
    Parameters without a gradient are skipped. A ``DistributedOptimizer`` averages its
    gradients across the ranks first (``synchronize()``).

    Parameters
    ----------
    parameters : Optimizer, Parameter or iterable of Parameter
        Given an optimizer (or parameters that share one optimizer), one compiled
        pass over ``optimizer.arena.grad``.
    max_norm : float
    total_norm : ndarray, 0-d (or a NumPy scalar)
        A float dtype; integer ones count as float32, as torch's default dtype.
    foreach : None or bool
        Accepted for torch compatibility and ignored.

    Examples
    --------
    >>> total = numbaopt.utils.get_total_norm([p.grad for p in params])
    >>> numbaopt.utils.clip_grads_with_norm_(opt, max_norm=1.0, total_norm=total)
    """
    collective = _collective(parameters, "_clip_grads_with_norm_")
    if collective is not None:
        return collective(max_norm, total_norm)
    max_norm = float(max_norm)
    total = _as_total_norm(total_norm)
    for collected in _collected(parameters):
        _clip_grads(*collected, max_norm, total)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Clip the gradients' total norm to ``max_norm``, in place (torch.nn.utils.clip_grad_norm_).

    The total norm is the ``norm_type``-norm of the per-parameter gradient norms (as
    if all gradients were one vector); parameters without a gradient are left out.
    Every gradient is multiplied by ``min(max_norm / (total_norm + 1e-6), 1)``. This
    is ``get_total_norm`` of the gradients followed by ``clip_grads_with_norm_``.

    Given a ``numbaopt.distributed.DistributedOptimizer`` it first averages the
    gradients across the ranks (``synchronize()``) and clips the average, as with
    torch's DDP; with ``shard=True`` the total norm is that of all slices together.

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
    collective = _collective(parameters, "_clip_grad_norm_")
    if collective is not None:
        return collective(max_norm, norm_type, error_if_nonfinite)
    norm_type = float(norm_type)
    max_norm = float(max_norm)
    # get_total_norm and clip_grads_with_norm_ over one _collect (torch lists the grads once)
    parts = _collected(parameters, warn_empty=True)
    if len(parts) == 1:
        total = _grads_norm(*parts[0], norm_type)
    else:
        # several dtypes: each arena's norm in one pass, then the norm of those, promoted
        # as torch stacks the per-parameter norms (arenas without gradients left out)
        norms = [_grads_norm(*c, norm_type) for c in parts if c[2].any()]
        with np.errstate(all="ignore"):
            total = np.asarray(_total_norm_numpy(norms, norm_type)) if norms else \
                np.array(0.0, dtype=np.float32)
    _check_finite(total, norm_type, error_if_nonfinite)
    for collected in parts:
        _clip_grads(*collected, max_norm, total)
    return total


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient to ``[-clip_value, clip_value]``, in place (torch's clip_grad_value_).

    Given a ``numbaopt.distributed.DistributedOptimizer``, the gradients averaged across
    the ranks (it calls ``synchronize()`` first).

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
    collective = _collective(parameters, "_clip_grad_value_")
    if collective is not None:
        return collective(clip_value)
    clip_value = float(clip_value)
    parts = _collected(parameters, warn_empty=True)
    for params, arena, mask, _ in parts:
        complex_grads = arena.is_complex[mask].any() if arena is not None else any(
            p.grad is not None and p.grad.dtype.kind == "c" for p in params)
        if complex_grads:
            raise RuntimeError("clamp is not supported for complex types (clip_grad_value_ of "
                               "a complex gradient, as in torch)")
    for collected in parts:
        _clamp(*collected, clip_value)
    return None


def _collected(parameters, warn_empty=False):
    """``[_collect(...)]``: one per arena of an optimizer over several dtypes, else one."""
    lanes = getattr(parameters, "_lanes", None) if isinstance(parameters, Optimizer) else None
    if lanes is None:
        return [_collect(parameters, warn_empty)]
    return [_collect(lane) for lane in lanes]


def _clamp(params, arena, mask, threshold, clip_value):
    if arena is not None and not isinstance(arena.grad, np.ndarray):
        from .kernels import cuda_clip
        cuda_clip.clamp_grads(arena, mask, clip_value)
        return None
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
