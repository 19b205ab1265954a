"""A new optimizer the fast way: Lion as an ``ElementwiseOptimizer``, compiled for CPU and GPU.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
arXiv:2302.06675) updates every element on its own, so it fits numbaopt's
elementwise path: the class below declares its options, its one state buffer
and two plain functions, ``coefficients`` (the scalars of a chunk, from the
group's options) and ``update`` (the loop over a chunk's elements). numbaopt
compiles them into one kernel that steps the whole arena per call (serial
and parallel CPU kernels, cached on disk, and the CUDA kernel for
``device="cuda"``), and the base class brings parameter groups, validation,
``state_dict``, checkpoints, schedulers and clipping. The functions may use
arithmetic, comparisons, ``abs``/``min``/``max`` and the helpers
``numbaopt.optim.elementwise`` exports (``sqrt``, ``lerp``, ``maximum``,
``clamp``): the same source compiles for the GPU, so no NumPy calls
(``np.sign`` is written as two comparisons).

The script trains a small MLP with it, checks it against a plain NumPy
implementation of the same update (float64, two parameter groups, gradients
that are None on some steps), and round-trips its state through
``state_dict()`` and through ``numbaopt.save`` / ``numbaopt.load``.

Run it with ``python examples/lion.py``; ``--plot PATH`` writes the loss curve to a
PNG (needs matplotlib).
"""

import os
import tempfile

import numpy as np

import numbaopt
from numbaopt import nn
from numbaopt.optim import ElementwiseOptimizer
from numbaopt.optim.optimizer import check_betas, check_flag, check_option


class Lion(ElementwiseOptimizer):
    """Lion, EvoLved Sign Momentum (Chen et al. 2023).

    Per element, with ``g`` the gradient (negated when ``maximize``) and ``m``
    the state "exp_avg" (zero at the start)::

        p = p * (1 - lr * weight_decay)
        c = beta1 * m + (1 - beta1) * g
        p = p - lr * sign(c)                 (sign(0) = 0)
        m = beta2 * m + (1 - beta2) * g

    Every step moves every element by ``lr`` (times the sign), so Lion wants a
    learning rate 3-10x smaller than AdamW's, and a weight decay as much larger.

    Parameters
    ----------
    params : iterable of Parameter or of dicts
    lr : float, default 1e-4
    betas : (float, float), default (0.9, 0.99)
    weight_decay : float, default 0
        Decoupled, as in AdamW.
    maximize : bool, default False
    skip_nonfinite : bool, default False
        Skip the whole step when any gradient is NaN or inf.
    device : {"cpu", "cuda"}, default "cpu"

    Examples
    --------
    >>> opt = Lion(model.parameters(), lr=1e-4, weight_decay=1e-2)
    >>> opt.zero_grad(); model.backward(criterion.backward()); opt.step()
    """

    hyperparameters = ("lr", "betas", "weight_decay", "maximize")   # h[0] .. h[4]
    _state_keys = ("exp_avg",)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *,
                 maximize=False, skip_nonfinite=False, device="cpu"):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, skip_nonfinite=skip_nonfinite, device=device)

    def _check_group(self, group, index=None, where="param group"):
        check_option(group, "lr", "Invalid learning rate", index=index, where=where)
        check_betas(group, index, where)
        check_option(group, "weight_decay", "Invalid weight_decay value", index=index,
                     where=where)
        check_flag(group, "maximize", index, where)

    # -- the rule (h: lr, beta1, beta2, weight_decay, maximize) ----------------------------

    @staticmethod
    def coefficients(h, t, s, i, T):
        lr, beta1, beta2, weight_decay = h[0], h[1], h[2], h[3]
        return (T(lr), T(beta1), T(1.0 - beta1), T(beta2), T(1.0 - beta2),
                T(1.0 - lr * weight_decay), weight_decay != 0.0, h[4] != 0.0)

    @staticmethod
    def update(lo, hi, stride, k, param, grad, exp_avg):
        lr, b1, one_minus_b1, b2, one_minus_b2, decay, weight_decay, maximize = k
        for j in range(lo, hi, stride):
            g = grad[j]
            if maximize:
                g = -g
            p = param[j]
            if weight_decay:
                p = p * decay
            m = exp_avg[j]
            c = b1 * m + one_minus_b1 * g
            if c > 0:
                p = p - lr
            elif c < 0:
                p = p + lr
            elif c != c:
                p = c            # NaN, as p - lr * sign(NaN) would be
            param[j] = p
            exp_avg[j] = b2 * m + one_minus_b2 * g


# -- a plain NumPy Lion: the oracle ------------------------------------------------------

def lion_reference(groups, defaults, grads):
    """Lion in NumPy, one parameter at a time, in the kernel's order and dtype.

    ``groups``: dicts with ``"params"`` (arrays, updated in place) and options
    (missing ones from ``defaults``); ``grads[k]``: one gradient or None per
    parameter, in group order, for step ``k``. Returns the trajectory (one row
    of all parameters, flattened, per step) and the ``exp_avg`` of each parameter.
    """
    groups = [dict(defaults, **g) for g in groups]
    exp_avg = [np.zeros_like(p) for g in groups for p in g["params"]]
    trajectory = []
    for step_grads in grads:
        i = 0
        for o in groups:
            for p in o["params"]:
                g = step_grads[i]
                if g is not None:
                    T = p.dtype.type
                    lr, (beta1, beta2), wd = o["lr"], o["betas"], o["weight_decay"]
                    g = g.astype(p.dtype)
                    if o["maximize"]:
                        g = -g
                    if wd != 0:
                        p *= T(1.0 - lr * wd)
                    c = T(beta1) * exp_avg[i] + T(1.0 - beta1) * g
                    p -= T(lr) * np.sign(c)
                    exp_avg[i] = T(beta2) * exp_avg[i] + T(1.0 - beta2) * g
                i += 1
        trajectory.append(np.concatenate([p.ravel() for o in groups for p in o["params"]]))
    return np.array(trajectory), exp_avg


def make_case(dtype, steps=25, seed=0):
    """A test problem: ``(initial arrays, groups of indices and options, defaults, grads)``.

    Two groups with different options (weight decay and ``maximize`` in one of them),
    a 0-d and a zero-size parameter, and gradients that are None on some steps.
    """
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (3,), (), (0,), (7,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    groups = [{"params": [0, 1], "weight_decay": 0.1},
              {"params": [2, 3, 4], "lr": 3e-3, "betas": (0.8, 0.9), "maximize": True}]
    defaults = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0, maximize=False)
    grads = []
    for k in range(steps):
        g = [rng.standard_normal(s).astype(dtype) for s in shapes]
        if k < 3:
            g[1] = None            # the bias has no gradient for the first three steps
        if k % 2:
            g[4] = None            # ... and this one every other step
        grads.append(g)
    return init, groups, defaults, grads


def run_lion(init, groups, defaults, grads, parallel=False, device="cpu"):
    """The same problem with :class:`Lion`: ``(optimizer, params, trajectory)``."""
    params = [numbaopt.Parameter(a.copy()) for a in init]
    opt = Lion([dict(g, params=[params[i] for i in g["params"]]) for g in groups],
               device=device, **defaults)
    if parallel:                   # force the prange kernel, whatever the arena's size
        opt.parallel_threshold = 0
        opt._sync()
    trajectory = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        opt.step()
        trajectory.append(np.concatenate([p.numpy().ravel() for p in params]))
    return opt, params, np.array(trajectory)


def reference_difference(dtype, parallel=False, steps=25, seed=0):
    """Largest |Lion - NumPy reference| over trajectory and state, relative to its scale."""
    init, groups, defaults, grads = make_case(dtype, steps, seed)
    opt, params, ours = run_lion(init, groups, defaults, grads, parallel)
    ref_groups = [dict(g, params=[init[i].copy() for i in g["params"]]) for g in groups]
    theirs, exp_avg = lion_reference(ref_groups, defaults, grads)
    diff = np.abs(ours - theirs).max() / np.abs(theirs).max()
    for p, m in zip(params, exp_avg):
        if m.size:
            diff = max(diff, np.abs(opt.state[p]["exp_avg"] - m).max() / np.abs(m).max())
    return diff


# -- a small MLP, trained with Lion -------------------------------------------------------

class MLP(nn.Module):
    def __init__(self, rng):
        self.hidden = nn.Linear(2, 32, rng=rng)
        self.relu = nn.ReLU()
        self.out = nn.Linear(32, 1, rng=rng)

    def forward(self, x):
        return self.out(self.relu(self.hidden(x)))

    def backward(self, grad_output):
        return self.hidden.backward(self.relu.backward(self.out.backward(grad_output)))


def make_optimizer(model):
    """Lion with decoupled weight decay on the weights, none on the biases."""
    named = list(model.named_parameters())
    return Lion([{"params": [p for n, p in named if "weight" in n], "weight_decay": 0.1},
                 {"params": [p for n, p in named if "bias" in n]}], lr=3e-3)


def main(plot=None):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (256, 2)).astype(np.float32)
    y = (np.sin(x[:, :1]) * np.cos(x[:, 1:])).astype(np.float32)
    criterion = nn.MSELoss()

    losses = []

    def train(model, opt, steps, log=False):
        for step in range(1, steps + 1):
            loss = criterion(model(x), y)
            opt.zero_grad()
            model.backward(criterion.backward())
            opt.step()
            if log:
                losses.append(loss.item())
            if log and (step == 1 or step % 100 == 0):
                print(f"step {step:3d}  loss {loss.item():.4f}")
        return np.concatenate([p.data.ravel() for p in model.parameters()])

    print("Lion on a 2-32-1 ReLU MLP fitting sin(x) cos(y), float32, full batch:")
    model = MLP(rng)
    opt = make_optimizer(model)
    train(model, opt, 400, log=True)

    # the compiled kernel against the NumPy oracle (float64: agreement to rounding)
    diff = reference_difference(np.float64)
    print(f"NumPy reference, float64, 2 groups, grads None on some steps: "
          f"max relative difference {diff:.1e}")
    assert diff <= 1e-12, diff

    # state_dict(): torch's format; loaded into a fresh optimizer, training continues alike
    sd = opt.state_dict()
    print(f"state_dict: {len(sd['state'])} parameters with state, keys "
          f"{sorted(sd['state'][0])}, step {float(sd['state'][0]['step']):g}")
    twin = MLP(rng)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.data = p.data
    twin_opt = make_optimizer(twin)
    twin_opt.load_state_dict(sd)
    same = np.array_equal(train(model, opt, 20), train(twin, twin_opt, 20))
    print(f"load_state_dict round trip: the next 20 steps identical: {same}")
    assert same

    # numbaopt.save / numbaopt.load: parameters and optimizer state in one checkpoint
    fresh = MLP(np.random.default_rng(1))          # other weights, no state yet
    fresh_opt = make_optimizer(fresh)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lion.npz")
        numbaopt.save(path, opt)
        numbaopt.load(path, fresh_opt)
    same = np.array_equal(train(model, opt, 20), train(fresh, fresh_opt, 20))
    print(f"numbaopt.save / numbaopt.load round trip: the next 20 steps identical: {same}")
    assert same

    if plot:
        from _plotting import plot_curves     # examples/_plotting.py, beside this script
        plot_curves(plot, "Lion(lr=3e-3) on a 2-32-1 ReLU MLP fitting sin(x) cos(y)",
                    {"MSE loss (full batch)": {"train": losses}}, log=("MSE loss (full batch)",))


if __name__ == "__main__":
    from _plotting import ArgumentParser
    main(plot=ArgumentParser(__doc__).parse_args().plot)
