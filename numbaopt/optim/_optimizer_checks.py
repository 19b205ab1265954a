"""Option checks shared by every optimizer module: torch's messages for bad hyperparameters.

Kept apart from the ``Optimizer`` base so an algorithm's module reads its checks from one place;
``numbaopt.optim.optimizer`` re-exports them (their public import path).
"""

import math
from numbers import Real

import numpy as np

__all__ = ["check_betas", "check_flag", "check_group_flags", "check_implementation_flags",
           "check_option", "has_array_value", "hyper_float", "is_finite_real"]


def check_option(group, key, message, low=0.0, high=math.inf, high_open=False,
                 index=None, where="param group", low_open=False):
    """Raise torch's ``ValueError(f"{message}: {value}")`` unless ``low <= value <= high``.

    The value must be a finite real number, or a 1-element real array (torch's
    tensor hyperparameters, e.g. ``lr=np.asarray(1e-3)``); ``index`` names the
    group in the message.
    """
    value = group[key]
    if isinstance(value, np.ndarray) and value.size != 1:
        raise ValueError(f"Tensor {key} must be 1-element, got an array of shape {value.shape}")
    ok = is_finite_real(value)
    if ok:
        value = hyper_float(value)
        ok = (low < value if low_open else low <= value) and \
             (value < high if high_open else value <= high)
    if not ok:
        suffix = f" ({where} {index}, '{key}')" if index is not None else ""
        raise ValueError(f"{message}: {group[key]!r}{suffix}")


def hyper_float(value):
    """A hyperparameter as a float: a number, or the element of a 1-element array."""
    if isinstance(value, np.ndarray):
        return float(value.reshape(-1)[0])
    return float(value)


def is_finite_real(value):
    """Whether ``value`` is a finite real number (not a bool), or a 1-element real array."""
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "iuf":
            return False
        return bool(np.isfinite(value).all())
    if not isinstance(value, Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:        # an int beyond float's range (lr=10**400)
        return False


def has_array_value(group):
    """Whether a group holds an ndarray option (read again at every step: it may change in place)."""
    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, np.ndarray) or (
                isinstance(value, tuple) and any(isinstance(v, np.ndarray) for v in value)):
            return True
    return False


def check_betas(group, index=None, where="param group", key="betas", high_open=True,
                message="Invalid beta parameter at index"):
    """A pair of floats in ``[0, 1)`` (torch's Adam family), each checked with torch's message."""
    betas = group[key]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        suffix = f" ({where} {index})" if index is not None else ""
        raise ValueError(f"{key} must be a pair of floats, got {betas!r}{suffix}")
    for k in (0, 1):
        check_option({key: betas[k]}, key, f"{message} {k}", high=1.0, high_open=high_open,
                     index=index, where=where)


def check_group_flags(group, name, index=None, where="param group"):
    """The implementation flags a group holds (torch's), validated as the constructor does."""
    present = {k: group[k] for k in ("foreach", "fused", "capturable", "differentiable")
               if k in group}
    try:
        check_implementation_flags(name, **present)
    except ValueError as error:
        suffix = f" ({where} {index})" if index is not None else ""
        raise ValueError(f"{error}{suffix}") from None


def check_flag(group, key, index=None, where="param group"):
    value = group[key]
    if not isinstance(value, (bool, np.bool_)):
        suffix = f" ({where} {index})" if index is not None else ""
        raise ValueError(f"'{key}' must be True or False, got {value!r}{suffix}")


def check_implementation_flags(name, foreach=None, fused=None, capturable=False,
                               differentiable=False):
    """torch's implementation flags as group entries, with torch's defaults.

    numbaopt has one implementation, so ``foreach``, ``fused`` and ``capturable``
    change nothing (there is nothing to capture); ``differentiable=True`` is
    refused: numbaopt's step is not traced by an autograd.
    """
    for flag, value in (("foreach", foreach), ("fused", fused)):
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"'{flag}' must be None, True or False, got {value!r}")
    for flag, value in (("capturable", capturable), ("differentiable", differentiable)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"'{flag}' must be True or False, got {value!r}")
    if differentiable:
        raise ValueError(
            f"{name}(differentiable=True) is not supported: numbaopt's step is a compiled "
            "kernel that no autograd records, so there is nothing to differentiate through")
    return dict(foreach=foreach, fused=fused, capturable=bool(capturable),
                differentiable=False)
