"""numbaopt.save/load and parameter files with device="cuda" optimizers: state to the host
and back, resumption bit-identical, files that move between CPU and GPU.

Run under the simulator by tests/test_cuda_simulator.py, or in place on a GPU.
"""

import io

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from numbaopt.checkpoint import load, load_parameters, save, save_parameters


# skipped without a GPU or the simulator; tiny blocks and chunks (both in conftest)
pytestmark = [pytest.mark.needs_cuda, pytest.mark.usefixtures("tiny_blocks")]
pytest.importorskip("safetensors")

SHAPES = ((3, 4), (), (7,))


def _build(device, seed=0, cls=optim.Adam, **kwargs):
    rng = np.random.default_rng(seed)
    params = [numbaopt.Parameter(rng.standard_normal(s)) for s in SHAPES]
    return params, cls(params, lr=0.01, device=device, **kwargs)


def _train(params, opt, first, steps):
    for k in range(first, first + steps):
        for j, p in enumerate(params):
            p.grad = np.cos(np.arange(p.size) + k + j).reshape(p.shape)
        opt.step()


def _host(params, opt):
    return [p.numpy().copy() for p in params], opt.state_dict()


def _assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)
    assert a[1]["state"].keys() == b[1]["state"].keys()
    for i, entry in a[1]["state"].items():
        for k, v in entry.items():
            np.testing.assert_array_equal(v, b[1]["state"][i][k])


@pytest.mark.parametrize("cls, kwargs", [(optim.Adam, dict(amsgrad=True)),
                                         (optim.NAdam, {}), (optim.SGD, dict(momentum=0.9))],
                         ids=["Adam", "NAdam", "SGD"])
def test_a_gpu_checkpoint_resumes_bit_identically_on_the_gpu(cls, kwargs):
    params, opt = _build("cuda", cls=cls, **kwargs)
    _train(params, opt, 0, 3)
    buf = io.BytesIO()
    save(buf, opt, extra={"epoch": 1})
    _train(params, opt, 3, 2)
    params2, opt2 = _build("cuda", seed=5, cls=cls, **kwargs)
    assert load(io.BytesIO(buf.getvalue()), opt2) == {"epoch": 1}
    _train(params2, opt2, 3, 2)
    _assert_same(_host(params, opt), _host(params2, opt2))


def test_checkpoints_move_between_cpu_and_gpu():
    params, gpu = _build("cuda")
    _train(params, gpu, 0, 2)
    buf = io.BytesIO()
    save(buf, gpu)
    cpu_params, cpu = _build("cpu", seed=3)
    load(io.BytesIO(buf.getvalue()), cpu)
    _assert_same(_host(params, gpu), _host(cpu_params, cpu))
    np.testing.assert_array_equal(cpu.arena.step_counts(), gpu.arena.step_counts())
    buf = io.BytesIO()
    save(buf, cpu)
    params2, gpu2 = _build("cuda", seed=4)
    load(io.BytesIO(buf.getvalue()), gpu2)
    _assert_same(_host(params, gpu), _host(params2, gpu2))


def test_a_refused_file_leaves_the_gpu_optimizer_unchanged():
    params, opt = _build("cuda")
    _train(params, opt, 0, 2)
    before = _host(params, opt)
    other_params, other = _build("cuda", cls=optim.SGD)
    buf = io.BytesIO()
    save(buf, other)
    with pytest.raises(ValueError, match="class SGD, not Adam"):
        load(io.BytesIO(buf.getvalue()), opt)
    _assert_same(before, _host(params, opt))


def test_parameter_files_from_and_into_gpu_parameters():
    params, opt = _build("cuda")
    _train(params, opt, 0, 1)
    buf = io.BytesIO()
    save_parameters(buf, opt)
    params2, opt2 = _build("cuda", seed=9)
    load_parameters(io.BytesIO(buf.getvalue()), opt2)
    for p, q in zip(params, params2):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
