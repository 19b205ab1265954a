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


# torch 2.13's optimizer registry (torch/testing/_internal/common_optimizers.py,
# optim_inputs_func_<name>(device="cpu")): every kwarg set, as (description, kwargs).
# test_parity.py checks this list against the registry when torch is importable.
# "tensor lr" sets (a 0-d tensor lr) are left to the tensor-hyperparameter work.
REGISTRY = {
    "Adadelta": [("default", {}), ("non-default lr", dict(lr=0.01)),
                 ("nonzero weight_decay", dict(weight_decay=0.1)), ("maximize", dict(maximize=True)),
                 ("maximize, weight_decay", dict(weight_decay=0.1, maximize=True)),
                 ("rho", dict(rho=0.95, weight_decay=0.9))],
    "Adamax": [("default", {}), ("non-default lr", dict(lr=0.1)),
               ("nonzero weight_decay", dict(weight_decay=0.1)), ("maximize", dict(maximize=True)),
               ("maximize, weight_decay", dict(weight_decay=0.1, maximize=True))],
    "NAdam": [("default", {}), ("non-default lr", dict(lr=0.001)),
              ("non-zero momentum_decay", dict(momentum_decay=0.006)),
              ("weight_decay", dict(weight_decay=0.1)),
              ("weight_decay, momentum_decay", dict(weight_decay=0.1, momentum_decay=0.006)),
              ("decoupled_weight_decay", dict(weight_decay=0.1, momentum_decay=0.006,
                                              decoupled_weight_decay=True)),
              ("maximize", dict(weight_decay=0.1, maximize=True))],
    "RAdam": [("default", {}), ("non-default lr", dict(lr=0.002)),
              ("non-default eps", dict(eps=1e-06)), ("nonzero weight_decay", dict(weight_decay=0.1)),
              ("decoupled_weight_decay", dict(weight_decay=0.1, decoupled_weight_decay=True)),
              ("maximize", dict(weight_decay=0.1, maximize=True))],
    "ASGD": [("default", {}), ("non-default lambd", dict(lambd=0.1)),
             ("non-default lr", dict(lr=0.02)), ("t0", dict(t0=100)),
             ("maximize", dict(maximize=True)), ("nonzero weight_decay", dict(weight_decay=0.1)),
             ("maximize, nonzero weight_decay", dict(weight_decay=0.1, maximize=True))],
    "Rprop": [("default", {}), ("non-default lr", dict(lr=0.0002)),
              ("non-default etas", dict(etas=(0.5, 1.5))),
              ("non-default step_sizes", dict(step_sizes=(2e-06, 100))),
              ("maximize", dict(maximize=True))],
    "SGD": [("default", {}), ("non-default lr", dict(lr=0.01)),
            ("non-zero weight_decay", dict(weight_decay=0.5)), ("momentum", dict(momentum=0.9)),
            ("maximize", dict(weight_decay=0.1, maximize=True)),
            ("dampening", dict(momentum=0.9, dampening=0.5)),
            ("weight_decay w/ momentum", dict(momentum=0.9, weight_decay=0.1)),
            ("nesterov", dict(momentum=0.9, nesterov=True, weight_decay=0.1))],
    "Adam": [("default", {}), ("non-default lr", dict(lr=0.01)),
             ("nonzero weight_decay", dict(weight_decay=0.1)),
             ("maximize", dict(weight_decay=0.1, maximize=True)),
             ("amsgrad", dict(weight_decay=0.1, amsgrad=True))],
    "AdamW": [("default", {}), ("non-default lr", dict(lr=0.01)),
              ("nonzero weight_decay", dict(weight_decay=0.1)),
              ("maximize", dict(weight_decay=0.1, maximize=True)),
              ("amsgrad", dict(weight_decay=0.1, amsgrad=True))],
    "RMSprop": [("default", {}), ("non-default lr", dict(lr=0.001)),
                ("nonzero weight_decay", dict(weight_decay=0.1)), ("maximize", dict(maximize=True)),
                ("centered", dict(weight_decay=0.1, centered=True)),
                ("maximize, weight_decay", dict(maximize=True, weight_decay=0.1)),
                ("momentum", dict(weight_decay=0.1, centered=True, momentum=0.1)),
                ("maximize, centered, weight_decay, w/ momentum",
                 dict(weight_decay=0.1, centered=True, momentum=0.1, maximize=True))],
    "Adagrad": [("default", {}), ("nonzero weight_decay", dict(weight_decay=0.1)),
                ("maximize", dict(weight_decay=0.1, maximize=True)),
                ("non-default lr", dict(lr=0.1)),
                ("initial_accumulator_value", dict(initial_accumulator_value=0.1,
                                                   weight_decay=0.1)),
                ("lr_decay", dict(lr=0.1, lr_decay=0.5, weight_decay=0.1))],
}

# The registry's defaults, for the second group's lr override below.
_DEFAULT_LR = {"Adadelta": 1.0, "Adamax": 2e-3, "NAdam": 2e-3, "RAdam": 1e-3, "ASGD": 1e-2,
               "Rprop": 1e-2, "SGD": 1e-3, "Adam": 1e-3, "AdamW": 1e-3, "RMSprop": 1e-2,
               "Adagrad": 1e-2}


def _registry_name(optimizer, description):
    slug = "".join(ch if ch.isalnum() else "_" for ch in description.lower()).strip("_")
    return f"{optimizer.lower()}/{slug}"


# Every registry set becomes a case; group 1 runs at half the lr, so two groups differ.
for _opt, _sets in REGISTRY.items():
    for _desc, _kwargs in _sets:
        _lr = _kwargs.get("lr", _DEFAULT_LR[_opt])
        CASES[_registry_name(_opt, _desc)] = (_opt, dict(_kwargs), dict(lr=_lr / 2))

# Branches the registry's 32 steps do not reach.
CASES["asgd/averaging"] = ("ASGD", dict(lr=0.05, t0=5, lambd=0.01, alpha=0.5), dict(t0=0))
CASES["nadam/low_beta"] = ("NAdam", dict(lr=0.02, betas=(0.3, 0.4), momentum_decay=0.1),
                           dict(decoupled_weight_decay=True, weight_decay=0.2))
CASES["radam/low_beta2"] = ("RAdam", dict(lr=0.02, betas=(0.8, 0.9)), dict(betas=(0.3, 0.99)))
CASES["rprop/narrow_steps"] = ("Rprop", dict(lr=0.3, etas=(0.3, 1.7), step_sizes=(0.01, 0.5)),
                               dict(maximize=True))

#: The cases the CUDA simulator runs (it runs kernels as Python threads): the hand-written
#: cases (names without "/") and every case of the optimizers that have none of those.
_HAND_WRITTEN = {CASES[c][0] for c in CASES if "/" not in c}
SIMULATOR_CASES = [c for c in CASES if "/" not in c or CASES[c][0] not in _HAND_WRITTEN]


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
