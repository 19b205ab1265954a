"""Weight averaging: a port of torch 2.13's ``torch.optim.swa_utils``.

``AveragedModel`` keeps a running average of a model's parameters, SWA's equal
weights (Izmailov et al., 2018) or an exponential moving average, in one flat
arena of its own; an update is one compiled pass over it. ``SWALR`` anneals each
group's learning rate to a constant for the averaging phase. The ``get_*_avg_fn``
factories return torch's averaging functions, with torch's numbers.

torch's ``update_bn`` is left out: it recomputes the running statistics of
``torch.nn.BatchNorm`` layers with a pass over the data, and numbaopt.nn has no
batch norm (no module has buffers), so there is nothing for it to update.

This module holds ``AveragedModel``; the averaging functions live in
``_swa_utils_avg_fn``, ``SWALR`` in ``_swa_utils_swalr``, the compiled pass in
``_swa_kernels``.
"""

import copy
from collections import namedtuple
from collections.abc import Mapping

import numpy as np

from .. import nn
from ..arena import make_arena
from ..parameter import Parameter
from . import optimizer as _optimizer
from ._swa_kernels import _COPY, _PARALLEL_SCALE, _Plan, _check_parameters
from ._swa_utils_avg_fn import (_COMPILED, _DEFAULT, get_ema_avg_fn, get_ema_multi_avg_fn,
                                get_swa_avg_fn, get_swa_multi_avg_fn)
from ._swa_utils_swalr import SWALR

__all__ = [
    "AveragedModel",
    "SWALR",
    "get_ema_multi_avg_fn",
    "get_swa_multi_avg_fn",
    "get_ema_avg_fn",
    "get_swa_avg_fn",
]


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
