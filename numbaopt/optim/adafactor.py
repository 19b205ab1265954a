"""Adafactor (torch.optim.Adafactor): factored second moments, one compiled call per step.

A parameter of 2 or more dimensions keeps its second moment as a row factor
(the mean of ``g * g`` over the last dimension) and a column factor (the mean
over the second-to-last), the leading dimensions being a batch of matrices; a
0-d or 1-d parameter keeps a full ``variance``. Those buffers are not shaped
like the arena, so this module keeps them in its own flat buffers (``row_var``,
``col_var``, ``variance``), placed parameter by parameter by ``_Layout``.

Shapes are static, so the per-parameter reductions (row and column means, the
RMS of the parameter and of its update) are driven by tables built once:

- ``ptab[i]``: ``(factored, batch, rows, cols, var_offset, col_offset, numel, start)``;
- ``tasks[k]``: ``(param, b_lo, b_hi, r_lo, r_hi, colpart, lo, hi, matrix)``, a piece
  of one parameter: whole matrices ``b_lo:b_hi`` (small matrices), rows
  ``r_lo:r_hi`` of matrix ``b_lo`` (large ones), or elements ``lo:hi`` of a
  vector; ``lo:hi`` are its arena elements in every case;
- ``mats[m]``: ``(param, b, ntasks, colpart)``, one matrix of a factored parameter
  and where its tasks left their partial column sums.

A step is one call of ``_adafactor_step``: the step counts and schedules, then
four passes (``_passes``, serial or ``prange`` over tasks, one source compiled
twice) around the step sizes: per task, the parameter's sum of squares, the row
factor and partial column sums (a vector's variance and its update's sum of
squares); per matrix, the column factor and the mean of the row factor; per
task, the update's sum of squares; then, per parameter, the step size; last, per
task, the update. The update is recomputed where it is applied rather than
stored, so the workspace stays small (a float64 per task, per matrix and per
partial column sum). The CUDA kernels make the same passes, one launch each.

Rounding follows torch's ``_single_tensor_adafactor``: hyperparameter scalars
are Python floats (float64 here) cast to the dtype where they meet tensors; the
norms torch takes in the dtype are squared in the dtype, summed in float64 and
cast back before their square root. Sums of squares are reassociated (see
``_REDUCE_FASTMATH``), so they agree with torch's to the dtype's rounding, not
bit for bit.

This module holds the class and the layout of its state; the per-element math and
the CPU kernels are in ``_adafactor_kernels``, the CUDA ones in ``_adafactor_cuda``.
"""

import math
from collections.abc import Mapping

import numpy as np

from ..kernels.finite import grads_finite, grads_finite_parallel
from ._adafactor_cuda import _cuda_kernels, _DeviceBuffers  # noqa: F401 (tests use _cuda_kernels)
from ._adafactor_kernels import _cpu_kernels
from ._arena_state import _scalar
from .arena_optimizer import ArenaOptimizer
from .optimizer import _copy_value, check_flag, check_implementation_flags, check_option, hyper_float

__all__ = ["Adafactor"]

# _Layout's task sizes, read from this module: tests and benchmarks shrink them here so
# that small parameters span several tasks.
#: Largest number of elements in one task of a factored parameter (several small
#: matrices, or rows of a large one). 16M elements in 1024 x 1024 matrices make 256.
FACTORED_TASK = 1 << 16
#: Fewest rows in a task of a large matrix: bounds the partial column sums to an
#: eighth of the parameter, whatever its shape.
MIN_TASK_ROWS = 8
#: Elements in one task of a 0-d or 1-d parameter (the arena's chunk).
VECTOR_TASK = 1 << 13


class Adafactor(ArenaOptimizer):
    """Adafactor (torch.optim.Adafactor): Adam-like steps with factored second moments.

    Per parameter, at its step ``t``, with ``g`` the gradient (negated when
    ``maximize``) and RMS the root mean square over the parameter::

        beta2_t = 1 - t ** beta2_decay;  rho = min(lr, 1 / sqrt(t))
        alpha = max(eps2, RMS(p)) * rho;  p = p * (1 - lr * weight_decay)
        2-D and up (per matrix of the last two dims):
            R = lerp(R, mean(g * g, dim=-1), 1 - beta2_t)    (row_var, shape [..., rows, 1])
            C = lerp(C, mean(g * g, dim=-2), 1 - beta2_t)    (col_var, shape [..., 1, cols])
            V = R @ C / max(mean(R, dim=-2), eps1)
        0-D, 1-D: V = lerp(V, g * g, 1 - beta2_t)            (variance)
        U = g / sqrt(max(V, eps1 ** 2));  p = p - alpha / max(1, RMS(U) / d) * U

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-2
        The largest relative step size ``rho``, and the weight decay's scale.
    beta2_decay : float, default -0.8
    eps : (float or None, float), default (None, 1e-3)
        ``eps1`` floors the variance estimate (None: the dtype's machine epsilon),
        ``eps2`` the parameter's RMS in the step size.
    d : float, default 1.0
        Clipping threshold of the update's RMS.
    weight_decay : float, default 0.0
    foreach : None or bool
        torch's implementation flag, accepted so torch code ports unchanged.
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf (see ``ArenaOptimizer``).
    device : {"cpu", "cuda"}, default "cpu"

    Examples
    --------
    >>> w = numbaopt.Parameter(np.zeros((64, 32), np.float32))
    >>> opt = Adafactor([w], lr=1e-2)
    >>> w.grad = np.ones((64, 32), np.float32); opt.step()
    >>> opt.state[w]["row_var"].shape
    (64, 1)
    """

    _load_defaults = {"maximize": False}
    _implementation_flags = dict(foreach=None)
    _complex_refusal = (RuntimeError, "Adafactor does not support complex parameters")
    # load_state_dict checks torch's shapes of row_var and col_var (numbaopt.checkpoint
    # leaves them to it)
    _validates_state_shapes = True
    _lr_message = "Learning rate should be >= 0 but is"   # as _check_group says it

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, foreach=None, maximize=False, skip_nonfinite=False,
                 device="cpu"):
        if isinstance(lr, np.ndarray) and lr.size != 1:
            raise ValueError("Tensor lr must be 1-element")
        check_implementation_flags("Adafactor", foreach=foreach)
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                        weight_decay=weight_decay, foreach=foreach, maximize=maximize)
        self._layout = None
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        # torch's checks, in torch's order and words
        check_option(group, "lr", "Learning rate should be >= 0 but is", index=index,
                     where=where)
        check_option(group, "beta2_decay", "beta2_decay should be <= 0 but is", low=-math.inf,
                     high=0.0, index=index, where=where)
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            suffix = f" ({where} {index})" if index is not None else ""
            raise ValueError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}{suffix}")
        if eps[0] is not None:
            check_option({"eps": eps[0]}, "eps", "epsilon1 should be >= 0 but is",
                         index=index, where=where)
        check_option({"eps": eps[1]}, "eps", "epsilon2 should be >= 0 but is", index=index,
                     where=where)
        check_option(group, "d", "Clipping threshold d should be >= 1 but is", low=1.0,
                     index=index, where=where)
        check_option(group, "weight_decay", "weight_decay should be >= 0 but is", index=index,
                     where=where)
        check_flag(group, "maximize", index, where)

    def _hyper_row(self, group):
        # the kernels' row h: lr, beta2_decay, eps1, eps2, d, weight_decay, maximize
        eps1, eps2 = group["eps"]
        if eps1 is None:   # torch: torch.finfo(param.dtype).eps
            eps1 = float(np.finfo(self.arena.dtype).eps)
        return [hyper_float(group["lr"]), float(group["beta2_decay"]), float(eps1), float(eps2),
                float(group["d"]), hyper_float(group["weight_decay"]),
                float(bool(group["maximize"]))]

    # -- the buffers and tables ----------------------------------------------------------
    def _init_state(self, first):
        """Place parameters ``first:`` in the factored buffers (zeros); earlier ones keep theirs."""
        old = self._buffers if self._layout is not None else None
        layout = _Layout(self.arena.shapes, self.arena.offsets)
        if self.device == "cuda":
            store = _DeviceBuffers(self.arena, layout, old)
        else:
            store = _HostBuffers(self.arena.dtype, layout, old)
        self._layout = layout
        self._buffers = store

    def _prepare(self, hyper):
        arena = self.arena
        store = self._buffers
        if arena.device == "cuda":
            return store.prepare(self, hyper)
        parallel = arena.size >= self.parallel_threshold
        kernel = _cpu_kernels()[parallel]
        args = (arena.data, arena.grad, arena.has_grad, arena.step, arena.param_group, hyper,
                *store.tables, *store.state, *store.workspace)
        check = grads_finite_parallel if parallel else grads_finite
        grad, has_grad, chunks = arena.grad, arena.has_grad, arena.chunks
        finite = lambda: check(grad, has_grad, chunks)   # noqa: E731
        return _guard_empty(kernel, self._layout, has_grad), args, finite

    # -- state in torch's shapes ---------------------------------------------------------
    def _param_state(self, i, group, copy, steps, scalars, buffers=None):
        # (its buffers are its own, not the arena's: ``buffers`` is not used)
        if steps[i] == 0:
            return None
        arena = self.arena
        out = {"step": np.array(steps[i], dtype=np.float32) if copy else arena.step_view(i)}
        for name, (lo, hi, shape) in self._layout.pieces(i).items():
            out[name] = self._buffers.piece(name, lo, hi, shape, copy)
        return out

    def _load_state_dict(self, state_dict):
        # torch's shapes: ``row_var`` ``[..., rows, 1]``, ``col_var`` ``[..., 1, cols]``,
        # ``variance`` the parameter's. Everything is validated before anything changes.
        self._staged = None
        try:
            super()._load_state_dict(state_dict)
            staged = self._staged
        finally:
            self._staged = None
        self._buffers.load(staged)

    def _fresh_state(self, buffers, groups):
        self._staged = self._layout.zeros(self.arena.dtype)

    def _load_param_state(self, i, entry, group, step, scalars, buffers, key):
        if not isinstance(entry, Mapping):
            raise ValueError(f"loaded state of parameter {key!r} is not a dict")
        pieces = self._layout.pieces(i)
        allowed = {"step"} | set(pieces)
        unknown = (set(entry) & {"row_var", "col_var", "variance"}) - allowed
        if unknown:
            raise ValueError(
                f"loaded state of parameter {key!r} has unexpected keys {sorted(unknown)} for "
                f"Adafactor and a parameter of shape {self.arena.shapes[i]} "
                f"(expected {sorted(allowed)})")
        # other keys are kept as the user's own state (torch keeps any key)
        extra = {k: _copy_value(v) for k, v in entry.items() if k not in allowed}
        if not allowed & set(entry):
            return extra
        missing = allowed - set(entry)
        if missing:
            raise ValueError(f"loaded state of parameter {key!r} lacks {sorted(missing)}")
        step[i] = _scalar(entry["step"], key, "step", non_negative=True)
        for name, (lo, hi, shape) in pieces.items():
            value = np.asarray(entry[name])
            if value.shape != shape:
                raise ValueError(f"loaded '{name}' of parameter {key!r} has shape {value.shape}, "
                                 f"torch's Adafactor keeps shape {shape} for a parameter of "
                                 f"shape {self.arena.shapes[i]}")
            if value.dtype.kind not in "iuf":
                raise ValueError(f"loaded '{name}' of parameter {key!r} has non-real dtype "
                                 f"{value.dtype}")
            self._staged[name][lo:hi] = value.reshape(-1)
        return extra

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_staged", None)
        return state


# ------------------------------------------------------------------------------ layout

class _Layout:
    """Where each parameter's factored state lives, and the kernel's tables (host arrays).

    Built from the arena's shapes and offsets; parameters appended by
    ``add_param_group`` are placed after the existing ones, so the buffers of a
    grown layout start with the old ones.
    """

    def __init__(self, shapes, offsets):
        n = len(shapes)
        self.shapes = [tuple(int(n) for n in s) for s in shapes]   # (device shapes too)
        ptab = np.zeros((n, 8), dtype=np.int64)
        tasks, mats = [], []
        task_first = np.zeros(n + 1, dtype=np.int64)
        sizes = {"row_var": 0, "col_var": 0, "variance": 0}
        colpart = 0
        self.empty = np.zeros(n, dtype=np.bool_)
        for i, shape in enumerate(self.shapes):
            task_first[i] = len(tasks)
            start = int(offsets[i])
            numel = int(offsets[i + 1]) - start
            self.empty[i] = numel == 0
            if len(shape) >= 2:
                rows, cols = int(shape[-2]), int(shape[-1])
                batch = int(np.prod(shape[:-2], dtype=np.int64))
                ptab[i] = (1, batch, rows, cols, sizes["row_var"], sizes["col_var"], numel, start)
                sizes["row_var"] += batch * rows
                sizes["col_var"] += batch * cols
                if numel:
                    colpart = _factored_tasks(i, batch, rows, cols, start, colpart, tasks, mats)
            else:
                ptab[i] = (0, 1, numel, 1, sizes["variance"], 0, numel, start)
                sizes["variance"] += numel
                for lo in range(0, numel, VECTOR_TASK):
                    tasks.append((i, 0, 0, 0, 0, 0, start + lo,
                                  start + min(numel, lo + VECTOR_TASK), -1))
        task_first[n] = len(tasks)
        self.ptab = ptab
        self.tasks = np.array(tasks, dtype=np.int64).reshape(len(tasks), 9)
        self.task_first = task_first
        self.mats = np.array(mats, dtype=np.int64).reshape(len(mats), 4)
        self.sizes = sizes
        self.colpart = colpart

    def pieces(self, i):
        """``{name: (lo, hi, torch's shape)}``: parameter ``i``'s state in the flat buffers."""
        factored, batch, rows, cols, off, coff = (int(v) for v in self.ptab[i, :6])
        shape = tuple(self.shapes[i])
        if factored:
            return {"row_var": (off, off + batch * rows, shape[:-1] + (1,)),
                    "col_var": (coff, coff + batch * cols, shape[:-2] + (1, cols))}
        return {"variance": (off, off + int(self.ptab[i, 6]), shape)}

    def zeros(self, dtype):
        return {name: np.zeros(size, dtype=dtype) for name, size in self.sizes.items()}


def _factored_tasks(i, batch, rows, cols, start, colpart, tasks, mats):
    """Append the tasks and matrices of factored parameter ``i``; returns the next colpart."""
    size = rows * cols
    m0 = len(mats)
    if size <= FACTORED_TASK:
        # several whole matrices per task; each matrix's column sums are in one piece
        per_task = max(1, FACTORED_TASK // size)
        for b_lo in range(0, batch, per_task):
            b_hi = min(batch, b_lo + per_task)
            tasks.append((i, b_lo, b_hi, 0, rows, colpart + b_lo * cols, start + b_lo * size,
                          start + b_hi * size, m0 + b_lo))
        mats.extend((i, b, 1, colpart + b * cols) for b in range(batch))
        return colpart + batch * cols
    # rows of one matrix per task; the matrix adds up its tasks' column sums
    per_task = min(rows, max(MIN_TASK_ROWS, FACTORED_TASK // cols))
    nq = -(-rows // per_task)
    for b in range(batch):
        first = colpart + b * nq * cols
        for q in range(nq):
            r_lo, r_hi = q * per_task, min(rows, (q + 1) * per_task)
            tasks.append((i, b, b + 1, r_lo, r_hi, first + q * cols,
                          start + b * size + r_lo * cols, start + b * size + r_hi * cols, m0 + b))
        mats.append((i, b, nq, first))
    return colpart + batch * nq * cols


class _HostBuffers:
    """The flat state buffers, the kernel's tables and its workspace, in host memory."""

    def __init__(self, dtype, layout, old=None):
        self.state = tuple(np.zeros(layout.sizes[name], dtype=dtype)
                           for name in ("row_var", "col_var", "variance"))
        if old is not None:   # add_param_group: the old parameters keep their state
            for new, prev in zip(self.state, old.state):
                new[:prev.size] = prev
        self.tables = (layout.ptab, layout.tasks, layout.task_first, layout.mats)
        ntasks, nmats, nparams = layout.tasks.shape[0], layout.mats.shape[0], layout.ptab.shape[0]
        self.workspace = (np.zeros(layout.colpart, dtype=np.float64),
                          np.zeros(ntasks, dtype=np.float64), np.zeros(ntasks, dtype=np.float64),
                          np.zeros(nmats, dtype=dtype), np.zeros((nparams, 4), dtype=np.float64))

    def piece(self, name, lo, hi, shape, copy):
        buf = self.state[("row_var", "col_var", "variance").index(name)][lo:hi]
        return buf.reshape(shape).copy() if copy else buf.reshape(shape)

    def load(self, staged):
        for name, buf in zip(("row_var", "col_var", "variance"), self.state):
            buf[:] = staged[name]


def _guard_empty(kernel, layout, has_grad):
    """``kernel``, or a wrapper raising torch's ZeroDivisionError for an empty parameter.

    torch divides the parameter's norm by ``sqrt(numel)`` in Python, so a step over
    a parameter with no elements and a gradient fails; here it fails before anything
    changes.
    """
    if not layout.empty.any():
        return kernel
    empty = layout.empty

    def step(*args):
        if np.any(has_grad & empty):
            i = int(np.flatnonzero(has_grad & empty)[0])
            raise ZeroDivisionError(f"float division by zero (parameter {i} has no elements: "
                                    "torch's Adafactor divides by sqrt(numel))")
        return kernel(*args)

    return step
