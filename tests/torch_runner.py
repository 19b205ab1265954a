"""Run a case of tests/cases.py through torch.optim (CPU, single-tensor path).

Used live by the tests when torch is importable, and by
scripts/make_reference_data.py to record the committed reference data.
"""

import numpy as np

from cases import STEPS, CASES, groups_of, make_inputs


def run_torch(case, dtype):
    """Return ``{"traj": (STEPS, n) params after each step, "state/<i>/<key>": array}``."""
    import torch

    name, kwargs, _ = CASES[case]
    init, grads = make_inputs(case, dtype)
    params = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = getattr(torch.optim, name)(groups_of(params, case), foreach=False, **kwargs)
    traj = np.empty((STEPS, sum(a.size for a in init)), dtype=dtype)
    for k in range(STEPS):
        for p, g in zip(params, grads[k]):
            p.grad = None if g is None else torch.tensor(g)
        opt.step()
        traj[k] = np.concatenate([p.detach().numpy().reshape(-1) for p in params])
    out = {"traj": traj}
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            out[f"state/{i}/{key}"] = np.asarray(value.numpy() if torch.is_tensor(value) else value)
    return out
