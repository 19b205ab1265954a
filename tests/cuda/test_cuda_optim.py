"""Optimizers with device="cuda": the CPU parity cases on GPU arenas.

Run under the simulator by tests/test_cuda_simulator.py (its own process), or
in place on a machine with a GPU. Tiny thread blocks and chunks make the small
arenas span many blocks, and parameters span several chunks.
"""

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from cases import CASES, DTYPES, SIMULATOR_CASES, groups_of, make_inputs
from tolerance import assert_close



# skipped without a GPU or the simulator; tiny blocks and chunks (both in conftest)
pytestmark = [pytest.mark.needs_cuda, pytest.mark.usefixtures("tiny_blocks")]

STEPS = 6   # the simulator runs every thread in Python


def run(case, dtype, device, steps=STEPS):
    name, kwargs, _ = CASES[case]
    init, grads = make_inputs(case, dtype)
    params = [numbaopt.Parameter(a.copy()) for a in init]
    opt = getattr(optim, name)(groups_of(params, case), device=device, **kwargs)
    traj = []
    for k in range(steps):
        for p, g in zip(params, grads[k]):
            p.grad = g
        opt.step()
        traj.append(np.concatenate([p.numpy().reshape(-1) for p in params]))
    return opt, params, np.array(traj)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SIMULATOR_CASES)
def test_cuda_matches_cpu_and_torch(case, dtype):
    import pathlib
    data = np.load(pathlib.Path(__file__).parents[1] / "data" / "optim_reference.npz")
    cpu, _, cpu_traj = run(case, dtype, "cpu")
    gpu, params, gpu_traj = run(case, dtype, "cuda")
    assert_close(gpu_traj, data[f"{case}/{dtype}/traj"][:STEPS], dtype, f"{case} vs torch")
    assert_close(gpu_traj, cpu_traj, dtype, f"{case} vs CPU")
    a, b = cpu.state_dict(), gpu.state_dict()
    assert sorted(a["state"]) == sorted(b["state"]) and a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        assert sorted(a["state"][i]) == sorted(b["state"][i])
        for key, value in a["state"][i].items():
            assert isinstance(b["state"][i][key], np.ndarray)
            assert_close(b["state"][i][key], value, dtype, f"{case} state[{i}][{key!r}]")


def test_state_dict_moves_between_cpu_and_gpu_in_lockstep():
    cpu, cpu_params, _ = run("adam_amsgrad_wd", "float64", "cpu", 3)
    gpu, gpu_params, _ = run("adam_amsgrad_wd", "float64", "cuda", 3)
    gpu.load_state_dict(cpu.state_dict())
    for p, q in zip(cpu_params, gpu_params):
        q.data = p.data
    rng = np.random.default_rng(0)
    for _ in range(3):
        for p, q in zip(cpu_params, gpu_params):
            g = rng.standard_normal(p.shape)
            p.grad = g
            q.grad = g
        cpu.step()
        gpu.step()
    for p, q in zip(cpu_params, gpu_params):
        assert_close(q.numpy(), p.data)


def test_device_grads_zero_grad_and_add_param_group():
    from numba import cuda
    a = numbaopt.Parameter(np.ones(7))
    b = numbaopt.Parameter(np.ones((2, 2)))
    opt = optim.SGD([a], lr=0.5, momentum=0.9, device="cuda")
    a.grad = cuda.to_device(np.full(7, 2.0))          # device-to-device copy
    opt.step()
    np.testing.assert_allclose(a.numpy(), 0.0)
    with pytest.raises(TypeError, match="dtype float32"):
        a.grad = cuda.to_device(np.ones(7, np.float32))
    with pytest.raises(ValueError, match="shape"):
        a.grad = np.ones(6)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad.copy_to_host(), 0.0)
    opt.add_param_group({"params": [b], "lr": 0.1})
    np.testing.assert_array_equal(b.numpy(), 1.0)
    np.testing.assert_allclose(opt.state_dict()["state"][0]["momentum_buffer"], 2.0)
    b.grad = np.ones((2, 2))
    opt.zero_grad()
    b.grad = np.ones((2, 2))
    opt.step()
    np.testing.assert_allclose(b.numpy(), 0.9)
    np.testing.assert_allclose(a.numpy(), 0.0)        # a had no grad this step


def test_skip_nonfinite_on_gpu():
    p = numbaopt.Parameter(np.zeros(9, np.float32))
    opt = optim.Adam([p], skip_nonfinite=True, device="cuda")
    g = np.ones(9, np.float32)
    g[7] = np.nan
    p.grad = g
    opt.step()
    assert opt.found_nonfinite and opt.skipped_steps == 1
    np.testing.assert_array_equal(p.numpy(), 0.0)
    assert opt.state_dict()["state"] == {}


@pytest.mark.cuda_gpu
def test_views_expose_cuda_array_interface():
    p = numbaopt.Parameter(np.ones((3, 4), np.float32))
    opt = optim.SGD([p], lr=1.0, device="cuda")
    assert p.data.__cuda_array_interface__["shape"] == (3, 4)
    p.grad = np.ones((3, 4))
    assert p.grad.__cuda_array_interface__["data"][0] != p.data.__cuda_array_interface__["data"][0]
    opt.step()
    np.testing.assert_array_equal(p.numpy(), 0.0)


def test_a_gpu_optimizer_has_no_compiled_handle():
    # CPU-compiled code cannot launch a kernel, so opt.compiled() refuses with the reason
    opt = optim.Adam([numbaopt.Parameter(np.zeros(3))], device="cuda")
    with pytest.raises(NotImplementedError, match="device='cuda'"):
        opt.compiled()
