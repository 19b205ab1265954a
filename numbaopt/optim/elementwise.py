"""Elementwise optimizers: the state in the arena, and a step that is one compiled call.

Every built-in optimizer but the Python-step ones derives from
``ElementwiseOptimizer``, and so can yours. A subclass declares its rule: the
hyperparameter columns, the state buffers, and two plain Python functions,
written once for every backend::

    class Lion(ElementwiseOptimizer):
        hyperparameters = ("lr", "betas", "weight_decay", "maximize")  # h[0] .. h[4]
        _state_keys = ("exp_avg",)

        @staticmethod
        def coefficients(h, t, s, i, T):      # once per chunk: float64 in, scalars out
            return T(-h[0]), T(h[1]), T(1.0 - h[1]), T(h[2]), T(1.0 - h[0] * h[3]), h[4] != 0

        @staticmethod
        def update(lo, hi, stride, k, param, grad, exp_avg):  # one argument per buffer
            neg_lr, b1, ... = k
            for j in range(lo, hi, stride):       # elements, in the parameter's dtype
                ...

numbaopt compiles them into the serial and parallel CPU kernels and the CUDA
kernel (``numbaopt.kernels``), and this class gives validation, state_dict,
checkpoints, schedulers, clipping and data parallelism. The functions use
arithmetic, comparisons, ``abs``/``min``/``max`` and the helpers exported here
(``sqrt``, ``lerp``, ``maximum``, ``clamp``), imported by name.
"""

from ..kernels.elementwise import Rule
from ..kernels.scalar import clamp, lerp, maximum, sqrt
from .arena_optimizer import ArenaOptimizer
from .optimizer import PARALLEL_THRESHOLD

__all__ = ["ElementwiseOptimizer", "sqrt", "lerp", "maximum", "clamp", "PARALLEL_THRESHOLD"]

_RULE_ROLES = ("coefficients", "update", "advance", "counts_step")


class ElementwiseOptimizer(ArenaOptimizer):
    """An optimizer whose update is elementwise: state in the arena, one kernel call per step.

    A subclass declares what ``ArenaOptimizer`` asks for (``hyperparameters``,
    ``_state_keys``, ``_scalar_state``, ``_check_group``) and, in place of
    ``_prepare``, the rule: static methods ``coefficients(h, t, s, i, T)`` and
    ``update(lo, hi, stride, k, param, grad, *buffers)`` (a loop over
    ``range(lo, hi, stride)``), optionally ``advance(h, t, s, i)`` and
    ``counts_step(hyper, g)`` (see ``numbaopt.kernels.elementwise``). It gets
    validation, state_dict, checkpoints, schedulers, clipping, data parallelism
    and ``skip_nonfinite`` from the base.
    """

    _rule = None
    _mixed_dtypes = True      # several dtypes: one arena and one kernel call each (_mixed)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        declared = {role: cls.__dict__.get(role) for role in _RULE_ROLES}
        if not any(declared.values()):
            return   # inherits its parent's rule (AdamW) or declares none yet
        functions = {role: _plain(getattr(cls, role, None)) for role in _RULE_ROLES}
        if functions["coefficients"] is None or functions["update"] is None:
            raise TypeError(f"{cls.__name__} declares part of an elementwise rule: it needs "
                            "both coefficients() and update() static methods")
        cls._rule = Rule(cls.__name__.lower(), len(cls._state_keys), **functions)

    def __init__(self, params, defaults, *, skip_nonfinite=False, device="cpu"):
        if type(self)._rule is None:
            raise TypeError(f"{type(self).__name__} declares no elementwise rule: give it "
                            "coefficients() and update() static methods, or subclass "
                            "numbaopt.optim.Optimizer and write step() in Python")
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _prepare(self, hyper):
        return self.arena.prepare(self, hyper)


def _plain(function):
    """The plain function behind a static method (or None)."""
    if isinstance(function, staticmethod):
        function = function.__func__
    return function

