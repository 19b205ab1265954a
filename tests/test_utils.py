"""numbaopt.utils against torch.nn.utils (live), a NumPy reference, hand-computed
numbers, and itself: clip_grad_norm_, clip_grad_value_, get_total_norm,
clip_grads_with_norm_, parameters_to_vector and vector_to_parameters.

Inputs come in four forms that take different code paths: the optimizer (arena
kernel over every parameter), a list of its parameters (arena kernel, masked),
a subset of them, and loose Parameters in no optimizer (NumPy fallback).
get_total_norm takes arrays: an arena's grad views (in order or not: the kernel
over the grad buffer) or other arrays (NumPy).
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


# -- get_total_norm --------------------------------------------------------------------------
ARRAY_FORMS = ("arena", "reordered", "loose")


def grad_arrays(form, values, grads):
    """The arrays to pass to get_total_norm, and the gradients they hold (same order)."""
    kept = [g for g in grads if g is not None]
    if form == "loose":
        return [g.copy() for g in kept], kept
    _, params = build("optimizer", values, grads)
    arrays = [p.grad for p in params if p.grad is not None]
    if form == "reordered":                 # views of the grad buffer, not in arena order
        return arrays[::-1] + arrays[:1], kept[::-1] + kept[:1]
    return arrays, kept


def torch_total_norm(arrays, norm_type, **kw):
    torch = pytest.importorskip("torch")
    return torch.nn.utils.get_total_norm([torch.tensor(a) for a in arrays], norm_type,
                                         **kw).numpy()


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("form", ARRAY_FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_get_total_norm_matches_torch_and_reference(dtype, form, norm_type, rng):
    values, grads = make_case(rng, dtype, norm_type, scale=3.0)
    arrays, held = grad_arrays(form, values, grads)
    total = utils.get_total_norm(arrays, norm_type)
    assert isinstance(total, np.ndarray) and total.shape == () and total.dtype == dtype
    assert_close(total, reference_total_norm(held, norm_type), dtype, "reference")
    want = torch_total_norm(held, norm_type)
    assert total.dtype == want.dtype
    assert_close(total, want, dtype, "torch")


def test_get_total_norm_hand_computed():
    a, b = np.array([3.0, -4.0]), np.array([[12.0]])
    # the norm of the norms: [|(3, -4)|, |12|]; so for p = 0 the count of non-zero arrays
    for norm_type, want in ((2, 13.0), (1, 19.0), ("inf", 12.0), (0, 2.0), ("-inf", 3.0),
                            (0.5, (3 ** 0.5 + 2.0 + 12 ** 0.5) ** 2),
                            (-1.0, 1 / (1 / 3 + 1 / 4 + 1 / 12))):
        assert_close(utils.get_total_norm([a, b], norm_type), want)
    assert utils.get_total_norm((a, b)) == 13.0          # any iterable
    assert utils.get_total_norm(a) == 5.0                # one array, as torch takes one tensor
    assert utils.get_total_norm(P(a)) == 5.0             # a Parameter is its data
    f32 = utils.get_total_norm([a.astype(np.float32), np.ones(3, np.float32)])
    assert f32.dtype == np.float32 and f32 == np.float32(np.sqrt(np.float32(28.0)))


def test_get_total_norm_of_arena_grads_is_clip_grad_norms_kernel_bit_for_bit(monkeypatch, rng):
    values, grads = make_case(rng, np.float32, 2.0, shapes=[(40000,), (3, 4), (0,), (), (5,)])
    opt, params = build("optimizer", values, grads)
    arrays = [p.grad for p in params if p.grad is not None]

    def numpy_path(*args):
        raise AssertionError("the NumPy fallback ran for views of one grad arena")
    monkeypatch.setattr(utils, "_total_norm_numpy", numpy_path)
    for norm_type in (2.0, 1.0, 3.0, 0.0):
        total = utils.get_total_norm(arrays, norm_type)
        np.testing.assert_array_equal(total, utils.clip_grad_norm_(opt, 1e30, norm_type))
    utils.get_total_norm(arrays[::-1], 0.5)              # reordered views: the kernel too
    utils.get_total_norm(arrays + arrays[:1])            # a repeat, counted twice (below)
    monkeypatch.undo()
    twice = utils.get_total_norm(arrays + arrays[:1])
    assert_close(twice, reference_total_norm(grads + grads[:1], 2.0), np.float32)
    with pytest.raises(AssertionError, match="NumPy fallback"):   # the patch did bite
        monkeypatch.setattr(utils, "_total_norm_numpy", numpy_path)
        utils.get_total_norm([a.copy() for a in arrays])


def test_get_total_norm_of_other_views_and_readonly_arrays(rng):
    buf = rng.standard_normal(50)
    views = [buf[10:20].reshape(2, 5), buf[:3], buf[40:]]    # one buffer: the kernel path
    strided = [buf[::2], buf[1:4]]                          # not contiguous: NumPy
    ro = buf.copy()
    ro.flags.writeable = False
    readonly = [ro[:7], ro[7:]]                             # read-only buffer: NumPy
    for arrays in (views, strided, readonly):
        assert_close(utils.get_total_norm(arrays), reference_total_norm(arrays, 2.0))


def test_get_total_norm_half_complex_and_mixed_dtypes_like_torch(rng):
    torch = pytest.importorskip("torch")
    half = [rng.standard_normal(7).astype(np.float16) * 300, np.ones(3, np.float16)]
    cplx = [(rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64)]
    mixed = [rng.standard_normal(3).astype(np.float32), rng.standard_normal(2)]
    for arrays, norm_type in ((half, 2.0), (half, 3.0), (cplx, 2.0), (cplx + mixed, 1.0),
                              (mixed, "inf")):
        total = utils.get_total_norm(arrays, norm_type)
        want = torch.nn.utils.get_total_norm([torch.tensor(a) for a in arrays], norm_type).numpy()
        assert total.dtype == want.dtype
        # float16 has an 11-bit mantissa: both round the same float32 norm to it
        np.testing.assert_allclose(total, want, rtol=1e-3 if total.dtype == np.float16 else 1e-5)


def test_get_total_norm_empty_and_bad_input_like_torch():
    total = utils.get_total_norm([])
    assert total.shape == () and total.dtype == np.float32 and total == 0   # torch.tensor(0.)
    assert utils.get_total_norm(a for a in []) == 0
    with pytest.raises(ValueError, match="could not convert string to float: 'fro'"):
        utils.get_total_norm([], "fro")
    with pytest.raises(RuntimeError, match="Expected a floating point or complex"):
        utils.get_total_norm([np.arange(3)])
    with pytest.raises(TypeError, match="NoneType.*without a gradient"):
        utils.get_total_norm([np.ones(2), None])
    with pytest.raises(TypeError, match="got list"):
        utils.get_total_norm([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"p.grad for p in params"):
        utils.get_total_norm(optim.SGD([P(np.ones(2))]))
    for norm_type in ("inf", "-inf", -2.0):
        with pytest.raises(RuntimeError, match="identity"):
            utils.get_total_norm([np.ones(2), np.ones(0)], norm_type)
    assert utils.get_total_norm([np.ones(0)]) == 0


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_get_total_norm_nonfinite_error_is_torchs(bad):
    arrays = [np.array([1.0, bad]), np.ones(3)]
    for norm_type in (2.0, "inf", 1):
        with pytest.raises(RuntimeError) as ours:
            utils.get_total_norm(arrays, norm_type, error_if_nonfinite=True)
        assert str(ours.value).startswith(f"The total norm of order {float(norm_type)} for")
        assert np.array_equal(utils.get_total_norm(arrays, norm_type), bad, equal_nan=True)
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError) as theirs:
        torch_total_norm(arrays, 2.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as ours:
        utils.get_total_norm(arrays, 2.0, error_if_nonfinite=True, foreach=True)
    assert str(ours.value) == str(theirs.value)


# -- clip_grads_with_norm_ -------------------------------------------------------------------
@pytest.mark.parametrize("total_dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grads_with_norm_matches_torch(dtype, form, total_dtype, rng):
    torch = pytest.importorskip("torch")
    values, grads = make_case(rng, dtype, 2.0)
    target, params = build(form, values, grads)
    chosen = slice(1, -1) if form == "subset" else slice(None)
    for value in (7.123456789, 1e-3, np.inf, np.nan):       # coef < 1, 1 (clamped), 0, nan
        ts = [torch.tensor(v, requires_grad=True) for v in values[chosen]]
        for t, p in zip(ts, params[chosen]):
            t.grad = None if p.grad is None else torch.tensor(p.grad)
        torch.nn.utils.clip_grads_with_norm_(ts, 0.5, torch.tensor(value, dtype=getattr(
            torch, np.dtype(total_dtype).name)))
        assert utils.clip_grads_with_norm_(target, 0.5, np.array(value, total_dtype)) is None
        for p, t in zip(params[chosen], ts):
            assert (p.grad is None) == (t.grad is None)
            if t.grad is not None:
                assert p.grad.dtype == dtype
                np.testing.assert_array_equal(p.grad, t.grad.numpy())   # one rounding each
    if form == "subset":
        for i in (0, len(params) - 1):
            np.testing.assert_array_equal(params[i].grad, grads[i])


@pytest.mark.parametrize("form", ["optimizer", "params", "loose"])
def test_clip_grads_with_norm_hand_computed_in_place(form):
    values = [np.zeros(2), np.zeros(()), np.zeros(3)]
    grads = [np.array([3.0, 4.0]), None, np.array([1.0, 2.0, 2.0])]
    target, params = build(form, values, grads)
    views = [p.grad for p in params]
    utils.clip_grads_with_norm_(target, 1.0, np.float64(5.0))   # a NumPy scalar works too
    coef = 1.0 / (5.0 + 1e-6)
    assert_close(params[0].grad, np.array([3.0, 4.0]) * coef)
    assert_close(params[2].grad, np.array([1.0, 2.0, 2.0]) * coef)
    assert params[1].grad is None                               # skipped, still no grad
    assert all(v is None or p.grad is v for p, v in zip(params, views))   # in place
    if form != "loose":
        assert np.shares_memory(params[0].grad, params[0]._arena.grad)
    utils.clip_grads_with_norm_(target, 10.0, np.array(5.0))    # coef clamped to 1: no change
    assert_close(params[0].grad, np.array([3.0, 4.0]) * coef)


def test_clip_grads_with_norm_float32_coefficient_rounding():
    # torch computes the coefficient in the norm's dtype, then casts it to the grads'
    g = np.array([1.1, 2.3, 3.7], np.float32)
    p = P(np.zeros(3, np.float32))
    optim.SGD([p])
    for total in (np.array(7.123456789), np.array(7.123456789, np.float32)):
        p.grad = g
        utils.clip_grads_with_norm_(p, 1.0, total)
        T = total.dtype.type
        coef = min((T(1) / (T(total) + T(1e-6))) * T(1.0), T(1))
        np.testing.assert_array_equal(p.grad, g * np.float32(coef))


def test_clip_grads_with_norm_bad_total_refused_like_torch_and_nothing_changes(rng):
    values, grads = make_case(rng, np.float64, 2.0)
    opt, params = build("optimizer", values, grads)
    for bad, error, match in ((5.0, TypeError, "not float"),
                              (np.array([20.0]), RuntimeError, "expected to be 0 dim but it has 1"),
                              (np.array(20 + 0j), NotImplementedError, "not supported for complex"),
                              (None, TypeError, "not NoneType")):
        with pytest.raises(error, match=match):
            utils.clip_grads_with_norm_(opt, 1.0, bad)
    with pytest.raises(ValueError, match="could not convert"):
        utils.clip_grads_with_norm_(opt, "x", np.array(1.0))
    for p, g in zip(params, grads):
        assert (p.grad is None) == (g is None)
        if g is not None:
            np.testing.assert_array_equal(p.grad, g)
    p = P(np.ones(3))
    p.grad = np.full(3, 10.0)
    utils.clip_grads_with_norm_(p, 1.0, np.array(20))          # an integer norm is float32
    np.testing.assert_array_equal(p.grad, 10.0 * np.float32(np.float32(1) / np.float32(20 + 1e-6)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # torch does not warn here
        utils.clip_grads_with_norm_((q for q in []), 1.0, np.array(1.0))


def test_clip_grad_norm_is_get_total_norm_then_clip_grads_with_norm(rng):
    for form in FORMS:
        for norm_type in (2.0, "inf", 0.5):
            values, grads = make_case(rng, np.float32, norm_type)
            target_a, params_a = build(form, values, grads)
            target_b, params_b = build(form, values, grads)
            total_a = utils.clip_grad_norm_(target_a, 0.3, norm_type)
            chosen = params_b[1:-1] if form == "subset" else params_b
            total_b = utils.get_total_norm([p.grad for p in chosen if p.grad is not None],
                                           norm_type)
            utils.clip_grads_with_norm_(target_b, 0.3, total_b)
            np.testing.assert_array_equal(total_a, total_b)
            for a, b in zip(params_a, params_b):
                assert (a.grad is None) == (b.grad is None)
                if a.grad is not None:
                    np.testing.assert_array_equal(a.grad, b.grad)


@pytest.mark.parametrize("form", ["optimizer", "loose"])
@pytest.mark.parametrize("norm_type", [0.5, 1.5, 2, 4, "inf"])
def test_torchs_clip_grad_norm_test_decomposed(norm_type, form):
    # torch's test_clip_grad_norm (test/test_nn.py) on an nn.Linear(10, 10)'s two grads,
    # with its compute_norm written in NumPy
    max_norm = 2
    values = [np.zeros((10, 10), np.float32), np.zeros(10, np.float32)]

    def compute_norm(params):
        p = float(norm_type)
        gs = [q.grad.astype(np.float64) for q in params]
        if p == math.inf:
            return max(np.abs(g).max() for g in gs)
        return sum((np.abs(g) ** p).sum() for g in gs) ** (1 / p)

    def compare_scaling(params, grads):
        scale = np.concatenate([(p.grad / g).reshape(-1) for p, g in zip(params, grads)])
        np.testing.assert_allclose(scale.std(), 0, atol=1e-6)
        return scale[0]

    for api in ("clip_grad_norm_", "decomposed"):
        grads = [np.arange(1.0, 101, dtype=np.float32).reshape(10, 10),
                 np.ones(10, np.float32) / 1000]
        target, params = build(form, values, grads)
        norm_before = compute_norm(params)
        if api == "clip_grad_norm_":
            norm = utils.clip_grad_norm_(target, max_norm, norm_type=norm_type, foreach=True)
        else:
            norm = utils.get_total_norm([p.grad for p in params], norm_type=norm_type)
            utils.clip_grads_with_norm_(target, max_norm, norm, foreach=False)
        norm_after = compute_norm(params)
        assert_close(norm, norm_before, np.float32)
        assert_close(norm_after, max_norm, np.float32)
        assert norm_after <= norm_before
        compare_scaling(params, grads)

    # small gradients are left unchanged
    grads = [np.random.default_rng(0).random((10, 10), dtype=np.float32) / 10000,
             np.ones(10, np.float32) / 500]
    target, params = build(form, values, grads)
    norm_before = compute_norm(params)
    norm = utils.clip_grad_norm_(target, max_norm, norm_type=norm_type)
    assert_close(norm, norm_before, np.float32)
    assert compute_norm(params) == norm_before
    assert compare_scaling(params, grads) == 1

    # one Parameter or a list of it
    g = np.arange(1.0, 101, dtype=np.float32).reshape(10, 10)
    p1, p2 = P(np.zeros((10, 10), np.float32)), P(np.zeros((10, 10), np.float32))
    p1.grad, p2.grad = g, g
    utils.clip_grad_norm_(p1, max_norm, norm_type=norm_type)
    utils.clip_grad_norm_([p2], max_norm, norm_type=norm_type)
    np.testing.assert_array_equal(p1.grad, p2.grad)


def test_no_recompilation_of_the_decomposed_functions(rng):
    values, grads = make_case(rng, np.float64, 2.0)
    opt, params = build("optimizer", values, grads)
    arrays = [p.grad for p in params if p.grad is not None]
    utils.get_total_norm(arrays)
    utils.clip_grads_with_norm_(opt, 0.1, np.array(3.0))
    kernels = (utils._grad_norm_cpu, utils._scale_grads_cpu)
    counts = [len(k.signatures) for k in kernels]
    for norm_type in (1, 2.0, np.float32(3)):
        utils.get_total_norm(arrays[::-1], norm_type)
        utils.clip_grads_with_norm_(params, np.float32(0.1), np.array(3.0, np.float32))
    assert [len(k.signatures) for k in kernels] == counts


# -- parameters_to_vector / vector_to_parameters ---------------------------------------------
# torch's test model, nn.Sequential(nn.Conv2d(3, 10, 5), nn.Linear(10, 20)): 980 values
MODEL_SHAPES = ((10, 3, 5, 5), (10,), (20, 10), (20,))


def model(rng, dtype=np.float32, optimizer=True):
    params = [P(rng.standard_normal(s).astype(dtype)) for s in MODEL_SHAPES]
    opt = optim.SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1) if optimizer else None
    return opt, params


@pytest.mark.parametrize("optimizer", [True, False], ids=["arena", "loose"])
def test_torchs_parameters_to_vector_and_back(optimizer, rng):
    opt, params = model(rng, optimizer=optimizer)
    vec = utils.parameters_to_vector(iter(params))           # torch passes a generator
    assert vec.shape == (980,) and vec.dtype == np.float32
    np.testing.assert_array_equal(vec, np.concatenate([p.data.reshape(-1) for p in params]))
    vec = np.arange(0.0, 980)
    assert utils.vector_to_parameters(vec, iter(params)) is None
    np.testing.assert_array_equal(params[0].data[0, 0, 0], vec[:5])
    np.testing.assert_array_equal(params[-1].data, vec[-20:])
    if optimizer:                                             # still the arena's views
        assert all(np.shares_memory(p.data, opt.arena.data) for p in params)
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(p.data) for p in params]
    np.testing.assert_array_equal(torch.nn.utils.parameters_to_vector(ts).numpy(),
                                  utils.parameters_to_vector(params))


def test_parameters_to_vector_of_one_optimizer_is_its_arena_no_copy(rng):
    opt, params = model(rng)
    for given in (opt, params, opt.param_groups[0]["params"] + opt.param_groups[1]["params"]):
        vec = utils.parameters_to_vector(given)
        assert vec is opt.arena.data
        assert all(np.shares_memory(vec, p.data) for p in params)
    vec[:] = 1.5                                              # writes go into the parameters
    assert all((p.data == 1.5).all() for p in params)
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()                                                # and the vector sees the step
    np.testing.assert_array_equal(vec, np.full(980, 1.5 - 0.1, np.float32))
    group = utils.parameters_to_vector(opt.param_groups[1]["params"])   # consecutive: a view
    assert group.base is opt.arena.data and group.size == 220
    assert np.shares_memory(group, params[2].data) and not np.shares_memory(group, params[0].data)
    np.testing.assert_array_equal(group, np.concatenate([params[2].data.reshape(-1),
                                                         params[3].data]))


def test_parameters_to_vector_copies_otherwise(rng):
    opt, params = model(rng)
    other = P(rng.standard_normal(4).astype(np.float32))
    optim.Adam([other])
    loose = [P(rng.standard_normal(3)), P(np.float32(2.0))]
    for given in (params[::-1], [params[0], params[2]], params + params[:1], params + [other],
                  loose, [loose[1]]):
        vec = utils.parameters_to_vector(given)
        assert not any(np.shares_memory(vec, p.data) for p in given)
        np.testing.assert_array_equal(vec, np.concatenate([p.data.reshape(-1) for p in given]))
    assert utils.parameters_to_vector(loose).dtype == np.float64   # promoted, as torch.cat
    with pytest.raises(ValueError, match="expected a non-empty list"):
        utils.parameters_to_vector([])
    with pytest.raises(TypeError, match="numbaopt.Parameter"):
        utils.parameters_to_vector([np.ones(3)])


def test_parameters_to_vector_after_add_param_group_and_takeover(rng):
    opt, params = model(rng)
    extra = P(np.ones(5, np.float32))
    opt.add_param_group({"params": [extra]})
    vec = utils.parameters_to_vector(opt)
    assert vec is opt.arena.data and vec.size == 985 and np.shares_memory(vec, extra.data)
    optim.SGD([params[1]], lr=0.1)                           # another optimizer takes one over
    vec = utils.parameters_to_vector(opt)
    assert not np.shares_memory(vec, params[0].data)         # no longer one arena: a copy
    np.testing.assert_array_equal(vec, np.concatenate([p.data.reshape(-1)
                                                       for p in params + [extra]]))


@pytest.mark.parametrize("optimizer", [True, False], ids=["arena", "loose"])
def test_vector_to_parameters_refusals_like_torch_and_nothing_changes(optimizer, rng):
    opt, params = model(rng, optimizer=optimizer)
    before = [p.data.copy() for p in params]
    cases = [([1.0] * 980, TypeError, "expected numpy.ndarray, but got: list"),
             (np.ones(975), RuntimeError, r"shape '\[20\]' is invalid for input of size 15"),
             (np.ones(5), RuntimeError, r"shape '\[10, 3, 5, 5\]' is invalid for input of size 5"),
             (np.ones(981), RuntimeError, "vec has 981 elements but the parameters have 980"),
             (np.ones((980, 1)), RuntimeError, "1-D"),
             (np.array(1.0), IndexError, "0-dim"),
             (np.ones(980, complex), TypeError, "real numeric")]
    for vec, error, match in cases:
        with pytest.raises(error, match=match):
            utils.vector_to_parameters(vec, params)
    with pytest.raises(TypeError, match="numbaopt.Parameter"):
        utils.vector_to_parameters(np.ones(980), params[:3] + [np.ones(20)])
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)
    torch = pytest.importorskip("torch")                     # the same messages in torch
    ts = [torch.zeros(s) for s in MODEL_SHAPES]
    with pytest.raises(TypeError, match="but got: list"):
        torch.nn.utils.vector_to_parameters([1.0] * 980, ts)
    for n, match in ((975, r"shape '\[20\]' is invalid for input of size 15"),
                     (5, r"shape '\[10, 3, 5, 5\]' is invalid for input of size 5")):
        with pytest.raises(RuntimeError, match=match):
            torch.nn.utils.vector_to_parameters(torch.ones(n), ts)


def test_vector_to_parameters_casts_copies_and_handles_aliasing(rng):
    opt, params = model(rng)
    vec = rng.standard_normal(980)                          # float64 into float32 parameters
    utils.vector_to_parameters(vec, opt)
    np.testing.assert_array_equal(opt.arena.data, vec.astype(np.float32))
    vec[:] = 0                                              # copied in, not aliased
    assert opt.arena.data.any()
    snapshot = opt.arena.data.copy()
    utils.vector_to_parameters(utils.parameters_to_vector(opt), opt)   # its own arena: no-op
    np.testing.assert_array_equal(opt.arena.data, snapshot)
    # the source is the parameters' own arena, read in another order: as from a snapshot
    utils.vector_to_parameters(opt.arena.data, params[::-1])
    pointer = 0
    for p in params[::-1]:
        np.testing.assert_array_equal(p.data.reshape(-1), snapshot[pointer:pointer + p.size])
        pointer += p.size
    loose = [P(np.zeros(2)), P(np.zeros((), np.float32))]
    utils.vector_to_parameters(np.array([1, 2, 3]), loose)   # integers cast, as p.data = ...
    assert loose[0].data.tolist() == [1.0, 2.0] and loose[1].data == 3
    utils.vector_to_parameters(np.zeros(0), [])             # nothing to fill, nothing left over


# -- device arenas -----------------------------------------------------------------------------
class _DeviceArray:
    __cuda_array_interface__ = {}


def test_device_arenas_are_refused_clearly(monkeypatch, rng):
    # a device="cuda" arena keeps device arrays; the vector functions refuse it before any
    # work (clipping runs on the device: tests/cuda/test_clip_cuda.py)
    opt, params = model(rng)
    monkeypatch.setattr(opt.arena, "grad", _DeviceArray())
    for call in (lambda: utils.parameters_to_vector(opt),
                 lambda: utils.parameters_to_vector(params),
                 lambda: utils.vector_to_parameters(np.zeros(980), params)):
        with pytest.raises(NotImplementedError, match="device='cpu'"):
            call()
    for call in (lambda: utils.get_total_norm([_DeviceArray()]),
                 lambda: utils.vector_to_parameters(_DeviceArray(), [])):
        with pytest.raises(NotImplementedError, match="host"):
            call()


def test_the_cuda_clipping_kernels_compile_to_ptx():
    """Real CUDA compilation of numbaopt.kernels.cuda_clip, no GPU needed (NVVM from
    numba-cuda[cu12]); tests/cuda/test_clip_cuda.py runs them under the simulator."""
    from ptx import require_ptx
    cuda = require_ptx()
    from numba import types
    from numbaopt.kernels import cuda_clip
    for T in (types.float32, types.float64):
        common = (T[::1], types.boolean[::1], types.int64[:, ::1], types.float64)
        for kernel, sig in ((cuda_clip._partials_cuda, common + (types.float64[:, ::1],)),
                            (cuda_clip._scale_cuda, common), (cuda_clip._clamp_cuda, common)):
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            assert ".entry" in ptx
