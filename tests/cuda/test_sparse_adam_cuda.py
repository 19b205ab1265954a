"""SparseAdam with device="cuda": the CPU cases on GPU arenas, under the simulator or a GPU.

Run by tests/test_cuda_simulator.py (its own process, NUMBA_ENABLE_CUDASIM=1).
Tiny thread blocks and chunks make rows span several threads' strides and
parameters span many chunks (whose step counts must advance together).
"""

import pathlib
import re
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt.optim.sparse_adam import SparseAdam
from numbaopt.sparse import RowSparseGrad
from tolerance import assert_close

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import make_sparse_adam_reference as ref  # noqa: E402


# skipped without a GPU or the simulator; tiny blocks and chunks (both in conftest)
pytestmark = [pytest.mark.needs_cuda, pytest.mark.usefixtures("tiny_blocks")]

STEPS = 6   # the simulator runs every thread in Python


def run(case, dtype, device, steps=STEPS):
    kwargs, _ = ref.CASES[case]
    init, grads = ref.make_inputs(case, dtype, steps)
    params = [numbaopt.Parameter(a.copy()) for a in init]
    opt = SparseAdam(ref.groups_of(params, case), device=device, **kwargs)
    traj = []
    for k in range(steps):
        for p, g in zip(params, grads[k]):
            p.grad = None if g is None else RowSparseGrad(*g)
        opt.step()
        traj.append(np.concatenate([p.numpy().reshape(-1) for p in params]))
    return opt, params, np.array(traj)


@pytest.mark.parametrize("dtype", ref.DTYPES)
@pytest.mark.parametrize("case", ["default", "tensor_lr", "betas_eps"])
def test_cuda_matches_cpu_and_torch(case, dtype):
    data = np.load(ref.OUT)
    cpu, _, cpu_traj = run(case, dtype, "cpu")
    gpu, _, gpu_traj = run(case, dtype, "cuda")
    assert_close(gpu_traj, data[f"{case}/{dtype}/traj"][:STEPS], dtype, f"{case} vs torch")
    assert_close(gpu_traj, cpu_traj, dtype, f"{case} vs CPU")
    a, b = cpu.state_dict(), gpu.state_dict()
    assert sorted(a["state"]) == sorted(b["state"]) and a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        assert a["state"][i]["step"] == b["state"][i]["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(b["state"][i][key], a["state"][i][key], dtype, f"state[{i}][{key!r}]")


def test_state_dict_moves_between_cpu_and_gpu_in_lockstep():
    cpu, cpu_params, _ = run("maximize", "float64", "cpu", 3)
    gpu, gpu_params, _ = run("maximize", "float64", "cuda", 3)
    gpu.load_state_dict(cpu.state_dict())
    for p, q in zip(cpu_params, gpu_params):
        q.data = p.data
    rng = np.random.default_rng(0)
    for _ in range(3):
        for p, q in zip(cpu_params, gpu_params):
            if p.ndim == 0:
                continue
            g = RowSparseGrad(rng.integers(0, p.shape[0], 3),
                              rng.standard_normal((3,) + p.shape[1:]))
            p.grad = q.grad = g
        cpu.step()
        gpu.step()
    for p, q in zip(cpu_params, gpu_params):
        assert_close(q.numpy(), p.data, "float64")
    assert cpu.state_dict()["state"].keys() == gpu.state_dict()["state"].keys()


def test_dense_gradients_are_refused_and_empty_ones_count():
    p = numbaopt.Parameter(np.ones((12, 2)))   # spans several 5-element chunks
    opt = SparseAdam([p], device="cuda")
    p.grad = RowSparseGrad(np.zeros(0, np.int64), np.zeros((0, 2)))
    opt.step()
    opt.step()
    assert opt.state[p]["step"] == 2 and (p.numpy() == 1).all()
    steps = opt.arena.step.copy_to_host()
    assert (steps == 2).all()                  # every chunk's copy of the count advanced
    p.grad = np.ones((12, 2))
    with pytest.raises(RuntimeError, match=re.escape("SparseAdam does not support dense "
                                                     "gradients, please consider Adam instead")):
        opt.step()
    assert opt.state[p]["step"] == 2
    p.grad = RowSparseGrad([11, 0, 11], np.ones((3, 2)))
    opt.step()
    out = p.numpy()
    assert (out[1:11] == 1).all() and (out[[0, 11]] < 1).all()


def test_a_gpu_sparse_adam_has_no_compiled_handle():
    # CPU-compiled code cannot launch a kernel: refused before anything is staged
    opt = SparseAdam([numbaopt.Parameter(np.zeros((4, 2)))], device="cuda")
    with pytest.raises(NotImplementedError, match="device='cuda'"):
        opt.compiled()
