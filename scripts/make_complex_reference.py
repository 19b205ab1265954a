"""Record torch 2.13's steps of complex and mixed-dtype parameters for tests/test_complex.py
and tests/test_mixed_dtypes.py.

    python scripts/make_complex_reference.py        # needs torch==2.13.0 (CPU)

Writes tests/data/complex_reference.npz. For every optimizer torch steps complex
parameters with (its registry's ``supports_complex``) and every CPU kwarg set of its
registry (tests/test_torch_optim_ported.py's ``cliquey_inputs``, without ``fused``,
as torch's own test_complex), ``steps(name)`` steps of the problem below: torch's
test_complex parameters (complex64 (10, 5), complex64 (10,), and a real float32
(10, 5) in the same optimizer), or, with ``complex128``, the same shapes in
complex128 and float64, or, with ``mixed``, complex64, float64 and float32 in one
optimizer (two arenas; not LBFGS, which takes one dtype). The loss is ``sum(w * |p - t|**2)``, whose gradient in
torch's convention (dL/dRe + i dL/dIm) is ``2 w (p - t)``. Stored: the parameters
after the last step and torch's state_dict state (complex where torch's is).
"""

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "complex_reference.npz"
sys.path.insert(0, str(ROOT / "tests"))

#: torch's optimizers with supports_complex=True (Adafactor, Muon and SparseAdam refuse them)
NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam",
         "ASGD", "Rprop", "LBFGS")
SHAPES = ((10, 5), (10,), (10, 5))
STEPS = 5
#: LBFGS's step is up to 20 iterations; after more than one step the ill-conditioned problem
#: turns rounding into visible differences (torch's own complex and view_as_real runs part
#: by 2e-4 after 5 steps), so its reference is one step
LBFGS_STEPS = 1
PRECISIONS = {"complex64": ("complex64", "complex64", "float32"),
              "complex128": ("complex128", "complex128", "float64"),
              "mixed": ("complex64", "float64", "float32")}


def kwarg_sets(name):
    """``[(desc, kwargs)]``: the registry's CPU sets, fused ones left out (as torch's test)."""
    from test_torch_optim_ported import cliquey_inputs
    return cliquey_inputs(name, skip=("fused",))


def steps(name):
    """How many steps the reference takes."""
    return LBFGS_STEPS if name == "LBFGS" else STEPS


def problem(precision, seed=0):
    """``(initial values, targets, weights)`` of the three parameters (NumPy)."""
    rng = np.random.default_rng(seed)
    values, targets, weights = [], [], []
    for shape, dtype in zip(SHAPES, PRECISIONS[precision]):
        def draw():
            x = rng.standard_normal(shape)
            if np.dtype(dtype).kind == "c":
                x = x + 1j * rng.standard_normal(shape)
            return x.astype(dtype)
        values.append(draw())
        targets.append(draw())
        weights.append((10.0 ** rng.uniform(-2, 1, shape)).astype(PRECISIONS[precision][2]))
    return values, targets, weights


def loss_and_grads(values, targets, weights):
    """``sum(w |p - t|^2)`` and its gradients ``2 w (p - t)``, in each parameter's dtype."""
    loss = 0.0
    grads = []
    for p, t, w in zip(values, targets, weights):
        d = p - t
        loss += float(np.sum(w * (d.real ** 2 + d.imag ** 2)))
        grads.append((2 * w * d).astype(p.dtype))
    return loss, grads


def run_torch(name, kwargs, precision):
    """torch's parameters and state after the reference's steps: ``(params, {(i, key): array})``.

    The gradients are ``loss_and_grads``' NumPy ones, assigned to ``p.grad``, so torch and
    numbaopt step on the same bits (autograd through ``abs`` rounds differently, and 20
    LBFGS iterations in float32 make that visible).
    """
    import torch
    values, targets, weights = problem(precision)
    params = [torch.tensor(v, requires_grad=True) for v in values]
    kw = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    opt = getattr(torch.optim, name)(params, **kw)

    def closure():
        loss, grads = loss_and_grads([p.detach().numpy() for p in params], targets, weights)
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        return loss

    for _ in range(steps(name)):
        opt.step(closure) if name == "LBFGS" else (closure(), opt.step())
    state = {}
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value) and value.numel() > 1:
                state[(i, key)] = value.detach().numpy().copy()
    return [p.detach().numpy().copy() for p in params], state


def cases():
    """``[(name, index, desc, kwargs, precision)]``: every kwarg set in complex64, and each
    optimizer's default set in complex128.

    LBFGS runs every set in complex128 instead: its float32 reductions sum in float64
    (numbaopt.optim._lbfgs_passes), torch's in float32, and over 20 iterations of an
    ill-conditioned problem that difference, not the complex handling, exceeds float32's
    tolerance. Its complex64 steps are checked bit for bit against their view_as_real twin
    (tests/test_complex.py).
    """
    out = []
    for name in NAMES:
        sets = kwarg_sets(name)
        if name == "LBFGS":
            out += [(name, k, desc, kwargs, "complex128") for k, (desc, kwargs) in enumerate(sets)]
            continue
        out += [(name, k, desc, kwargs, "complex64") for k, (desc, kwargs) in enumerate(sets)]
        out.append((name, 0, sets[0][0], sets[0][1], "complex128"))
    return out


def mixed_cases():
    """``[(name, index, desc, kwargs, "mixed")]``: every kwarg set of every optimizer that
    takes several dtypes at once (LBFGS takes one)."""
    return [(name, k, desc, kwargs, "mixed") for name in NAMES if name != "LBFGS"
            for k, (desc, kwargs) in enumerate(kwarg_sets(name))]


def key(name, k, precision):
    return f"{name}/{precision}/{k}"


def main():
    arrays = {}
    for name, k, desc, kwargs, precision in cases() + mixed_cases():
        params, state = run_torch(name, kwargs, precision)
        base = key(name, k, precision)
        arrays[f"{base}/desc"] = np.array(desc)
        for j, p in enumerate(params):
            arrays[f"{base}/param/{j}"] = p
        for (i, name_), value in state.items():
            arrays[f"{base}/state/{i}/{name_}"] = value
    DATA.parent.mkdir(exist_ok=True)
    np.savez_compressed(DATA, **arrays)
    print(f"wrote {DATA} ({len(arrays)} arrays, {DATA.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
