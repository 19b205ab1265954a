"""Complex parameters on device="cuda" arenas: the same real pairs, the same numbers as the
host, complex device views, state_dict and checkpoints through the host.

Run under the simulator by tests/test_cuda_simulator.py, or in place on a GPU.
"""

import numpy as np
import pytest

import numbaopt
from numbaopt import optim

# skipped without a GPU or the simulator; tiny blocks and chunks (both in conftest)
pytestmark = [pytest.mark.needs_cuda, pytest.mark.usefixtures("tiny_blocks")]


def _build(device, cls, **kwargs):
    rng = np.random.default_rng(4)
    values = [rng.standard_normal((3, 2)) + 1j * rng.standard_normal((3, 2)),
              rng.standard_normal(4),
              rng.standard_normal(3) + 1j * rng.standard_normal(3)]
    params = [numbaopt.Parameter(v) for v in values]
    return params, cls(params, device=device, **kwargs)


@pytest.mark.parametrize("cls, kwargs", [(optim.Adam, dict(lr=0.05, amsgrad=True)),
                                         (optim.Rprop, dict(lr=0.05)),
                                         (optim.SGD, dict(lr=0.05, momentum=0.9))])
def test_complex_parameters_step_on_the_gpu_as_on_the_host(cls, kwargs, tmp_path):
    host_params, host = _build("cpu", cls, **kwargs)
    gpu_params, gpu = _build("cuda", cls, **kwargs)
    assert gpu_params[0].data.dtype == np.complex128
    for k in range(4):
        for j, (a, b) in enumerate(zip(host_params, gpu_params)):
            g = np.cos(np.arange(a.size) + k + j).reshape(a.shape)
            if a.dtype.kind == "c":
                g = g + 1j * np.sin(np.arange(a.size) - k).reshape(a.shape)
            a.grad = g
            b.grad = g
        host.step()
        gpu.step()
    for a, b in zip(host_params, gpu_params):
        np.testing.assert_array_equal(b.numpy(), a.data)
    for i, entry in host.state_dict()["state"].items():
        got = gpu.state_dict()["state"][i]
        for key, value in entry.items():
            np.testing.assert_array_equal(got[key], value)
            assert np.asarray(got[key]).dtype == np.asarray(value).dtype
    numbaopt.save(tmp_path / "g.safetensors", gpu)
    fresh_params, fresh = _build("cpu", cls, **kwargs)
    numbaopt.load(tmp_path / "g.safetensors", fresh)
    for a, b in zip(host_params, fresh_params):
        np.testing.assert_array_equal(b.data, a.data)


def test_several_dtypes_on_the_gpu_step_as_on_the_host(tmp_path):
    """One arena per dtype on the GPU too; the checkpoint of the GPU optimizer loads on the host."""
    def build(device):
        rng = np.random.default_rng(4)
        values = [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4),
                  rng.standard_normal(3) + 1j * rng.standard_normal(3)]
        params = [numbaopt.Parameter(v) for v in values]
        groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]
        return params, optim.Adam(groups, lr=0.05, device=device, skip_nonfinite=True)

    host_params, host = build("cpu")
    gpu_params, gpu = build("cuda")
    assert len(gpu.arenas) == 2
    for k in range(3):
        for a, b in zip(host_params, gpu_params):
            g = np.cos(np.arange(a.size) + k).reshape(a.shape).astype(a.dtype)
            a.grad = g
            b.grad = g
        host.step()
        gpu.step()
    for a, b in zip(host_params, gpu_params):
        np.testing.assert_array_equal(b.numpy(), a.data)
    expected, got = host.state_dict()["state"], gpu.state_dict()["state"]
    for i, entry in expected.items():
        for key, value in entry.items():
            np.testing.assert_array_equal(got[i][key], value)
    numbaopt.save(tmp_path / "m.safetensors", gpu)
    fresh_params, fresh = build("cpu")
    numbaopt.load(tmp_path / "m.safetensors", fresh)
    for a, b in zip(host_params, fresh_params):
        np.testing.assert_array_equal(b.data, a.data)
