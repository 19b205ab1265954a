"""The layout of the elementwise optimizers: registry coverage, torch's flags and errors,
state_dicts both ways with torch, numba's cache across processes, the CUDA kernels'
compilation, the Python-step base class, and the RMSprop overflow parity fix."""

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from cases import REGISTRY
from tolerance import assert_close

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALL = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam",
       "ASGD", "Rprop"]
NEW = ["Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"]


def _params(rng, dtype=np.float64, shapes=((3, 4), (5,), ())):
    return [numbaopt.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# -- torch's registry ---------------------------------------------------------------------
def _torch_registry():
    pytest.importorskip("torch")
    pytest.importorskip("expecttest")   # torch.testing._internal imports it
    from torch.testing._internal import common_optimizers
    return common_optimizers


@pytest.mark.parametrize("name", ALL)
def test_case_table_holds_every_registry_kwarg_set(name):
    """tests/cases.py REGISTRY equals torch's optim_inputs_func_<name>(device="cpu")."""
    co = _torch_registry()          # skips without torch
    import torch
    func = getattr(co, "optim_inputs_func_" + name.lower())
    try:
        inputs = func(device="cpu")
    except TypeError:
        inputs = func(device="cpu", dtype=torch.float32)
    theirs = [(i.desc, i.kwargs) for i in inputs
              if not any(torch.is_tensor(v) for v in i.kwargs.values())]   # tensor lr: later
    assert theirs == REGISTRY[name]


@pytest.mark.parametrize("name", NEW)
def test_optimizer_specific_error_inputs_of_torchs_registry(name):
    import re
    co = _torch_registry()          # skips without torch
    import torch
    func = getattr(co, "optim_error_inputs_func_" + name.lower())
    checked = 0
    for error in func(device="cpu", dtype=torch.float32):
        inp = error.optimizer_error_input
        kwargs = inp.kwargs
        if inp.params is not None or any(torch.is_tensor(v) for v in kwargs.values()):
            continue   # params-shape and tensor-lr errors: the generic surface
        p = numbaopt.Parameter(np.zeros(3))
        with pytest.raises(error.error_type) as info:
            getattr(optim, name)([p], **kwargs)
        assert re.search(error.error_regex, str(info.value)), (str(info.value), error.error_regex)
        assert p._arena is None   # refused before anything was packed
        checked += 1
    assert checked >= 1


# -- torch's implementation flags ---------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_param_groups_hold_torchs_keys_and_flags(name, rng):
    torch = pytest.importorskip("torch")
    ours = getattr(optim, name)(_params(rng))
    theirs = getattr(torch.optim, name)([torch.zeros(3, requires_grad=True)])
    strip = lambda g: {k: v for k, v in g.items() if k != "params"}   # noqa: E731
    assert strip(ours.param_groups[0]) == strip(theirs.param_groups[0])
    assert ours.defaults == theirs.defaults


@pytest.mark.parametrize("name", ALL)
def test_foreach_fused_capturable_change_nothing_and_differentiable_is_refused(name, rng):
    import inspect
    accepted = set(inspect.signature(getattr(optim, name)).parameters)
    flags = [f for f in ("foreach", "fused", "capturable") if f in accepted]
    assert "foreach" in flags and "differentiable" in accepted

    def run(**kwargs):
        params = _params(np.random.default_rng(5))
        opt = getattr(optim, name)(params, **kwargs)
        for k in range(4):
            for p in params:
                p.grad = np.full(p.shape, 0.1 * (k + 1))
            opt.step()
        return np.concatenate([p.data.ravel() for p in params])

    base = run()
    for flag in flags:
        np.testing.assert_array_equal(run(**{flag: True}), base)
    with pytest.raises(ValueError, match=r"\(differentiable=True\) is not supported"):
        getattr(optim, name)(_params(rng), differentiable=True)
    opt = getattr(optim, name)(_params(rng))
    opt.param_groups[0]["differentiable"] = True
    with pytest.raises(ValueError, match="differentiable"):
        opt.step()


# -- state_dicts both ways with torch -----------------------------------------------------
def _torch_sd_to_numpy(sd):
    import torch
    return {"state": {i: {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def _numpy_sd_to_torch(sd):
    import torch
    return {"state": {i: {k: torch.tensor(v) for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


@pytest.mark.parametrize("name", NEW)
def test_state_dict_moves_between_torch_and_numbaopt_and_both_continue(name, rng):
    torch = pytest.importorskip("torch")
    kwargs = {"ASGD": dict(t0=2, lambd=0.01), "NAdam": dict(momentum_decay=0.05)}.get(name, {})
    shapes = ((3, 2), (4,))
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(12)]

    def torch_opt():
        ts = [torch.tensor(a.copy(), requires_grad=True) for a in init]
        return ts, getattr(torch.optim, name)([{"params": ts[:1]}, {"params": ts[1:], "lr": 0.02}],
                                             foreach=False, **kwargs)

    def ours():
        ps = [numbaopt.Parameter(a.copy()) for a in init]
        return ps, getattr(optim, name)([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.02}],
                                        **kwargs)

    def steps(params, opt, ks, is_torch):
        for k in ks:
            for p, g in zip(params, grads[k]):
                p.grad = torch.tensor(g) if is_torch else g
            opt.step()

    # torch -> numbaopt
    ts, topt = torch_opt()
    steps(ts, topt, range(5), True)
    ps, opt = ours()
    for p, t in zip(ps, ts):
        p.data = t.detach().numpy()
    opt.load_state_dict(_torch_sd_to_numpy(topt.state_dict()))
    steps(ts, topt, range(5, 12), True)
    steps(ps, opt, range(5, 12), False)
    for p, t in zip(ps, ts):
        assert_close(p.data, t.detach().numpy(), "float64", f"{name}: torch -> numbaopt")

    # numbaopt -> torch
    ps, opt = ours()
    steps(ps, opt, range(5), False)
    ts, topt = torch_opt()
    with torch.no_grad():
        for p, t in zip(ps, ts):
            t.copy_(torch.tensor(p.data))
    topt.load_state_dict(_numpy_sd_to_torch(opt.state_dict()))
    steps(ts, topt, range(5, 12), True)
    steps(ps, opt, range(5, 12), False)
    for p, t in zip(ps, ts):
        assert_close(p.data, t.detach().numpy(), "float64", f"{name}: numbaopt -> torch")


@pytest.mark.parametrize("name", NEW)
def test_state_dict_round_trip_continues_bit_for_bit(name, rng):
    a, b = _params(rng), _params(np.random.default_rng(0))
    for x, y in zip(a, b):
        y.data = x.data
    opt_a, opt_b = getattr(optim, name)(a), getattr(optim, name)(b)
    for k in range(3):
        for p in a:
            p.grad = np.full(p.shape, 0.3 - 0.1 * k)
        opt_a.step()
    for x, y in zip(a, b):
        y.data = x.data
    sd = opt_a.state_dict()
    opt_b.load_state_dict(sd)
    for k in range(4):
        for p, q in zip(a, b):
            p.grad = q.grad = np.full(p.shape, 0.2 + 0.05 * k)
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.data, y.data)
    for entry in sd["state"].values():   # the dict shares no memory with the optimizer
        for value in entry.values():
            for buf in opt_a.arena.state.values():
                assert not np.shares_memory(value, buf)


def test_scalar_state_is_torchs_float32(rng):
    opt = optim.NAdam(_params(rng))
    for p in opt.arena.params:
        p.grad = np.ones(p.shape)
    opt.step()
    entry = opt.state_dict()["state"][0]
    assert list(entry) == ["step", "mu_product", "exp_avg", "exp_avg_sq"]   # torch's order
    assert entry["mu_product"].dtype == np.float32 and entry["mu_product"].shape == ()
    asgd = optim.ASGD(_params(rng))
    for p in asgd.arena.params:
        p.grad = np.ones(p.shape)
    asgd.step()
    assert list(asgd.state_dict()["state"][0]) == ["step", "eta", "mu", "ax"]


def test_rprop_step_size_starts_at_the_lr_of_the_first_step(rng):
    params = _params(rng)
    opt = optim.Rprop(params, lr=0.01)
    opt.param_groups[0]["lr"] = 0.5   # changed before the first step: torch uses 0.5
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    assert np.all(opt.state_dict()["state"][0]["step_size"] == 0.5)


# -- the RMSprop overflow fix --------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_centered_rmsprop_stays_finite_where_g_squared_overflows(dtype):
    """torch's addcmul is a fused multiply-add: sq - ga*ga stays inf when both overflow."""
    big = {"float32": 1e24, "float64": 1e160}[dtype]
    g0 = np.array([big, 1.0, -big, 3.0], dtype)
    p = numbaopt.Parameter(np.zeros(4, dtype))
    opt = optim.RMSprop([p], lr=0.01, centered=True)
    traj = []
    for k in range(3):
        p.grad = g0 if k == 0 else np.array([0.1, 0.2, 0.3, 0.4], dtype)
        opt.step()
        traj.append(p.data.copy())
    assert np.isfinite(traj[-1]).all() and traj[-1][0] == 0.0 and traj[-1][2] == 0.0
    try:
        import torch
    except ImportError:
        return
    tp = torch.zeros(4, dtype=getattr(torch, dtype), requires_grad=True)
    topt = torch.optim.RMSprop([tp], lr=0.01, centered=True, foreach=False)
    for k in range(3):
        tp.grad = torch.tensor(g0 if k == 0 else np.array([0.1, 0.2, 0.3, 0.4], dtype))
        topt.step()
        assert_close(traj[k], tp.detach().numpy(), dtype, f"step {k + 1}")


# -- numba's cache ------------------------------------------------------------------------
_STEP_ALL = """
import json, sys
import numpy as np
import numbaopt
from numbaopt import optim
names = {names!r}
stats = {{}}
for name in names:
    for dtype in ("float32", "float64"):
        for parallel in (False, True):
            ps = [numbaopt.Parameter(np.ones(7, dtype)), numbaopt.Parameter(np.ones((2, 3), dtype))]
            opt = getattr(optim, name)(ps)
            if parallel:
                opt.parallel_threshold = 0
                opt._sync()
            for p in ps:
                p.grad = np.full(p.shape, 0.5, dtype)
            opt.step()
            k = opt._kernel
            stats[f"{{name}} {{dtype}} {{parallel}}"] = [sum(k.stats.cache_misses.values()),
                                                         sum(k.stats.cache_hits.values())]
            stats[f"{{name}} {{dtype}} {{parallel}} value"] = float(ps[0].data[0])
print(json.dumps(stats))
"""


def _run(code, env=None, cwd=ROOT):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_kernel_from_the_cache():
    """Every optimizer's serial and parallel kernels, in both dtypes: 0 misses the second time.

    The first process fills the package's own cache (what the rest of the suite uses too).
    """
    code = _STEP_ALL.format(names=ALL)
    _run(code)
    second = _run(code)
    misses = {k: v for k, v in second.items() if not k.endswith("value") and v[0]}
    assert not misses, f"compiled again in a second process: {misses}"
    assert all(v[1] >= 1 for k, v in second.items() if not k.endswith("value"))


def test_an_edit_to_a_rule_module_reaches_the_next_process(tmp_path):
    """numba stamps only the template's file: the rule's source hash must cover its module."""
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "numbaopt", pkg / "numbaopt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(pkg), NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    code = _STEP_ALL.format(names=["SGD"]) .replace("import numbaopt\n", textwrap.dedent(f"""
        import numbaopt
        assert numbaopt.__file__.startswith({str(pkg)!r}), numbaopt.__file__
        """))
    before = _run(code, env, cwd=tmp_path)
    again = _run(code, env, cwd=tmp_path)
    assert again["SGD float32 False"][0] == 0   # cached
    sgd = pkg / "numbaopt" / "optim" / "sgd.py"
    source = sgd.read_text()
    assert "return (T(-h[0])," in source
    sgd.write_text(source.replace("return (T(-h[0]),", "return (T(-2.0 * h[0]),"))
    after = _run(code, env, cwd=tmp_path)
    for key in ("SGD float32 False", "SGD float64 True"):
        step = 1.0 - before[key + " value"]
        assert after[key + " value"] == pytest.approx(1.0 - 2 * step), key
        assert after[key][0] >= 1   # compiled the new math


# -- the CUDA kernels compile (no GPU needed: NVVM from numba-cuda[cu12]) -------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ALL)
def test_every_rule_compiles_to_ptx(name, dtype):
    from ptx import require_ptx
    require_ptx()
    ptx = getattr(optim, name)._rule.cuda().ptx(dtype)
    kind = "f32" if dtype == "float32" else "f64"
    assert ".entry" in ptx
    if name not in ("SGD", "ASGD", "Rprop", "Adamax"):
        assert f"sqrt.rn.{kind}" in ptx   # IEEE sqrt, no fastmath
    assert "div.full" not in ptx and "sqrt.approx" not in ptx


# -- the two ways to write an optimizer ---------------------------------------------------
def test_python_step_subclass_keeps_state_and_saves_it(rng):
    class SignSGD(optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if len(state) == 0:
                        state["step"] = 0
                        state["last"] = np.zeros_like(p.data)
                    state["step"] += 1
                    state["last"][...] = np.sign(p.grad)
                    p.data -= group["lr"] * state["last"]

    params = _params(rng)
    start = [p.data.copy() for p in params]
    opt = SignSGD(params, lr=0.5)
    params[0].grad = np.ones(params[0].shape)
    opt.step()
    opt.step()
    np.testing.assert_array_equal(params[0].data, start[0] - 1.0)
    np.testing.assert_array_equal(params[1].data, start[1])   # no gradient: skipped
    sd = opt.state_dict()
    assert list(sd["state"]) == [0] and sd["state"][0]["step"] == 2
    other = SignSGD(_params(rng))
    other.load_state_dict(sd)
    assert other.state[other.arena.params[0]]["step"] == 2
    sd["state"][0]["last"][...] = 7   # copies, both ways
    assert not (other.state[other.arena.params[0]]["last"] == 7).any()


def test_missing_step_and_missing_rule_are_clear_errors(rng):
    class NoStep(optim.Optimizer):
        pass

    with pytest.raises(NotImplementedError, match="writes step\\(\\) in Python"):
        NoStep(_params(rng), {}).step()

    class NoRule(optim.ElementwiseOptimizer):
        pass

    with pytest.raises(TypeError, match="declares no elementwise rule"):
        NoRule(_params(rng), {})
    with pytest.raises(TypeError, match="needs both coefficients\\(\\) and update\\(\\)"):
        class HalfRule(optim.ElementwiseOptimizer):   # noqa: F841
            @staticmethod
            def coefficients(h, t, s, i, T):
                return (T(h[0]),)


@pytest.mark.parametrize("name", NEW)
def test_checkpoint_round_trip_continues_bit_for_bit(name, tmp_path):
    """numbaopt.save/load with the new state keys (0-d scalar state included)."""
    def make():
        return [numbaopt.Parameter(np.linspace(0, 1, 6).reshape(2, 3)),
                numbaopt.Parameter(np.ones(4))]

    a = make()
    opt_a = getattr(optim, name)(a)
    for k in range(3):
        for p in a:
            p.grad = np.full(p.shape, 0.1 * (k + 1))
        opt_a.step()
    numbaopt.save(tmp_path / "ckpt", opt_a)
    b = make()
    opt_b = getattr(optim, name)(b)
    numbaopt.load(tmp_path / "ckpt", opt_b)
    for k in range(3):
        for p, q in zip(a, b):
            p.grad = q.grad = np.full(p.shape, 0.2 * (k + 1))
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)


def test_the_rule_hash_covers_helpers_in_other_modules(tmp_path, monkeypatch):
    """A rule's @njit helper may live in another file: editing that file changes the tag."""
    import importlib
    from numbaopt.kernels import elementwise as ew
    (tmp_path / "my_helpers.py").write_text(
        "from numba import njit\n\n@njit(inline='always')\ndef twice(x):\n    return x + x\n")
    (tmp_path / "my_rule.py").write_text(textwrap.dedent("""
        from my_helpers import twice

        def coefficients(h, t, s, i, T):
            return (T(h[0]),)

        def update(lo, hi, stride, k, param, grad):
            for j in range(lo, hi, stride):
                param[j] = param[j] - twice(k[0] * grad[j])
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    rule_module = importlib.import_module("my_rule")
    before = ew.Rule("mine", 0, rule_module.coefficients, rule_module.update).tag
    with open(tmp_path / "my_helpers.py", "a") as f:
        f.write("# edited\n")
    ew._file_digest.cache_clear()
    after = ew.Rule("mine", 0, rule_module.coefficients, rule_module.update).tag
    assert before != after
