"""Every optimizer and option against torch (committed data and live) and the NumPy reference."""

import pathlib

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from cases import CASES, DTYPES, STEPS, groups_of, make_inputs, shapes
from tolerance import assert_close
from reference import reference_optimizer

DATA = np.load(pathlib.Path(__file__).parent / "data" / "optim_reference.npz")


def run_numbaopt(case, dtype, parallel=False, steps=STEPS):
    name, kwargs, _ = CASES[case]
    init, grads = make_inputs(case, dtype)
    params = [numbaopt.Parameter(a.copy()) for a in init]
    opt = getattr(optim, name)(groups_of(params, case), **kwargs)
    if parallel:   # force the prange kernel on this small arena (chunks of one param each)
        opt.parallel_threshold = 0
        opt._sync()
    traj = []
    for k in range(steps):
        for p, g in zip(params, grads[k]):
            p.grad = g
        opt.step()
        traj.append(np.concatenate([p.data.reshape(-1) for p in params]))
    return opt, np.array(traj)


def check_against(opt, traj, expected, dtype, label):
    for k in range(STEPS):
        assert_close(traj[k], expected["traj"][k], dtype, f"{label}: params after step {k + 1}")
    state = opt.state_dict()["state"]
    want = {}
    for key, value in expected.items():
        if key.startswith("state/"):
            _, i, name = key.split("/")
            want.setdefault(int(i), {})[name] = value
    assert sorted(state) == sorted(want), f"{label}: parameters with state"
    for i, entry in want.items():
        assert sorted(state[i]) == sorted(entry), f"{label}: state keys of parameter {i}"
        for name, value in entry.items():
            assert_close(state[i][name], value, dtype, f"{label}: state[{i}][{name!r}]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_matches_committed_torch_data(case, dtype, parallel):
    opt, traj = run_numbaopt(case, dtype, parallel)
    prefix = f"{case}/{dtype}/"
    expected = {k[len(prefix):]: DATA[k] for k in DATA.files if k.startswith(prefix)}
    check_against(opt, traj, expected, dtype, f"{case} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_live_torch(case, dtype):
    pytest.importorskip("torch")
    from torch_runner import run_torch
    opt, traj = run_numbaopt(case, dtype)
    check_against(opt, traj, run_torch(case, dtype), dtype, f"{case} {dtype} (live torch)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_numpy_reference(case, dtype):
    name, kwargs, _ = CASES[case]
    init, grads = make_inputs(case, dtype)
    arrays = [a.copy() for a in init]
    ref = reference_optimizer(name, groups_of(arrays, case), **kwargs)
    opt, traj = run_numbaopt(case, dtype)
    for k in range(STEPS):
        ref.step(grads[k])
        assert_close(traj[k], np.concatenate([a.reshape(-1) for a in arrays]), dtype,
                     f"{case} {dtype} step {k + 1}")
    state = opt.state_dict()["state"]
    for i, entry in enumerate(ref.state):
        if name == "SGD":
            entry = {k: v for k, v in entry.items() if k != "step"}
        assert sorted(state.get(i, {})) == sorted(entry)
        for key, value in entry.items():
            assert_close(state[i][key], value, dtype, f"{case} {dtype} state[{i}][{key!r}]")


def test_cases_cover_shapes_and_missing_grads():
    # the table exercises what the issue asks for: 0-d, zero-size, and None grads
    assert () in shapes() and (0,) in shapes()
    _, grads = make_inputs("adam", "float64")
    assert grads[0][4] is None and any(g is None for step in grads for g in step[:3])
