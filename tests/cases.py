"""The optimizer cases every backend is checked on: one table, shared by the tests
and by scripts/make_reference_data.py (which records torch's numbers for it).

Each case has two parameter groups with 0-d, zero-size and ordinary shapes, and
a gradient schedule in which some parameters have no gradient (None) on some
steps, including the very first ones.
"""

import numpy as np

STEPS = 32
GROUP_SHAPES = ([(3, 4), (), (0,)], [(5,), (2, 3), ()])
DTYPES = ("float64", "float32")

# name: (optimizer, constructor kwargs, overrides for group 1)
CASES = {
    "sgd": ("SGD", dict(lr=0.05), dict(lr=0.1)),
    "sgd_momentum": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.01),
                     dict(momentum=0.5, weight_decay=0)),
    "sgd_nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
                     dict(lr=0.02)),
    "sgd_maximize": ("SGD", dict(lr=0.05, momentum=0.8, maximize=True), dict(momentum=0)),
    "adam": ("Adam", dict(lr=0.01), dict(lr=0.05, betas=(0.8, 0.99))),
    "adam_amsgrad_wd": ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, eps=1e-6),
                        dict(weight_decay=0)),
    "adam_maximize_lowbeta": ("Adam", dict(lr=0.02, betas=(0.3, 0.4), maximize=True),
                              dict(amsgrad=True)),
    "adamw": ("AdamW", dict(lr=0.01), dict(weight_decay=0.5)),
    "adamw_amsgrad": ("AdamW", dict(lr=0.02, amsgrad=True, weight_decay=0.1), dict(lr=0.005)),
    "rmsprop": ("RMSprop", dict(lr=0.01), dict(lr=0.02, alpha=0.9)),
    "rmsprop_centered_momentum": ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True,
                                                  weight_decay=0.1), dict(centered=False)),
    "rmsprop_maximize_lowalpha": ("RMSprop", dict(lr=0.01, alpha=0.3, centered=True, maximize=True),
                                  dict(momentum=0.5)),
    "adagrad": ("Adagrad", dict(lr=0.1), dict(lr=0.05)),
    "adagrad_decay": ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1,
                                      initial_accumulator_value=0.2, eps=1e-6),
                      dict(maximize=True)),
}


def shapes():
    return [s for group in GROUP_SHAPES for s in group]


def has_grad(step, i):
    """Whether parameter ``i`` has a gradient at ``step`` (0-based).

    Parameter 4 gets none for its first three steps; others skip now and then.
    """
    if i == 4 and step < 3:
        return False
    return (step + 2 * i) % 7 != 3


def make_inputs(case, dtype):
    """Deterministic initial values and gradients (None where there is no gradient)."""
    seed = sum(map(ord, case)) + (0 if dtype == "float64" else 1)
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes()]
    grads = [[rng.standard_normal(s).astype(dtype) if has_grad(k, i) else None
              for i, s in enumerate(shapes())] for k in range(STEPS)]
    return init, grads


def groups_of(items, case):
    """Split a flat list (parameters) into the case's two groups, with options."""
    _, _, overrides = CASES[case]
    n0 = len(GROUP_SHAPES[0])
    return [{"params": items[:n0]}, dict({"params": items[n0:]}, **overrides)]
