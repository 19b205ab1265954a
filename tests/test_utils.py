"""clip_grad_norm_ and clip_grad_value_ against torch (live), a NumPy reference, and themselves.

Inputs come in four forms that take different code paths: the optimizer (arena
kernel over every parameter), a list of its parameters (arena kernel, masked),
a subset of them, and loose Parameters in no optimizer (NumPy fallback).
"""

import math
import warnings

import numpy as np
import pytest

import numbaopt
from numbaopt import optim, utils
from tolerance import assert_close

P = numbaopt.Parameter
DTYPES = (np.float64, np.float32)
# finite norms of every kind torch has; inf, -inf and p < 0 refuse zero-size grads (below)
NORM_TYPES = (2.0, 1, "inf", 0, 0.5, 3.0, -1.0, "-inf")
SHAPES = ((3, 4), (), (0,), (5,), (2, 1, 3))
FORMS = ("optimizer", "params", "subset", "loose")


def _has_identity(norm_type):
    return float(norm_type) >= 0 and float(norm_type) != math.inf


def make_case(rng, dtype, norm_type, scale=1.0, shapes=SHAPES, none=(1,)):
    """Initial values and grads (None at the indices in ``none``); no zero-size
    shapes for norms without an identity, which torch refuses on them."""
    if not _has_identity(norm_type):
        shapes = [s for s in shapes if 0 not in s]
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [None if i in none else (scale * rng.standard_normal(s)).astype(dtype)
             for i, s in enumerate(shapes)]
    return values, grads


def build(form, values, grads):
    """``(target, params)``: what to pass to the clip function, and all the Parameters
    (the target holds ``params[1:-1]`` in the "subset" form)."""
    params = [P(v.copy()) for v in values]
    if form != "loose":
        opt = optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1)
    for p, g in zip(params, grads):
        p.grad = g
    if form == "optimizer":
        return opt, params
    if form == "subset":
        return params[1:-1], params
    return params, params


def torch_clip_norm(values, grads, max_norm, norm_type, **kw):
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(v, requires_grad=True) for v in values]
    for t, g in zip(ts, grads):
        t.grad = None if g is None else torch.tensor(g)
    total = torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type, **kw)
    return total.numpy(), [None if t.grad is None else t.grad.numpy() for t in ts]


def reference_total_norm(grads, norm_type):
    """Plain float64: the norm of the per-gradient norms (torch's definition)."""
    grads = [g for g in grads if g is not None]
    if not grads:
        return 0.0
    p = float(norm_type)
    norms = [np.linalg.norm(g.astype(np.float64).reshape(-1), p) for g in grads]
    return np.linalg.norm(np.array(norms), p)


def assert_grads(params, expected, dtype):
    for i, (p, e) in enumerate(zip(params, expected)):
        if e is None:
            assert p.grad is None, f"grad {i} appeared"
        else:
            assert p.grad.dtype == dtype
            assert_close(p.grad, e, dtype, f"grad {i}")


# -- clip_grad_norm_ -------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.5, 1e9], ids=["clips", "no-clip"])
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_matches_torch(dtype, form, norm_type, max_norm, rng):
    values, grads = make_case(rng, dtype, norm_type)
    target, params = build(form, values, grads)
    chosen = slice(1, -1) if form == "subset" else slice(None)
    want_total, want_grads = torch_clip_norm(values[chosen], grads[chosen], max_norm, norm_type)
    total = utils.clip_grad_norm_(target, max_norm, norm_type)
    assert isinstance(total, np.ndarray) and total.shape == () and total.dtype == want_total.dtype
    assert_close(total, want_total, dtype, "total norm")
    assert_grads(params[chosen], want_grads, dtype)
    if form == "subset":   # parameters not passed keep their grads exactly
        for i in (0, len(params) - 1):
            np.testing.assert_array_equal(params[i].grad, grads[i])


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_norm_matches_numpy_reference(dtype, form, norm_type, rng):
    values, grads = make_case(rng, dtype, norm_type, scale=3.0)
    target, params = build(form, values, grads)
    chosen = slice(1, -1) if form == "subset" else slice(None)
    want = reference_total_norm(grads[chosen], norm_type)
    total = utils.clip_grad_norm_(target, 1.0, norm_type)
    assert total.dtype == dtype
    assert_close(total, want, dtype)
    coef = min(1.0 / (want + 1e-6), 1.0)
    for p, g in zip(params[chosen], grads[chosen]):
        if g is not None:
            assert_close(p.grad, g * coef, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_kernels_equal_serial_bit_for_bit_and_torch(dtype, rng):
    # a large arena spans many chunks; the same chunk partition gives the same bits
    shapes = [(40000,), (3,), (20000, 2), (0,), ()]
    values, grads = make_case(rng, dtype, 2.0, shapes=shapes, none=(1,))
    runs = {}
    for name, threshold in (("serial", 1 << 62), ("parallel", 0)):
        opt, params = build("optimizer", values, grads)
        opt.parallel_threshold = threshold
        total = utils.clip_grad_norm_(opt, 1.0)
        clipped = [None if p.grad is None else p.grad.copy() for p in params]
        utils.clip_grad_value_(opt, 1e-4)
        runs[name] = (total, clipped, [p.grad for p in params])
    (t_s, c_s, v_s), (t_p, c_p, v_p) = runs["serial"], runs["parallel"]
    np.testing.assert_array_equal(t_s, t_p)
    for a, b in zip(c_s + v_s, c_p + v_p):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    want_total, want_grads = torch_clip_norm(values, grads, 1.0, 2.0)
    assert_close(t_s, want_total, dtype)
    for a, b in zip(c_s, want_grads):
        if b is not None:
            assert_close(a, b, dtype)


def test_optimizer_path_is_one_kernel_pass_not_numpy(monkeypatch, rng):
    values, grads = make_case(rng, np.float64, 2.0)
    opt, params = build("optimizer", values, grads)

    def numpy_path(*args):
        raise AssertionError("the NumPy fallback ran for parameters in one arena")
    monkeypatch.setattr(utils, "_total_norm_numpy", numpy_path)
    utils.clip_grad_norm_(opt, 0.1)
    utils.clip_grad_norm_(params, 0.1)
    utils.clip_grad_norm_(params[2:], 0.1)


def test_parameters_without_grad_keep_their_grad_buffer(rng):
    # a has_grad=False parameter's stale arena bytes must be neither counted nor scaled
    values, grads = make_case(rng, np.float64, 2.0, none=())
    opt, params = build("optimizer", values, grads)
    params[0].grad = None
    lo, hi = opt.arena.offsets[0], opt.arena.offsets[1]
    stale = opt.arena.grad[lo:hi].copy()
    total = utils.clip_grad_norm_(opt, 0.1)
    assert_close(total, reference_total_norm([None] + grads[1:], 2.0))
    np.testing.assert_array_equal(opt.arena.grad[lo:hi], stale)
    utils.clip_grad_value_(opt, 1e-3)
    np.testing.assert_array_equal(opt.arena.grad[lo:hi], stale)
    assert params[0].grad is None


@pytest.mark.parametrize("form", FORMS)
def test_no_gradients_and_empty_inputs_give_float32_zero_like_torch(form, rng):
    values, grads = make_case(rng, np.float64, 2.0, none=range(len(SHAPES)))
    target, params = build(form, values, grads)
    total = utils.clip_grad_norm_(target, 1.0)
    assert total.shape == () and total.dtype == np.float32 and total == 0   # torch.tensor(0.)
    assert all(p.grad is None for p in params)
    assert utils.clip_grad_norm_([], 1.0) == 0


def test_empty_generator_warns_like_torch():
    with pytest.warns(UserWarning, match="`parameters` is an empty generator"):
        assert utils.clip_grad_norm_((p for p in []), 1.0) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        utils.clip_grad_norm_([], 1.0)          # a list is not a generator: no warning


@pytest.mark.parametrize("in_optimizer", [False, True])
def test_single_parameter_and_0d(in_optimizer):
    p = P(np.array(2.0))
    if in_optimizer:
        optim.Adam([p])
    p.grad = np.array(-5.0)
    total = utils.clip_grad_norm_(p, 1.0)
    assert total == 5.0 and total.dtype == np.float64
    assert_close(p.grad, np.array(-5.0 / (5.0 + 1e-6)))
    utils.clip_grad_value_(p, 0.5)
    assert p.grad == -0.5


@pytest.mark.parametrize("norm_type", [2.0, "inf"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_nonfinite_norm_error_has_torchs_message_or_scales_like_torch(bad, form, norm_type, rng):
    values, grads = make_case(rng, np.float64, norm_type)
    grads[-2][...] = bad                    # shape (5,): in every form's selection
    target, params = build(form, values, grads)
    chosen = slice(1, -1) if form == "subset" else slice(None)
    with pytest.raises(RuntimeError) as theirs:
        torch_clip_norm(values[chosen], grads[chosen], 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as ours:
        utils.clip_grad_norm_(target, 1.0, norm_type, error_if_nonfinite=True)
    assert str(ours.value) == str(theirs.value)
    for p, g in zip(params, grads):          # refused: nothing was scaled
        if g is not None:
            np.testing.assert_array_equal(p.grad, g)
    # without the flag, the grads are scaled by the non-finite norm, as in torch
    want_total, want_grads = torch_clip_norm(values[chosen], grads[chosen], 1.0, norm_type)
    total = utils.clip_grad_norm_(target, 1.0, norm_type)
    np.testing.assert_array_equal(total, want_total)
    for p, w in zip(params[chosen], want_grads):
        if w is not None:
            np.testing.assert_array_equal(p.grad, w)


@pytest.mark.parametrize("norm_type", ["inf", "-inf", -1.0])
@pytest.mark.parametrize("form", ["optimizer", "loose"])
def test_zero_size_grad_without_identity_is_refused_like_torch(norm_type, form, rng):
    values, grads = make_case(rng, np.float64, 2.0, shapes=SHAPES)
    assert (0,) in SHAPES
    with pytest.raises(RuntimeError, match="identity"):
        torch_clip_norm(values, grads, 1.0, norm_type)
    target, params = build(form, values, grads)
    before = [None if p.grad is None else p.grad.copy() for p in params]
    with pytest.raises(RuntimeError, match="identity"):
        utils.clip_grad_norm_(target, 1.0, norm_type)
    for p, b in zip(params, before):
        if b is not None:
            np.testing.assert_array_equal(p.grad, b)


@pytest.mark.parametrize("form", FORMS)
def test_float32_overflow_matches_torch(form, rng):
    # torch squares in float32: 1e20**2 overflows, the norm is inf and the grads become 0
    values, grads = make_case(rng, np.float32, 2.0)
    grads[0][0, 0] = 1e20
    grads[3][:] = 1e19                       # squares fit, their float32 sum does not
    target, params = build(form, values, grads)
    chosen = slice(1, -1) if form == "subset" else slice(None)
    want_total, want_grads = torch_clip_norm(values[chosen], grads[chosen], 1.0, 2.0)
    with np.errstate(all="raise"):           # no NumPy warnings escape either
        total = utils.clip_grad_norm_(target, 1.0)
    np.testing.assert_array_equal(total, want_total)
    for p, w in zip(params[chosen], want_grads):
        if w is not None:
            np.testing.assert_array_equal(p.grad, w)


@pytest.mark.parametrize("form", FORMS)
def test_float32_overflow_without_torch(form, rng):
    # the same case, judged on what torch 2.13 gives: an inf norm and zeroed grads
    values, grads = make_case(rng, np.float32, 2.0)
    grads[-2][:] = 1e19                      # squares fit in float32, their sum does not
    target, params = build(form, values, grads)
    chosen = slice(1, -1) if form == "subset" else slice(None)
    total = utils.clip_grad_norm_(target, 1.0)
    assert total.dtype == np.float32 and total == np.inf
    for p, g in zip(params[chosen], grads[chosen]):
        if g is not None:
            np.testing.assert_array_equal(p.grad, 0 * g)


def test_nonfinite_message_is_torchs_text_without_torch():
    p = P(np.zeros(2))
    p.grad = np.array([np.inf, 1.0])
    for norm_type, order in ((2, "2.0"), ("inf", "inf"), (1.0, "1.0")):
        with pytest.raises(RuntimeError) as info:
            utils.clip_grad_norm_(p, 1.0, norm_type, error_if_nonfinite=True)
        assert str(info.value) == (
            f"The total norm of order {order} for gradients from `parameters` is non-finite, "
            "so it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`")


def test_duplicates_and_parameters_of_two_optimizers_match_torch(rng):
    values, grads = make_case(rng, np.float64, 2.0, none=())
    params = [P(v.copy()) for v in values]
    optim.SGD(params[:2])
    optim.Adam(params[2:])
    for p, g in zip(params, grads):
        p.grad = g
    listed = params + [params[0]]             # torch counts and scales a repeat twice
    want_total, want_grads = torch_clip_norm(values + [values[0]], grads + [grads[0]], 0.5, 2.0)
    total = utils.clip_grad_norm_(listed, 0.5)
    assert_close(total, want_total)
    # the repeated tensor was scaled twice in torch: compare with the torch copy's own grad
    for p, w in zip(params[1:], want_grads[1:len(params)]):
        assert_close(p.grad, w)
    coef = min(0.5 / (float(want_total) + 1e-6), 1.0)
    assert_close(params[0].grad, grads[0] * coef * coef)


def test_mixed_dtypes_of_loose_parameters_promote_like_torch(rng):
    values = [rng.standard_normal(3), rng.standard_normal((2, 2)).astype(np.float32)]
    grads = [rng.standard_normal(3), rng.standard_normal((2, 2)).astype(np.float32)]
    params = [P(v.copy()) for v in values]
    for p, g in zip(params, grads):
        p.grad = g
    want_total, want_grads = torch_clip_norm(values, grads, 0.5, 2.0)
    total = utils.clip_grad_norm_(params, 0.5)
    assert total.dtype == want_total.dtype == np.float64
    assert_close(total, want_total, np.float32)
    for p, w in zip(params, want_grads):
        assert p.grad.dtype == w.dtype
        assert_close(p.grad, w, p.dtype)


def test_bad_arguments():
    with pytest.raises(TypeError, match="numbaopt.Parameter"):
        utils.clip_grad_norm_([np.zeros(3)], 1.0)
    with pytest.raises(TypeError, match="numbaopt.Parameter"):
        utils.clip_grad_value_(np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="could not convert string to float: 'fro'"):
        utils.clip_grad_norm_([P(np.zeros(3))], 1.0, "fro")   # torch: float(norm_type)


def test_no_recompilation(rng):
    values, grads = make_case(rng, np.float32, "inf")     # no zero-size parameter
    opt, params = build("optimizer", values, grads)
    utils.clip_grad_norm_(opt, 1e-3)
    utils.clip_grad_value_(opt, 1e-3)
    kernels = (utils._grad_norm_cpu, utils._scale_grads_cpu, utils._clamp_grads_cpu)
    counts = [len(k.signatures) for k in kernels]
    for max_norm, norm_type, value in [(1, 2, 1), (0.5, "inf", 2), (np.float32(1e-3), 1, 0)]:
        for p, g in zip(params, grads):
            p.grad = g
        utils.clip_grad_norm_(opt, max_norm, norm_type)
        utils.clip_grad_norm_(params[1:], max_norm, norm_type)
        utils.clip_grad_value_(opt, value)
    assert [len(k.signatures) for k in kernels] == counts


# -- clip_grad_value_ ------------------------------------------------------------------------
def reference_clip_value(g, clip_value):
    """torch's clamp_(min=-c, max=c): NaN stays NaN, a NaN bound gives NaN, min > max gives max."""
    T = g.dtype.type
    if np.isnan(clip_value):
        return np.full_like(g, np.nan)
    return np.minimum(np.maximum(g, T(-clip_value)), T(clip_value))


@pytest.mark.parametrize("oracle", ["reference", "torch"])
@pytest.mark.parametrize("clip_value", [0.5, 0, -0.3, np.inf, np.nan, 1e-30])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_value_matches_reference_and_torch(dtype, form, clip_value, oracle, rng):
    values, grads = make_case(rng, dtype, 2.0)
    grads[0][0, :3] = [np.nan, np.inf, -np.inf]
    target, params = build(form, values, grads)
    chosen = slice(1, -1) if form == "subset" else slice(None)
    if oracle == "torch":
        torch = pytest.importorskip("torch")
        ts = [torch.tensor(v, requires_grad=True) for v in values[chosen]]
        for t, g in zip(ts, grads[chosen]):
            t.grad = None if g is None else torch.tensor(g)
        assert torch.nn.utils.clip_grad_value_(ts, clip_value) is None
        want = [None if t.grad is None else t.grad.numpy() for t in ts]
    else:
        want = [None if g is None else reference_clip_value(g, clip_value) for g in grads[chosen]]
    assert utils.clip_grad_value_(target, clip_value) is None
    for p, w in zip(params[chosen], want):
        assert (p.grad is None) == (w is None)
        if w is not None:
            np.testing.assert_array_equal(p.grad, w)        # a clamp is exact
    for i in (0, len(params) - 1) if form == "subset" else ():
        np.testing.assert_array_equal(params[i].grad, grads[i])
