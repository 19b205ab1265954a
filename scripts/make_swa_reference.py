"""Record torch 2.13's torch.optim.swa_utils numbers for tests/test_swa_utils.py.

    python scripts/make_swa_reference.py        # needs torch==2.13.0 (CPU)

Writes tests/data/swa_reference.npz: for every AveragedModel case and both dtypes,
the averaged parameters after each of ``UPDATES`` updates of a small two-layer
model, and torch's state_dict after the last one; for every SWALR case, the
learning rate of every group after construction and after each of ``EPOCHS``
steps. The case tables and the torch drivers live here (torch is imported inside
the drivers), and the tests run the same cases on numbaopt against this file,
and against torch live when it is importable.
"""

import pathlib

import numpy as np

DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "swa_reference.npz"

DTYPES = ("float32", "float64")
#: The model: Linear(3, 4) -> ReLU -> Linear(4, 2), torch's names and shapes.
NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
SHAPES = ((4, 3), (4,), (2, 4), (2,))
UPDATES = 8

#: AveragedModel cases: name -> (keyword, averaging function). The functions are named
#: here and built by ``torch_kwargs`` / the tests, each framework's own.
AVERAGED_CASES = {
    "swa": (None, None),                                   # the default: SWA
    "swa_multi": ("multi_avg_fn", ("get_swa_multi_avg_fn",)),
    "ema_multi": ("multi_avg_fn", ("get_ema_multi_avg_fn", 0.9)),
    "ema_multi_default": ("multi_avg_fn", ("get_ema_multi_avg_fn",)),
    "ema_multi_from_end": ("multi_avg_fn", ("get_ema_multi_avg_fn", 0.25)),  # lerp weight 0.75
    "ema": ("avg_fn", ("get_ema_avg_fn", 0.9)),
    "swa_avg_fn": ("avg_fn", ("get_swa_avg_fn",)),
    "custom_avg_fn": ("avg_fn", ("custom_ema",)),
    "custom_avg_fn_counting": ("avg_fn", ("custom_swa",)),
    "custom_multi_avg_fn": ("multi_avg_fn", ("custom_multi",)),
}

EPOCHS = 30
#: SWALR cases: name -> (lr per group, SWALR keyword arguments, epochs of MultiplicativeLR(0.9)
#: before SWALR takes over).
SWALR_CASES = {
    "cos_groups": ((0.05, 0.5), dict(swa_lr=[0.01, 0.02], anneal_epochs=10), 0),
    "linear_groups": ((0.05, 0.5), dict(swa_lr=[0.01, 0.02], anneal_epochs=7,
                                        anneal_strategy="linear"), 0),
    "cos_no_anneal": ((0.05, 0.5), dict(swa_lr=0.03, anneal_epochs=0), 0),
    "linear_one_epoch_up": ((0.05, 0.5), dict(swa_lr=0.7, anneal_epochs=1,
                                              anneal_strategy="linear"), 0),
    "cos_after_multiplicative": ((0.05, 0.5), dict(swa_lr=0.01, anneal_epochs=5), 6),
    "linear_after_multiplicative": ((0.05, 0.5), dict(swa_lr=[0.01, 0.02], anneal_epochs=4,
                                                      anneal_strategy="linear"), 6),
}


def make_inputs(dtype):
    """The model's starting values and the change added before each update (NumPy)."""
    rng = np.random.default_rng(20130)
    init = [rng.uniform(-0.5, 0.5, shape).astype(dtype) for shape in SHAPES]
    noise = [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
             for _ in range(UPDATES)]
    return init, noise


def numpy_custom(name):
    """The custom averaging functions, on NumPy arrays (numbaopt's side)."""
    if name == "custom_ema":
        return lambda a, c, n: 0.75 * a + 0.25 * c
    if name == "custom_swa":
        # NumPy promotes float32 / int64 0-d array to float64 here, torch stays in float32:
        # the results differ by an ulp of the float32 average.
        return lambda a, c, n: a + (c - a) / (n + 1)

    def multi(averaged, current, n):
        for a, c in zip(averaged, current):
            a *= 0.5
            a += 0.5 * c
    return multi


def torch_custom(name):
    import torch
    if name == "custom_ema":
        return lambda a, c, n: 0.75 * a + 0.25 * c
    if name == "custom_swa":
        return lambda a, c, n: a + (c - a) / (n + 1)

    def multi(averaged, current, n):
        torch._foreach_mul_(averaged, 0.5)
        torch._foreach_add_(averaged, current, alpha=0.5)
    return multi


def build_kwargs(case, module, custom):
    """AveragedModel's keyword arguments for ``case``, from ``module`` (a swa_utils)."""
    keyword, spec = AVERAGED_CASES[case]
    if keyword is None:
        return {}
    name, *args = spec
    fn = custom(name) if name.startswith("custom") else getattr(module, name)(*args)
    return {keyword: fn}


def run_torch_averaged(case, dtype):
    """torch's AveragedModel over the case: the flat average after each update, the state_dict."""
    import torch
    from torch.optim import swa_utils

    tdtype = getattr(torch, dtype)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(3, 4, dtype=tdtype)
            self.act = torch.nn.ReLU()
            self.fc2 = torch.nn.Linear(4, 2, dtype=tdtype)

    init, noise = make_inputs(dtype)
    model = Net()
    with torch.no_grad():
        for p, value in zip(model.parameters(), init):
            p.copy_(torch.from_numpy(value))
    averaged = swa_utils.AveragedModel(model, **build_kwargs(case, swa_utils, torch_custom))
    traj = np.empty((UPDATES, sum(int(np.prod(s)) for s in SHAPES)), dtype=dtype)
    counts = np.empty(UPDATES, dtype=np.int64)
    for k in range(UPDATES):
        with torch.no_grad():
            for p, change in zip(model.parameters(), noise[k]):
                p.add_(torch.from_numpy(change))
        averaged.update_parameters(model)
        traj[k] = np.concatenate([p.detach().numpy().reshape(-1) for p in averaged.parameters()])
        counts[k] = int(averaged.n_averaged)
    state = {key: value.numpy().copy() for key, value in averaged.state_dict().items()}
    return {"traj": traj, "n_averaged": counts, "state_dict": state}


def run_torch_swalr(case):
    """torch's SWALR over the case: ``(EPOCHS + 1, groups)`` learning rates."""
    import torch
    from torch.optim.lr_scheduler import MultiplicativeLR
    from torch.optim.swa_utils import SWALR

    lrs, kwargs, before = SWALR_CASES[case]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    optimizer = torch.optim.SGD(groups, lr=lrs[0])
    scheduler = MultiplicativeLR(optimizer, lr_lambda=lambda epoch: 0.9) if before else None
    swa_scheduler = SWALR(optimizer, **kwargs)
    out = [[g["lr"] for g in optimizer.param_groups]]
    for epoch in range(EPOCHS):
        optimizer.step()
        (scheduler if epoch < before else swa_scheduler).step()
        out.append([g["lr"] for g in optimizer.param_groups])
    return np.array(out, dtype=np.float64)


def record():
    import torch
    data = {"torch_version": np.array(torch.__version__)}
    for case in AVERAGED_CASES:
        for dtype in DTYPES:
            run = run_torch_averaged(case, dtype)
            prefix = f"averaged|{case}|{dtype}|"
            data[prefix + "traj"] = run["traj"]
            data[prefix + "n_averaged"] = run["n_averaged"]
            data[prefix + "state_keys"] = np.array(list(run["state_dict"]))
            for key, value in run["state_dict"].items():
                data[prefix + "state|" + key] = value
    for case in SWALR_CASES:
        data[f"swalr|{case}"] = run_torch_swalr(case)
    np.savez_compressed(DATA, **data)
    print(f"wrote {len(data)} arrays to {DATA} (torch {torch.__version__})")


if __name__ == "__main__":
    record()
