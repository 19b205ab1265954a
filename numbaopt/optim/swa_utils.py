"""Weight averaging: a port of torch 2.13's ``torch.optim.swa_utils``.

``AveragedModel`` keeps a running average of a model's parameters, SWA's equal
weights (Izmailov et al., 2018) or an exponential moving average, in one flat
arena of its own; an update is one compiled pass over it. ``SWALR`` anneals each
group's learning rate to a constant for the averaging phase. The ``get_*_avg_fn``
factories return torch's averaging functions, with torch's numbers.

torch's ``update_bn`` is left out: it recomputes the running statistics of
``torch.nn.BatchNorm`` layers with a pass over the data, and numbaopt.nn has no
batch norm (no module has buffers), so there is nothing for it to update.
"""

import copy
import math
import numbers
from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from .. import nn
from ..arena import make_arena
from ..parameter import Parameter
from . import optimizer as _optimizer
from ._swa_kernels import (_COPY, _EMA, _LERP, _LERP_FROM_END, _PARALLEL_SCALE, _SWA, _Plan,
                           _check_parameters)
from .lr_scheduler import (LRScheduler, _check_optimizer, _format_param, _state_without,
                           _warn_get_lr_called_within_step)

__all__ = [
    "AveragedModel",
    "SWALR",
    "get_ema_multi_avg_fn",
    "get_swa_multi_avg_fn",
    "get_ema_avg_fn",
    "get_swa_avg_fn",
]

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


# ---------------------------------------------------------------------------- the model

_IncompatibleKeysBase = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class _IncompatibleKeys(_IncompatibleKeysBase):
    """What ``load_state_dict`` returns, as torch's: the missing and unexpected keys."""

    __slots__ = ()

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return (f"_IncompatibleKeys(missing_keys={self.missing_keys!r}, "
                f"unexpected_keys={self.unexpected_keys!r})")

    __str__ = __repr__


class _ParameterList(nn.Module):
    """The module an AveragedModel holds when it was given parameters instead of a
    Module: parameter ``i`` is named ``"i"``, as in torch.nn.ParameterList."""

    def __init__(self, params):
        for i, p in enumerate(params):
            setattr(self, str(i), p)

    def __len__(self):
        return len(vars(self))

    def __getitem__(self, i):
        return vars(self)[str(range(len(self))[i])]

    def __iter__(self):
        return iter(vars(self).values())

    def __repr__(self):
        return f"ParameterList({len(self)} parameters)"


def _unique(params):
    # torch's parameters() lists a tied parameter once
    return list(dict.fromkeys(params))


def _listed_parameters(model):
    """``model``'s parameters, each once, in order (unchecked)."""
    if isinstance(model, nn.Module):
        return _unique(model.parameters())
    if isinstance(model, Parameter):
        return [model]
    if isinstance(model, (np.ndarray, Mapping, str)):
        raise TypeError(_MODEL_TYPE_ERROR + f", got {type(model).__qualname__}")
    try:
        items = list(model)
    except TypeError:
        raise TypeError(_MODEL_TYPE_ERROR + f", got {type(model).__qualname__}") from None
    try:
        return _unique(items)
    except TypeError:           # an unhashable item, so not a Parameter: say which
        _check_parameters(items)
        raise


_MODEL_TYPE_ERROR = "model must be a numbaopt.nn.Module or an iterable of numbaopt.Parameter"


def _common_dtype(params):
    dtypes = list(dict.fromkeys(p.dtype for p in params))
    if len(dtypes) > 1:
        raise TypeError(f"all parameters of an AveragedModel must share a dtype, got "
                        f"{', '.join(map(str, dtypes))}: its average lives in one flat arena "
                        "(use one AveragedModel per dtype, as one optimizer per dtype)")
    return dtypes[0] if dtypes else np.dtype(np.float32)


def _host_copy(p):
    return Parameter(np.array(p.numpy(), copy=True))


class AveragedModel(nn.Module):
    """A running average of a model's parameters: SWA, or an EMA of the weights.

    The averaged copy's parameters live in one flat arena (``arena.data``);
    ``update_parameters(model)`` copies the model's values on its first call and
    then averages them in, by default with equal weights (SWA)::

        W_avg = W_avg + (W_model - W_avg) / (n_averaged + 1)

    or with ``multi_avg_fn=get_ema_multi_avg_fn(decay)`` exponentially::

        W_avg = decay * W_avg + (1 - decay) * W_model

    With the default and the ``get_*_avg_fn`` functions of this module an update is
    one compiled pass over every averaged element, reading the model's arena
    directly when the model's parameters are exactly one optimizer's. A Python
    ``avg_fn`` (called per parameter) or ``multi_avg_fn`` (called with the lists) runs
    as in torch, on NumPy arrays (the averaged values are live views), with
    ``n_averaged`` a 0-d int64 array. NumPy promotes as NumPy does there (a float32
    array divided by an int64 array is float64); this module's functions compute in
    the parameters' dtype, as torch does. torch's CPU lerp (the EMA and
    ``get_swa_multi_avg_fn``) fuses its multiply-add, this pass rounds twice (no
    fastmath): those averages agree with torch's to about an ulp per update.

    Parameters
    ----------
    model : numbaopt.nn.Module or iterable of Parameter
        What to average; deep-copied (parameters in an optimizer's arena are copied
        out of it). Given parameters, the copy is a ParameterList-like module whose
        parameters are named ``"0"``, ``"1"``, ...
    device : None or "cpu", default None
        The averaged copy lives in host memory; a model's parameters on the GPU are
        copied to the host at each update.
    avg_fn : callable, optional
        ``avg_fn(averaged, model, n_averaged) -> new average``, per parameter.
    multi_avg_fn : callable, optional
        ``multi_avg_fn(averaged_list, model_list, n_averaged)``, updating in place.
        At most one of ``avg_fn`` and ``multi_avg_fn`` (``AssertionError``).
    use_buffers : bool, default False
        ``True`` is refused: it averages buffers (BatchNorm statistics), and numbaopt.nn
        modules have none.

    Attributes
    ----------
    module : numbaopt.nn.Module
        The averaged copy; ``averaged(x)`` is ``averaged.module(x)``.
    n_averaged : ndarray
        0-d int64: the number of models averaged so far (torch's long buffer).
    arena : numbaopt.arena.Arena
        The flat storage of the averaged parameters (``arena.data``).

    Examples
    --------
    >>> swa_model = AveragedModel(model)
    >>> for epoch in range(100):
    ...     train_epoch(model, optimizer)
    ...     if epoch >= 75:
    ...         swa_model.update_parameters(model)
    >>> predictions = swa_model(x_test)
    """

    def __init__(self, model, device=None, avg_fn=None, multi_avg_fn=None, use_buffers=False):
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
        for name, fn in (("avg_fn", avg_fn), ("multi_avg_fn", multi_avg_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {type(fn).__qualname__}")
        if not isinstance(use_buffers, (bool, np.bool_)):
            raise ValueError(f"use_buffers must be True or False, got {use_buffers!r}")
        if use_buffers:
            raise ValueError(
                "use_buffers=True averages the model's buffers (BatchNorm running statistics) "
                "with its parameters; numbaopt.nn modules have no buffers, so pass "
                "use_buffers=False (the default)")
        if device is not None and device != "cpu":
            raise ValueError(f"device must be None or 'cpu', got {device!r}: the averaged copy "
                             "lives in host memory (parameters on the GPU are copied to the "
                             "host at each update)")
        originals = _listed_parameters(model)
        _check_parameters(originals)
        dtype = _common_dtype(originals)
        if isinstance(model, nn.Module):
            # Each parameter is copied to the host once, not with its arena (an
            # optimizer's gradients and state); the rest of the module is deep-copied.
            memo = {id(p): _host_copy(p) for p in originals}
            self.module = copy.deepcopy(model, memo)
            params = [memo[id(p)] for p in originals]
        else:
            params = [_host_copy(p) for p in originals]
            self.module = _ParameterList(params)
        self.n_averaged = np.zeros((), dtype=np.int64)
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = False
        self.arena = make_arena([params], dtype, "cpu")
        self.arena.owner = "AveragedModel"
        self.parallel_threshold = _optimizer.PARALLEL_THRESHOLD * _PARALLEL_SCALE
        self._params = params
        self._plan = None

    # -- the module's face ----------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        """The averaged module's forward pass."""
        return self.module(*args, **kwargs)

    def backward(self, grad_output):
        """The averaged module's backward pass (numbaopt.nn's explicit backward)."""
        return self.module.backward(grad_output)

    def named_parameters(self, prefix=""):
        """Yield ``("module.<name>", Parameter)`` for each averaged parameter, once."""
        seen = set()
        for name, p in self.module.named_parameters(prefix + "module."):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    # -- averaging ------------------------------------------------------------------------
    def update_parameters(self, model):
        """Average ``model``'s parameters in: copy them on the first call, then average.

        ``model`` is the Module (or the parameters) this AveragedModel was built from,
        or one of the same structure. ``n_averaged`` counts the calls.
        """
        if self.arena.stale is not None:
            raise RuntimeError(f"AveragedModel can no longer update: {self.arena.stale}")
        source = _listed_parameters(model)
        plan = self._plan
        if plan is None or not plan.matches(source):
            plan = self._plan = _Plan(source, self)
        n = int(self.n_averaged)
        if n == 0:
            plan.run(self, _COPY, 0.0, 0.0)
        elif n > 0:
            fn = self.multi_avg_fn if self.multi_avg_fn is not None else self.avg_fn
            fn = _DEFAULT if fn is None else fn
            if type(fn) in _COMPILED:
                plan.run(self, *fn._rule(self.n_averaged, self.arena.dtype))
            elif self.multi_avg_fn is not None:
                self.multi_avg_fn([p.data for p in self._params], plan.source_arrays(),
                                  self.n_averaged)
            else:
                for p, current in zip(self._params, plan.source_arrays()):
                    np.copyto(p.data, self.avg_fn(p.data, current, self.n_averaged),
                              casting="unsafe")
        self.n_averaged += 1

    # -- state --------------------------------------------------------------------------
    def _entries(self):
        """torch's state_dict keys and the live arrays they name (tied parameters twice)."""
        entries = {"n_averaged": self.n_averaged}
        for name, p in self.module.named_parameters("module."):
            entries[name] = p.data
        return entries

    def state_dict(self):
        """torch's AveragedModel state_dict: ``"n_averaged"``, then ``"module.<name>"``
        per parameter, as NumPy copies (``torch.from_numpy`` each to load it in torch)."""
        return {name: value.copy() for name, value in self._entries().items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load a state_dict of this layout (torch's tensors load as they are, or ``.numpy()``).

        With ``strict`` missing or unexpected keys raise ``RuntimeError``, as do shape
        mismatches; nothing is written unless everything loads. Returns torch's
        ``(missing_keys, unexpected_keys)`` named tuple.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict must be True or False, got {strict!r}")
        if self.arena.stale is not None:
            raise RuntimeError(f"AveragedModel can no longer load: {self.arena.stale}")
        entries = self._entries()
        missing = [k for k in entries if k not in state_dict]
        unexpected = [k for k in state_dict if k not in entries]
        errors, staged = [], []
        for name, target in entries.items():
            if name not in state_dict:
                continue
            value = np.asarray(state_dict[name])
            if value.dtype.kind not in "fiub":
                raise TypeError(f"{name} must be a real numeric array, got dtype {value.dtype}")
            if target.ndim == 0 and value.shape == (1,):
                value = value.reshape(())   # torch loads a 1-element array into a 0-d one
            if value.shape != target.shape:
                errors.append(f"size mismatch for {name}: copying a param with shape "
                              f"{value.shape} from checkpoint, the shape in current model is "
                              f"{target.shape}.")
            staged.append((target, value))
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in unexpected)))
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in missing)))
        if errors:
            raise RuntimeError("Error(s) in loading state_dict for AveragedModel:\n\t"
                               + "\n\t".join(errors))
        for target, value in staged:
            np.copyto(target, value, casting="unsafe")
        return _IncompatibleKeys(missing, unexpected)

    def __getstate__(self):
        # The plan holds a numba typed List and the source model; it is rebuilt on use.
        return {k: v for k, v in self.__dict__.items() if k != "_plan"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._plan = None

    def __repr__(self):
        return f"AveragedModel(\n  (module): {self.module!r}\n)"


# ------------------------------------------------------------------------------- SWALR

def _is_real(value):
    # a number, or a real 0-d array (numbaopt's counterpart of torch's tensor lr)
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "fiu"
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_MISSING = object()


class SWALR(LRScheduler):
    """Anneal each group's learning rate to a fixed ``swa_lr`` (for SWA, torch's SWALR).

    Over ``anneal_epochs`` steps the rate moves from the group's lr to ``swa_lr``
    by a cosine (``alpha = (1 - cos(pi * t)) / 2``) or linearly (``alpha = t``),
    ``t = step / anneal_epochs``, then stays at ``swa_lr``. It is chainable: each
    step starts from the group's current lr, so it can follow another scheduler.

    Parameters
    ----------
    optimizer : Optimizer
    swa_lr : float or list of float
        The final learning rate, for all groups or one per group.
    anneal_epochs : int, default 10
        Steps of the annealing phase, >= 0.
    anneal_strategy : {"cos", "linear"}, default "cos"
    last_epoch : int, default -1

    Examples
    --------
    >>> scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    >>> swa_scheduler = SWALR(optimizer, swa_lr=0.05, anneal_epochs=5)
    >>> for epoch in range(100):
    ...     train_epoch(model, optimizer)
    ...     if epoch >= 75:
    ...         swa_model.update_parameters(model); swa_scheduler.step()
    ...     else:
    ...         scheduler.step()
    """

    def __init__(self, optimizer, swa_lr, anneal_epochs=10, anneal_strategy="cos",
                 last_epoch=-1):
        _check_optimizer(optimizer)
        swa_lrs = _format_param("swa_lr", optimizer, swa_lr)
        for value in swa_lrs:
            if not _is_real(value):
                raise TypeError(f"swa_lr must be a float or a list of floats, got {value!r}")
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError("anneal_strategy must be one of 'cos' or 'linear', "
                             f"instead got {anneal_strategy}")
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
        # torch writes swa_lr into the groups before its checks; here only valid values
        # are written, and taken back if the base class refuses (e.g. a resume without
        # initial_lr), so a failed construction leaves the optimizer as it was.
        previous = [group.get("swa_lr", _MISSING) for group in optimizer.param_groups]
        for value, group in zip(swa_lrs, optimizer.param_groups, strict=True):
            # torch clones a tensor swa_lr: the group's value does not follow the caller's
            group["swa_lr"] = value.copy() if isinstance(value, np.ndarray) else value
        self._set_anneal_func(anneal_strategy)
        self.anneal_epochs = anneal_epochs
        try:
            super().__init__(optimizer, last_epoch)
        except BaseException:
            for value, group in zip(previous, optimizer.param_groups):
                if value is _MISSING:
                    del group["swa_lr"]
                else:
                    group["swa_lr"] = value
            raise

    @staticmethod
    def _linear_anneal(t):
        return t

    @staticmethod
    def _cosine_anneal(t):
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr, swa_lr, alpha):
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self):
        """Return this step's lr per group, interpolated from the group's lr to its swa_lr."""
        _warn_get_lr_called_within_step(self)
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_t = max(0, min(1, (step - 1) / max(1, self.anneal_epochs)))
        prev_alpha = self.anneal_func(prev_t)
        prev_lrs = [self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha)
                    for group in self.optimizer.param_groups]
        t = max(0, min(1, step / max(1, self.anneal_epochs)))
        alpha = self.anneal_func(t)
        return [group["swa_lr"] * alpha + lr * (1 - alpha)
                for group, lr in zip(self.optimizer.param_groups, prev_lrs, strict=True)]

    def _set_anneal_func(self, anneal_strategy):
        self._anneal_strategy = anneal_strategy
        if anneal_strategy == "cos":
            self.anneal_func = self._cosine_anneal
        else:
            self.anneal_func = self._linear_anneal

    def state_dict(self):
        """Return the scheduler's state: every attribute but the optimizer and anneal_func."""
        return _state_without(self, ("optimizer", "anneal_func"))

    def load_state_dict(self, state_dict):
        """Load a state returned by :meth:`state_dict` (copied, not referenced)."""
        self.__dict__.update(copy.deepcopy(state_dict))
        self._set_anneal_func(self._anneal_strategy)
