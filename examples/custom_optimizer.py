"""A custom optimizer written torch's way: subclass ``Optimizer``, write ``step()`` in Python.

This is how torch's documentation teaches custom optimizers, and it works the
same here: call ``super().__init__(params, defaults)``, then in ``step()`` loop
over ``self.param_groups`` and their ``"params"``, skip parameters whose
``p.grad`` is None, keep per-parameter buffers in ``self.state[p]`` (a dict,
filled lazily the first time ``len(state) == 0``), and update the values in
place through ``p.data`` (``p.data -= ...`` or ``p.data[...] = ...``: each
``p.data`` is a view into the optimizer's flat arena, so rebinding it to a
new array would not change the parameter). ``state_dict()`` and
``load_state_dict()`` come from the base class and save ``self.state``.

The script implements plain Adam this way (torch's single-tensor formula),
fits a least-squares linear regression with it, checks that its trajectory is
that of the built-in ``numbaopt.optim.Adam`` (float64, to ~1e-12), and shows a
``state_dict()`` / ``load_state_dict()`` round trip.

When to use this path: it runs Python and NumPy per parameter per step, so it
is slow (tens of microseconds per parameter, where the built-in optimizers
step the whole arena in one compiled call). It is the escape hatch for ideas
that are not elementwise: anything that needs a whole tensor at once (norms,
matrix factors, orthogonalisation, line searches, closures evaluated several
times). For an elementwise update, subclass ``ElementwiseOptimizer`` instead
and get a compiled kernel (see ``examples/lion.py``).

Run it with ``python examples/custom_optimizer.py``; ``--plot PATH`` writes the loss
curves of both optimizers to a PNG (needs matplotlib).
"""

import math

import numpy as np

import numbaopt
from numbaopt import optim


def lerp(start, end, weight):
    """torch.lerp: ``start + weight * (end - start)``, from the other end when ``weight >= 0.5``."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


class PyAdam(optim.Optimizer):
    """Adam (Kingma & Ba 2014) in plain Python and NumPy, torch.optim.Adam's numbers.

    Per parameter, at its step ``t``, with ``g`` its gradient::

        g = g + weight_decay * p
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1**t) * (m / (sqrt(v) / sqrt(1 - beta2**t) + eps))
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:          # no gradient: no state change, no step
                    continue
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad + group["weight_decay"] * p.data
                state = self.state[p]
                if len(state) == 0:         # lazy state initialisation
                    state["step"] = 0
                    state["exp_avg"] = np.zeros_like(p.data)
                    state["exp_avg_sq"] = np.zeros_like(p.data)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                # a Python number, as torch's _get_value(step): a loaded checkpoint or torch
                # state_dict holds a 0-d array, and NumPy's pow is not Python's to the last bit
                t = float(state["step"])

                exp_avg[...] = lerp(exp_avg, grad, 1 - beta1)
                exp_avg_sq *= beta2
                exp_avg_sq += (1 - beta2) * grad * grad
                bias_correction1 = 1 - beta1 ** t
                bias_correction2 = 1 - beta2 ** t
                step_size = group["lr"] / bias_correction1
                denom = np.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + group["eps"]
                p.data -= step_size * (exp_avg / denom)     # in place: p.data is the arena
        return loss


# -- a least-squares problem: minimise mean((x @ w + b - y)^2) over w and b ---------------

rng = np.random.default_rng(0)
X = rng.standard_normal((64, 5))
Y = X @ np.array([1.5, -2.0, 0.5, 3.0, -1.0]) + 0.7 + 0.1 * rng.standard_normal(64)


def loss_and_grads(w, b):
    r = X @ w + b - Y
    return np.mean(r * r), 2 * X.T @ r / len(Y), 2 * np.mean(r)


def make_params():
    w = numbaopt.Parameter(np.zeros(5))
    b = numbaopt.Parameter(np.zeros(()))     # a 0-d parameter
    return w, b


def make_optimizer(cls, w, b):
    # two groups: weight decay on the weights only
    return cls([{"params": [w], "weight_decay": 1e-3}, {"params": [b]}], lr=0.05)


def train(opt, w, b, steps, first=0, log=False, losses=None):
    """``steps`` steps; the bias gets no gradient before step 10. Returns the trajectory
    (and appends each step's loss to ``losses`` when given)."""
    trajectory = []
    for k in range(first, first + steps):
        loss, gw, gb = loss_and_grads(w.data, b.data)
        if losses is not None:
            losses.append(loss)
        opt.zero_grad()
        w.grad = gw
        b.grad = gb if k >= 10 else None     # p.grad is None: the step skips b
        opt.step()
        if log and (k + 1) % 50 == 0:
            print(f"step {k + 1:3d}  loss {loss:.6f}")
        trajectory.append(np.concatenate([w.data.ravel(), b.data.ravel()]))
    return np.array(trajectory)


def main(plot=None):
    print("PyAdam (Python step()) on least squares, 5 weights and a bias, float64:")
    w, b = make_params()
    opt = make_optimizer(PyAdam, w, b)
    py_losses, builtin_losses = [], []
    ours = train(opt, w, b, 200, log=True, losses=py_losses)
    fitted = np.linalg.lstsq(np.c_[X, np.ones(len(Y))], Y, rcond=None)[0]
    print(f"distance to the least-squares solution (weight decay 1e-3 moves it a little): "
          f"{np.abs(ours[-1] - fitted).max():.1e}")

    w2, b2 = make_params()
    builtin = train(make_optimizer(optim.Adam, w2, b2), w2, b2, 200, losses=builtin_losses)
    diff = np.abs(ours - builtin).max()
    print(f"max |PyAdam - numbaopt.optim.Adam| over 200 steps: {diff:.1e}")
    assert diff <= 1e-12 * np.abs(builtin).max(), diff

    # state_dict(): torch's format, every array a copy
    sd = opt.state_dict()
    print(f"state_dict: state of parameters {sorted(sd['state'])}, "
          f"keys {sorted(sd['state'][0])}, step {sd['state'][0]['step']}")
    sd["state"][0]["exp_avg"][...] = 0.0      # changing the copy leaves the optimizer alone
    assert np.all(opt.state[w]["exp_avg"] != 0.0)

    # load it into a fresh optimizer over a copy of the parameters: both continue alike
    w3, b3 = make_params()
    w3.data, b3.data = w.data, b.data
    opt3 = make_optimizer(PyAdam, w3, b3)
    sd = opt.state_dict()
    opt3.load_state_dict(sd)
    sd["state"][0]["exp_avg"][...] = 0.0      # load_state_dict copied it in, too
    assert np.all(opt3.state[w3]["exp_avg"] != 0.0)
    same = np.array_equal(train(opt, w, b, 20, first=200), train(opt3, w3, b3, 20, first=200))
    print(f"load_state_dict round trip: the next 20 steps identical: {same}")
    assert same

    if plot:
        from _plotting import plot_curves     # examples/_plotting.py, beside this script
        plot_curves(plot, "Adam(lr=0.05) on least squares: a Python step() and the built-in",
                    {"MSE loss": {"PyAdam (Python step())": py_losses,
                                  "numbaopt.optim.Adam": builtin_losses}}, log=("MSE loss",))


if __name__ == "__main__":
    from _plotting import ArgumentParser
    main(plot=ArgumentParser(__doc__).parse_args().plot)
