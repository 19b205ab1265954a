"""The strong-Wolfe line search of torch.optim.LBFGS (minFunc's lswolfe.lua), unchanged.

``strong_wolfe`` is torch's ``_strong_wolfe`` with the vector operations passed
in, so the caller decides where the vectors live and when a gradient is copied.
"""

import math

__all__ = ["strong_wolfe"]


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    # torch's port of polyinterp.lua, unchanged
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def strong_wolfe(evaluate, directional, clone, g, t, f, gtd, d_norm, tolerance_change,
                 c1=1e-4, c2=0.9, max_ls=25, fl=float):
    """Find a step length ``t`` along ``d`` that satisfies the strong Wolfe conditions.

    ``evaluate(t)`` sets the parameters to ``x + t d``, evaluates the closure and returns
    ``(loss, gradient)``; ``directional(g)`` is ``g . d`` as torch holds it;
    ``clone(g, keep)`` copies a gradient that later evaluations must not overwrite,
    into a buffer other than ``keep``. ``g``, ``f`` and ``gtd`` describe the start,
    ``d_norm`` is ``max |d|``. ``fl`` rounds to the parameters' dtype: torch's ``gtd``
    is a tensor of that dtype, so its sufficient-decrease test is computed in it.
    Returns ``(f_new, g_new, t, evaluations)``.
    """

    def armijo_fails(f_new, t):
        # torch: f_new > f + c1 * t * gtd, with gtd a 0-d tensor of the parameters' dtype
        return fl(f_new) > fl(fl(f) + fl(fl(c1 * t) * gtd))

    f_new, g_new = evaluate(t)
    ls_func_evals = 1
    gtd_new = directional(g_new)

    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if armijo_fails(f_new, t) or (ls_iter > 1 and f_new >= f_prev):
            bracket = [t_prev, t]
            bracket_f = [f_prev, f_new]
            bracket_g = [g_prev, clone(g_new, g_prev)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket = [t]
            bracket_f = [f_new]
            bracket_g = [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket = [t_prev, t]
            bracket_f = [f_prev, f_new]
            bracket_g = [g_prev, clone(g_new, g_prev)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                               bounds=(min_step, max_step))
        t_prev = tmp
        f_prev = f_new
        g_prev = clone(g_new, None)   # the old g_prev is dropped: its buffer may be reused
        gtd_prev = gtd_new
        f_new, g_new = evaluate(t)
        ls_func_evals += 1
        gtd_new = directional(g_new)
        ls_iter += 1

    if ls_iter == max_ls:
        bracket = [0, t]
        bracket_f = [f, f_new]
        bracket_g = [g, g_new]

    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                               bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = evaluate(t)
        ls_func_evals += 1
        gtd_new = directional(g_new)
        ls_iter += 1

        if armijo_fails(f_new, t) or f_new >= bracket_f[low_pos]:
            bracket[high_pos] = t
            bracket_f[high_pos] = f_new
            bracket_g[high_pos] = clone(g_new, bracket_g[low_pos])
            bracket_gtd[high_pos] = gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos] = bracket[low_pos]
                bracket_f[high_pos] = bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            bracket[low_pos] = t
            bracket_f[low_pos] = f_new
            bracket_g[low_pos] = clone(g_new, bracket_g[high_pos])
            bracket_gtd[low_pos] = gtd_new

    t = bracket[low_pos]
    return bracket_f[low_pos], bracket_g[low_pos], t, ls_func_evals

# -- misc ----------------------------------------------------------------------
