"""Record torch.optim.Adafactor's numbers for every case of tests/test_adafactor.py.

    python scripts/make_adafactor_reference.py      # needs torch==2.13.0 (CPU)

writes tests/data/adafactor_reference.npz: per case and dtype the parameters after
every step (``traj``) and the final state_dict arrays (``state/<i>/<key>``), which
the tests compare against when torch is not importable (and alongside a live run).
"""

import pathlib
import sys

import numpy as np

TESTS = pathlib.Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from test_adafactor import CASES, DTYPES, run_torch  # noqa: E402


def main():
    import torch
    torch.use_deterministic_algorithms(True)
    data = {"torch_version": np.array(torch.__version__)}
    for case in CASES:
        for dtype in DTYPES:
            for key, value in run_torch(case, dtype).items():
                data[f"{case}/{dtype}/{key}"] = value
    out = TESTS / "data" / "adafactor_reference.npz"
    np.savez_compressed(out, **data)
    print(f"wrote {len(data)} arrays to {out} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
