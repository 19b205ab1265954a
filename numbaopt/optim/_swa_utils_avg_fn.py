"""The averaging functions of ``swa_utils`` (torch's ``get_*_avg_fn`` factories): callable
as torch's, and each also naming the rule of ``AveragedModel``'s compiled pass. Apart from
the model so that the numbers of each function can be read in one place.
"""

import numpy as np

from ..parameter import Parameter
from ._swa_kernels import _EMA, _LERP, _LERP_FROM_END, _SWA


def _array(x):
    return x.data if isinstance(x, Parameter) else x


def _check_lists(first, second):
    if len(first) != len(second):
        raise RuntimeError(f"Tensor lists must have the same number of tensors, got "
                           f"{len(first)} and {len(second)}")
    return [_array(a) for a in first], [_array(c) for c in second]


def _lerp_(a, end, weight):
    # torch's lerp_ with a scalar weight: the weight in a's dtype, and two formulas,
    # each exact at its end, split at |weight| = 0.5.
    if end.dtype != a.dtype:
        raise RuntimeError(f"expected dtype {a.dtype} for `end` but got dtype {end.dtype}")
    w = a.dtype.type(weight)
    if abs(w) < 0.5:
        a += w * (end - a)
    else:
        a[...] = end - (end - a) * (a.dtype.type(1) - w)


def _check_decay(decay):
    if decay < 0.0 or decay > 1.0:
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] range.")
    return float(decay)


def _lerp_rule(weight, dtype):
    """The compiled pass's (kind, c0, c1) for torch's lerp_ by ``weight`` in ``dtype``."""
    T = np.dtype(dtype).type
    w = T(weight)
    if abs(w) < 0.5:
        return _LERP, float(w), 0.0
    return _LERP_FROM_END, 0.0, float(T(1) - w)


class _AveragingFunction:
    """A function of this module: callable as torch's, and run by ``AveragedModel`` as
    its compiled pass (``_rule``) instead of a Python call per parameter."""

    def _rule(self, num_averaged, dtype):
        raise NotImplementedError


class _EMAMultiAvgFn(_AveragingFunction):
    def __init__(self, decay):
        self.decay = _check_decay(decay)

    def __call__(self, ema_param_list, current_param_list, _):
        """Update each array of ``ema_param_list`` in place toward ``current_param_list``."""
        ema, current = _check_lists(ema_param_list, current_param_list)
        for p_ema, p_model in zip(ema, current):
            if np.issubdtype(p_ema.dtype, np.inexact):
                _lerp_(p_ema, p_model, 1 - self.decay)     # torch: _foreach_lerp_
            else:
                np.copyto(p_ema, p_ema * self.decay + p_model * (1 - self.decay),
                          casting="unsafe")

    def _rule(self, num_averaged, dtype):
        return _lerp_rule(1 - self.decay, dtype)

    def __repr__(self):
        return f"get_ema_multi_avg_fn(decay={self.decay!r})"


class _SWAMultiAvgFn(_AveragingFunction):
    def __call__(self, averaged_param_list, current_param_list, num_averaged):
        """Move each array of ``averaged_param_list`` in place by ``1 / (num_averaged + 1)``."""
        averaged, current = _check_lists(averaged_param_list, current_param_list)
        if averaged and not np.issubdtype(averaged[0].dtype, np.inexact):
            # torch's integer branch fails in addcdiv_ / add_: fail with its words
            if isinstance(num_averaged, (np.ndarray, np.generic)):
                raise RuntimeError("Integer division with addcdiv is no longer supported")
            raise RuntimeError("For integral input tensors, argument alpha must not be a "
                               "floating point number.")
        weight = self._weight(num_averaged)
        for p_avg, p_model in zip(averaged, current):
            _lerp_(p_avg, p_model, weight)

    @staticmethod
    def _weight(num_averaged):
        # torch computes 1 / (num_averaged + 1) on the tensor AveragedModel passes: its
        # reciprocal of an int64 tensor is float32 (the default dtype), so even float64
        # parameters move by float32(1 / (n + 1)). A plain int gives a Python float.
        if isinstance(num_averaged, (np.ndarray, np.generic)):
            count = np.asarray(num_averaged) + 1
            if count.dtype.kind in "iub":
                return float(np.float32(1) / count.astype(np.float32))
            return float(count.dtype.type(1) / count)
        return 1 / (num_averaged + 1)

    def _rule(self, num_averaged, dtype):
        return _lerp_rule(self._weight(num_averaged), dtype)

    def __repr__(self):
        return "get_swa_multi_avg_fn()"


class _EMAAvgFn(_AveragingFunction):
    def __init__(self, decay):
        self.decay = _check_decay(decay)

    def __call__(self, ema_param, current_param, num_averaged):
        """Return ``decay * ema_param + (1 - decay) * current_param``."""
        return self.decay * _array(ema_param) + (1 - self.decay) * _array(current_param)

    def _rule(self, num_averaged, dtype):
        T = np.dtype(dtype).type
        return _EMA, float(T(self.decay)), float(T(1 - self.decay))

    def __repr__(self):
        return f"get_ema_avg_fn(decay={self.decay!r})"


class _SWAAvgFn(_AveragingFunction):
    def __call__(self, averaged_param, current_param, num_averaged):
        """Return ``averaged_param + (current_param - averaged_param) / (num_averaged + 1)``."""
        averaged = _array(averaged_param)
        diff = _array(current_param) - averaged
        # torch divides by the count in the parameter's dtype; NumPy would promote a
        # float32 array divided by an int64 array to float64.
        return averaged + diff / np.asarray(diff).dtype.type(num_averaged + 1)

    def _rule(self, num_averaged, dtype):
        T = np.dtype(dtype).type
        return _SWA, float(T(int(num_averaged) + 1)), 0.0

    def __repr__(self):
        return "get_swa_avg_fn()"


#: The classes AveragedModel runs as its compiled pass (exact types: a subclass may
#: override __call__).
_COMPILED = (_EMAMultiAvgFn, _SWAMultiAvgFn, _EMAAvgFn, _SWAAvgFn)


def get_ema_multi_avg_fn(decay=0.999):
    """The function applying an exponential moving average (EMA) across lists of arrays.

    ``W_ema = decay * W_ema + (1 - decay) * W_model``, as torch's
    ``torch._foreach_lerp_(ema, model, 1 - decay)``: the weight ``1 - decay`` is
    rounded to the arrays' dtype, and for weights of 0.5 and more the lerp is
    computed from the model's end. Called as ``fn(ema_list, model_list, n_averaged)``;
    updates ``ema_list`` in place. ``AveragedModel`` runs it as one compiled pass.

    Parameters
    ----------
    decay : float, default 0.999
        In [0, 1], else ``ValueError``.

    Examples
    --------
    >>> ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))
    >>> for batch in loader:
    ...     train_step(model, batch)
    ...     ema_model.update_parameters(model)
    """
    return _EMAMultiAvgFn(decay)


def get_swa_multi_avg_fn():
    """The function applying a stochastic weight average (SWA) across lists of arrays.

    ``W_swa = W_swa + (W_model - W_swa) / (n_averaged + 1)``, as torch's
    ``torch._foreach_lerp_`` with weight ``1 / (n_averaged + 1)``. That weight is
    computed as torch computes it: from the 0-d int64 ``n_averaged`` that
    ``AveragedModel`` passes, in float32 (torch's tensor reciprocal), even for
    float64 arrays; from a Python int, in float64.

    Examples
    --------
    >>> swa_model = AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn())
    >>> for epoch in range(swa_start, epochs):
    ...     train_epoch(model)
    ...     swa_model.update_parameters(model)
    """
    return _SWAMultiAvgFn()


def get_ema_avg_fn(decay=0.999):
    """The function applying an exponential moving average (EMA) to one array.

    ``fn(ema, model, n_averaged)`` returns ``decay * ema + (1 - decay) * model``
    (float32 stays float32). ``AveragedModel`` runs it as one compiled pass.

    Parameters
    ----------
    decay : float, default 0.999
        In [0, 1], else ``ValueError``.

    Examples
    --------
    >>> fn = get_ema_avg_fn(0.9)
    >>> fn(np.zeros(2, np.float32), np.ones(2, np.float32), 0)
    array([0.1, 0.1], dtype=float32)
    """
    return _EMAAvgFn(decay)


def get_swa_avg_fn():
    """The function applying a stochastic weight average (SWA) to one array.

    ``fn(avg, model, n_averaged)`` returns ``avg + (model - avg) / (n_averaged + 1)``,
    dividing in the arrays' dtype as torch does. It is ``AveragedModel``'s default
    on the CPU, run as one compiled pass.

    Examples
    --------
    >>> fn = get_swa_avg_fn()
    >>> fn(np.zeros(2), np.ones(2), np.array(3))
    array([0.25, 0.25])
    """
    return _SWAAvgFn()


_DEFAULT = _SWAAvgFn()   # torch's default on the CPU: get_swa_avg_fn per parameter
