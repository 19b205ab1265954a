"""SparseAdam's test cases, torch's numbers for them, and a NumPy reference.

    python scripts/make_sparse_adam_reference.py      # needs torch==2.13.0 (CPU)

writes tests/data/sparse_adam_reference.npz, which tests/test_sparse_adam.py
and tests/cuda/test_sparse_adam_cuda.py compare against when torch is not
importable (and alongside a live run when it is). The tests import CASES,
make_inputs, run_torch and NumpySparseAdam from here.

Each case has two parameter groups (2-D, 1-D, 3-D, zero-width-row and 0-d
parameters) and a schedule of row-sparse gradients over STEPS steps: indices
drawn with replacement (duplicates) and unsorted, some gradients empty (no
rows: the step still counts), some parameters without a gradient on some
steps, including the first ones, and the 0-d parameter never with one.
"""

import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "sparse_adam_reference.npz"

STEPS = 12
DTYPES = ("float64", "float32")
GROUP_SHAPES = ([(6, 3), (5,)], [(4, 2, 2), (3, 0), ()])

# name: (constructor kwargs, overrides for group 1). torch's registry
# (optim_inputs_func_sparseadam): default, non-default lr, Tensor lr, maximize;
# "tensor_lr" is a float32 0-d array lr, torch.tensor(0.001) on the torch side.
CASES = {
    "default": ({}, dict(lr=5e-4)),
    "non_default_lr": (dict(lr=0.01), dict(lr=0.005)),
    "tensor_lr": (dict(lr=np.array(0.001, dtype=np.float32)), dict(lr=0.002)),
    "maximize": (dict(maximize=True), dict(lr=5e-4)),
    "betas_eps": (dict(lr=0.02, betas=(0.5, 0.8), eps=1e-3), dict(betas=(0.0, 0.3),
                                                                  maximize=True)),
}


def shapes():
    return [s for group in GROUP_SHAPES for s in group]


def make_inputs(case, dtype, steps=STEPS):
    """``(init, grads)``: initial values and, per step, per parameter, ``None`` or
    ``(indices, values)`` (int64 row indices, values of the parameter's dtype)."""
    seed = sum(map(ord, case)) + (0 if dtype == "float64" else 7)
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes()]
    grads = []
    for k in range(steps):
        row = []
        for i, s in enumerate(shapes()):
            if len(s) == 0 or (i == 1 and k < 2) or (k + 2 * i) % 5 == 3:
                row.append(None)
                continue
            nnz = 0 if (k + i) % 7 == 4 else int(rng.integers(1, 9))
            indices = rng.integers(0, s[0], nnz).astype(np.int64)
            values = rng.standard_normal((nnz,) + s[1:]).astype(dtype)
            row.append((indices, values))
        grads.append(row)
    return init, grads


def groups_of(items, case):
    _, overrides = CASES[case]
    n0 = len(GROUP_SHAPES[0])
    return [{"params": items[:n0]}, dict({"params": items[n0:]}, **overrides)]


def torch_kwargs(kwargs):
    import torch
    return {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


def run_torch(case, dtype, steps=STEPS):
    """torch.optim.SparseAdam on the case: ``{"traj": (steps, n), "state/<i>/<key>": ...}``."""
    import torch
    kwargs, _ = CASES[case]
    init, grads = make_inputs(case, dtype, steps)
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = torch.optim.SparseAdam(groups_of(ts, case), **torch_kwargs(kwargs))
    traj = []
    for k in range(steps):
        for t, g in zip(ts, grads[k]):
            t.grad = None if g is None else torch.sparse_coo_tensor(
                torch.tensor(g[0]).reshape(1, -1), torch.tensor(g[1]), t.shape,
                check_invariants=False)
        opt.step()
        traj.append(np.concatenate([t.detach().numpy().reshape(-1) for t in ts]))
    out = {"traj": np.array(traj)}
    for i, entry in opt.state_dict()["state"].items():
        out[f"state/{i}/step"] = np.array(entry["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"state/{i}/{key}"] = entry[key].numpy()
    return out


class NumpySparseAdam:
    """torch's functional ``sparse_adam`` in plain NumPy (one group), the tests' oracle."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
        self.params = params
        self.lr, self.betas, self.eps, self.maximize = lr, betas, eps, maximize
        self.state = [None] * len(params)

    def step(self, grads):
        beta1, beta2 = self.betas
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            if self.state[i] is None:
                self.state[i] = [0, np.zeros_like(p), np.zeros_like(p)]
            st = self.state[i]
            st[0] += 1
            indices, values = g
            T = p.dtype.type
            values = np.asarray(values, dtype=p.dtype)
            if self.maximize:
                values = -values
            rows, first = [], {}
            summed = []
            for k, r in enumerate(indices):   # coalesce: in order of appearance
                if r in first:
                    summed[first[r]] = summed[first[r]] + values[k]
                else:
                    first[r] = len(rows)
                    rows.append(r)
                    summed.append(values[k].copy())
            if not rows or p[0].size == 0:
                continue
            rows = np.array(rows)
            g = np.array(summed)
            m_old, v_old = st[1][rows], st[2][rows]
            dm = (g - m_old) * T(1 - beta1)
            dv = (g * g - v_old) * T(1 - beta2)
            st[1][rows] = m_old + dm
            st[2][rows] = v_old + dv
            bc1 = 1 - beta1 ** st[0]
            bc2 = 1 - beta2 ** st[0]
            lr = self.lr
            if isinstance(lr, np.ndarray) and lr.dtype == np.float32:
                step_size = np.float32(lr) * np.float32(np.sqrt(bc2)) / np.float32(bc1)
            else:
                step_size = float(lr) * np.sqrt(bc2) / bc1
            p[rows] = p[rows] + T(-step_size) * ((dm + m_old) / (np.sqrt(dv + v_old) + T(self.eps)))



def main():
    import torch
    torch.use_deterministic_algorithms(True)
    data = {"torch_version": np.array(torch.__version__)}
    for case in CASES:
        for dtype in DTYPES:
            for key, value in run_torch(case, dtype).items():
                data[f"{case}/{dtype}/{key}"] = value
    np.savez_compressed(OUT, **data)
    print(f"wrote {len(data)} arrays to {OUT} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
