"""The few torch.nn pieces the examples need, with an explicit backward instead of autograd.

Each module caches what its last ``forward`` saw. ``backward(grad_output)``
returns the gradient with respect to that input and, for modules with
parameters, adds the parameter gradients into ``p.grad`` the way torch's
``loss.backward()`` does: it accumulates, so clear the gradients between
steps with ``optimizer.zero_grad()`` (or ``module.zero_grad()``). The chain
that autograd would walk is written out by hand::

    out = model(x)
    loss = criterion(out, y)
    optimizer.zero_grad()
    model.backward(criterion.backward())     # torch: loss.backward()
    optimizer.step()

Forward passes read ``p.data`` every call, never an array kept from before:
building an optimizer moves each parameter's storage into its arena.
"""

import numpy as np

from .parameter import Parameter

__all__ = ["Module", "Linear", "ReLU", "MSELoss", "CrossEntropyLoss"]


class Module:
    """Base class: ``module(x)`` calls ``forward``; parameters are found by attribute.

    ``named_parameters()`` walks the instance's attributes in the order they were
    assigned, recursing into sub-modules, and names parameters as torch does
    (``"base.weight"``, ``"classifier.bias"``). Attributes whose name starts with
    an underscore (caches) are skipped.
    """

    def __call__(self, *args):
        return self.forward(*args)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, grad_output):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward(): "
                                  "numbaopt.nn layers give their gradients explicitly")

    def named_parameters(self, prefix=""):
        """Yield ``(name, Parameter)`` pairs, sub-modules' parameters included."""
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, Parameter):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(prefix + name + ".")

    def parameters(self):
        """The parameters, in ``named_parameters()`` order, as a list."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        """Set every parameter's gradient to None (torch's default ``set_to_none``)."""
        for p in self.parameters():
            p.grad = None


def _accumulate_grad(param, grad):
    # torch adds into .grad, so two backward passes before a step sum their gradients.
    if param.grad is None:
        param.grad = grad
    else:
        np.add(param.grad, grad, out=param.grad, casting="unsafe")


class Linear(Module):
    """``y = x @ weight.T + bias`` (torch.nn.Linear).

    ``weight`` has shape ``(out_features, in_features)``, ``bias`` ``(out_features,)``,
    both drawn as torch does by default: uniform in ``+-1/sqrt(in_features)``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    rng : numpy.random.Generator or int or None, default None
        Source of the initial values (``np.random.default_rng(rng)``); pass a
        Generator or a seed for reproducible weights.
    dtype : float32 or float64, default float32
        Dtype of the parameters; inputs are cast to it, so it is the dtype of the
        arithmetic.

    Examples
    --------
    >>> model = Linear(1, 1, rng=np.random.default_rng(0))
    >>> out = model(np.array([[1.0], [2.0]], np.float32))     # shape (2, 1)
    >>> grad_x = model.backward(np.ones_like(out))           # fills weight.grad, bias.grad
    >>> [name for name, _ in model.named_parameters()]
    ['weight', 'bias']
    """

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype=np.float32):
        rng = np.random.default_rng(rng)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        # torch: kaiming_uniform_(a=sqrt(5)) for the weight and U(-1/sqrt(fan_in), ..)
        # for the bias; both bounds come out as 1/sqrt(fan_in).
        bound = 1.0 / np.sqrt(self.in_features) if self.in_features > 0 else 0.0
        shape = (self.out_features, self.in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(dtype))
        self.bias = (Parameter(rng.uniform(-bound, bound, self.out_features).astype(dtype))
                     if bias else None)
        self._input = None

    def forward(self, x):
        w = self.weight.data
        x = np.asarray(x, dtype=w.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) got an input of "
                             f"shape {x.shape}; its last dimension must be {self.in_features}")
        self._input = x
        out = x @ w.T
        if self.bias is not None:
            out = out + self.bias.data
        return out

    def backward(self, grad_output):
        """Add ``dL/dweight`` and ``dL/dbias`` into the grads; return ``dL/dx``."""
        x = self._input
        if x is None:
            raise RuntimeError("backward() called before forward()")
        w = self.weight.data
        g = np.asarray(grad_output, dtype=w.dtype)
        expected = x.shape[:-1] + (self.out_features,)
        if g.shape != expected:
            raise ValueError(f"grad_output has shape {g.shape}, expected {expected}")
        g2 = g.reshape(-1, self.out_features)
        _accumulate_grad(self.weight, g2.T @ x.reshape(-1, self.in_features))
        if self.bias is not None:
            _accumulate_grad(self.bias, g2.sum(axis=0))
        return g @ w

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None})")


class ReLU(Module):
    """``max(x, 0)`` elementwise (torch.nn.ReLU); the gradient at 0 is 0, as torch's."""

    def __init__(self):
        self._mask = None

    def forward(self, x):
        x = np.asarray(x)
        self._mask = x > 0
        return np.where(self._mask, x, np.zeros((), x.dtype))

    def backward(self, grad_output):
        if self._mask is None:
            raise RuntimeError("backward() called before forward()")
        g = np.asarray(grad_output)
        return np.where(self._mask, g, np.zeros((), g.dtype))

    def __repr__(self):
        return "ReLU()"


def _check_reduction(reduction):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


class MSELoss(Module):
    """Mean squared error, ``mean((input - target) ** 2)`` (torch.nn.MSELoss).

    ``criterion(input, target)`` returns the loss as a NumPy scalar of the input's
    dtype (``loss.item()`` gives a Python float, as in torch); ``backward()``
    returns ``dL/dinput``.

    Parameters
    ----------
    reduction : {"mean", "sum"}, default "mean"

    Examples
    --------
    >>> criterion = MSELoss()
    >>> loss = criterion(model(x), y)
    >>> model.backward(criterion.backward())
    """

    def __init__(self, reduction="mean"):
        self.reduction = _check_reduction(reduction)
        self._diff = None

    def forward(self, input, target):
        input = np.asarray(input)
        target = np.asarray(target, dtype=input.dtype)
        if input.shape != target.shape:
            # torch broadcasts here with a warning; a silent (N, 1) - (N,) outer difference
            # is almost always a bug, so refuse it.
            raise ValueError(f"input shape {input.shape} and target shape {target.shape} differ")
        diff = input - target
        self._diff = diff
        sq = diff * diff
        return sq.mean() if self.reduction == "mean" else sq.sum()

    def backward(self, grad_output=1.0):
        """``dL/dinput``, times ``grad_output`` (the gradient of whatever uses the loss)."""
        diff = self._diff
        if diff is None:
            raise RuntimeError("backward() called before forward()")
        norm = 2.0 / diff.size if self.reduction == "mean" and diff.size else 2.0
        return diff * diff.dtype.type(norm * float(grad_output))

    def __repr__(self):
        return "MSELoss()"


class CrossEntropyLoss(Module):
    """Softmax cross-entropy on logits (torch.nn.CrossEntropyLoss).

    ``input`` holds logits, shape ``(N, C)`` or ``(C,)`` for one sample. ``target``
    is either class indices (integers, shape ``(N,)`` or ``()``), or class
    probabilities (floats, the input's shape), which is how torch reads a float
    target of the input's shape. The loss per sample is
    ``-sum_c target_c * log_softmax(input)_c``; "mean" divides the sum by N.

    Parameters
    ----------
    reduction : {"mean", "sum"}, default "mean"

    Examples
    --------
    >>> criterion = CrossEntropyLoss()
    >>> loss = criterion(logits, np.array([0, 2, 1]))     # logits of shape (3, C)
    >>> grad_logits = criterion.backward()                # (softmax - onehot) / 3
    """

    def __init__(self, reduction="mean"):
        self.reduction = _check_reduction(reduction)
        self._cache = None

    def forward(self, input, target):
        input = np.asarray(input)
        if input.dtype.kind != "f" or input.ndim not in (1, 2):
            raise ValueError(f"input must be float logits of shape (N, C) or (C,), got "
                             f"{input.dtype} {input.shape}")
        logits = input.reshape(-1, input.shape[-1])
        n, c = logits.shape
        shifted = logits - logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_prob = shifted - lse
        target = np.asarray(target)
        if target.dtype.kind in "iu":
            if target.shape != input.shape[:-1]:
                raise ValueError(f"class-index target must have shape {input.shape[:-1]}, "
                                 f"got {target.shape}")
            t = target.reshape(-1)
            bad = (t < 0) | (t >= c)
            if bad.any():
                raise IndexError(f"Target {int(t[bad][0])} is out of bounds.")
            per_sample = -log_prob[np.arange(n), t]
        elif target.dtype.kind == "f":
            if target.shape != input.shape:
                raise ValueError(f"class-probability target must have the input's shape "
                                 f"{input.shape}, got {target.shape}")
            t = target.astype(input.dtype).reshape(n, c)
            per_sample = -(t * log_prob).sum(axis=1)
        else:
            raise TypeError(f"target must be integer class indices or float class "
                            f"probabilities, got dtype {target.dtype}")
        self._cache = (np.exp(log_prob), t, input.shape)
        return per_sample.mean() if self.reduction == "mean" else per_sample.sum()

    def backward(self, grad_output=1.0):
        """``dL/dinput``: ``(softmax - target) / N`` for "mean", times ``grad_output``."""
        if self._cache is None:
            raise RuntimeError("backward() called before forward()")
        prob, t, shape = self._cache
        n = prob.shape[0]
        if t.ndim == 1:     # class indices
            grad = prob.copy()
            grad[np.arange(n), t] -= 1
        else:               # class probabilities
            # d/dz of -sum(t * log_softmax(z)) is softmax * sum(t) - t; t need not sum to 1.
            grad = prob * t.sum(axis=1, keepdims=True) - t
        scale = float(grad_output) / n if self.reduction == "mean" else float(grad_output)
        return (grad * grad.dtype.type(scale)).reshape(shape)

    def __repr__(self):
        return "CrossEntropyLoss()"
