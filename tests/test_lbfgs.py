"""LBFGS against torch.optim.LBFGS: iterates, counters, stopping rules, state, errors.

The trajectories are compared with the committed reference data
(scripts/make_lbfgs_reference.py) and, when torch is importable, live.
"""

import copy
import pathlib
import pickle

import numpy as np
import pytest

import numbaopt
from numbaopt.optim import _lbfgs_passes as passes
from numbaopt.optim import lbfgs as lbfgs_module
from numbaopt.optim.lbfgs import LBFGS

from lbfgs_problems import CASES, objective, run_numbaopt, run_torch
from tolerance import assert_close

REFERENCE = np.load(pathlib.Path(__file__).parent / "data" / "lbfgs_reference.npz")


def _torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ours():
    """numbaopt's run of every case, computed once."""
    return {case: run_numbaopt(case) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_iterates_match_the_reference_data(case, ours):
    traj, losses, opt = ours[case]
    dtype = CASES[case][2]
    assert_close(traj, REFERENCE[f"{case}/traj"], dtype=dtype)
    assert_close(losses, REFERENCE[f"{case}/losses"], dtype="float64" if dtype == "float64"
                 else "float32")
    evals, n_iter = REFERENCE[f"{case}/counts"]
    assert (opt.state_dict()["state"][0]["func_evals"], opt.state_dict()["state"][0]["n_iter"]) \
        == (evals, n_iter)


@pytest.mark.parametrize("case", [c for c in CASES if "1000" in c or "logistic" in c])
def test_iterates_match_torch_live(case, ours):
    _torch()
    traj, losses, opt = ours[case]
    t_traj, t_losses, counts = run_torch(case)
    assert_close(traj, t_traj, dtype=CASES[case][2])
    state = opt.state_dict()["state"][0]
    assert (state["func_evals"], state["n_iter"]) == (counts["func_evals"], counts["n_iter"])


def _quadratic(n=6, dtype=np.float64, loss_type=float, sizes=(2, 4)):
    rng = np.random.default_rng(5)
    a = rng.uniform(0.5, 3.0, n)
    x0 = rng.standard_normal(n)
    params = [numbaopt.Parameter(c.astype(dtype)) for c in np.split(x0, np.cumsum(sizes)[:-1])]

    def closure():
        x = np.concatenate([p.data for p in params])
        g = a * x
        for p, c in zip(params, np.split(g, np.cumsum(sizes)[:-1])):
            p.grad = c
        return loss_type(0.5 * np.sum(a * x * x))
    return params, closure


@pytest.mark.parametrize("loss_type", [float, np.asarray, np.float64])
def test_the_closure_may_return_a_float_or_a_0d_array(loss_type):
    params, closure = _quadratic(loss_type=loss_type)
    opt = LBFGS(params, line_search_fn="strong_wolfe")
    first = opt.step(closure)
    assert type(first) is type(loss_type(1.0))            # torch returns the first value as is
    reference, ref_closure = _quadratic()
    LBFGS(reference, line_search_fn="strong_wolfe").step(ref_closure)
    for p, q in zip(params, reference):
        np.testing.assert_array_equal(p.data, q.data)


def _torch_quadratic(torch, kwargs, x0, a, steps):
    t = torch.tensor(x0.copy(), requires_grad=True)
    opt = torch.optim.LBFGS([t], **kwargs)

    def closure():
        x = t.detach().numpy()
        t.grad = torch.tensor(a * x)
        return torch.tensor(0.5 * float(np.sum(a * x * x)), dtype=torch.float64)
    for _ in range(steps):
        opt.step(closure)
    state = opt.state[t]
    return t.detach().numpy().copy(), state.get("func_evals"), state.get("n_iter")


@pytest.mark.parametrize("kwargs", [
    {"tolerance_grad": 1e3},                        # optimal at the start: one evaluation
    {"tolerance_grad": 1e-2},                       # stops on max |g| inside the loop
    {"tolerance_change": 1e-2},                     # stops on the change of the loss
    {"tolerance_change": 1e-2, "line_search_fn": "strong_wolfe"},
    {"max_iter": 3},                                # on max_iter
    {"max_iter": 50, "max_eval": 7},                # on max_eval
    {"max_iter": 50, "max_eval": 7, "line_search_fn": "strong_wolfe"},
    {"lr": 1e-12, "tolerance_change": 1e-6},        # on the size of the step (d * t)
])
def test_each_stopping_rule_stops_where_torch_does(kwargs):
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 30.0, 8)
    x0 = rng.standard_normal(8)
    p = numbaopt.Parameter(x0.copy())
    opt = LBFGS([p], **kwargs)

    def closure():
        p.grad = a * p.data
        return 0.5 * float(np.sum(a * p.data * p.data))
    torch = _torch()
    for _ in range(2):
        opt.step(closure)
    state = opt.state_dict()["state"][0]
    x, evals, n_iter = _torch_quadratic(torch, kwargs, x0, a, 2)
    assert_close(p.data, x)
    assert (state["func_evals"], state["n_iter"]) == (evals, n_iter)


# torch's registry (optim_inputs_func_lbfgs), with its tensor lr as a 0-d array
REGISTRY = {"default": {}, "non-default lr": {"lr": 0.01}, "Tensor lr": {"lr": "tensor"},
            "tolerance_grad": {"tolerance_grad": 1e-6},
            "strong_wolfe": {"line_search_fn": "strong_wolfe"}}


@pytest.mark.parametrize("desc", REGISTRY)
def test_every_kwarg_set_of_torchs_registry(desc):
    torch = _torch()
    kwargs = REGISTRY[desc]
    # torch.tensor(0.001) is float32, as np.asarray(np.float32(0.001)) is
    ours = {k: (np.asarray(np.float32(0.001)) if v == "tensor" else v) for k, v in kwargs.items()}
    theirs = {k: (torch.tensor(0.001) if v == "tensor" else v) for k, v in kwargs.items()}
    rng = np.random.default_rng(7)
    a = rng.uniform(0.5, 30.0, 8)
    x0 = rng.standard_normal(8)
    p = numbaopt.Parameter(x0.copy())
    opt = LBFGS([p], **ours)

    def closure():
        p.grad = a * p.data
        return 0.5 * float(np.sum(a * p.data * p.data))
    for _ in range(3):
        opt.step(closure)
    x, evals, n_iter = _torch_quadratic(torch, theirs, x0, a, 3)
    assert_close(p.data, x)
    state = opt.state_dict()["state"][0]
    assert (state["func_evals"], state["n_iter"]) == (evals, n_iter)


def test_a_parameter_without_gradient_counts_as_zeros_as_in_torch():
    torch = _torch()
    rng = np.random.default_rng(4)
    x0 = [rng.standard_normal(3), rng.standard_normal(2)]
    ps = [numbaopt.Parameter(x.copy()) for x in x0]
    opt = LBFGS(ps, max_iter=3)
    ts = [torch.tensor(x.copy(), requires_grad=True) for x in x0]
    topt = torch.optim.LBFGS(ts, max_iter=3)
    a = np.array([1.0, 3.0, 7.0])
    ps[1].grad = np.full(2, 7.0)         # a stale gradient the closure never replaces: cleared
    ps[1].grad = None

    def closure():
        ps[0].grad = 2 * a * ps[0].data
        return float(np.sum(a * ps[0].data ** 2))

    def tclosure():
        ts[0].grad = torch.tensor(2 * a) * ts[0].detach()
        return torch.sum(torch.tensor(a) * ts[0].detach() ** 2)
    for _ in range(2):
        opt.step(closure)
        topt.step(tclosure)
    for p, t in zip(ps, ts):
        assert_close(p.data, t.detach().numpy())


def test_a_nan_loss_propagates_as_in_torch():
    """pytorch issue #5953: a closure returning NaN. numbaopt behaves as torch: the NaN
    reaches the parameters (documented in the README); nothing raises."""
    torch = _torch()
    x0 = np.array([1.0, -2.0, 0.5])
    p = numbaopt.Parameter(x0.copy())
    t = torch.tensor(x0.copy(), requires_grad=True)
    opt, topt = LBFGS([p]), torch.optim.LBFGS([t])
    calls = [0, 0]

    def closure():
        calls[0] += 1
        p.grad = p.data * (np.nan if calls[0] == 3 else 1.0)
        return np.nan if calls[0] == 3 else float(np.sum(p.data ** 2))

    def tclosure():
        calls[1] += 1
        t.grad = t.detach() * (float("nan") if calls[1] == 3 else 1.0)
        return torch.tensor(float("nan") if calls[1] == 3 else float(torch.sum(t.detach() ** 2)),
                            dtype=torch.float64)
    opt.step(closure)
    topt.step(tclosure)
    np.testing.assert_array_equal(np.isnan(p.data), np.isnan(t.detach().numpy()))
    assert np.isnan(p.data).all()
    assert opt.state_dict()["state"][0]["func_evals"] == topt.state[t]["func_evals"]


# -- state ---------------------------------------------------------------------------
def _torch_state(torch, state):
    def conv(v):
        if isinstance(v, np.ndarray):
            return torch.tensor(v)
        if isinstance(v, list):
            return [None if a is None else torch.tensor(a) for a in v]
        return v
    return {k: conv(v) for k, v in state.items()}


def _numpy_state(torch, state):
    def conv(v):
        if torch.is_tensor(v):
            return v.numpy().copy()
        if isinstance(v, list):
            return [None if a is None else a.numpy().copy() for a in v]
        return v
    return {k: conv(v) for k, v in state.items()}


def test_state_dict_has_torchs_keys_types_and_lengths():
    torch = _torch()
    case = "rosenbrock1000-wolfe5-float64"
    _, _, opt = run_numbaopt(case, steps=2)
    problem, kwargs, dtype, _ = CASES[case]
    f, x0, sizes = objective(problem)
    ts = [torch.tensor(c, requires_grad=True) for c in np.split(x0, np.cumsum(sizes)[:-1])]
    topt = torch.optim.LBFGS(ts, **kwargs)

    def tclosure():
        x = np.concatenate([t.detach().numpy() for t in ts])
        loss, g = f(x)
        for t, c in zip(ts, np.split(g, np.cumsum(sizes)[:-1])):
            t.grad = torch.tensor(c)
        return torch.tensor(loss, dtype=torch.float64)
    for _ in range(2):
        topt.step(tclosure)
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert list(ours["state"]) == list(theirs["state"]) == [0]
    mine, ref = ours["state"][0], _numpy_state(torch, theirs["state"][0])
    assert set(mine) == set(ref)
    for key in ("func_evals", "n_iter"):
        assert mine[key] == ref[key]
    for key in ("d", "prev_flat_grad"):
        assert_close(mine[key], ref[key])
    for key in ("old_dirs", "old_stps", "ro"):
        assert len(mine[key]) == len(ref[key])
        for a, b in zip(mine[key], ref[key]):
            assert_close(a, b)
    assert len(mine["al"]) == len(ref["al"]) == 5
    for a, b in zip(mine["al"], ref["al"]):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)
    assert_close(mine["H_diag"], ref["H_diag"])
    assert mine["t"] == pytest.approx(float(ref["t"]), rel=1e-10)
    assert mine["prev_loss"] == pytest.approx(ref["prev_loss"], rel=1e-10)
    assert ours["param_groups"][0]["params"] == theirs["param_groups"][0]["params"]
    assert {k: v for k, v in ours["param_groups"][0].items()} == \
        {k: v for k, v in theirs["param_groups"][0].items()}


@pytest.mark.parametrize("direction", ["torch_to_numbaopt", "numbaopt_to_torch"])
def test_a_run_resumes_across_torch_and_numbaopt(direction):
    torch = _torch()
    case = "least_squares-wolfe5-float64"
    problem, kwargs, dtype, _ = CASES[case]
    f, x0, sizes = objective(problem)
    cuts = np.cumsum(sizes)[:-1]
    ps = [numbaopt.Parameter(c.copy()) for c in np.split(x0, cuts)]
    ts = [torch.tensor(c.copy(), requires_grad=True) for c in np.split(x0, cuts)]
    opt, topt = LBFGS(ps, **kwargs), torch.optim.LBFGS(ts, **kwargs)

    def closure():
        loss, g = f(np.concatenate([p.data for p in ps]))
        for p, c in zip(ps, np.split(g, cuts)):
            p.grad = c
        return loss

    def tclosure():
        loss, g = f(np.concatenate([t.detach().numpy() for t in ts]))
        for t, c in zip(ts, np.split(g, cuts)):
            t.grad = torch.tensor(c)
        return torch.tensor(loss, dtype=torch.float64)
    source_step = tclosure if direction == "torch_to_numbaopt" else closure
    for _ in range(2):
        (topt if direction == "torch_to_numbaopt" else opt).step(source_step)
    if direction == "torch_to_numbaopt":
        sd = topt.state_dict()
        sd = {"state": {0: _numpy_state(torch, sd["state"][0])},
              "param_groups": sd["param_groups"]}
        for p, t in zip(ps, ts):
            p.data[...] = t.detach().numpy()
        opt.load_state_dict(sd)
    else:
        sd = opt.state_dict()
        with torch.no_grad():
            for p, t in zip(ps, ts):
                t.copy_(torch.tensor(p.data))
        topt.load_state_dict({"state": {0: _torch_state(torch, sd["state"][0])},
                              "param_groups": sd["param_groups"]})
    for _ in range(2):
        opt.step(closure)
        topt.step(tclosure)
        for p, t in zip(ps, ts):
            assert_close(p.data, t.detach().numpy())
    assert opt.state_dict()["state"][0]["func_evals"] == topt.state[ts[0]]["func_evals"]


def _copies(opt, params, tmp_path):
    """The optimizer copied by state_dict, numbaopt.save/load, pickle and deepcopy."""
    out = {}
    kwargs = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    fresh = [numbaopt.Parameter(p.data.copy()) for p in params]
    by_sd = LBFGS(fresh, **kwargs)
    by_sd.load_state_dict(opt.state_dict())
    out["state_dict"] = (by_sd, fresh)
    fresh = [numbaopt.Parameter(p.data.copy()) for p in params]
    by_file = LBFGS(fresh, **kwargs)
    numbaopt.save(tmp_path / "lbfgs.npz", opt)
    numbaopt.load(tmp_path / "lbfgs.npz", by_file)
    out["checkpoint"] = (by_file, fresh)
    pickled = pickle.loads(pickle.dumps(opt))
    out["pickle"] = (pickled, pickled.param_groups[0]["params"])
    deep = copy.deepcopy(opt)
    out["deepcopy"] = (deep, deep.param_groups[0]["params"])
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_copies_continue_in_lockstep(dtype, tmp_path):
    case = f"logistic-wolfe5-{dtype}"
    problem, kwargs, _, _ = CASES[case]
    f, x0, sizes = objective(problem)
    cuts = np.cumsum(sizes)[:-1]
    ps = [numbaopt.Parameter(c.astype(dtype)) for c in np.split(x0, cuts)]
    opt = LBFGS(ps, **kwargs)

    def closure_for(params):
        def closure():
            loss, g = f(np.concatenate([p.data.astype(np.float64) for p in params]))
            for p, c in zip(params, np.split(g, cuts)):
                p.grad = c.astype(dtype)
            return loss
        return closure
    opt.step(closure_for(ps))
    copies = _copies(opt, ps, tmp_path)
    for _ in range(2):
        opt.step(closure_for(ps))
    for name, (other, params) in copies.items():
        for _ in range(2):
            other.step(closure_for(params))
        for p, q in zip(ps, params):
            # state_dict and the checkpoint rebuild the Gram table of the history from the
            # stored pairs (BLAS sums): equal to rounding, not bit for bit
            assert_close(q.data, p.data, err_msg=name)


def test_state_dict_is_a_copy_and_state_is_torchs_view():
    params, closure = _quadratic()
    opt = LBFGS(params, history_size=3)
    assert opt.state_dict()["state"] == {} and dict(opt.state) == {}
    for _ in range(3):
        opt.step(closure)
    sd = opt.state_dict()
    sd["state"][0]["d"][:] = 99
    sd["state"][0]["old_dirs"][0][:] = 99
    assert not np.any(opt.state_dict()["state"][0]["d"] == 99)
    assert set(opt.state[params[0]]) == set(sd["state"][0])
    assert params[1] not in opt.state


# -- errors ----------------------------------------------------------------------------
def test_more_than_one_group_is_refused_before_anything_changes():
    a, b = numbaopt.Parameter(np.zeros(2)), numbaopt.Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="LBFGS doesn't support per-parameter options"):
        LBFGS([{"params": [a]}, {"params": [b]}])
    assert a._arena is None and b._arena is None
    opt = LBFGS([a])
    with pytest.raises(ValueError, match="LBFGS doesn't support per-parameter options"):
        opt.add_param_group({"params": [b]})
    assert len(opt.param_groups) == 1 and b._arena is None


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"lr": np.array([0.1, 0.2])}, "Tensor lr must be 1-element"),
    ({"max_iter": 0}, "'max_iter' must be a positive integer"),
    ({"history_size": 2.5}, "'history_size' must be a positive integer"),
    ({"tolerance_grad": float("nan")}, "'tolerance_grad' must be a number"),
    ({"line_search_fn": "armijo"}, "only 'strong_wolfe' is supported"),
])
def test_bad_options_are_refused(kwargs, match):
    p = numbaopt.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match=match):
        LBFGS([p], **kwargs)
    assert p._arena is None


def test_a_bad_edit_of_the_group_is_refused_at_step_and_changes_nothing():
    params, closure = _quadratic()
    opt = LBFGS(params)
    opt.step(closure)
    before = opt.state_dict()
    x = [p.data.copy() for p in params]
    opt.param_groups[0]["line_search_fn"] = "backtracking"
    with pytest.raises(ValueError, match="only 'strong_wolfe' is supported"):
        opt.step(closure)
    for p, v in zip(params, x):
        np.testing.assert_array_equal(p.data, v)
    assert opt.state_dict()["state"][0]["func_evals"] == before["state"][0]["func_evals"]


def test_a_bad_state_dict_is_refused_and_changes_nothing():
    params, closure = _quadratic()
    opt = LBFGS(params, history_size=4)
    for _ in range(2):
        opt.step(closure)
    good = opt.state_dict()
    for mutate, match in [
        (lambda s: s["state"][0].update(d=np.zeros(5)), "'d' must be a real vector of 6"),
        (lambda s: s["state"][0]["old_dirs"].pop(), "differ in length"),
        (lambda s: s["state"][0].update(n_iter=-1), "'n_iter' must be a non-negative integer"),
        (lambda s: s["state"][0].update(bogus=1), "unexpected keys"),
        (lambda s: s["state"][0].pop("t"), "lacks"),
    ]:
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(bad)
        after = opt.state_dict()["state"][0]
        np.testing.assert_array_equal(after["d"], good["state"][0]["d"])
        assert after["n_iter"] == good["state"][0]["n_iter"]


# -- machinery ---------------------------------------------------------------------------
def test_serial_and_threaded_passes_agree(monkeypatch):
    """The threaded passes cut the arena into the same blocks as the serial ones."""
    case = "rosenbrock1000-wolfe5-float64"
    serial, _, _ = run_numbaopt(case)
    monkeypatch.setattr(lbfgs_module, "PARALLEL_THRESHOLD", 1)
    threaded, _, opt = run_numbaopt(case)
    assert opt._parallel
    np.testing.assert_allclose(threaded, serial, rtol=1e-13, atol=1e-13)


def test_more_steps_compile_nothing_new():
    params, closure = _quadratic()
    opt = LBFGS(params, line_search_fn="strong_wolfe", history_size=3)
    opt.step(closure)
    kernels = [passes._ABS_STATS[0], passes._NEW_PAIR[0], passes._MOVE[0],
               passes._HISTORY_DOTS[0], passes._DIRECTION[0], passes._two_loop]
    counts = [len(k.signatures) for k in kernels]
    for _ in range(4):
        opt.step(closure)
    assert [len(k.signatures) for k in kernels] == counts


def test_history_size_can_change_between_steps():
    params, closure = _quadratic(n=6)
    opt = LBFGS(params, history_size=4, max_iter=3)
    opt.step(closure)
    opt.step(closure)
    opt.param_groups[0]["history_size"] = 2
    opt.step(closure)
    assert len(opt.state_dict()["state"][0]["old_dirs"]) <= 2
    assert len(opt.state_dict()["state"][0]["al"]) == 2
    opt.param_groups[0]["history_size"] = 6
    opt.step(closure)
    assert np.isfinite(np.concatenate([p.data for p in params])).all()


def test_distributed_optimizer_refuses_lbfgs_with_the_reason():
    pytest.importorskip("mpi4py")
    from numbaopt.distributed import DistributedOptimizer
    params, _ = _quadratic()
    with pytest.raises(NotImplementedError, match="evaluates the closure several times"):
        DistributedOptimizer(LBFGS(params))


def test_device_cuda_without_a_gpu_is_a_clear_error():
    p = numbaopt.Parameter(np.zeros(2))
    from numba import config
    if config.ENABLE_CUDASIM:
        pytest.skip("the simulator is on")
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM|numba-cuda"):
        LBFGS([p], device="cuda")
    assert p._arena is None


_CACHE_PROBE = """
import json
import numpy as np
import numbaopt
from numbaopt.optim import _lbfgs_passes as passes, lbfgs
stats = {}
for dtype in ("float32", "float64"):
    for threshold in (1 << 30, 1):
        lbfgs.PARALLEL_THRESHOLD = threshold
        p = numbaopt.Parameter(np.linspace(-1, 1, 9).astype(dtype))
        opt = lbfgs.LBFGS([p], line_search_fn="strong_wolfe", history_size=3, max_iter=6)
        def closure():
            p.grad = (4 * p.data ** 3 + p.data).astype(dtype)
            return float(np.sum(p.data ** 4 + 0.5 * p.data ** 2))
        opt.step(closure)
        opt.step(closure)
kernels = {name: getattr(passes, name) for name in
           ("_ABS_STATS", "_NEW_PAIR", "_HISTORY_DOTS", "_DIRECTION", "_DOT", "_MOVE")}
for name, pair in kernels.items():
    for kind, k in zip(("serial", "parallel"), pair):
        stats[f"{name} {kind}"] = [sum(k.stats.cache_misses.values()),
                                   sum(k.stats.cache_hits.values())]
stats["_two_loop"] = [sum(passes._two_loop.stats.cache_misses.values()),
                      sum(passes._two_loop.stats.cache_hits.values())]
print(json.dumps(stats))
"""


def test_a_second_process_loads_every_lbfgs_kernel_from_the_cache():
    import json
    import subprocess
    import sys

    def run():
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True,
                             text=True, timeout=600, cwd=pathlib.Path(__file__).parents[1])
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])
    run()
    second = run()
    assert not {k: v for k, v in second.items() if v[0]}, second
    assert all(v[1] >= 1 for v in second.values()), second


def test_serial_and_parallel_kernels_are_cached_under_distinct_names():
    """numba's cache index ignores parallel=: one name for both would load one for the other."""
    for name in ("_ABS_STATS", "_NEW_PAIR", "_HISTORY_DOTS", "_DIRECTION", "_DOT", "_MOVE"):
        serial, parallel = getattr(passes, name)
        assert serial.py_func.__qualname__ != parallel.py_func.__qualname__
        assert parallel.targetoptions.get("parallel") and not serial.targetoptions.get("parallel")


def test_every_cuda_kernel_compiles_to_ptx():
    """The GPU passes compile for a real device (NVVM from numba-cuda[cu12]; no GPU needed)."""
    from ptx import require_ptx
    cuda = require_ptx()
    from numba import types
    from numbaopt.optim import _lbfgs_cuda as k
    f64 = types.float64
    for T in (types.float32, types.float64):
        v, m = T[::1], T[:, ::1]
        signatures = {
            k._abs_stats: (v, f64[:, ::1]),
            k._new_pair: (v, v, v, T, m, f64[:, ::1]),
            k._history_dots: (m, m, f64[:, :, ::1]),
            k._direction: (v, m, f64[::1], types.int64, v),
            k._dot_max: (v, v, f64[:, ::1]),
            k._move: (v, v, v, T),
        }
        for kernel, sig in signatures.items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            assert ".entry" in ptx


def test_float32_line_search_tests_sufficient_decrease_in_float32_as_torch():
    """torch's gtd is a float32 tensor, so f + c1 t gtd rounds back to f on a plateau."""
    torch = _torch()
    rng = np.random.default_rng(11)
    a = rng.uniform(0.5, 2.0, 50).astype(np.float32)
    x0 = rng.standard_normal(50).astype(np.float32)
    p = numbaopt.Parameter(x0.copy())
    t = torch.tensor(x0.copy(), requires_grad=True)
    kwargs = dict(line_search_fn="strong_wolfe", max_iter=30)
    opt, topt = LBFGS([p], **kwargs), torch.optim.LBFGS([t], **kwargs)

    def closure():
        p.grad = a * p.data
        return np.float32(1.0) + np.float32(0.5) * np.sum(a * p.data * p.data, dtype=np.float32)

    def tclosure():
        x = t.detach()
        t.grad = torch.tensor(a) * x
        return 1.0 + 0.5 * torch.sum(torch.tensor(a) * x * x)
    opt.step(closure)
    topt.step(tclosure)
    assert opt.state_dict()["state"][0]["func_evals"] == topt.state[t]["func_evals"]
    assert_close(p.data, t.detach().numpy())
