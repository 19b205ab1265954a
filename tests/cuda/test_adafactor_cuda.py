"""Adafactor with device="cuda": the CPU cases on GPU arenas.

Run under the simulator by tests/test_cuda_simulator.py (its own process), or in
place on a machine with a GPU. Tiny thread blocks and tasks make the small
parameters span many blocks: matrices split into row blocks, several small
matrices share a task, vectors span several tasks.
"""

import numpy as np
import pytest

import numbaopt
from numbaopt.optim import adafactor as adafactor_module
from numbaopt.optim.adafactor import Adafactor
from test_adafactor import _from, run_ours
from tolerance import assert_close


# skipped without a GPU or the simulator; tiny blocks and chunks (both in conftest)
pytestmark = [pytest.mark.needs_cuda, pytest.mark.usefixtures("tiny_blocks")]

STEPS = 4   # the simulator runs every thread in Python (and pays ~5 ms a barrier)


@pytest.fixture
def tiny_tasks(monkeypatch):
    monkeypatch.setattr(adafactor_module, "FACTORED_TASK", 10)
    monkeypatch.setattr(adafactor_module, "MIN_TASK_ROWS", 1)
    monkeypatch.setattr(adafactor_module, "VECTOR_TASK", 4)


@pytest.fixture(scope="module")
def reference():
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "data" / "adafactor_reference.npz"
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("case, dtype, split", [
    ("maximize_mixed", "float64", True), ("maximize_mixed", "float32", False),
    ("eps1_clamps", "float32", False), ("registry/nonzero_weight_decay", "float64", False)])
def test_cuda_matches_cpu_and_torch(case, dtype, split, reference, request):
    if split:   # matrices in row blocks, small matrices sharing a task, vectors in pieces
        request.getfixturevalue("tiny_tasks")
    gpu = run_ours(case, dtype, steps=STEPS, device="cuda")
    cpu = run_ours(case, dtype, steps=STEPS)
    theirs = _from(reference, case, dtype)
    assert_close(gpu["traj"], theirs["traj"][:STEPS], dtype, f"{case} vs torch")
    assert sorted(gpu) == sorted(cpu)
    for key, value in cpu.items():
        assert isinstance(gpu[key], np.ndarray) and gpu[key].shape == value.shape, key
        assert gpu[key].dtype == value.dtype, key
        assert_close(gpu[key], value, dtype, f"{case} {key} vs CPU")


def _pair(device, seed=0):
    rng = np.random.default_rng(seed)
    params = [numbaopt.Parameter(rng.standard_normal(s)) for s in ((3, 4), (5,), (2, 2, 3))]
    return params, Adafactor([{"params": params[:2]}, {"params": params[2:], "d": 1.2}],
                             weight_decay=0.1, device=device)


def _steps(params, opt, ks):
    for k in ks:
        rng = np.random.default_rng(100 + k)
        for p in params:
            p.grad = rng.standard_normal(p.shape)
        opt.step()


def test_state_dicts_move_between_cpu_and_gpu_in_lockstep():
    cpu_params, cpu = _pair("cpu")
    gpu_params, gpu = _pair("cuda", seed=1)
    _steps(cpu_params, cpu, range(3))
    gpu.load_state_dict(cpu.state_dict())
    for p, q in zip(cpu_params, gpu_params):
        q.data = p.data
    _steps(cpu_params, cpu, range(3, 6))
    _steps(gpu_params, gpu, range(3, 6))
    for p, q in zip(cpu_params, gpu_params):
        assert_close(q.numpy(), p.data)
    back_params, back = _pair("cpu", seed=2)
    back.load_state_dict(gpu.state_dict())
    for p, q in zip(back_params, gpu_params):
        p.data = q.numpy()
    _steps(back_params, back, range(6, 8))
    _steps(gpu_params, gpu, range(6, 8))
    for p, q in zip(back_params, gpu_params):
        assert_close(q.numpy(), p.data)


def test_state_view_and_add_param_group_on_the_gpu():
    gpu_params, gpu = _pair("cuda")
    cpu_params, cpu = _pair("cpu")
    _steps(gpu_params, gpu, range(2))
    _steps(cpu_params, cpu, range(2))
    row_var = gpu.state[gpu_params[0]]["row_var"]
    assert row_var.shape == (3, 1) and hasattr(row_var, "copy_to_host")   # a device view
    assert_close(row_var.copy_to_host(), cpu.state[cpu_params[0]]["row_var"])
    new = [numbaopt.Parameter(np.linspace(-1, 1, 6).reshape(3, 2)) for _ in range(2)]
    gpu.add_param_group({"params": [new[0]], "lr": 0.3})
    cpu.add_param_group({"params": [new[1]], "lr": 0.3})
    _steps(gpu_params + new[:1], gpu, range(2, 4))
    _steps(cpu_params + new[1:], cpu, range(2, 4))
    for p, q in zip(cpu_params + new[1:], gpu_params + new[:1]):
        assert_close(q.numpy(), p.data)


def test_skip_nonfinite_and_empty_parameters_on_the_gpu():
    p = numbaopt.Parameter(np.zeros((3, 3), np.float32))
    e = numbaopt.Parameter(np.zeros(0, np.float32))
    opt = Adafactor([p, e], skip_nonfinite=True, device="cuda")
    g = np.ones((3, 3), np.float32)
    g[1, 2] = np.nan
    p.grad = g
    opt.step()
    assert opt.found_nonfinite and opt.skipped_steps == 1
    np.testing.assert_array_equal(p.numpy(), 0.0)
    assert opt.state_dict()["state"] == {}
    p.grad = np.ones((3, 3), np.float32)
    e.grad = np.zeros(0, np.float32)
    with pytest.raises(ZeroDivisionError, match="float division by zero"):
        opt.step()
    assert opt.state_dict()["state"] == {}
