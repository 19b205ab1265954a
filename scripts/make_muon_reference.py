"""Record torch.optim.Muon's numbers for tests/test_muon.py, and measure the agreement.

    python scripts/make_muon_reference.py            # needs torch==2.13.0 (CPU)
    python scripts/make_muon_reference.py --measure  # the agreement table of Muon's docstring

The first writes tests/data/muon_reference.npz: for every case of tests/test_muon.py and
both dtypes, torch's trajectory and final state with its own (bfloat16) Newton–Schulz and
with a float64 one swapped in. The tests compare against it when torch is not importable.

``--measure`` runs 16 random matrices of 64x32 and of 256x512 (lr 0.02, torch's other
defaults, a fresh standard-normal gradient every step) through torch and through numbaopt
with each ``ns_dtype``, and prints, after 1, 10 and 100 steps, the largest difference of
the parameters over the largest parameter (``max|p - p_torch| / max|p_torch|``) and over
the largest distance torch moved them (``max|p - p_torch| / max|p_torch - p_0|``).
"""

import argparse
import pathlib
import sys

import numpy as np

TESTS = pathlib.Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from test_muon import CASES, DTYPES, run_torch  # noqa: E402

MEASURE_SHAPES = ((64, 32), (256, 512))
MEASURE_STEPS = (1, 10, 100)
MEASURE_OPTIONS = (("float32", "float32"), ("float32", "bfloat16"), ("float32", "float64"),
                   ("float64", "float64"), ("float64", "float32"), ("float64", "bfloat16"))


def record():
    import torch
    torch.use_deterministic_algorithms(True)
    data = {"torch_version": np.array(torch.__version__)}
    for case in CASES:
        for dtype in DTYPES:
            for ns in ("bfloat16", "float64"):
                for key, value in run_torch(case, dtype, ns).items():
                    data[f"{case}/{dtype}/{ns}/{key}"] = value
    out = TESTS / "data" / "muon_reference.npz"
    np.savez_compressed(out, **data)
    print(f"wrote {len(data)} arrays to {out} (torch {torch.__version__})")


def _trajectory(shape, dtype, ns_dtype, count=16, lr=0.02):
    """Parameters after each of MEASURE_STEPS steps: torch's if ns_dtype is None, else ours."""
    rng = np.random.default_rng(2024)
    init = [rng.standard_normal(shape).astype(dtype) for _ in range(count)]
    if ns_dtype is None:
        import torch
        params = [torch.tensor(a.copy(), requires_grad=True) for a in init]
        opt = torch.optim.Muon(params, lr=lr)
        read = lambda: np.stack([p.detach().numpy().copy() for p in params])  # noqa: E731
    else:
        import numbaopt
        from numbaopt.optim.muon import Muon
        params = [numbaopt.Parameter(a.copy()) for a in init]
        opt = Muon(params, lr=lr, ns_dtype=ns_dtype)
        read = lambda: np.stack([p.data.copy() for p in params])  # noqa: E731
    out = {}
    for k in range(1, max(MEASURE_STEPS) + 1):
        for p in params:
            g = rng.standard_normal(shape).astype(dtype)
            if ns_dtype is None:
                import torch
                p.grad = torch.tensor(g)
            else:
                p.grad = g
        opt.step()
        if k in MEASURE_STEPS:
            out[k] = read()
    return np.stack(init), out


def measure():
    import torch
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    rows = []
    for shape in MEASURE_SHAPES:
        for dtype in ("float32", "float64"):
            init, theirs = _trajectory(shape, dtype, None)
            for param_dtype, ns_dtype in MEASURE_OPTIONS:
                if param_dtype != dtype:
                    continue
                _, ours = _trajectory(shape, dtype, ns_dtype)
                cells = []
                for k in MEASURE_STEPS:
                    diff = float(np.max(np.abs(ours[k].astype(np.float64) - theirs[k])))
                    scale = float(np.max(np.abs(theirs[k])))
                    moved = float(np.max(np.abs(theirs[k].astype(np.float64) - init)))
                    cells.append(f"{diff / scale:.1e} ({diff / moved:.1e})")
                rows.append((f"{shape[0]}x{shape[1]}", dtype, ns_dtype, " / ".join(cells)))
                print(*rows[-1], sep="  |  ", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true",
                        help="print the agreement with torch instead of writing the data")
    args = parser.parse_args()
    measure() if args.measure else record()


if __name__ == "__main__":
    main()
