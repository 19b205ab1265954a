"""LBFGS with device="cuda" against the CPU, under the simulator or on a GPU.

Run by tests/test_cuda_simulator.py (its own process, NUMBA_ENABLE_CUDASIM=1).
Tiny blocks and few reduction threads make every reduction combine several
threads' partial sums.
"""

import pathlib
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt.optim.lbfgs import LBFGS
from tolerance import assert_close

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from lbfgs_problems import CASES, objective  # noqa: E402


pytestmark = pytest.mark.needs_cuda   # skipped without a GPU or the simulator (conftest)


@pytest.fixture(autouse=True)
def tiny_launches(monkeypatch):
    from numbaopt.optim import _lbfgs_cuda
    monkeypatch.setattr(_lbfgs_cuda, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(_lbfgs_cuda, "REDUCE_THREADS", 7)


def run(case, device, steps=2, state=None):
    problem, kwargs, dtype, _ = CASES[case]
    f, x0, sizes = objective(problem)
    cuts = np.cumsum(sizes)[:-1]
    params = [numbaopt.Parameter(c.astype(dtype)) for c in np.split(x0, cuts)]
    opt = LBFGS(params, device=device, **kwargs)

    def closure():
        x = np.concatenate([p.numpy().reshape(-1) for p in params]).astype(np.float64)
        loss, g = f(x)
        for p, c in zip(params, np.split(g, cuts)):
            p.grad = c.astype(dtype)
        return loss

    traj = []
    for k in range(steps):
        if k == 1 and state is not None:
            opt.load_state_dict(state)
        opt.step(closure)
        traj.append(np.concatenate([p.numpy().reshape(-1) for p in params]))
    return np.array(traj), opt


@pytest.mark.parametrize("case", ["logistic-wolfe5-float64", "logistic-wolfe5-float32",
                                  "least_squares-wolfe5-float64", "least_squares-h5lr-float64"])
def test_the_gpu_follows_the_cpu(case):
    cpu, opt_cpu = run(case, "cpu")
    gpu, opt_gpu = run(case, "cuda")
    assert_close(gpu, cpu, dtype=CASES[case][2])
    a, b = opt_gpu.state_dict()["state"][0], opt_cpu.state_dict()["state"][0]
    assert (a["func_evals"], a["n_iter"]) == (b["func_evals"], b["n_iter"])
    assert_close(a["d"], b["d"], dtype=CASES[case][2])
    assert len(a["old_dirs"]) == len(b["old_dirs"])
    for u, v in zip(a["old_stps"], b["old_stps"]):
        assert_close(u, v, dtype=CASES[case][2])


def test_a_cpu_state_dict_continues_on_the_gpu():
    case = "logistic-wolfe5-float64"
    cpu, opt_cpu = run(case, "cpu", steps=3)
    # the same run, with the GPU optimizer given the CPU's state after its first step
    _, first = run(case, "cpu", steps=1)
    gpu, _ = run(case, "cuda", steps=3, state=first.state_dict())
    assert_close(gpu, cpu)


def test_parameters_without_gradient_count_as_zeros_on_the_gpu():
    a = numbaopt.Parameter(np.array([1.0, -2.0, 0.5]))
    b = numbaopt.Parameter(np.array([3.0, 4.0]))
    opt = LBFGS([a, b], device="cuda", max_iter=3)
    b.grad = np.array([9.0, 9.0])   # stale, then dropped: must read as zeros
    b.grad = None

    def closure():
        a.grad = 2 * a.numpy()
        return float(np.sum(a.numpy() ** 2))
    opt.step(closure)
    np.testing.assert_array_equal(b.numpy(), [3.0, 4.0])
    assert np.all(np.abs(a.numpy()) < np.abs([1.0, -2.0, 0.5]))
