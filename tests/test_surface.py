"""torch.optim's surface, ported from torch's own tests (test/test_optim.py TestOptimRenewed
and the error inputs of torch/testing/_internal/common_optimizers.py): hooks, every route
that edits param_groups, state entries, duplicates, names and tensor hyperparameters."""

import copy
import pickle
import re
import warnings

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from numbaopt.optim.optimizer import (ParamGroup, register_optimizer_step_post_hook,
                                      register_optimizer_step_pre_hook)
from tolerance import assert_close

P = numbaopt.Parameter
ELEMENTWISE = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam",
               "RAdam", "ASGD", "Rprop"]
EVERY = ELEMENTWISE + ["Adafactor", "Muon", "SparseAdam", "LBFGS"]


def _registry():
    torch = pytest.importorskip("torch")
    pytest.importorskip("expecttest")   # torch.testing._internal imports it
    from torch.testing._internal import common_optimizers
    return torch, common_optimizers


def _params(name, dtype=np.float32):
    # Muon steps matrices only; the others take any shape
    shapes = ((2, 3), (3, 2)) if name == "Muon" else ((2, 3), (2,))
    rng = np.random.default_rng(3)
    return [P(rng.standard_normal(s).astype(dtype)) for s in shapes]


def _closure(name):
    return (lambda: 1.0) if name == "LBFGS" else None


# -- the registry's error inputs ------------------------------------------------------------
def _to_numbaopt(value, torch, memo):
    """A registry input with tensors as numbaopt Parameters (params) or arrays (options)."""
    if torch.is_tensor(value):
        if id(value) not in memo:
            memo[id(value)] = P(value.detach().numpy().copy())
        return memo[id(value)]
    if isinstance(value, dict):
        return {k: _to_numbaopt(v, torch, memo) for k, v in value.items()}
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return (value[0], _to_numbaopt(value[1], torch, memo))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numbaopt(v, torch, memo) for v in value)
    return value


def _option(value, torch):
    if torch.is_tensor(value):
        return value.detach().numpy().copy()
    if isinstance(value, tuple):
        return tuple(_option(v, torch) for v in value)
    return value


@pytest.mark.parametrize("name", EVERY)
def test_every_error_input_of_torchs_registry(name):
    """optim_error_inputs_func_<name>: the generic ones (params, duplicates, names, tensor lr)
    and the optimizer's own, with torch's type and message ("Tensor" may read "Parameter")."""
    torch, co = _registry()
    info = next(i for i in co.optim_db if i.optim_cls.__name__ == name)
    checked = 0
    for error in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
        inp = error.optimizer_error_input
        params = inp.params
        if params is not None and any(t.is_sparse for t in _tensors(params, torch)):
            continue   # torch's sparse layout has no analogue
        memo = {}
        params = [P(np.zeros(3, np.float32))] if params is None else \
            _to_numbaopt(params, torch, memo)
        if name == "Muon" and inp.params is None:
            params = [P(np.zeros((3, 2), np.float32))]
        kwargs = {k: _option(v, torch) for k, v in inp.kwargs.items()}
        regex = error.error_regex.replace("Tensors", "(Tensors|Parameters)")
        if issubclass(error.error_type, Warning):
            with pytest.warns(error.error_type, match=regex):
                getattr(optim, name)(params, **kwargs)
        else:
            with pytest.raises(error.error_type) as info_:
                getattr(optim, name)(params, **kwargs)
            assert re.search(regex, str(info_.value)), (inp.desc, str(info_.value), regex)
            for p in memo.values() if memo else params if isinstance(params, list) else []:
                if isinstance(p, P):
                    assert p._arena is None, inp.desc   # refused before anything was packed
        checked += 1
    assert checked >= 4


def _tensors(value, torch):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v, torch)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v, torch)


# -- hooks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EVERY)
def test_step_pre_and_post_hooks(name):
    """torch's test_step_pre_hook and test_step_post_hook, for every optimizer."""
    data = [5, 2]

    def pre_hook(opt, args, kwargs):
        data[0] += 2

    def post_hook(opt, args, kwargs):
        data[1] += 2

    opt = getattr(optim, name)(_params(name))
    closure = _closure(name)
    pre = opt.register_step_pre_hook(pre_hook)
    post = opt.register_step_post_hook(post_hook)
    opt.step(closure)
    opt.step(closure)
    assert data == [9, 6]
    pre.remove()
    post.remove()
    opt.step(closure)
    assert data == [9, 6]
    assert opt._hooks_on is False           # the hook-free step is the plain one again


@pytest.mark.parametrize("name", ["SGD", "Adam", "Adafactor", "LBFGS", "SparseAdam"])
def test_step_all_hooks_run_in_torchs_order(name):
    """torch's test_step_all_hooks: global pre, local pre, local post, global post."""
    data = []
    opt = getattr(optim, name)(_params(name))
    opt2 = optim.SGD(_params("SGD"))
    closure = _closure(name)
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: data.append(0)),
        register_optimizer_step_post_hook(lambda o, a, k: data.append(5)),
        opt.register_step_pre_hook(lambda o, a, k: data.append(1)),
        opt.register_step_post_hook(lambda o, a, k: data.append(2)),
        opt2.register_step_pre_hook(lambda o, a, k: data.append(1)),
        opt2.register_step_post_hook(lambda o, a, k: data.append(2)),
    ]
    try:
        opt.step(closure)
        assert data == [0, 1, 2, 5]
        opt2.step()
        assert data == [0, 1, 2, 5] * 2
        opt.step(closure)
        assert data == [0, 1, 2, 5] * 3
    finally:
        for h in handles:
            h.remove()
    opt.step(closure)
    opt2.step()
    assert data == [0, 1, 2, 5] * 3
    assert opt._hooks_on is False and opt2._hooks_on is False


def test_a_pre_hook_may_replace_the_step_arguments_and_must_return_a_pair():
    (p,) = _params("SGD")[:1]
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.ones_like(p.data)
    seen = []
    handle = opt.register_step_pre_hook(
        lambda o, args, kwargs: ((args[0],), {"closure": lambda: seen.append(1) or 7.0}))
    assert opt.step() == 7.0 and seen == [1]
    handle.remove()
    opt.register_step_pre_hook(lambda o, args, kwargs: 3)
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_hooks_run_once_around_a_subclass_step_that_calls_super():
    class Clipped(optim.Adam):
        def step(self, closure=None):
            calls.append("step")
            return super().step(closure)

    calls = []
    params = _params("Adam")
    opt = Clipped(params)
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    for p in params:
        p.grad = np.ones_like(p.data)
    opt.step()
    assert calls == ["pre", "step", "post"]
    assert opt.state[params[0]]["step"] == 1


def test_hooks_on_a_python_step_optimizer_and_context_managed_handles():
    class SignSGD(optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.data -= group["lr"] * np.sign(p.grad)

    params = _params("SGD")
    opt = SignSGD(params)
    calls = []
    with opt.register_step_post_hook(lambda o, a, k: calls.append(a)):
        opt.step()
    opt.step()
    assert len(calls) == 1 and calls[0] == (opt,)


def _state_dict_pre_hook(optimizer):
    optimizer.state["test"] = 1


def _state_dict_post_hook(optimizer, state_dict):
    if "test" in state_dict["state"]:
        state_dict["state"].pop("test")
        state_dict["ran_state_dict_pre_hook"] = True
    else:
        state_dict["ran_state_dict_pre_hook"] = False
    return state_dict


def _load_pre_hook1(optimizer, state_dict):
    state_dict["param_groups"][0]["lr"] = 0.002


def _load_pre_hook2(optimizer, state_dict):
    my_state_dict = copy.deepcopy(state_dict)
    my_state_dict["param_groups"][0]["lr"] = 0.003
    return my_state_dict


def _load_post_hook(optimizer):
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


@pytest.mark.parametrize("name", EVERY)
def test_state_dict_and_load_state_dict_hooks(name):
    """torch's test_state_dict_pre_hook / _post_hook / _pre_post_hook and the load ones."""
    opt = getattr(optim, name)(_params(name))
    opt.register_state_dict_pre_hook(_state_dict_pre_hook)
    assert opt.state_dict()["state"]["test"] == 1
    opt.register_state_dict_post_hook(_state_dict_post_hook)
    sd = opt.state_dict()
    assert "test" not in sd["state"] and sd["ran_state_dict_pre_hook"]

    opt = getattr(optim, name)(_params(name))
    state_dict = opt.state_dict()
    opt.register_load_state_dict_pre_hook(_load_pre_hook1)
    opt.load_state_dict(state_dict)
    assert opt.param_groups[0]["lr"] == 0.002
    opt.register_load_state_dict_pre_hook(_load_pre_hook2, prepend=True)
    opt.load_state_dict(state_dict)
    assert opt.param_groups[0]["lr"] == 0.002    # prepended: the other hook has the last word

    opt = getattr(optim, name)(_params(name))
    opt.register_load_state_dict_pre_hook(_load_pre_hook2)
    opt.register_load_state_dict_post_hook(_load_post_hook)
    opt.load_state_dict(opt.state_dict())
    assert opt.state["ran_load_state_dict_pre_hook2"]
    assert opt.state["ran_load_state_dict_post_hook"]


def test_a_load_pre_hook_remaps_state_by_parameter_name():
    """The documented use of a load pre-hook: match saved state to parameters by name."""
    rng = np.random.default_rng(0)
    w, b = P(rng.standard_normal((2, 3))), P(rng.standard_normal(2))
    src = optim.Adam([("w", w), ("b", b)], lr=0.1)
    w.grad, b.grad = np.ones((2, 3)), np.full(2, 2.0)
    src.step()
    sd = src.state_dict()

    w2, b2 = P(w.data.copy()), P(b.data.copy())
    dst = optim.Adam([("b", b2), ("w", w2)], lr=0.1)        # another order

    def by_name(optimizer, state_dict):
        saved = state_dict["param_groups"][0]
        index = dict(zip(saved["param_names"], saved["params"]))
        names = optimizer.param_groups[0]["param_names"]
        state_dict["state"] = {i: state_dict["state"][index[n]] for i, n in enumerate(names)}
        state_dict["param_groups"] = [dict(saved, params=list(range(len(names))),
                                           param_names=names)]

    dst.register_load_state_dict_pre_hook(by_name)
    dst.load_state_dict(sd)
    np.testing.assert_array_equal(dst.state[w2]["exp_avg"], src.state[w]["exp_avg"])
    np.testing.assert_array_equal(dst.state[b2]["exp_avg"], src.state[b]["exp_avg"])


@pytest.mark.parametrize("name", ["Adam", "SGD", "LBFGS"])
def test_deepcopy_and_pickle_keep_public_attrs_and_drop_hooks_as_torch(name):
    """torch's test_deepcopy_copies_all_public_attrs; torch's __getstate__ drops hooks."""
    params = _params(name)
    opt = getattr(optim, name)(params)
    for p in params:
        p.grad = np.ones_like(p.data)
    for _ in range(3):
        opt.step(_closure(name))
    opt.register_step_pre_hook(lambda o, a, k: None)
    public = {k for k in vars(opt) if not k.startswith("_")}
    for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert {k for k in vars(twin) if not k.startswith("_")} == public
        assert not twin._optimizer_step_pre_hooks and twin._hooks_on is False
        twin.step(_closure(name))


# -- param_groups: every route ----------------------------------------------------------------
def _run(edit, steps=6, name="Adam"):
    """Steps of a two-group optimizer with ``edit(opt)`` applied after step 2."""
    rng = np.random.default_rng(7)
    params = [P(rng.standard_normal(s)) for s in ((3, 2), (4,))]
    opt = getattr(optim, name)([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}],
                               lr=0.01)
    for k in range(steps):
        if k == 2:
            edit(opt)
        for p in params:
            p.grad = np.sin(p.data + k)
        opt.step()
    return np.concatenate([p.data.ravel() for p in params]), opt


def _reference(opt):
    opt.param_groups[0]["lr"] = 0.5
    opt.param_groups[0]["eps"] = 1e-3


@pytest.mark.parametrize("route", [
    lambda o: o.param_groups[0].__ior__({"lr": 0.5, "eps": 1e-3}),
    lambda o: o.param_groups[0].update(lr=0.5, eps=1e-3),
    lambda o: o.param_groups[0].update([("lr", 0.5), ("eps", 1e-3)]),
    lambda o: (o.param_groups[0].pop("lr"), o.param_groups[0].setdefault("lr", 0.5),
               o.param_groups[0].update(eps=1e-3)),
    lambda o: o.param_groups.__setitem__(0, {**o.param_groups[0], "lr": 0.5, "eps": 1e-3}),
    lambda o: setattr(o, "param_groups",
                      [{**o.param_groups[0], "lr": 0.5, "eps": 1e-3}, o.param_groups[1]]),
    lambda o: o.param_groups.__setitem__(slice(0, 1),
                                         [dict(o.param_groups[0], lr=0.5, eps=1e-3)]),
], ids=["|=", "update(kw)", "update(pairs)", "pop+setdefault", "param_groups[i]=",
        "param_groups=", "slice"])
def test_every_route_of_editing_a_group_takes_effect_at_the_next_step(route):
    def edit(opt):
        out = route(opt)
        if isinstance(out, ParamGroup):     # |= returns the group, as dict's does
            assert out is opt.param_groups[0]

    ours, opt = _run(edit)
    expected, ref = _run(_reference)
    np.testing.assert_array_equal(ours, expected)
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]


def test_group_edits_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    init = rng.standard_normal(5)
    p = P(init.copy())
    t = torch.tensor(init.copy(), requires_grad=True)
    ours, theirs = optim.Adam([p], lr=0.01), torch.optim.Adam([t], lr=0.01)
    for k in range(8):
        g = np.cos(init * (k + 1))
        p.grad, t.grad = g, torch.tensor(g)
        if k == 3:
            for o in (ours, theirs):
                o.param_groups[0] |= {"lr": 0.1, "betas": (0.5, 0.9)}
        if k == 5:
            for o in (ours, theirs):
                o.param_groups[0].update(weight_decay=0.1, maximize=True)
        ours.step()
        theirs.step()
    assert_close(p.data, t.detach().numpy())


def test_dicts_own_methods_are_refused_at_once():
    _, opt = _run(lambda o: None, steps=1)
    group = opt.param_groups[0]
    with pytest.raises(TypeError):
        dict.__setitem__(group, "lr", 0.5)
    with pytest.raises(TypeError):
        dict.update(group, lr=0.5)
    assert group["lr"] == 0.01


def test_a_deleted_option_is_a_clear_error_at_the_next_step_and_changes_nothing():
    _, opt = _run(lambda o: None, steps=1)
    before = opt.arena.data.copy()
    del opt.param_groups[1]["betas"]
    for p in opt.arena.params:
        p.grad = np.ones(p.shape)
    with pytest.raises(ValueError, match=r"param group 1 has no 'betas'"):
        opt.step()
    np.testing.assert_array_equal(opt.arena.data, before)
    opt.param_groups[1]["betas"] = (0.9, 0.999)
    opt.step()


def test_betas_are_stored_as_a_tuple():
    (p,) = _params("SGD")[:1]
    opt = optim.Adam([p], betas=[0.8, 0.9])
    opt.param_groups[0]["betas"] = [0.5, 0.6]
    assert opt.param_groups[0]["betas"] == (0.5, 0.6) and opt.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(TypeError):
        opt.param_groups[0]["betas"][0] = 0.1     # no edit can bypass the next step's re-read


def test_groups_appended_to_param_groups_are_stepped_as_added_ones():
    def appended(opt):
        opt.param_groups.append({"params": [extra[0]], "lr": 0.1})

    def added(opt):
        opt.add_param_group({"params": [extra[1]], "lr": 0.1})

    rng = np.random.default_rng(5)
    init = rng.standard_normal(4)
    extra = [P(init.copy()), P(init.copy())]
    for edit, p in ((appended, extra[0]), (added, extra[1])):
        _, opt = _run(edit, steps=3)
        for k in range(4):
            p.grad = np.cos(p.data + k)
            opt.step()
        assert p._arena is opt.arena and len(opt.param_groups) == 3
        assert opt.param_groups[2]["betas"] == (0.9, 0.999)      # defaults filled in
    np.testing.assert_array_equal(extra[0].data, extra[1].data)


def test_extending_param_groups_with_themselves_as_torchs_state_dict_deterministic():
    """torch's test_state_dict_deterministic extends param_groups with its own groups and
    calls state_dict(): repeated parameters get their first index. Stepping them twice in
    one step, as torch would, is refused."""
    _, opt = _run(lambda o: None, steps=2)
    before = opt.state_dict()
    opt.param_groups.extend(opt.param_groups)
    sd = opt.state_dict()
    assert sd["param_groups"][-1] == before["param_groups"][-1]
    assert sd["param_groups"][2]["params"] == before["param_groups"][0]["params"]
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.step()
    del opt.param_groups[2:]
    opt.step()


def test_a_parameter_appended_to_a_group_is_refused_at_the_next_step():
    _, opt = _run(lambda o: None, steps=1)
    new = P(np.zeros(3))
    opt.param_groups[0]["params"].append(new)
    with pytest.raises(RuntimeError, match=r"param group 0 changed.*add_param_group"):
        opt.step()
    opt.param_groups[0]["params"].remove(new)
    opt.add_param_group({"params": [new]})
    opt.step()


def test_removing_a_group_is_refused_at_the_next_step():
    _, opt = _run(lambda o: None, steps=1)
    opt.param_groups.pop()
    with pytest.raises(RuntimeError, match="removing a group is not supported"):
        opt.step()


def test_add_param_group_changes_nothing_when_a_pending_edit_is_invalid():
    _, opt = _run(lambda o: None, steps=1)
    arena = opt.arena
    new = P(np.zeros(2))
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [new]})
    assert opt.arena is arena and new._arena is None and len(opt.param_groups) == 2
    opt.param_groups[0]["lr"] = 0.01
    opt.param_groups[1]["differentiable"] = True      # checked as the next step would
    with pytest.raises(ValueError, match="differentiable"):
        opt.add_param_group({"params": [new]})
    with pytest.raises(ValueError, match="differentiable"):
        opt.add_param_group({"params": [new], "differentiable": True})
    assert opt.arena is arena and new._arena is None
    opt.param_groups[1]["differentiable"] = False
    opt.add_param_group({"params": [new]})           # the retry works
    assert new._arena is opt.arena and len(opt.param_groups) == 3


def test_duplicates_and_names_as_torch():
    a, b = _params("SGD")
    with pytest.warns(UserWarning, match="a parameter group with duplicate parameters"):
        opt = optim.SGD([("a", a), ("b", b), ("a2", a)], lr=0.1)
    assert opt.param_groups[0]["params"] == [a, b]
    assert opt.param_groups[0]["param_names"] == ["a", "b"]
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [("again", a)]})
    with pytest.raises(ValueError, match="cannot add param group without names"):
        opt.add_param_group({"params": [P(np.zeros(2))]})
    assert len(opt.param_groups) == 1


# -- state ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Adam", "SGD", "Adafactor", "SparseAdam", "Muon"])
def test_user_state_persists_and_is_saved(name, tmp_path):
    params = _params(name, np.float64)
    opt = getattr(optim, name)(params)
    p = params[0]
    opt.state[p]["my_key"] = np.arange(3.0)
    opt.state[p]["count"] = 4
    opt.state["global"] = {"epoch": 2}
    assert opt.state[p]["my_key"].tolist() == [0.0, 1.0, 2.0] and p in opt.state
    sd = opt.state_dict()
    assert sd["state"][0]["count"] == 4 and sd["state"]["global"] == {"epoch": 2}
    numbaopt.save(tmp_path / "ckpt", opt)
    other = getattr(optim, name)([P(q.data.copy()) for q in params])
    other.load_state_dict(copy.deepcopy(sd))
    assert other.state_dict()["state"]["global"] == {"epoch": 2}
    assert other.state[other.param_groups[0]["params"][0]]["count"] == 4
    third = getattr(optim, name)([P(q.data.copy()) for q in params])
    numbaopt.load(tmp_path / "ckpt", third)
    q = third.param_groups[0]["params"][0]
    np.testing.assert_array_equal(third.state[q]["my_key"], np.arange(3.0))
    assert third.state[q]["count"] == 4 and third.state["global"] == {"epoch": 2}


def test_state_step_has_torchs_dtype_and_arena_entries_write_through():
    torch = pytest.importorskip("torch")
    params = _params("Adam", np.float64)
    opt = optim.Adam(params, lr=0.1)
    tp = torch.zeros(2, requires_grad=True)
    topt = torch.optim.Adam([tp])
    tp.grad = torch.ones(2)
    topt.step()
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    p = params[0]
    assert opt.state[p]["step"].dtype == topt.state[tp]["step"].numpy().dtype == np.float32
    opt.state[p]["exp_avg"] = np.full(p.shape, 3.0)           # copied into the arena
    opt.state[p]["step"] = 10
    opt.state[p]["exp_avg_sq"][...] = 1.0                      # a live view
    sd = opt.state_dict()["state"][0]
    assert sd["step"] == 10 and (sd["exp_avg"] == 3.0).all() and (sd["exp_avg_sq"] == 1.0).all()
    with pytest.raises(ValueError, match="shape"):
        opt.state[p]["exp_avg"] = np.zeros(5)
    with pytest.raises(ValueError, match="cannot delete 'exp_avg'"):
        del opt.state[p]["exp_avg"]
    fresh = _params("Adam")
    with pytest.raises(ValueError, match="no Adam state yet"):
        optim.Adam(fresh).state[fresh[0]]["exp_avg"] = np.zeros(fresh[0].shape)


# -- tensor hyperparameters -------------------------------------------------------------------
@pytest.mark.parametrize("name", ELEMENTWISE + ["Adafactor", "Muon"])
def test_a_0d_array_lr_steps_like_its_float_and_in_place_changes_take_effect(name):
    if name == "Muon":
        pytest.importorskip("scipy")

    def run(lr, change):
        params = _params(name, np.float64)
        opt = getattr(optim, name)(params, lr=lr)
        for k in range(6):
            if k == 3:
                change(opt)
            for p in params:
                p.grad = np.sin(p.data + k)
            opt.step()
        return np.concatenate([p.data.ravel() for p in params])

    def set_float(opt):
        opt.param_groups[0]["lr"] = 0.003

    def fill_array(opt):
        opt.param_groups[0]["lr"][...] = 0.003      # what torch's schedulers do: fill_

    np.testing.assert_array_equal(run(np.asarray(0.01), fill_array), run(0.01, set_float))


@pytest.mark.parametrize("name, kwargs", [("SGD", {}), ("SGD", dict(momentum=0.9)),
                                          ("Adagrad", {}), ("LBFGS", {}), ("Muon", {})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torchs_tensor_lr_kwarg_sets_match_torch(name, kwargs, dtype):
    """The registry's "tensor lr" sets (lr=torch.tensor(0.001), float32) against torch."""
    torch = pytest.importorskip("torch")
    if name == "Muon":
        pytest.importorskip("scipy")
    rng = np.random.default_rng(11)
    shape = (4, 3) if name == "Muon" else (7,)
    x0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(8)]
    t = torch.tensor(x0.copy(), requires_grad=True)
    theirs = getattr(torch.optim, name)([t], lr=torch.tensor(0.001), **kwargs)
    if name == "Muon":
        # torch's Muon runs Newton-Schulz in bfloat16 (tests/test_muon.py compares it
        # loosely); here the array lr must step exactly as its float value does
        t = P(x0.copy())
        theirs = optim.Muon([t], lr=float(np.float32(0.001)))
    p = P(x0.copy())
    ours = getattr(optim, name)([p], lr=np.asarray(0.001, np.float32), **kwargs)
    if name == "LBFGS":
        A = np.diag(np.arange(1.0, 8.0)).astype(dtype)

        def t_closure():
            theirs.zero_grad()
            loss = 0.5 * (t @ torch.tensor(A) @ t)
            loss.backward()
            return loss

        def n_closure():
            p.grad = A @ p.data
            return 0.5 * float(p.data @ A @ p.data)

        for _ in range(3):
            theirs.step(t_closure)
            ours.step(n_closure)
    elif name == "Muon":
        for g in grads:
            t.grad = p.grad = g
            theirs.step()
            ours.step()
        np.testing.assert_array_equal(p.data, t.data)
        return
    else:
        for g in grads:
            t.grad = torch.tensor(g)
            p.grad = g
            theirs.step()
            ours.step()
    assert_close(p.data, t.detach().numpy())
    sd = {"state": {i: {k: v.numpy() if torch.is_tensor(v) else v for k, v in s.items()}
                    for i, s in theirs.state_dict()["state"].items()},
          "param_groups": [{k: v.numpy() if torch.is_tensor(v) else v for k, v in g.items()}
                           for g in theirs.state_dict()["param_groups"]]}
    again = getattr(optim, name)([P(x0.copy())], **kwargs)
    again.load_state_dict(sd)                       # torch's tensor lr arrives as a 0-d array
    assert isinstance(again.param_groups[0]["lr"], np.ndarray)
    assert float(again.param_groups[0]["lr"]) == pytest.approx(0.001)


def test_array_hyperparameters_are_validated_with_torchs_messages():
    (p,) = _params("SGD")[:1]
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        optim.SGD([p], lr=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.SGD([p], lr=np.asarray(-0.1))
    with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
        optim.Adam([p], betas=(np.asarray(0.9), 0.99))
    opt = optim.Adam([p], betas=(np.asarray([0.9]), np.asarray(0.99)), weight_decay=np.asarray(0.1))
    assert opt.param_groups[0]["betas"][0].shape == ()            # torch's _to_scalar
    p.grad = np.ones(p.shape, np.float32)
    opt.step()
    opt.param_groups[0]["weight_decay"] = np.asarray([[1.0, 2.0]])
    with pytest.raises(ValueError, match="Tensor weight_decay must be 1-element"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no NumPy scalar-conversion warnings
        opt.param_groups[0]["weight_decay"] = np.asarray([0.5])
        opt.step()


@pytest.mark.parametrize("name", ELEMENTWISE + ["Adafactor", "Muon", "SparseAdam"])
def test_a_scheduler_style_lr_edit_is_checked_as_the_constructor_checks_it(name):
    """The lr-only re-read (a scheduler's step) keeps torch's message of each optimizer."""
    if name == "Muon":
        pytest.importorskip("scipy")
    lr = -1.0
    with pytest.raises(ValueError) as construction:
        getattr(optim, name)(_params(name), lr=lr)
    expected = str(construction.value).split(":")[0]
    opt = getattr(optim, name)(_params(name))
    opt.step(_closure(name))
    opt.param_groups[0]["lr"] = lr
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.step(_closure(name))
    opt.param_groups[0]["lr"] = 0.5
    opt.step(_closure(name))
    assert opt._hyper[0, opt._lr_column] == 0.5
