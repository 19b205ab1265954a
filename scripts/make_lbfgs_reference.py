"""Record torch.optim.LBFGS's trajectories for every case of tests/lbfgs_problems.py.

    python scripts/make_lbfgs_reference.py      # needs torch==2.13.0 (CPU)

writes tests/data/lbfgs_reference.npz, which tests/test_lbfgs.py compares
against when torch is not importable (and alongside a live run when it is).
"""

import pathlib
import sys

import numpy as np

TESTS = pathlib.Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from lbfgs_problems import CASES, run_torch  # noqa: E402


def main():
    import torch
    data = {"torch_version": np.array(torch.__version__)}
    for case in CASES:
        traj, losses, counts = run_torch(case)
        data[f"{case}/traj"] = traj
        data[f"{case}/losses"] = losses
        data[f"{case}/counts"] = np.array([counts["func_evals"], counts["n_iter"]])
    out = TESTS / "data" / "lbfgs_reference.npz"
    np.savez_compressed(out, **data)
    print(f"wrote {out} ({len(CASES)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
