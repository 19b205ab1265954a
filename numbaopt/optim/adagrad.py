"""Adagrad (torch.optim.Adagrad)."""

from ..kernels.cpu import _adagrad_cpu, _adagrad_cpu_parallel
from .optimizer import Optimizer, check_flag, check_option

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad).

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p
        s = s + g * g
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)

    The accumulator ``s`` ("sum") starts at ``initial_accumulator_value`` for every
    parameter, including those added later by ``add_param_group``. As in torch,
    the constructor's value is used even where a group sets its own.

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-2
    lr_decay : float, default 0
    weight_decay : float, default 0
    initial_accumulator_value : float, default 0
    eps : float, default 1e-10
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``Optimizer``).
    device : {"cpu", "cuda"}, default "cpu"
        Where the arena (parameters, gradients, state) lives; "cuda" needs numba-cuda.

    Examples
    --------
    >>> opt = Adagrad(model.parameters(), lr=0.1)
    """

    _state_keys = ("sum",)
    _kernels = (_adagrad_cpu, _adagrad_cpu_parallel)
    _kernel_name = "adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, *, maximize=False, skip_nonfinite=False, device="cpu"):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_option(group, "lr_decay", "Invalid lr_decay value", index=index, where=where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index, where=where)
        check_option(group, "initial_accumulator_value", "Invalid initial_accumulator_value value",
                     index=index, where=where)
        check_option(group, "eps", "Invalid epsilon value", index=index, where=where)
        check_flag(group, "maximize", index, where)

    def _hyper_row(self, group):
        return (float(group["lr"]), float(group["lr_decay"]), float(group["weight_decay"]),
                float(group["eps"]), float(group["maximize"]))

    _state_from_start = True

    def _init_state(self, first):
        # torch creates Adagrad's state eagerly, from the constructor's value.
        arena = self.arena
        arena.ensure_state(("sum",))
        arena.fill_state("sum", int(arena.offsets[first]), self.defaults["initial_accumulator_value"])

    def _fresh_state(self, buffers, groups):
        buffers["sum"][:] = self.defaults["initial_accumulator_value"]
