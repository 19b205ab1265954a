"""The data-parallel problem shared by the MPI scripts (run under mpiexec) and by
tests/test_distributed.py (the single-process reference).

A least-squares model with five parameters in two groups, a 0-d and a
zero-size one among them, so the arena (21 elements) is cut inside a
parameter by two and by three ranks. Every gradient is a mean over the batch,
so the mean of the ranks' gradients on equal parts of a batch is the gradient
of the whole batch.
"""

import numpy as np

import numbaopt
from numbaopt import optim, utils

SHAPES = [(4, 3), (3,), (), (0,), (5,)]        # W, b, s, e, V
GROUPS = [[0, 1], [2, 3, 4]]
PER_RANK = 6                                   # samples per rank per step
STEPS = 8
LR_CHANGE_AT = 4                               # every group's lr is halved before this step

# name: (optimizer, constructor kwargs, overrides for group 1)
CASES = {
    "sgd_momentum": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01), dict(lr=0.1)),
    "adam": ("Adam", dict(lr=0.01, amsgrad=True), dict(betas=(0.8, 0.99))),
    "adagrad": ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1), dict(lr=0.05)),
    "rmsprop": ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True), dict(centered=False)),
    # per-parameter scalar state (mu_product; eta and mu), which shards split with the arena
    "nadam": ("NAdam", dict(lr=0.01, momentum_decay=0.05), dict(decoupled_weight_decay=True,
                                                            weight_decay=0.1)),
    "asgd": ("ASGD", dict(lr=0.05, t0=2, lambd=0.01), dict(lr=0.02)),
}


def initial_values(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for shape in SHAPES]


def make_optimizer(case, values, device="cpu"):
    name, kwargs, overrides = CASES[case]
    params = [numbaopt.Parameter(np.array(v, dtype=np.float64)) for v in values]
    groups = [{"params": [params[i] for i in GROUPS[0]]},
              dict(overrides, params=[params[i] for i in GROUPS[1]])]
    if device != "cpu":
        kwargs = dict(kwargs, device=device)
    return getattr(optim, name)(groups, **kwargs), params


def host(array):
    """A host copy of a GPU array; host arrays as they are."""
    return array.copy_to_host() if hasattr(array, "copy_to_host") else array


def batch(step, nranks):
    """The whole batch of ``step``: ``nranks * PER_RANK`` samples (x, y, z)."""
    rng = np.random.default_rng(1000 + step)
    n = nranks * PER_RANK
    return rng.standard_normal((n, 4)), rng.standard_normal((n, 3)), rng.standard_normal((n, 5))


def part(data, rank, nranks):
    """Rank ``rank``'s equal, contiguous part of a batch."""
    return tuple(a[rank * PER_RANK:(rank + 1) * PER_RANK] for a in data)


def gradients(values, data):
    """Gradients of mean(0.5 |x W + b + s - y|^2 + 0.5 |V - z|^2) over the samples."""
    W, b, s, e, V = values
    x, y, z = data
    r = x @ W + b + s - y
    n = x.shape[0]
    return [x.T @ r / n, r.sum(0) / n, np.array(r.sum() / n), np.zeros(0), V - z.mean(0)]


def missing(step, rank):
    """Parameters without a gradient on ``rank`` at ``step`` (the partial-gradient runs)."""
    rule = {(0, 0): {2}, (1, 1): {1}, (2, 0): {0, 4}, (2, 1): {4}, (3, 1): {0, 1, 2, 3, 4},
            (5, 0): {3}, (6, 1): {2}}
    return rule.get((step, rank), set())


def set_gradients(params, step, rank, nranks, partial):
    """What one rank does each step: its part's gradients, None where ``missing``."""
    data = part(batch(step, nranks), rank, nranks)
    for i, (p, g) in enumerate(zip(params, gradients([host(p.data) for p in params], data))):
        p.grad = None if partial and i in missing(step, rank) else g


def reference_gradients(params, step, nranks, partial):
    """The single-process equivalent: the whole batch's gradients, or, with missing
    ones, torch DDP's rule (sum of the ranks' gradients, zero where None, / nranks;
    None where no rank has one)."""
    values = [p.data for p in params]
    if not partial:
        for p, g in zip(params, gradients(values, batch(step, nranks))):
            p.grad = g
        return
    whole = batch(step, nranks)
    total = [np.zeros(p.shape) for p in params]
    seen = [False] * len(params)
    for r in range(nranks):
        for i, g in enumerate(gradients(values, part(whole, r, nranks))):
            if i not in missing(step, r):
                total[i] += g
                seen[i] = True
    for p, t, has in zip(params, total, seen):
        p.grad = t / nranks if has else None


def _inf_norm(opt, params):
    # torch refuses the inf-norm of a zero-size gradient (no identity): e has none here
    params[3].grad = None
    return utils.clip_grad_norm_(opt, 0.05, norm_type="inf")


# Clipping after averaging (numbaopt.utils given a DistributedOptimizer synchronizes first):
# name -> what one step does between the gradients and step(). Every bound is small
# enough to clip at every step.
CLIPS = {
    "norm": lambda opt, params: utils.clip_grad_norm_(opt, 0.5),
    "inf_norm": _inf_norm,
    "one_norm": lambda opt, params: utils.clip_grad_norm_(opt, 0.3, norm_type=1.0),
    "value": lambda opt, params: utils.clip_grad_value_(opt, 0.05),
}


def change_lr(optimizer, step):
    if step == LR_CHANGE_AT:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * 0.5


def reference_run(case, nranks, partial, steps=STEPS, first=0, optimizer=None, params=None,
                  clip=None, norms=None):
    """Single-process training; returns (optimizer, params).

    ``clip`` names a CLIPS entry applied before each step; ``norms`` (a list) collects
    what it returns.
    """
    if optimizer is None:
        optimizer, params = make_optimizer(case, initial_values())
    for step in range(first, steps):
        change_lr(optimizer, step)
        optimizer.zero_grad()
        reference_gradients(params, step, nranks, partial)
        if clip is not None:
            total = CLIPS[clip](optimizer, params)
            if norms is not None:
                norms.append(None if total is None else float(total))
        optimizer.step()
    return optimizer, params
