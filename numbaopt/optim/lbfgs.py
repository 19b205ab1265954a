"""L-BFGS (torch.optim.LBFGS) on the flat arena.

The arena already is the flat vector torch rebuilds with ``_gather_flat_grad``
at every evaluation, so nothing is gathered or scattered: the closure writes
gradients into the arena and the passes below read them there.

The two-loop recursion runs in the coefficient space of the basis
``{s_i, y_i, g}`` (Chen et al., "Large-scale L-BFGS using MapReduce", NeurIPS
2014): the dot products ``s_i . y_j`` and ``y_i . y_j`` are kept in a small Gram
table, so an iteration makes two compiled passes over the stored pairs, which
live in one ring matrix: one computes the dot products of the new pair and the
gradient with every stored pair, the other forms the direction as a linear
combination. The recursion itself is O(history^2) scalar work. torch also reads
the history twice per iteration (a dot product and an axpy per pair and loop,
on a vector that stays in cache), so what is gained is how fast each pass
streams, not bytes. Both passes take four stored rows per sweep of the block
they work on, and neither calls BLAS: OpenBLAS's threads spin after a call and
would take the cores numba's threads need. Same algebra and decisions as torch;
the dot products are float64 sums, so their rounding differs.
"""

import numpy as np

from ._lbfgs_passes import HostPasses, _two_loop
from ._lbfgs_state import LBFGSStateMixin
from ._line_search import strong_wolfe
from .optimizer import Optimizer, _split_groups, hyper_float, is_finite_real

__all__ = ["LBFGS"]
#: Arenas with at least this many elements use the threaded passes.
PARALLEL_THRESHOLD = 1 << 16


class LBFGS(LBFGSStateMixin, Optimizer):
    """L-BFGS (Nocedal 1980; minFunc's variant, as torch.optim.LBFGS).

    Each ``step(closure)`` runs up to ``max_iter`` quasi-Newton iterations.
    From the gradient ``g`` and the last ``history_size`` pairs
    ``s = x_{k+1} - x_k``, ``y = g_{k+1} - g_k`` (kept when ``y.s > 1e-10``)
    the two-loop recursion gives the direction ``d ~ -H^{-1} g``; the step is
    ``x += t d`` with ``t = lr`` (the first ever ``min(1, 1/|g|_1) * lr``), or
    the step length of a strong-Wolfe line search. It stops when
    ``max |g| <= tolerance_grad``, when the step or the change of the loss
    falls below ``tolerance_change``, or after ``max_eval`` evaluations.

    Parameters
    ----------
    params : iterable of Parameter
        One group only, as in torch.
    lr : float, default 1
    max_iter : int, default 20
        Iterations per ``step()``.
    max_eval : int, default ``max_iter * 5 // 4``
        Closure evaluations per ``step()``.
    tolerance_grad : float, default 1e-7
    tolerance_change : float, default 1e-9
    history_size : int, default 100
        Stored pairs: ``2 * (history_size + 1)`` arena-sized buffers, allocated once.
    line_search_fn : None or "strong_wolfe"

    The closure sets the gradients (``p.grad = ...``, or writes ``opt.arena.grad``
    and sets ``opt.arena.has_grad``) and returns the loss (a float or a 0-d
    array). A parameter without gradient counts as zeros, as in torch. Numbers
    match torch iterate for iterate; the dot products are summed in float64 (also
    for float32 parameters), so they round differently from torch's BLAS. A NaN
    or inf loss or gradient propagates into the parameters, as in torch (see the
    README).

    Examples
    --------
    >>> opt = LBFGS([x], line_search_fn="strong_wolfe")
    >>> def closure():
    ...     x.grad = grad_f(x.data)
    ...     return f(x.data)
    >>> opt.step(closure)
    """

    _validates_state_shapes = True   # load_state_dict checks every vector (numbaopt.load)

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None, *,
                 device="cpu"):
        if isinstance(lr, np.ndarray) and lr.size != 1:
            raise ValueError("Tensor lr must be 1-element")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                        tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                        history_size=history_size, line_search_fn=line_search_fn)
        groups = _split_groups(params)
        if len(groups) != 1:
            # torch checks the groups as add_param_group does before refusing more than one
            self.defaults = defaults
            checked = []
            for group in groups:
                checked.append(self._checked_new_group(group, checked))
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        super().__init__(groups, defaults, device=device)
        self._params = self.param_groups[0]["params"]
        self._reset_state()

    # -- state (torch's view of it, state_dict and load_state_dict: LBFGSStateMixin) ----
    def _reset_state(self, history_size=None):
        """Fresh state: no iteration yet, buffers allocated for the group's history size."""
        arena = self.arena
        n, dtype = arena.size, arena.dtype
        H = self.param_groups[0]["history_size"] if history_size is None else history_size
        self._H = int(H)
        self._parallel = n >= PARALLEL_THRESHOLD
        if arena.device == "cuda":
            from ._lbfgs_cuda import CudaPasses
            self._passes = CudaPasses(n, dtype, self._H, arena.offsets)
        else:
            self._passes = HostPasses(n, dtype, self._H, self._parallel)
        P = self._passes
        self._single = dtype == np.float32
        self._T = np.float32 if self._single else np.float64
        self._func_evals = None      # torch's state keys appear on the first step
        self._n_iter = None
        self._started = False        # d, t, history, ... exist
        self._t = None
        self._H_diag = 1
        self._prev_loss = None
        self._al = None              # torch's state["al"]: a list once the recursion ran
        self._order = []             # ring rows of the stored pairs, oldest first
        self._rho = np.zeros(self._H + 1)
        self._d = P.zeros(n)
        # The history ring, one matrix: row 0 is prev_flat_grad, rows 1 + 2k and 2 + 2k the
        # pair (s, y) in slot k. The slots in use (and the spare) are always the first
        # ones, so a pass over R[:1 + 2r] reads exactly the live history.
        self._R = P.zeros((5 + 2 * self._H, n))   # + one pair: the 4-row pass's tail
        self._W = P.zeros((3, n))                 # the new pair and the gradient
        self._RW = np.zeros((2 * self._H + 4, 3))
        self._c = np.zeros(5 + 2 * self._H)       # the direction's coefficients over R
        self._SY = np.zeros((self._H + 1, self._H + 1))
        self._YY = np.zeros((self._H + 1, self._H + 1))
        self._coef = np.zeros((3, self._H + 1))
        self._gs = np.zeros(self._H + 1)
        self._gy = np.zeros(self._H + 1)
        self._slots = np.zeros(self._H + 1, dtype=np.int64)
        self._x_init = None          # the line search's buffers, allocated on first use
        self._pool = None

    @property
    def _prev(self):
        return self._R[0]

    def _s(self, slot):
        return self._R[1 + 2 * slot]

    def _y(self, slot):
        return self._R[2 + 2 * slot]

    # -- groups --------------------------------------------------------------------
    def add_param_group(self, param_group):
        raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    def _adopt(self, new_groups, append):
        raise ValueError("LBFGS doesn't support per-parameter options (parameter groups): "
                         "param_groups holds more than one group")

    def _check_group(self, group, index=None, where="param group"):
        suffix = f" ({where} {index})" if index is not None else ""
        lr = group["lr"]
        if isinstance(lr, np.ndarray) and lr.size != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not is_finite_real(lr) or hyper_float(lr) < 0:
            raise ValueError(f"Invalid learning rate: {group['lr']!r}{suffix}")
        for key in ("max_iter", "max_eval", "history_size"):
            v = group[key]
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"'{key}' must be a positive integer, got {v!r}{suffix}")
        for key in ("tolerance_grad", "tolerance_change"):
            # torch takes any number here (its tests pass tolerance_grad=-inf: never stop early)
            v = group[key]
            if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool) \
                    or v != v:
                raise ValueError(f"'{key}' must be a number, got {v!r}{suffix}")
        if group["line_search_fn"] not in (None, "strong_wolfe"):
            raise ValueError(f"only 'strong_wolfe' is supported as line_search_fn, got "
                             f"{group['line_search_fn']!r}{suffix}")

    # -- the compiled passes -------------------------------------------------------
    def _flat_grad(self):
        """The arena's gradient, with torch's zeros for parameters that have none."""
        arena = self.arena
        if not arena.has_grad.all():
            self._passes.zero_missing(arena)
        return arena.grad

    def _stats(self, g):
        return self._passes.abs_stats(g)

    def _dot(self, a, b):
        return self._passes.dot(a, b)

    def _f(self, x):
        """A value torch holds as a tensor of the parameters' dtype, as a Python float."""
        return float(self._T(x))

    # -- stepping ------------------------------------------------------------------
    def step(self, closure):
        """Run up to ``max_iter`` iterations; ``closure()`` sets the gradients and returns the loss.

        Returns the loss of the first evaluation, as torch does.
        """
        if self._dirty[0] or self.arena.stale is not None:
            self._sync()
        group = self.param_groups[0]
        lr = hyper_float(group["lr"])
        max_iter, max_eval = int(group["max_iter"]), int(group["max_eval"])
        tolerance_grad = float(group["tolerance_grad"])
        tolerance_change = float(group["tolerance_change"])
        line_search_fn = group["line_search_fn"]
        f = self._f
        if self._func_evals is None:
            self._func_evals, self._n_iter = 0, 0

        orig_loss = closure()
        loss = _loss(orig_loss)
        current_evals = 1
        self._func_evals += 1
        flat_grad = self._flat_grad()
        gmax, gsum = self._stats(flat_grad)
        if f(gmax) <= f(tolerance_grad):
            return orig_loss

        t = self._t
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            self._n_iter += 1
            if self._n_iter == 1:
                self._order = []
                self._H_diag = 1
                self._started = True
                m = 0
                coef_g = -1.0
            else:
                m = self._update_history(flat_grad, t)
                if self._al is None:
                    self._al = [None] * self._H
                al = self._coef[2]
                coef_g = _two_loop(m, self._slots, self._SY, self._YY, self._gs, self._gy,
                                   self._rho, float(self._H_diag), self._single, al,
                                   self._coef[0], self._coef[1])
                for i in range(m):
                    self._al[i] = float(al[i])
            gtd, dmax = self._direction(flat_grad, m, coef_g)
            self._prev_loss = loss

            if self._n_iter == 1:
                # torch: min(1.0, 1.0 / |g|_1) * lr, a tensor (lr cast to its dtype first)
                # when the min is the tensor, a Python float otherwise
                with np.errstate(divide="ignore"):     # a zero gradient: inf, as torch's
                    inv = f(np.divide(1.0, f(gsum)))
                t = f(inv * f(lr)) if inv < 1.0 else lr
            else:
                t = lr
            gtd = f(gtd)
            if gtd > f(-tolerance_change):
                break

            ls_func_evals = 0
            if line_search_fn is not None:
                loss, flat_grad, t, ls_func_evals = self._strong_wolfe(
                    closure, t, loss, gtd, tolerance_change, max_ls=max_eval - current_evals)
                self._passes.move(self.arena.data, self._x_init, self._d, self._T(t))
                gmax, _ = self._stats(flat_grad)
                opt_cond = f(gmax) <= f(tolerance_grad)
            else:
                self._passes.move(self.arena.data, self.arena.data, self._d, self._T(t))
                opt_cond = False
                if n_iter != max_iter:
                    loss = _loss(closure())
                    flat_grad = self._flat_grad()
                    gmax, _ = self._stats(flat_grad)
                    opt_cond = f(gmax) <= f(tolerance_grad)
                    ls_func_evals = 1
            current_evals += ls_func_evals
            self._func_evals += ls_func_evals

            if n_iter == max_iter:
                break
            if current_evals >= max_eval:
                break
            if opt_cond:
                break
            if f(f(dmax) * f(t)) <= f(tolerance_change):
                break
            if abs(loss - self._prev_loss) < tolerance_change:
                break
        self._t = t
        return orig_loss

    def _direction(self, g, m, coef_g):
        """``prev_flat_grad = g`` and ``d`` from the two-loop's coefficients, in one pass over
        the live history. Returns ``(g . d, max |d|)``."""
        c = self._c
        rows = 1 + 2 * (max(self._order) + 1 if self._order else 0)
        c[:rows + 3] = 0
        c[0] = coef_g
        for k in range(m):
            slot = self._slots[k]
            c[1 + 2 * slot] = self._coef[0, k]
            c[2 + 2 * slot] = self._coef[1, k]
        return self._passes.direction(g, self._R, c, rows, self._d)

    def _update_history(self, g, t):
        """torch's memory update from the new pair; fills the two-loop's inputs. Returns m."""
        order = self._order
        m = len(order)
        self._slots[:m] = order
        used = set(order)
        spare = next(r for r in range(self._H + 1) if r not in used)
        W = self._W
        ys, yy, gs_new, gy_new = self._passes.new_pair(g, self._prev, self._d, self._T(t), W)
        # every dot product of the new pair and g with the stored pairs: one pass (BLAS)
        rows = 2 * (max(order) + 1 if order else 0)
        RW = self._RW
        if rows:
            self._passes.history_dots(self._R, W, rows, RW)
        # RW[2 * slot] = s_slot . (s, y, g), RW[2 * slot + 1] = y_slot . (s, y, g)
        ys_exact = ys
        ys = self._f(ys)
        if ys > self._f(1e-10):
            for r in order:
                self._SY[spare, r] = RW[2 * r + 1, 0]
                self._SY[r, spare] = RW[2 * r, 1]
                self._YY[spare, r] = self._YY[r, spare] = RW[2 * r + 1, 1]
            self._SY[spare, spare] = ys_exact
            self._YY[spare, spare] = yy
            self._rho[spare] = self._f(1.0 / ys)
            self._H_diag = self._f(ys / self._f(yy))
            self._passes.copy(self._s(spare), W[0])
            self._passes.copy(self._y(spare), W[1])
            gs = [float(RW[2 * r, 2]) for r in order] + [gs_new]
            gy = [float(RW[2 * r + 1, 2]) for r in order] + [gy_new]
            order.append(spare)
            if len(order) > self._H:
                order.pop(0)
                gs.pop(0)
                gy.pop(0)
            m = len(order)
            self._gs[:m] = gs
            self._gy[:m] = gy
        else:
            self._gs[:m] = [RW[2 * r, 2] for r in order]
            self._gy[:m] = [RW[2 * r + 1, 2] for r in order]
        self._slots[:m] = order
        return m

    def _sync(self):
        self._reconcile()
        if len(self.param_groups) != 1:
            raise RuntimeError(f"Expected exactly one param_group, but got "
                               f"{len(self.param_groups)}")
        group = self.param_groups[0]
        self._check_group(group, index=0)
        if int(group["history_size"]) != self._H:
            self._resize_history(int(group["history_size"]))
        self._dirty[0] = False

    # -- line search ---------------------------------------------------------------
    def _strong_wolfe(self, closure, t, f, gtd, tolerance_change, c1=1e-4, c2=0.9, max_ls=25):
        """torch's ``_strong_wolfe`` (lswolfe.lua) with the arena as ``x``.

        ``g`` (the gradient at the start) is ``self._prev``, which holds it and is
        not written during the search; gradients kept across evaluations are
        copied into a pool of two preallocated buffers (at most one is held
        when a new copy is made).
        """
        arena = self.arena
        if self._x_init is None:
            self._x_init = self._passes.zeros(arena.size)
            self._pool = [self._passes.zeros(arena.size) for _ in range(2)]
        self._passes.copy(self._x_init, arena.data)
        d = self._d
        passes = self._passes
        T = self._T
        fl = self._f

        def clone(g, keep):
            # torch's g.clone(): a copy that later evaluations do not overwrite, in a
            # pool buffer other than the one still held in ``keep``
            for buf in self._pool:
                if buf is not keep:
                    passes.copy(buf, g)
                    return buf

        def evaluate(step):
            passes.move(arena.data, self._x_init, d, T(step))
            loss = _loss(closure())
            return loss, self._flat_grad()

        return strong_wolfe(evaluate, lambda g: fl(self._dot(g, d)), clone, self._prev, t, f,
                            gtd, fl(self._stats(d)[0]), tolerance_change, c1, c2, max_ls, fl)


def _loss(value):
    """The closure's loss as a float: a number, or a 1-element array (torch: any 1-element tensor)."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"the closure must return a scalar loss, got an array of shape "
                             f"{value.shape}")
        return float(value.reshape(-1)[0])
    return float(value)
