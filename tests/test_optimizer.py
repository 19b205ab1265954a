"""Optimizer semantics: the arena, param_groups, grads, state_dict and validation."""

import copy

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from tolerance import assert_close

P = numbaopt.Parameter
ALL = [optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop, optim.Adagrad]


def make_params(rng, shapes=((3, 2), (4,), ()), dtype=np.float64):
    return [P(rng.standard_normal(s).astype(dtype)) for s in shapes]


# -- the arena ---------------------------------------------------------------------------
def test_arena_layout_and_views(rng):
    a, b, c = make_params(rng)
    before = [a.data.copy(), b.data.copy(), c.data.copy()]
    opt = optim.SGD([{"params": [a, b]}, {"params": [c], "lr": 0.5}], lr=0.1)
    arena = opt.arena
    assert arena.data.ndim == 1 and arena.data.flags.c_contiguous and arena.size == 11
    np.testing.assert_array_equal(arena.offsets, [0, 6, 10, 11])
    np.testing.assert_array_equal(arena.group_offsets, [0, 2, 3])
    np.testing.assert_array_equal(arena.param_group, [0, 0, 1])
    for p, v in zip((a, b, c), before):
        np.testing.assert_array_equal(p.data, v)           # values preserved
        assert np.shares_memory(p.data, arena.data)
    a.grad = np.ones((3, 2))
    assert np.shares_memory(a.grad, arena.grad)
    np.testing.assert_array_equal(arena.grad[:6], 1.0)


def test_original_array_is_not_updated_use_p_data(rng):
    original = rng.standard_normal(4)
    p = P(original)
    kept = p.data                     # the array passed in, kept before the optimizer exists
    opt = optim.SGD([p], lr=1.0)
    p.grad = np.ones(4)
    opt.step()
    np.testing.assert_array_equal(kept, original)        # the documented trap
    np.testing.assert_allclose(p.data, original - 1.0)   # the parameter moved


def test_writing_grads_straight_into_the_arena(rng):
    params = make_params(rng)
    opt = optim.SGD(params, lr=0.1)
    start = opt.arena.data.copy()
    opt.arena.grad[:] = 2.0
    with pytest.warns(UserWarning, match="no parameter has its has-grad flag set"):
        opt.step()                                # no flag set: every grad is None, nothing moves
    np.testing.assert_array_equal(opt.arena.data, start)
    opt.arena.has_grad[:] = True
    opt.step()
    np.testing.assert_allclose(opt.arena.data, start - 0.2)
    assert all(p.grad is not None for p in params)


def test_fortran_and_noncontiguous_inputs(rng):
    f = np.asfortranarray(rng.standard_normal((3, 4)))
    nc = rng.standard_normal((4, 6))[:, ::2]
    pf, pn = P(f), P(nc)
    opt = optim.SGD([pf, pn], lr=0.5)
    np.testing.assert_array_equal(pf.data, f)
    np.testing.assert_array_equal(pn.data, nc)
    pf.grad = np.asfortranarray(np.ones((3, 4)))
    pn.grad = np.ones((8, 6))[::2, ::2]
    opt.step()
    np.testing.assert_allclose(pf.data, f - 0.5)
    np.testing.assert_allclose(pn.data, nc - 0.5)


# -- gradients ---------------------------------------------------------------------------
def test_grad_assignment_copies_casts_and_checks_shape(rng):
    p = P(np.zeros((2, 3), np.float32))
    g = np.ones((2, 3))
    p.grad = g
    assert p.grad.dtype == np.float32 and not np.shares_memory(p.grad, g)
    g[:] = 5
    assert p.grad[0, 0] == 1
    with pytest.raises(ValueError, match="gradient shape"):
        p.grad = np.ones(3)                       # broadcastable, still refused
    with pytest.raises(TypeError, match="gradient must be a real numeric array"):
        p.grad = np.array([["a"] * 3] * 2)
    optim.SGD([p])
    with pytest.raises(ValueError, match=r"gradient shape \(3, 2\)"):
        p.grad = np.ones((3, 2))
    assert p.grad is not None and p.grad[0, 0] == 1      # refused assignment left it alone
    p.grad = None
    assert p.grad is None


def test_none_grad_skips_everything_including_weight_decay_and_step(rng):
    a, b = make_params(rng, ((3,), (2,)))
    b0 = b.data.copy()
    opt = optim.Adam([a, b], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        a.grad = np.ones(3)
        opt.step()
    np.testing.assert_array_equal(b.data, b0)
    assert opt.state[a]["step"] == 3 and b not in opt.state and opt.state[b] == {}
    b.grad = np.ones(2)
    opt.step()
    assert opt.state[a]["step"] == 4 and opt.state[b]["step"] == 1   # per-parameter counts


def test_sgd_momentum_buffer_starts_as_first_gradient():
    p = P(np.zeros(2))
    opt = optim.SGD([p], lr=1.0, momentum=0.9, dampening=0.5)
    p.grad = np.array([1.0, 2.0])
    opt.step()
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], [1.0, 2.0])
    opt.step()
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], [0.9 + 0.5, 1.8 + 1.0])


def test_zero_grad(rng):
    a, b = make_params(rng, ((3,), (2,)))
    opt = optim.SGD([a, b], lr=0.1)
    a.grad = np.ones(3)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, 0.0)
    np.testing.assert_array_equal(b.grad, 0.0)    # every parameter has a zero gradient now
    opt.arena.grad[:] = 1.0                       # so writes into the arena are stepped
    before = opt.arena.data.copy()
    opt.step()
    np.testing.assert_array_equal(opt.arena.data, before - 0.1)
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_closure_called_once_and_loss_returned(rng):
    p = P(np.ones(2))
    opt = optim.SGD([p], lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        p.grad = 2 * p.data
        return float(np.sum(p.data ** 2))

    assert opt.step(closure) == 2.0 and len(calls) == 1
    np.testing.assert_allclose(p.data, 0.8)


# -- groups ------------------------------------------------------------------------------
def test_per_group_options_and_defaults(rng):
    base, head = make_params(rng, ((2,), (3,)))
    opt = optim.SGD([{"params": [base], "lr": 1e-2}, {"params": [head]}], lr=1e-3, momentum=0.9)
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[1]["lr"] == 1e-3
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    # torch's defaults, implementation flags included
    assert opt.defaults == dict(lr=1e-3, momentum=0.9, dampening=0, weight_decay=0,
                                nesterov=False, maximize=False, foreach=None,
                                differentiable=False, fused=None)


def test_changing_a_group_option_takes_effect_next_step():
    p = P(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    p.grad = np.ones(1)
    opt.step()
    opt.param_groups[0]["lr"] = 0.25
    opt.step()
    np.testing.assert_allclose(p.data, [-1.25])
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1.0 \(param group 0"):
        opt.step()
    np.testing.assert_allclose(p.data, [-1.25])  # refused step changed nothing


def test_add_param_group_keeps_values_grads_and_state(rng):
    a, b = make_params(rng, ((3,), (2,)))
    opt = optim.Adam([a], lr=0.1)
    a.grad = np.ones(3)
    opt.step()
    state_before = {k: np.copy(v) for k, v in opt.state[a].items()}
    a_before = a.data.copy()
    b_before = b.data.copy()
    opt.add_param_group({"params": b, "lr": 0.01})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["betas"] == (0.9, 0.999)
    np.testing.assert_array_equal(a.data, a_before)
    np.testing.assert_array_equal(b.data, b_before)
    np.testing.assert_array_equal(a.grad, 1.0)
    for k, v in state_before.items():
        np.testing.assert_array_equal(opt.state[a][k], v)
    assert np.shares_memory(b.data, opt.arena.data)
    b.grad = np.ones(2)
    opt.step()
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 1
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_adagrad_state_exists_from_construction():
    p = P(np.zeros(2))
    opt = optim.Adagrad([p], initial_accumulator_value=0.5)
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 0
    np.testing.assert_array_equal(sd["state"][0]["sum"], [0.5, 0.5])


def test_named_parameters_like_torch(rng):
    w, b = make_params(rng, ((2,), (1,)))
    opt = optim.SGD([("weight", w), ("bias", b)], lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]


def test_parameter_moved_to_a_new_optimizer_stops_the_old_one(rng):
    p, = make_params(rng, ((2,),))
    old = optim.SGD([p], lr=0.1)
    new = optim.Adam([p], lr=0.1)
    p.grad = np.ones(2)
    new.step()
    with pytest.raises(RuntimeError, match="another optimizer"):
        old.step()


# -- state_dict --------------------------------------------------------------------------
def _train(opt, params, rng_seed, steps):
    rng = np.random.default_rng(rng_seed)
    for k in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (k + i) % 4 == 1 else rng.standard_normal(p.shape)
        opt.step()


@pytest.mark.parametrize("cls, kwargs", [
    (optim.SGD, dict(lr=0.1, momentum=0.9)), (optim.Adam, dict(amsgrad=True)),
    (optim.AdamW, {}), (optim.RMSprop, dict(momentum=0.5, centered=True)),
    (optim.Adagrad, dict(lr_decay=0.1))])
def test_state_dict_round_trip_continues_bit_identically(cls, kwargs, rng):
    shapes = ((3, 2), (), (0,), (4,))
    params = make_params(rng, shapes)
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], **kwargs)
    _train(opt, params, 1, 7)
    sd = opt.state_dict()
    twins = [P(p.data.copy()) for p in params]
    twin = cls([{"params": twins[:2]}, {"params": twins[2:]}], **kwargs)
    twin.load_state_dict(sd)
    assert twin.param_groups[1]["lr"] == 0.05
    _train(opt, params, 2, 9)
    _train(twin, twins, 2, 9)
    for p, q in zip(params, twins):
        np.testing.assert_array_equal(p.data, q.data)
    a, b = opt.state_dict(), twin.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            np.testing.assert_array_equal(a["state"][i][k], b["state"][i][k])


def test_state_dict_holds_copies_and_load_copies_in(rng):
    p, = make_params(rng, ((3,),))
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones(3)
    opt.step()
    sd = opt.state_dict()
    assert not np.shares_memory(sd["state"][0]["exp_avg"], opt.arena.state["exp_avg"])
    sd["state"][0]["exp_avg"][:] = 123.0
    assert opt.state[p]["exp_avg"][0] != 123.0
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    sd["state"][0]["exp_avg"][:] = 7.0
    assert opt.state[p]["exp_avg"][0] != 7.0
    sd["param_groups"][0]["lr"] = 3.0
    assert opt.param_groups[0]["lr"] == 0.1


def test_state_dict_format_is_torchs(rng):
    a, b = make_params(rng, ((2,), (3,)))
    opt = optim.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}])
    a.grad = np.ones(2)
    opt.step()
    sd = opt.state_dict()
    assert list(sd) == ["state", "param_groups"]
    assert list(sd["state"]) == [0]
    assert list(sd["state"][0]) == ["step", "exp_avg", "exp_avg_sq"]
    assert sd["state"][0]["step"].shape == () and sd["state"][0]["step"] == 1
    assert sd["param_groups"][1]["params"] == [1] and sd["param_groups"][1]["lr"] == 0.5


def test_load_torch_state_dict_and_continue(rng):
    torch = pytest.importorskip("torch")
    shapes = ((3, 2), (4,))
    init = [rng.standard_normal(s) for s in shapes]
    tparams = [torch.tensor(x, requires_grad=True) for x in init]
    topt = torch.optim.Adam([{"params": tparams[:1]}, {"params": tparams[1:], "lr": 0.05}],
                            lr=0.01, amsgrad=True)
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(12)]
    for k in range(6):
        for t, g in zip(tparams, grads[k]):
            t.grad = torch.tensor(g)
        topt.step()
    tsd = topt.state_dict()
    converted = {"state": {i: {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in s.items()}
                           for i, s in tsd["state"].items()},
                 "param_groups": tsd["param_groups"]}
    params = [P(t.detach().numpy().copy()) for t in tparams]
    opt = optim.Adam([{"params": params[:1]}, {"params": params[1:]}])
    opt.load_state_dict(converted)
    assert opt.param_groups[1]["lr"] == 0.05 and opt.param_groups[0]["amsgrad"] is True
    # torch's implementation flags travel with the groups, as in torch
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == \
        {k: v for k, v in tsd["param_groups"][0].items() if k != "params"}
    assert opt.state_dict()["param_groups"] == tsd["param_groups"]
    for k in range(6, 12):
        for t, p, g in zip(tparams, params, grads[k]):
            t.grad = torch.tensor(g)
            p.grad = g
        topt.step()
        opt.step()
    for t, p in zip(tparams, params):
        assert_close(p.data, t.detach().numpy())


def test_load_step_as_plain_number(rng):
    p, = make_params(rng, ((2,),))
    opt = optim.Adam([p])
    sd = {"state": {0: {"step": 3, "exp_avg": np.ones(2), "exp_avg_sq": np.ones(2)}},
          "param_groups": [dict(opt.defaults, params=[0])]}
    opt.load_state_dict(sd)
    assert opt.state[p]["step"] == 3


@pytest.mark.parametrize("mutate, match", [
    (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "number of parameter groups"),
    (lambda sd: sd["param_groups"][0]["params"].pop(), "doesn't match the size"),
    (lambda sd: sd["state"][0].__setitem__("exp_avg", np.ones(5)), "has shape"),
    (lambda sd: sd["state"][0].pop("exp_avg_sq"), "lacks"),
    (lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0), "Invalid learning rate: -1.0"),
    (lambda sd: sd["param_groups"][0].pop("betas"), "another optimizer"),
    (lambda sd: sd["state"][0].__setitem__("step", -2.0), "'step'"),
])
def test_load_state_dict_refusals_leave_optimizer_unchanged(mutate, match, rng):
    p, q = make_params(rng, ((3,), (2,)))
    opt = optim.Adam([p, q], lr=0.1)
    p.grad = np.ones(3)
    opt.step()
    before = opt.state_dict()
    sd = opt.state_dict()
    mutate(sd)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k, v in before["state"][0].items():
        np.testing.assert_array_equal(after["state"][0][k], v)


def test_load_sgd_state_into_adam_is_refused(rng):
    p, = make_params(rng, ((3,),))
    sgd = optim.SGD([P(p.data.copy())], lr=0.1, momentum=0.9)
    adam = optim.Adam([p])
    with pytest.raises(ValueError, match="another optimizer than Adam"):
        adam.load_state_dict(sgd.state_dict())


# -- validation --------------------------------------------------------------------------
@pytest.mark.parametrize("cls, kwargs, match", [
    (optim.SGD, dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (optim.SGD, dict(momentum=-0.1), "Invalid momentum value: -0.1"),
    (optim.SGD, dict(weight_decay=-1), "Invalid weight_decay value: -1"),
    (optim.SGD, dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (optim.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov"),
    (optim.Adam, dict(lr=float("nan")), "Invalid learning rate: nan"),
    (optim.Adam, dict(eps=-1e-8), "Invalid epsilon value"),
    (optim.Adam, dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
    (optim.Adam, dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (optim.AdamW, dict(weight_decay=float("inf")), "Invalid weight_decay value: inf"),
    (optim.RMSprop, dict(alpha=1.5), "Invalid alpha value: 1.5"),
    (optim.RMSprop, dict(momentum=-1), "Invalid momentum value"),
    (optim.Adagrad, dict(lr_decay=-1), "Invalid lr_decay value: -1"),
    (optim.Adagrad, dict(initial_accumulator_value=-1), "Invalid initial_accumulator_value value"),
    (optim.Adam, dict(amsgrad="yes"), "'amsgrad' must be True or False"),
    (optim.SGD, dict(lr="0.1"), "Invalid learning rate"),
])
def test_hyperparameter_validation(cls, kwargs, match, rng):
    params = make_params(rng)
    before = [p.data for p in params]
    with pytest.raises(ValueError, match=match):
        cls(params, **kwargs)
    with pytest.raises(ValueError, match=match):     # per-group values are checked too
        cls([{"params": params[:1]}, dict({"params": params[1:]}, **kwargs)])
    assert all(p.data is b and p._arena is None for p, b in zip(params, before))
    opt = cls(params[:1])
    with pytest.raises(ValueError, match=match):
        opt.add_param_group(dict({"params": params[1:]}, **kwargs))
    assert len(opt.param_groups) == 1 and params[1]._arena is None


@pytest.mark.parametrize("params, error, match", [
    ([], ValueError, "empty parameter list"),
    (np.zeros(3), TypeError, "iterable of Parameters or dicts"),
    ({P(np.zeros(1))}, TypeError, "ordered collections"),
    ([np.zeros(3)], TypeError, "can only optimize numbaopt.Parameter"),
])
def test_bad_params(params, error, match):
    with pytest.raises(error, match=match):
        optim.SGD(params)


def test_single_parameter_and_duplicates_and_dtypes(rng):
    a, b = make_params(rng, ((2,), (3,)))
    with pytest.raises(TypeError, match="iterable of Parameters"):
        optim.SGD(a)
    with pytest.warns(UserWarning, match="a parameter group with duplicate parameters"):
        opt = optim.SGD([a, b, a])          # torch warns; the arena holds each parameter once
    assert opt.param_groups[0]["params"] == [a, b] and len(opt.arena) == 2
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [a]}, {"params": [a]}])
    c = P(np.zeros(2, np.float32))
    assert set(optim.SGD([a, c]).arenas) == {np.dtype(np.float32), np.dtype(np.float64)}
    grown = optim.SGD([P(np.zeros(2))])
    grown.add_param_group({"params": [P(np.zeros(2, np.float32))]})   # a second arena
    assert set(grown.arenas) == {np.dtype(np.float32), np.dtype(np.float64)}
    with pytest.raises(TypeError, match="float32, float64, complex64 or complex128"):
        P(np.zeros(2, np.float16))
    with pytest.raises(TypeError, match="unexpected keyword"):
        optim.SGD([a], lr=0.1, capturable=True)   # torch's SGD has no capturable either


def test_repr_like_torch(rng):
    opt = optim.SGD(make_params(rng), lr=0.1)
    assert repr(opt).splitlines()[:3] == ["SGD (", "Parameter Group 0", "    dampening: 0"]


# -- compilation ---------------------------------------------------------------------------
def test_no_recompilation_after_first_steps(rng):
    params = make_params(rng)
    opt = optim.Adam(params, lr=1)          # an int lr must not compile a new signature
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    kernel = opt._kernel
    n = len(kernel.signatures)
    for k in range(5):
        opt.param_groups[0]["lr"] = [1, 0.5, 2][k % 3]
        opt.step()
    assert len(kernel.signatures) == n


# -- copies, overlap, non-finite ----------------------------------------------------------
@pytest.mark.parametrize("copier", [copy.deepcopy, lambda o: __import__("pickle").loads(
    __import__("pickle").dumps(o))], ids=["deepcopy", "pickle"])
def test_deepcopy_and_pickle_give_independent_optimizers(copier, rng):
    params = make_params(rng)
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], amsgrad=True)
    _train(opt, params, 3, 4)
    twin = copier(opt)
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    for p, q in zip(params, twin_params):
        assert p is not q and np.array_equal(p.data, q.data)
        assert np.shares_memory(q.data, twin.arena.data)
        assert not np.shares_memory(q.data, opt.arena.data)
    _train(opt, params, 4, 5)
    _train(twin, twin_params, 4, 5)
    for p, q in zip(params, twin_params):
        np.testing.assert_array_equal(p.data, q.data)
    twin.param_groups[0]["lr"] = 0.5
    assert opt.param_groups[0]["lr"] == 1e-3


def test_overlapping_parameters_are_refused(rng):
    base = rng.standard_normal(10)
    a, b = P(base[:6]), P(base[4:])
    with pytest.raises(ValueError, match="parameters 0 and 1 share memory"):
        optim.SGD([a, b])
    assert a._arena is None and a.data.base is base
    c = P(base[::2])
    d = P(base[1::2])            # interleaved, no element shared: fine
    optim.SGD([c, d])


def test_read_only_and_bad_dtype_parameters():
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        P(ro)
    with pytest.raises(TypeError, match="float32, float64, complex64 or complex128"):
        P(np.array(["a"], dtype=object))
    with pytest.raises(TypeError, match="float32, float64, complex64 or complex128"):
        P(np.zeros(2, np.float16))


def test_nonfinite_gradients_propagate_by_default():
    p = P(np.zeros(2))
    opt = optim.SGD([p], lr=1.0)
    p.grad = np.array([np.nan, 1.0])
    opt.step()
    assert np.isnan(p.data[0]) and p.data[1] == -1.0


@pytest.mark.parametrize("cls", ALL)
def test_skip_nonfinite_leaves_everything_untouched(cls, rng):
    params = make_params(rng)
    opt = cls(params, skip_nonfinite=True)
    _train(opt, params, 5, 3)
    before = opt.state_dict()
    values = [p.data.copy() for p in params]
    for p in params:
        p.grad = np.ones(p.shape)
    params[1].grad = np.array([1.0, np.inf, 0.0, 1.0])
    assert opt.step(lambda: 3.0) is None
    assert opt.found_nonfinite and opt.skipped_steps == 1
    for p, v in zip(params, values):
        np.testing.assert_array_equal(p.data, v)
    after = opt.state_dict()
    for i in before["state"]:
        for k in before["state"][i]:
            np.testing.assert_array_equal(after["state"][i][k], before["state"][i][k])
    params[1].grad = None                   # the non-finite grad is gone: steps again
    assert opt.step(lambda: 3.0) == 3.0 and not opt.found_nonfinite


def test_float32_overflow_of_squared_gradient_matches_reference():
    from reference import reference_optimizer
    p = P(np.ones(3, np.float32))
    ref = np.ones(3, np.float32)
    opt = optim.Adam([p], lr=0.1)
    r = reference_optimizer("Adam", [{"params": [ref]}], lr=0.1)
    g = np.array([1e20, 1.0, -1e30], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(3):
            p.grad = g
            opt.step()
            r.step([g])
    np.testing.assert_array_equal(p.data, ref)
    assert np.isinf(opt.state[p]["exp_avg_sq"][2])   # (1 - beta2) * g * g overflowed


def test_load_state_dict_into_a_stale_optimizer_changes_nothing():
    a, b = P(np.zeros(2)), P(np.zeros(3))
    opt = optim.Adam([a, b], lr=0.1)
    a.grad, b.grad = np.ones(2), np.ones(3)
    opt.step()
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.5
    optim.SGD([b])                    # b moves: opt can no longer step
    with pytest.raises(RuntimeError, match="can no longer load"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.1


# -- torch's surface: repr, huge ints, array-likeness (issue 13) -----------------------------
def test_repr_is_torchs_to_the_character():
    torch = pytest.importorskip("torch")
    a, b = numbaopt.Parameter(np.zeros(2)), numbaopt.Parameter(np.zeros(3))
    ta, tb = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    ours = optim.Adam([{"params": [a]}, {"params": [b], "lr": 0.1}])
    theirs = torch.optim.Adam([{"params": [ta]}, {"params": [tb], "lr": 0.1}])
    assert repr(ours) == repr(theirs)
    assert "\n\nParameter Group 1\n" in repr(ours)


def test_a_huge_int_hyperparameter_is_a_value_error_naming_the_option():
    p = numbaopt.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.Adam([p], lr=10 ** 400)
    with pytest.raises(ValueError, match="Invalid weight_decay"):
        optim.SGD([p], lr=0.1, weight_decay=10 ** 400)
    assert p._arena is None


def test_a_parameter_is_array_like():
    p = numbaopt.Parameter(np.arange(6.0).reshape(2, 3))
    opt = optim.SGD([p], lr=0.1)
    a = np.asarray(p)
    assert a.dtype == np.float64 and a.shape == (2, 3)
    assert np.shares_memory(a, opt.arena.data)          # a view of the arena, not a copy
    assert np.asarray(p, dtype=np.float32).dtype == np.float32
    assert not np.shares_memory(np.array(p), opt.arena.data)
    assert float(np.sum(p)) == 15.0
    assert (p.shape, p.dtype, p.ndim, p.size) == ((2, 3), np.float64, 2, 6)
