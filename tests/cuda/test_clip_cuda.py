"""Gradient clipping of device="cuda" arenas (numbaopt.kernels.cuda_clip) against the host.

The norm's partial sums are reduced on the device in another order than on the host, so
float64 results agree to the project's float64 tolerance and float32 ones to float32's.
Run under the simulator by tests/test_cuda_simulator.py, or in place on a GPU.
"""

import numpy as np
import pytest

import numbaopt
from numbaopt import optim, utils
from tolerance import assert_close

# skipped without a GPU or the simulator; tiny blocks and chunks (both in conftest)
pytestmark = [pytest.mark.needs_cuda, pytest.mark.usefixtures("tiny_blocks")]


def _pair(dtype, complex_=False):
    rng = np.random.default_rng(8)
    shapes = [(3, 4), (), (7,), (0,), (2,)]
    values = [rng.standard_normal(s) for s in shapes]
    if complex_:
        values[2] = values[2] + 1j * rng.standard_normal(7)
    grads = [(3 * rng.standard_normal(s)) for s in shapes]
    if complex_:
        grads[2] = grads[2] + 1j * rng.standard_normal(7)
    out = []
    for device in ("cpu", "cuda"):
        params = [numbaopt.Parameter(np.asarray(v).astype(
            np.result_type(dtype, v.dtype) if complex_ else dtype)) for v in values]
        opt = optim.SGD(params, lr=0.1, device=device)
        for p, g in zip(params, grads):
            p.grad = np.asarray(g).astype(p.dtype)
        params[4].grad = None                       # a parameter without a gradient
        out.append((opt, params))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, np.inf, 3.0, 0.5, 0.0])
def test_clip_grad_norm_on_the_gpu_is_the_hosts(dtype, norm_type):
    (host, hp), (gpu, gp) = _pair(dtype)
    if norm_type == np.inf:          # (torch refuses the infinity norm of an empty gradient)
        hp[3].grad = gp[3].grad = None
    expected = utils.clip_grad_norm_(host, 1.0, norm_type=norm_type)
    got = utils.clip_grad_norm_(gpu, 1.0, norm_type=norm_type)
    assert got.dtype == expected.dtype
    assert_close(got, expected)
    for a, b in zip(hp, gp):
        if a.grad is not None:
            assert_close(b.grad.copy_to_host(), a.grad)
    # the parameters of one GPU optimizer, given as a list, take the same path
    assert_close(utils.clip_grad_norm_(gp, 1.0, norm_type=norm_type),
                 utils.clip_grad_norm_(hp, 1.0, norm_type=norm_type))


def test_an_empty_gradient_is_refused_for_the_infinity_norm_on_the_gpu():
    (_, _), (gpu, _) = _pair(np.float32)
    with pytest.raises(RuntimeError, match="infinity norm of the empty gradient"):
        utils.clip_grad_norm_(gpu, 1.0, norm_type=np.inf)


@pytest.mark.parametrize("norm_type", [2.0, 1.0])
def test_complex_gradients_on_the_gpu(norm_type):
    (host, hp), (gpu, gp) = _pair(np.float64, complex_=True)
    assert_close(utils.clip_grad_norm_(gpu, 1.0, norm_type=norm_type),
                 utils.clip_grad_norm_(host, 1.0, norm_type=norm_type))
    for a, b in zip(hp, gp):
        if a.grad is not None:
            assert_close(b.grad.copy_to_host(), a.grad)
    with pytest.raises(RuntimeError, match="clamp is not supported for complex types"):
        utils.clip_grad_value_(gpu, 0.5)


def test_clip_grad_value_and_clip_grads_with_norm_on_the_gpu():
    (host, hp), (gpu, gp) = _pair(np.float32)
    hp[0].grad[0, 0] = np.nan
    gp[0].grad = hp[0].grad
    utils.clip_grad_value_(host, 0.5)
    utils.clip_grad_value_(gpu, 0.5)
    for a, b in zip(hp, gp):
        if a.grad is not None:
            np.testing.assert_array_equal(b.grad.copy_to_host(), a.grad)
    total = np.array(4.0, np.float32)
    utils.clip_grads_with_norm_(host, 1.0, total)
    utils.clip_grads_with_norm_(gpu, 1.0, total)
    for a, b in zip(hp, gp):
        if a.grad is not None:
            np.testing.assert_array_equal(b.grad.copy_to_host(), a.grad)


@pytest.mark.parametrize("norm_type", [2.0, np.inf])
def test_several_dtypes_on_the_gpu_clip_as_on_the_host(norm_type):
    rng = np.random.default_rng(2)
    values = [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(5)]
    grads = [3 * rng.standard_normal(v.shape).astype(v.dtype) for v in values]
    out = []
    for device in ("cpu", "cuda"):
        params = [numbaopt.Parameter(v.copy()) for v in values]
        opt = optim.Adam(params, device=device)
        opt.set_grads(grads)
        out.append((opt, params, utils.clip_grad_norm_(opt, 1.0, norm_type=norm_type)))
    (_, hp, expected), (_, gp, got) = out
    assert got.dtype == expected.dtype == np.float64
    assert_close(got, expected)
    for a, b in zip(hp, gp):
        assert_close(b.grad.copy_to_host(), a.grad)
