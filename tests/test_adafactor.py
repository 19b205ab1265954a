"""Adafactor against torch.optim.Adafactor: numbers, state_dicts, errors, checkpoints, kernels.

Every case runs 0-d, 1-d, 2-d and batched (3-d, 4-d) parameters in two groups, in
float32 and float64, with some parameters lacking a gradient on some steps; it is
checked against torch live when torch is importable and against the committed
tests/data/adafactor_reference.npz (scripts/make_adafactor_reference.py) always.
"""

import copy
import inspect
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt.optim import adafactor as adafactor_module
from numbaopt.optim.adafactor import Adafactor
from tolerance import assert_close

DATA = pathlib.Path(__file__).parent / "data" / "adafactor_reference.npz"
ROOT = pathlib.Path(__file__).resolve().parents[1]

STEPS = 25
DTYPES = ("float64", "float32")
# group 0 | group 1; (9, 1) starts at zero (its RMS is below eps2, so alpha = eps2 * rho)
GROUP_SHAPES = ([(4, 3), (), (2, 3, 5), (3, 2, 2)], [(6,), (1, 7), (9, 1), (2, 2, 3, 4)])
ZERO_START = 6

# torch 2.13's optim_inputs_func_adafactor(device="cpu"): (description, kwargs)
REGISTRY = [("default", {}),
            ("nonzero weight_decay", dict(weight_decay=0.1, lr=0.01)),
            ("maximize", dict(weight_decay=0.1, maximize=True)),
            ("non-default beta2_decay", dict(beta2_decay=-1.0)),
            ("non-default clipping threshold d", dict(d=1.5))]

# name: (constructor kwargs, overrides for group 1, gradient scale)
CASES = {f"registry/{desc.replace(' ', '_')}": (kwargs, dict(lr=0.005), 1.0)
         for desc, kwargs in REGISTRY}
CASES.update({
    # gradients so small that both eps1 clamps bite (mean of R and the variance estimate)
    "eps1_clamps": (dict(eps=(1e-5, 1e-2), weight_decay=0.05), dict(eps=(None, 1e-3)), 1e-7),
    # lr above 1 / sqrt(t): rho = 1 / sqrt(t) from step 5 on; group 1 clips (d) and decays
    "large_lr": (dict(lr=0.5, beta2_decay=-0.5), dict(lr=0.05, d=1.2, weight_decay=0.2), 1.0),
    "maximize_mixed": (dict(maximize=True, d=2.0), dict(maximize=False, beta2_decay=-0.6), 3.0),
})


def shapes():
    return [s for group in GROUP_SHAPES for s in group]


def has_grad(step, i):
    """Parameter 4 has no gradient for its first 3 steps; others skip now and then."""
    if i == 4 and step < 3:
        return False
    return (step + 2 * i) % 7 != 3


def make_inputs(case, dtype):
    """Deterministic initial values and gradients (None where there is none)."""
    seed = sum(map(ord, case)) + (0 if dtype == "float64" else 1)
    rng = np.random.default_rng(seed)
    scale = CASES[case][2]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes()]
    init[ZERO_START][...] = 0
    # the scale changes from step to step, so the update's RMS passes d now and then
    grads = [[(scale * (1 + 0.8 * np.sin(k)) * rng.standard_normal(s)).astype(dtype)
              if has_grad(k, i) else None for i, s in enumerate(shapes())] for k in range(STEPS)]
    return init, grads


def groups_of(items, case):
    n0 = len(GROUP_SHAPES[0])
    return [{"params": items[:n0]}, dict({"params": items[n0:]}, **CASES[case][1])]


def run_torch(case, dtype, steps=STEPS):
    """``{"traj": (steps, n) parameters after each step, "state/<i>/<key>": array}``."""
    import torch
    init, grads = make_inputs(case, dtype)
    params = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = torch.optim.Adafactor(groups_of(params, case), foreach=False, **CASES[case][0])
    traj = np.empty((steps, sum(a.size for a in init)), dtype=dtype)
    for k in range(steps):
        for p, g in zip(params, grads[k]):
            p.grad = None if g is None else torch.tensor(g)
        opt.step()
        traj[k] = np.concatenate([p.detach().numpy().reshape(-1) for p in params])
    out = {"traj": traj}
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            out[f"state/{i}/{key}"] = value.numpy()
    return out


def run_ours(case, dtype, steps=STEPS, parallel=False, device="cpu"):
    init, grads = make_inputs(case, dtype)
    params = [numbaopt.Parameter(a.copy()) for a in init]
    opt = Adafactor(groups_of(params, case), device=device, **CASES[case][0])
    if parallel:
        opt.parallel_threshold = 0
        opt._sync()
    traj = np.empty((steps, sum(a.size for a in init)), dtype=dtype)
    for k in range(steps):
        for p, g in zip(params, grads[k]):
            p.grad = g
        opt.step()
        traj[k] = np.concatenate([p.numpy().reshape(-1) for p in params])
    out = {"traj": traj}
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            out[f"state/{i}/{key}"] = value
    return out


def assert_matches(ours, theirs, dtype, what):
    assert sorted(ours) == sorted(theirs), what
    for key in theirs:
        assert ours[key].shape == theirs[key].shape, f"{what} {key}"
        assert ours[key].dtype == theirs[key].dtype, f"{what} {key}"
        assert_close(ours[key], theirs[key], dtype, f"{what} {key}")


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA) as data:
        return {k: data[k] for k in data.files}


def _from(reference, case, dtype):
    prefix = f"{case}/{dtype}/"
    return {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}


@pytest.fixture
def tiny_tasks(monkeypatch):
    """Tasks of a few elements: matrices split into row blocks, several per task, vectors
    into chunks (the layout reads these when an optimizer is built)."""
    monkeypatch.setattr(adafactor_module, "FACTORED_TASK", 10)
    monkeypatch.setattr(adafactor_module, "MIN_TASK_ROWS", 1)
    monkeypatch.setattr(adafactor_module, "VECTOR_TASK", 4)


# -- numbers ---------------------------------------------------------------------------
def test_case_table_holds_torchs_registry():
    pytest.importorskip("torch")
    pytest.importorskip("expecttest")
    from torch.testing._internal import common_optimizers as co
    theirs = [(i.desc, i.kwargs) for i in co.optim_inputs_func_adafactor(device="cpu")]
    assert theirs == REGISTRY


def test_reference_data_covers_every_case(reference):
    assert str(reference["torch_version"]).startswith("2.13")
    for case in CASES:
        for dtype in DTYPES:
            assert f"{case}/{dtype}/traj" in reference, case


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_data(case, dtype, reference):
    assert_matches(run_ours(case, dtype), _from(reference, case, dtype), dtype, case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_live(case, dtype):
    pytest.importorskip("torch")
    assert_matches(run_ours(case, dtype), run_torch(case, dtype), dtype, case)


# The parallel kernel runs the serial kernel's passes (the same compiled functions) over
# prange; it is compiled for float32 only here, as its compilation is the suite's costliest.
@pytest.mark.parametrize("dtype, parallel", [("float64", False), ("float32", False),
                                             ("float32", True)])
def test_split_tasks_and_the_parallel_kernel_match(parallel, dtype, reference, tiny_tasks):
    for case in ("registry/default", "eps1_clamps", "maximize_mixed"):
        ours = run_ours(case, dtype, parallel=parallel)
        assert_matches(ours, _from(reference, case, dtype), dtype, case)


def test_tiny_tasks_really_split(tiny_tasks):
    opt = Adafactor([numbaopt.Parameter(np.ones(s)) for s in shapes()])
    layout = opt._layout
    # (4, 3) and (2, 3, 5): row blocks; (3, 2, 2): two matrices in a task; (6,): two chunks
    assert list(np.diff(layout.task_first)) == [2, 1, 4, 2, 2, 1, 1, 8]
    assert (layout.mats[:, 2] == 2).sum() == 1 + 2 + 4    # matrices adding up two tasks
    assert (layout.tasks[:, 2] - layout.tasks[:, 1]).max() == 2


def test_batched_matrices_share_tasks():
    # small matrices: several per task, each with its own column sums
    opt = Adafactor([numbaopt.Parameter(np.ones((40, 3, 2)))])
    assert opt._layout.tasks.shape[0] == 1 and opt._layout.mats.shape[0] == 40


def test_converges_on_a_quadratic_and_maximize_goes_the_other_way():
    target = np.linspace(-1, 1, 12).reshape(3, 4)
    for maximize in (False, True):
        p = numbaopt.Parameter(np.zeros((3, 4)))
        opt = Adafactor([p], lr=0.1, maximize=maximize)
        for _ in range(300):
            p.grad = (p.data - target) * (-1 if maximize else 1)
            opt.step()
        assert np.abs(p.data - target).max() < 0.05


def test_param_groups_and_defaults_are_torchs():
    torch = pytest.importorskip("torch")
    ours = Adafactor([numbaopt.Parameter(np.zeros(3))])
    theirs = torch.optim.Adafactor([torch.zeros(3, requires_grad=True)])
    strip = lambda g: {k: v for k, v in g.items() if k != "params"}   # noqa: E731
    assert strip(ours.param_groups[0]) == strip(theirs.param_groups[0])
    assert ours.defaults == theirs.defaults
    a = inspect.signature(Adafactor).parameters
    b = inspect.signature(torch.optim.Adafactor).parameters
    assert [(n, p.default, p.kind) for n, p in b.items()] == \
        [(n, p.default, p.kind) for n, p in a.items() if n not in ("skip_nonfinite", "device")]


def test_foreach_changes_nothing():
    results = []
    for foreach in (None, False, True):
        p = numbaopt.Parameter(np.linspace(0, 1, 6).reshape(2, 3))
        opt = Adafactor([p], foreach=foreach)
        for k in range(3):
            p.grad = np.full((2, 3), 0.1 * (k + 1))
            opt.step()
        results.append(p.data.copy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


# -- errors ----------------------------------------------------------------------------
def test_error_inputs_of_torchs_registry():
    torch = pytest.importorskip("torch")
    pytest.importorskip("expecttest")
    from torch.testing._internal import common_optimizers as co
    checked = 0
    for error in co.optim_error_inputs_func_adafactor(device="cpu", dtype=torch.float32):
        inp = error.optimizer_error_input
        if inp.params is not None:
            continue   # the generic params errors and complex params (see the test below)
        kwargs = {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in inp.kwargs.items()}
        p = numbaopt.Parameter(np.zeros((2, 3)))
        with pytest.raises(error.error_type) as info:
            Adafactor([p], **kwargs)
        assert re.search(error.error_regex, str(info.value)), (str(info.value), error.error_regex)
        assert p._arena is None   # refused before anything was packed
        checked += 1
    assert checked == 4   # eps1, d, beta2_decay and a 2-element (tensor) lr


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-0.1), r"Learning rate should be >= 0 but is: -0.1"),
    (dict(beta2_decay=0.8), r"beta2_decay should be <= 0 but is: 0.8"),
    (dict(eps=(-1e-30, 1e-3)), r"epsilon1 should be >= 0 but is: -1e-30"),
    (dict(eps=(None, -1.0)), r"epsilon2 should be >= 0 but is: -1.0"),
    (dict(eps=1e-3), r"eps must be a pair"),
    (dict(d=0.5), r"Clipping threshold d should be >= 1 but is: 0.5"),
    (dict(weight_decay=-1.0), r"weight_decay should be >= 0 but is: -1.0"),
    (dict(maximize=1), r"'maximize' must be True or False"),
    (dict(foreach="yes"), r"'foreach' must be None, True or False"),
    (dict(lr=float("nan")), r"Learning rate should be >= 0 but is: nan"),
    (dict(lr=np.array([0.1, 0.2])), r"Tensor lr must be 1-element"),
])
def test_hyperparameter_errors_are_torchs(kwargs, match):
    p = numbaopt.Parameter(np.zeros(3))
    with pytest.raises(ValueError, match=match):
        Adafactor([p], **kwargs)
    assert p._arena is None


def test_complex_parameters_are_refused_before_anything_is_packed():
    """torch refuses complex parameters at step(); numbaopt at construction, with torch's
    type and words."""
    p = numbaopt.Parameter(np.zeros((2, 3), np.complex64))
    with pytest.raises(RuntimeError, match="Adafactor does not support complex parameters"):
        Adafactor([p])
    assert p._arena is None


def _snapshot(opt):
    sd = opt.state_dict()
    return [p.data.copy() for p in opt.arena.params], sd, opt.arena.step.copy()


def _assert_unchanged(opt, snap):
    params, sd, steps = snap
    for p, value in zip(opt.arena.params, params):
        np.testing.assert_array_equal(p.data, value)
    np.testing.assert_array_equal(opt.arena.step, steps)
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"] and sorted(now["state"]) == sorted(sd["state"])
    for i, entry in sd["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(now["state"][i][key], value)


def _stepped(steps=3, dtype=np.float64):
    params = [numbaopt.Parameter(np.linspace(-1, 1, np.prod(s, dtype=int)).reshape(s).astype(dtype))
              for s in ((3, 4), (5,), ())]
    opt = Adafactor([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}])
    for k in range(steps):
        for p in params:
            p.grad = np.full(p.shape, 0.5 - 0.2 * k, dtype)
        opt.step()
    return params, opt


def test_a_bad_group_edit_fails_the_step_and_changes_nothing():
    params, opt = _stepped()
    snap = _snapshot(opt)
    opt.param_groups[1]["d"] = 0.5
    with pytest.raises(ValueError, match=r"Clipping threshold d should be >= 1"):
        opt.step()
    opt.param_groups[1]["d"] = 1.0
    _assert_unchanged(opt, snap)
    opt.param_groups[0]["eps"] = (None, -1.0)
    with pytest.raises(ValueError, match=r"epsilon2 should be >= 0"):
        opt.step()


@pytest.mark.parametrize("mutate, match", [
    (lambda sd: sd["state"][0].__setitem__("row_var", np.zeros((3, 4))), r"shape \(3, 4\)"),
    (lambda sd: sd["state"][0].__setitem__("col_var", np.zeros((4, 1))), r"shape \(4, 1\)"),
    (lambda sd: sd["state"][1].__setitem__("variance", np.zeros(4)), r"shape \(4,\)"),
    (lambda sd: sd["state"][0].pop("col_var"), r"lacks \['col_var'\]"),
    (lambda sd: sd["state"][1].__setitem__("row_var", np.zeros((5, 1))), "unexpected keys"),
    (lambda sd: sd["state"][0].__setitem__("step", np.array(-1.0)), "non-negative"),
    (lambda sd: sd["state"][0].__setitem__("row_var", np.array(["a"] * 3).reshape(3, 1)),
     "non-real dtype"),
    (lambda sd: sd["param_groups"][1].__setitem__("d", 0.1), "Clipping threshold"),
])
def test_refused_state_dicts_leave_the_optimizer_unchanged(mutate, match):
    _, opt = _stepped()
    sd = opt.state_dict()
    for entry in sd["state"].values():
        for key in entry:
            entry[key] = entry[key] + 1.0 if entry[key].dtype.kind == "f" else entry[key]
    mutate(sd)
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, snap)


def test_an_empty_parameter_with_a_gradient_is_torchs_zero_division_and_changes_nothing():
    p, e = numbaopt.Parameter(np.ones(3)), numbaopt.Parameter(np.ones((0, 4)))
    opt = Adafactor([p, e])
    p.grad = np.ones(3)
    opt.step()                                       # without a gradient it is skipped
    snap = _snapshot(opt)
    e.grad = np.ones((0, 4))
    p.grad = np.ones(3)
    with pytest.raises(ZeroDivisionError, match="float division by zero"):
        opt.step()
    _assert_unchanged(opt, snap)
    try:
        import torch
    except ImportError:
        return
    tp, te = torch.ones(3, requires_grad=True), torch.ones(0, 4, requires_grad=True)
    tp.grad, te.grad = torch.ones(3), torch.ones(0, 4)
    with pytest.raises(ZeroDivisionError, match="float division by zero"):
        torch.optim.Adafactor([tp, te]).step()


# -- state_dicts -------------------------------------------------------------------------
def _torch_sd_to_numpy(sd):
    return {"state": {i: {k: v.numpy() for k, v in s.items()} for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def _numpy_sd_to_torch(sd):
    import torch
    return {"state": {i: {k: torch.tensor(v) for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_keys_shapes_and_dtypes_are_torchs(dtype):
    pytest.importorskip("torch")
    case = "large_lr"
    ours = run_ours(case, dtype, steps=4)
    theirs = run_torch(case, dtype, steps=4)
    assert sorted(ours) == sorted(theirs)   # the same parameters have state, with the same keys
    keys = lambda out, i: [k for k in out if k.startswith(f"state/{i}/")]   # noqa: E731
    for i in range(len(shapes())):
        assert keys(ours, i) == keys(theirs, i)   # in torch's order
    for key in theirs:
        assert ours[key].shape == theirs[key].shape and ours[key].dtype == theirs[key].dtype, key
    assert ours["state/0/step"].dtype == np.float32 and ours["state/0/row_var"].shape == (4, 1)
    assert ours["state/2/col_var"].shape == (2, 1, 5) and ours["state/1/variance"].shape == ()


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dicts_move_between_torch_and_numbaopt_and_both_continue(dtype):
    torch = pytest.importorskip("torch")
    case = "maximize_mixed"
    init, grads = make_inputs(case, dtype)
    kwargs = CASES[case][0]

    def torch_opt():
        ts = [torch.tensor(a.copy(), requires_grad=True) for a in init]
        return ts, torch.optim.Adafactor(groups_of(ts, case), foreach=False, **kwargs)

    def ours():
        ps = [numbaopt.Parameter(a.copy()) for a in init]
        return ps, Adafactor(groups_of(ps, case), **kwargs)

    def steps(params, opt, ks, is_torch):
        for k in ks:
            for p, g in zip(params, grads[k]):
                p.grad = None if g is None else (torch.tensor(g) if is_torch else g)
            opt.step()

    # torch -> numbaopt (parameter 4 has no state yet at step 2)
    ts, topt = torch_opt()
    steps(ts, topt, range(2), True)
    ps, opt = ours()
    for p, t in zip(ps, ts):
        p.data = t.detach().numpy()
    opt.load_state_dict(_torch_sd_to_numpy(topt.state_dict()))
    assert 4 not in opt.state_dict()["state"]
    steps(ts, topt, range(2, 15), True)
    steps(ps, opt, range(2, 15), False)
    for p, t in zip(ps, ts):
        assert_close(p.data, t.detach().numpy(), dtype, "torch -> numbaopt")

    # numbaopt -> torch
    ps, opt = ours()
    steps(ps, opt, range(6), False)
    ts, topt = torch_opt()
    with torch.no_grad():
        for p, t in zip(ps, ts):
            t.copy_(torch.tensor(p.data))
    topt.load_state_dict(_numpy_sd_to_torch(opt.state_dict()))
    steps(ts, topt, range(6, 15), True)
    steps(ps, opt, range(6, 15), False)
    for p, t in zip(ps, ts):
        assert_close(p.data, t.detach().numpy(), dtype, "numbaopt -> torch")
    theirs = _torch_sd_to_numpy(topt.state_dict())["state"]
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            assert_close(value, theirs[i][key], dtype, f"state[{i}][{key!r}]")


def _continue_together(a, b, steps=4, seed=3):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p, q in zip(a.arena.params, b.arena.params):
            g = rng.standard_normal(p.shape)
            p.grad = g
            q.grad = g
        a.step()
        b.step()
    for p, q in zip(a.arena.params, b.arena.params):
        np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_round_trip_continues_bit_for_bit_and_shares_no_memory():
    params, opt = _stepped()
    sd = opt.state_dict()
    other_params, other = _stepped(steps=1)
    for p, q in zip(params, other_params):
        q.data = p.data
    other.load_state_dict(sd)
    for entry in sd["state"].values():
        for value in entry.values():
            for buf in opt._buffers.state + other._buffers.state:
                assert not np.shares_memory(value, buf)
    _continue_together(opt, other)


def test_state_view_is_live():
    params, opt = _stepped()
    state = opt.state[params[0]]
    assert sorted(state) == ["col_var", "row_var", "step"] and state["row_var"].shape == (3, 1)
    before = state["row_var"].copy()
    params[0].grad = np.ones((3, 4))
    opt.step()
    assert not np.array_equal(state["row_var"], before)   # a view of the live buffer
    assert float(opt.state[params[0]]["step"]) == 4.0
    assert len(opt.state) == 3 and params[2] in opt.state


# -- checkpoints, pickle, deepcopy, groups --------------------------------------------------
def test_checkpoint_round_trip_continues_bit_for_bit(tmp_path):
    params, opt = _stepped(dtype=np.float32)
    numbaopt.save(tmp_path / "ckpt.npz", opt)
    _, other = _stepped(steps=1, dtype=np.float32)
    numbaopt.load(tmp_path / "ckpt.npz", other)
    _continue_together(opt, other)
    bad = Adafactor([numbaopt.Parameter(np.ones((3, 4), np.float32)),
                     numbaopt.Parameter(np.ones((5,), np.float32)),
                     numbaopt.Parameter(np.ones((), np.float32))])
    with pytest.raises(ValueError, match="parameter groups of sizes"):
        numbaopt.load(tmp_path / "ckpt.npz", bad)
    # a file whose row_var has the parameter's shape is refused, the optimizer unchanged
    sd = opt.state_dict()
    sd["state"][0]["row_var"] = np.zeros((3, 4), np.float32)
    opt.state_dict = lambda: sd                   # save() reads only state_dict()
    numbaopt.save(tmp_path / "bad.npz", opt)
    snap = _snapshot(other)
    with pytest.raises(ValueError, match=r"row_var.*shape \(3, 4\)"):
        numbaopt.load(tmp_path / "bad.npz", other)
    _assert_unchanged(other, snap)


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))],
                         ids=["deepcopy", "pickle"])
def test_deepcopy_and_pickle_give_independent_optimizers(copier):
    _, opt = _stepped()
    twin = copier(opt)
    assert twin.arena.params[0] is not opt.arena.params[0]
    assert not np.shares_memory(twin._buffers.state[0], opt._buffers.state[0])
    _continue_together(opt, twin)


def test_add_param_group_is_like_parameters_without_gradients_so_far():
    """Parameters added later behave as if they had been there without gradients."""
    rng = np.random.default_rng(0)
    first = [rng.standard_normal(s) for s in ((3, 4), (5,))]
    later = [rng.standard_normal(s) for s in ((2, 2, 3), (), (6, 1))]
    a = [numbaopt.Parameter(x.copy()) for x in first]
    b = [numbaopt.Parameter(x.copy()) for x in later]
    grown = Adafactor([{"params": a}], lr=0.05)
    c = [numbaopt.Parameter(x.copy()) for x in first + later]
    whole = Adafactor([{"params": c[:2]}, {"params": c[2:], "d": 1.3}], lr=0.05)
    for k in range(6):
        if k == 3:
            grown.add_param_group({"params": b, "d": 1.3})
        grads = [rng.standard_normal(x.shape) for x in first + later]
        for p, g in zip(a + (b if k >= 3 else []), grads):
            p.grad = g
        for j, (p, g) in enumerate(zip(c, grads)):
            p.grad = g if j < 2 or k >= 3 else None
        grown.step()
        whole.step()
    for p, q in zip(a + b, c):
        np.testing.assert_array_equal(p.data, q.data)
    sd_a, sd_b = grown.state_dict(), whole.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]
    for i, entry in sd_b["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(sd_a["state"][i][key], value)


def test_add_param_group_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s) for s in ((3, 4), (5,), (2, 3, 2))]
    ps = [numbaopt.Parameter(x.copy()) for x in init]
    ts = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    opt = Adafactor(ps[:2], weight_decay=0.1)
    topt = torch.optim.Adafactor(ts[:2], weight_decay=0.1, foreach=False)
    for k in range(8):
        if k == 2:
            opt.add_param_group({"params": ps[2:], "lr": 0.5})
            topt.add_param_group({"params": ts[2:], "lr": 0.5})
        n = 2 if k < 2 else 3
        for p, t in zip(ps[:n], ts[:n]):
            g = rng.standard_normal(p.shape)
            p.grad = g
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ps, ts):
        assert_close(p.data, t.detach().numpy(), "float64")


# -- skip_nonfinite, compiled kernels ----------------------------------------------------------
def test_skip_nonfinite_skips_the_whole_step():
    params, opt = _stepped()
    opt.skip_nonfinite = True
    snap = _snapshot(opt)
    for p in params:
        p.grad = np.ones(p.shape)
    params[0].grad = np.where(np.arange(12).reshape(3, 4) == 5, np.inf, 1.0)
    assert opt.step() is None
    assert opt.found_nonfinite and opt.skipped_steps == 1
    _assert_unchanged(opt, snap)
    params[0].grad = np.ones((3, 4))
    opt.step()
    assert not opt.found_nonfinite and float(opt.state[params[0]]["step"]) == 4.0


def test_nonfinite_gradients_propagate_by_default():
    p = numbaopt.Parameter(np.ones((2, 3)))
    opt = Adafactor([p])
    p.grad = np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]])
    opt.step()
    assert np.isnan(p.data).any()


def test_no_recompilation_after_more_steps():
    kernels = adafactor_module._cpu_kernels()
    for dtype, parallel in ((np.float32, False), (np.float64, False), (np.float32, True)):
        params = [numbaopt.Parameter(np.ones(s, dtype)) for s in ((3, 4), (5,), ())]
        opt = Adafactor(params)
        opt.parallel_threshold = 0 if parallel else 1 << 62
        opt._sync()
        for p in params:
            p.grad = np.ones(p.shape, dtype)
        opt.step()
    counts = [len(k.signatures) for k in kernels]
    for dtype in (np.float32, np.float64):
        params = [numbaopt.Parameter(np.ones(s, dtype)) for s in ((2, 3, 4), (7,))]
        opt = Adafactor([{"params": params[:1]}, {"params": params[1:], "lr": 1}], maximize=True)
        for k in range(3):
            for p in params:
                p.grad = np.full(p.shape, k + 1, dtype)
            opt.param_groups[0]["lr"] = 0.02 * (k + 1)
            opt.param_groups[1]["eps"] = (1e-4, 1e-3) if k % 2 else (None, 1e-3)
            opt.step()
        opt.add_param_group({"params": [numbaopt.Parameter(np.ones((3, 3), dtype))]})
        opt.step()
    assert [len(k.signatures) for k in kernels] == counts
    assert counts[0] == 2 and counts[1] >= 1


_CACHE_CHECK = """
import json
import numpy as np
import numbaopt
from numbaopt.optim.adafactor import Adafactor, _cpu_kernels
for dtype, parallel in (("float32", False), ("float64", False), ("float32", True)):
    ps = [numbaopt.Parameter(np.ones((2, 3), dtype)), numbaopt.Parameter(np.ones(4, dtype))]
    opt = Adafactor(ps)
    opt.parallel_threshold = 0 if parallel else 1 << 62
    opt._sync()
    for p in ps:
        p.grad = np.full(p.shape, 0.5, dtype)
    opt.step()
print(json.dumps([[sum(k.stats.cache_misses.values()), sum(k.stats.cache_hits.values())]
                  for k in _cpu_kernels()]))
"""


def test_a_second_process_loads_the_kernels_from_the_cache():
    def run():
        result = subprocess.run([sys.executable, "-c", _CACHE_CHECK], capture_output=True,
                                text=True, cwd=ROOT, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        import json
        return json.loads(result.stdout.strip().splitlines()[-1])

    run()
    assert run() == [[0, 2], [0, 1]]   # serial in float32 and float64, parallel: all hits


def test_sparse_gradients_are_refused_like_torch():
    """torch: "Adafactor does not support sparse gradients" (RuntimeError, at step)."""
    sparse = pytest.importorskip("numbaopt.sparse")
    p = numbaopt.Parameter(np.ones((4, 2)))
    Adafactor([p])
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        p.grad = sparse.RowSparseGrad(np.array([1]), np.ones((1, 2)))
    assert p.grad is None


def test_the_cuda_kernels_compile_to_ptx():
    """Real CUDA compilation, no GPU needed (NVVM from numba-cuda[cu12]): IEEE sqrt, no
    approximate division; the simulator tests run the same kernels as Python."""
    from ptx import require_ptx
    cuda = require_ptx()
    from numba import typeof
    kernels = adafactor_module._cuda_kernels()
    params = [numbaopt.Parameter(np.ones(s, np.float32)) for s in ((3, 4), (5,))]
    opt = Adafactor(params)
    (param, grad, has_grad, step, group, hyper, ptab, tasks, task_first, mats,
     row_var, col_var, variance, colpart, psq, usq, rmean, coef) = opt._args
    args = {
        "_cuda_schedule": (has_grad, step, task_first, group, hyper, coef),
        "_cuda_reduce": (param, grad, has_grad, group, hyper, ptab, tasks, row_var, variance,
                         colpart, psq, usq, coef),
        "_cuda_matrix": (param, has_grad, group, hyper, ptab, mats, row_var, col_var, colpart,
                         rmean, coef),
        "_cuda_update_norm": (param, grad, has_grad, group, hyper, ptab, tasks, row_var, col_var,
                              rmean, usq),
        "_cuda_coefficients": (param, has_grad, group, hyper, ptab, task_first, psq, usq, coef),
        "_cuda_apply": (param, grad, has_grad, group, hyper, ptab, tasks, row_var, col_var,
                        variance, rmean, coef),
    }
    assert sorted(args) == sorted(kernels)
    for name, a in args.items():
        ptx, _ = cuda.compile_ptx(kernels[name].py_func, tuple(typeof(x) for x in a), cc=(9, 0))
        assert ".entry" in ptx, name
        assert "div.full" not in ptx and "sqrt.approx" not in ptx and "rsqrt" not in ptx, name
        if name != "_cuda_schedule":
            assert "sqrt.rn.f32" in ptx, name
