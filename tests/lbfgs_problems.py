"""The LBFGS test problems, run through numbaopt and through torch.optim.LBFGS.

Shared by tests/test_lbfgs.py and scripts/make_lbfgs_reference.py (which
records torch's trajectories in tests/data/lbfgs_reference.npz). Each problem
is a loss and its gradient over a flat float64 vector, split into several
parameters so the arena holds more than one. The starting points are chosen
where torch's own trajectory is stable: a 1e-15 change of the start moves
torch's iterates by less than 1e-12 over these steps (far from the optimum of
a 1000-D Rosenbrock, LBFGS amplifies rounding chaotically, in torch as here).
"""

import numpy as np

def _rosen(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def _rosen_grad(x):
    g = np.zeros_like(x)
    g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return g


def _least_squares():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((120, 60)))
    v, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    A = (u * np.logspace(0, 3, 60)) @ v.T            # condition number 1e3
    b = rng.standard_normal(120)

    def f(x):
        r = A @ x - b
        return 0.5 * float(r @ r), A.T @ r
    return f, rng.standard_normal(60)


def _logistic():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 24))
    w_true = rng.standard_normal(24)
    y = np.where(X @ w_true + 0.5 * rng.standard_normal(300) > 0, 1.0, -1.0)

    def f(w):
        z = y * (X @ w)
        loss = float(np.mean(np.logaddexp(0.0, -z))) + 1e-3 * float(w @ w)
        grad = X.T @ (-y / (1.0 + np.exp(z))) / len(y) + 2e-3 * w
        return loss, grad
    return f, 0.1 * rng.standard_normal(24)


def _rosenbrock(n):
    rng = np.random.default_rng(0)
    x0 = np.array([-1.2, 1.0]) if n == 2 else 1 + 0.2 * rng.uniform(-1, 1, n)
    return (lambda x: (_rosen(x), _rosen_grad(x))), x0


#: name -> (objective factory, parameter split sizes)
PROBLEMS = {
    "rosenbrock2": (lambda: _rosenbrock(2), [2]),
    "rosenbrock1000": (lambda: _rosenbrock(1000), [400, 100, 500]),
    "least_squares": (_least_squares, [20, 40]),
    "logistic": (_logistic, [20, 4]),
}

_KWARGS = {
    "plain": {},
    "wolfe": {"line_search_fn": "strong_wolfe"},
    "h5lr": {"history_size": 5, "lr": 0.5, "max_iter": 8},            # the ring wraps
    "wolfe5": {"line_search_fn": "strong_wolfe", "history_size": 5, "max_iter": 5},
}

# Steps per case: as many as keep torch's own trajectory stable (a 1e-15 relative change
# of the start, 1e-7 in float32, moves torch's iterates by < 1e-12, or < 2e-6 in float32,
# measured with torch 2.13). Beyond them torch disagrees with itself by more than the
# tolerance, and so would any reimplementation. least_squares-plain/wolfe in float32
# drift by 1e-6 within the first step and are left out.
_STEPS = {
    "rosenbrock2": {"plain": 1, "wolfe": 4, "h5lr": 2, "wolfe5": 4},
    "rosenbrock1000": {"plain": 4, "wolfe": 4, "h5lr": 4, "wolfe5": 4},
    "least_squares": {"plain": 2, "wolfe": 3, "h5lr": 4, "wolfe5": 4},
    "logistic": {"plain": 4, "wolfe": 4, "h5lr": 4, "wolfe5": 4},
}
_STEPS32 = {"least_squares": {"h5lr": 1, "wolfe5": 4},
            "logistic": {"plain": 4, "wolfe": 4, "h5lr": 4, "wolfe5": 4}}

#: case name -> (problem, LBFGS kwargs, dtype name, steps)
CASES = {}
for _problem, _steps in _STEPS.items():
    for _label, _n in _steps.items():
        CASES[f"{_problem}-{_label}-float64"] = (_problem, _KWARGS[_label], "float64", _n)
for _problem, _steps in _STEPS32.items():
    for _label, _n in _steps.items():
        CASES[f"{_problem}-{_label}-float32"] = (_problem, _KWARGS[_label], "float32", _n)


def _split(x, sizes):
    return np.split(x, np.cumsum(sizes)[:-1])


def objective(problem):
    """``(closure_factory, x0, sizes)``: ``closure_factory(get, set_grads)`` makes a closure."""
    make, sizes = PROBLEMS[problem]
    f, x0 = make()
    return f, x0, sizes


def run_numbaopt(case, steps=None, optimizer=None):
    """numbaopt's trajectory: ``(steps, n)`` parameters after each step, the losses, the optimizer."""
    import numbaopt
    from numbaopt.optim.lbfgs import LBFGS

    problem, kwargs, dtype, default_steps = CASES[case]
    steps = default_steps if steps is None else steps
    f, x0, sizes = objective(problem)
    params = [numbaopt.Parameter(a.astype(dtype)) for a in _split(x0, sizes)]
    opt = LBFGS(params, **kwargs) if optimizer is None else optimizer(params, kwargs)

    def closure():
        x = np.concatenate([p.data.astype(np.float64) for p in params])
        loss, grad = f(x)
        for p, g in zip(params, _split(grad, sizes)):
            p.grad = g.astype(dtype)
        return loss

    traj, losses = [], []
    for _ in range(steps):
        losses.append(float(opt.step(closure)))
        traj.append(np.concatenate([p.data for p in params]))
    return np.array(traj), np.array(losses), opt


def run_torch(case, steps=None):
    """torch.optim.LBFGS's trajectory on the same case (needs torch)."""
    import torch

    problem, kwargs, dtype, default_steps = CASES[case]
    steps = default_steps if steps is None else steps
    f, x0, sizes = objective(problem)
    params = [torch.tensor(a.astype(dtype), requires_grad=True) for a in _split(x0, sizes)]
    opt = torch.optim.LBFGS(params, **kwargs)

    def closure():
        x = np.concatenate([p.detach().numpy().astype(np.float64) for p in params])
        loss, grad = f(x)
        for p, g in zip(params, _split(grad, sizes)):
            p.grad = torch.tensor(g.astype(dtype))
        return torch.tensor(loss, dtype=torch.float64)

    traj, losses = [], []
    for _ in range(steps):
        losses.append(float(opt.step(closure)))
        traj.append(np.concatenate([p.detach().numpy().copy() for p in params]))
    state = opt.state[params[0]]
    return np.array(traj), np.array(losses), {"func_evals": state["func_evals"],
                                                "n_iter": state["n_iter"]}
