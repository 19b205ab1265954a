"""Complex parameters (issue 14): stepped as torch steps them, as view_as_real pairs.

A complex parameter of n elements is 2n reals in the arena of its real dtype, so a
complex64 parameter shares the float32 arena with real float32 ones and the kernels need
no complex arithmetic. Checked here:

- against torch: every registry kwarg set of every optimizer torch steps complex
  parameters with, from committed data (scripts/make_complex_reference.py) and live;
- torch's own test_complex (a complex parameter against its view_as_real twin, bit for
  bit, intermediate values included) and test_complex_2d (against its real and imaginary
  parts as two parameters), ported;
- the surface: complex views, gradients in, state_dict both ways, numbaopt.save/load,
  add_param_group, compiled handles, and the refusals (Adafactor, Muon, SparseAdam,
  a complex value for a real parameter, float16).
"""

import copy
import pathlib
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from tolerance import assert_close

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import make_complex_reference as ref  # noqa: E402

P = numbaopt.Parameter
DATA = np.load(ref.DATA)
CASES = ref.cases()


def _run(name, kwargs, precision, steps=None):
    """numbaopt's parameters and optimizer after ``steps`` steps of the reference problem."""
    values, targets, weights = ref.problem(precision)
    params = [P(v.copy()) for v in values]
    opt = getattr(optim, name)(params, **copy.deepcopy(kwargs))

    def closure():
        opt.zero_grad()
        loss, grads = ref.loss_and_grads([p.data for p in params], targets, weights)
        opt.set_grads(grads)
        return loss

    for _ in range(ref.steps(name) if steps is None else steps):
        if name == "LBFGS":
            opt.step(closure)
        else:
            closure()
            opt.step()
    return params, opt


def _check_against(params, opt, expected_params, expected_state, what):
    for j, (p, e) in enumerate(zip(params, expected_params)):
        assert p.data.dtype == e.dtype, what
        assert_close(p.data, e, err_msg=f"{what}: parameter {j}")
    if not expected_state:
        return
    state = opt.state_dict()["state"]
    for (i, key), e in expected_state.items():
        got = np.asarray(state[i][key])
        assert got.dtype == e.dtype, f"{what}: state {i} {key} is {got.dtype}, torch's {e.dtype}"
        assert_close(got, e, err_msg=f"{what}: state {i} {key}")


def _reference(name, k, precision):
    base = ref.key(name, k, precision)
    params = [DATA[f"{base}/param/{j}"] for j in range(len(ref.SHAPES))]
    state = {}
    prefix = f"{base}/state/"
    for key in DATA.files:
        if key.startswith(prefix):
            i, sname = key[len(prefix):].split("/")
            state[(int(i), sname)] = DATA[key]
    return params, state


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[4]}-{c[2]}" for c in CASES])
def test_complex_steps_as_torch_reference(case):
    name, k, desc, kwargs, precision = case
    assert str(DATA[f"{ref.key(name, k, precision)}/desc"]) == desc
    params, opt = _run(name, kwargs, precision)
    _check_against(params, opt, *_reference(name, k, precision), f"{name} {desc} {precision}")


@pytest.mark.parametrize("name", ref.NAMES)
def test_complex_steps_as_torch_live(name):
    pytest.importorskip("torch")
    for _, k, desc, kwargs, precision in [c for c in CASES if c[0] == name]:
        params, opt = _run(name, kwargs, precision)
        _check_against(params, opt, *ref.run_torch(name, kwargs, precision),
                       f"{name} {desc} {precision} (live)")


# -- torch's test_complex and test_complex_2d, ported ---------------------------------------
@pytest.mark.parametrize("name", ref.NAMES)
def test_complex_matches_its_view_as_real_twin(name):
    """torch's test_complex: the complex parameters and a twin optimizer over their
    view_as_real copies (the last parameter real in both) take the same steps, bit for bit,
    including every value a closure sees (LBFGS's line search)."""
    for desc, kwargs in ref.kwarg_sets(name):
        rng = np.random.default_rng(7)
        init = [(rng.standard_normal((10, 5)) + 1j * rng.standard_normal((10, 5))).astype(
                    np.complex64),
                (rng.standard_normal(10) + 1j * rng.standard_normal(10)).astype(np.complex64),
                rng.standard_normal((10, 5)).astype(np.float32)]
        complex_params = [P(a.copy()) for a in init]
        real_params = [P(a.view(np.float32).reshape(a.shape + (2,)).copy())
                       if a.dtype.kind == "c" else P(a.copy()) for a in init]
        complex_opt = getattr(optim, name)(complex_params, **copy.deepcopy(kwargs))
        real_opt = getattr(optim, name)(real_params, **copy.deepcopy(kwargs))
        real_seen, complex_seen, grads_losses = [], [], []

        def real_closure():
            for p in real_params:
                g = rng.standard_normal(p.shape).astype(np.float32)
                p.grad = g
                real_seen.append(p.data.copy())
                grads_losses.append(g)
            loss = float(rng.standard_normal())
            grads_losses.append(loss)
            return loss

        def complex_closure():
            for p in complex_params:
                g = grads_losses.pop(0)
                if p.dtype.kind == "c":
                    complex_seen.append(p.data.view(np.float32).reshape(p.shape + (2,)).copy())
                    g = g.view(np.complex64).reshape(p.shape)
                else:
                    complex_seen.append(p.data.copy())
                p.grad = g
            return grads_losses.pop(0)

        for _ in range(3):
            if name == "LBFGS":
                real_opt.step(real_closure)
                complex_opt.step(complex_closure)
            else:
                real_closure()
                complex_closure()
                real_opt.step()
                complex_opt.step()
        for c, r in zip(complex_params, real_params):
            as_real = c.data.view(np.float32).reshape(r.shape) if c.dtype.kind == "c" else c.data
            np.testing.assert_array_equal(as_real, r.data, err_msg=f"{name} {desc}")
        assert len(complex_seen) == len(real_seen)
        for c, r in zip(complex_seen, real_seen):
            np.testing.assert_array_equal(c, r, err_msg=f"{name} {desc} (intermediate)")


def _rosenbrock_abs_and_grad(a):
    """torch's ``rosenbrock(a).abs()`` of a complex pair ``a = (x, y)`` and its gradient in
    torch's convention (dL/dRe + i dL/dIm): for holomorphic f and L = |f|, that is
    ``f / |f| * conj(f')``."""
    x, y = a
    f = (1 - x) ** 2 + 100 * (y - x ** 2) ** 2
    df = np.array([-2 * (1 - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)])
    return abs(f), f / abs(f) * np.conj(df)


@pytest.mark.parametrize("name", ref.NAMES)
def test_complex_2d_matches_real_and_imaginary_parts(name):
    """torch's test_complex_2d: a complex (2,) parameter against its real and imaginary parts
    as two parameters, under |rosenbrock|. Elementwise optimizers give the same bits; LBFGS
    reduces over the flat arena in another order (pairs against parts), so it is compared
    at float32's tolerance, as torch compares it."""
    for desc, kwargs in ref.kwarg_sets(name):
        a0 = np.array([0.3 - 0.8j, -1.1 + 0.4j], np.complex64)
        a1 = P(a0.copy())
        re, im = P(a0.real.copy()), P(a0.imag.copy())
        opt1 = getattr(optim, name)([a1], **copy.deepcopy(kwargs))
        opt2 = getattr(optim, name)([re, im], **copy.deepcopy(kwargs))

        def closure1():
            loss, g = _rosenbrock_abs_and_grad(a1.data.astype(np.complex128))
            a1.grad = g.astype(np.complex64)
            return loss

        def closure2():
            loss, g = _rosenbrock_abs_and_grad((re.data + 1j * im.data).astype(np.complex128))
            g = g.astype(np.complex64)
            re.grad, im.grad = g.real.copy(), g.imag.copy()
            return loss

        for _ in range(3):
            if name == "LBFGS":
                opt1.step(closure1)
                opt2.step(closure2)
                assert_close(a1.data.real, re.data, err_msg=f"{name} {desc}")
                assert_close(a1.data.imag, im.data, err_msg=f"{name} {desc}")
            else:
                closure1()
                closure2()
                opt1.step()
                opt2.step()
                np.testing.assert_array_equal(a1.data.real, re.data, err_msg=f"{name} {desc}")
                np.testing.assert_array_equal(a1.data.imag, im.data, err_msg=f"{name} {desc}")


# -- the surface ------------------------------------------------------------------------------
def test_views_are_complex_and_zero_copy():
    z = P(np.array([[1 + 2j, 3 - 4j]], np.complex64))
    x = P(np.array([5.0, 6.0], np.float32))
    opt = optim.SGD([z, x], lr=0.5)
    arena = opt.arena
    assert arena.dtype == np.float32 and arena.size == 6
    assert list(arena.is_complex) == [True, False]
    np.testing.assert_array_equal(arena.data, [1, 2, 3, -4, 5, 6])
    assert z.data.dtype == np.complex64 and z.shape == (1, 2) and z.size == 2
    assert np.shares_memory(z.data, arena.data)
    z.grad = np.array([[1j, 2]], np.complex64)
    assert np.shares_memory(z.grad, arena.grad)
    np.testing.assert_array_equal(arena.grad[:4], [0, 1, 2, 0])
    z.data[0, 0] = 7 + 7j                 # writes through the view
    assert arena.data[0] == 7 and arena.data[1] == 7
    opt.step()
    np.testing.assert_array_equal(z.data, [[7 + 6.5j, 2 - 4j]])


def test_gradients_in_every_way():
    values = np.array([1 + 1j, 2 - 2j, 3j], np.complex128)
    g = np.array([0.5 + 1j, -1j, 2 + 0j])
    a, b, c, d = (P(values.copy()) for _ in range(4))
    opts = [optim.SGD([p], lr=0.1) for p in (a, b, c, d)]
    a.grad = g                                   # the fast path
    opts[1].set_grads([g])                       # bulk
    c.grad = list(g)                             # any array-like
    opts[3].arena.grad[:] = g.view(np.float64)   # straight into the arena, as real pairs
    opts[3].arena.has_grad[:] = True
    for opt in opts:
        opt.step()
    for p in (b, c, d):
        np.testing.assert_array_equal(p.data, a.data)
    np.testing.assert_array_equal(a.data, values - 0.1 * g)
    # a real gradient for a complex parameter has a zero imaginary part
    a.grad = np.ones(3)
    np.testing.assert_array_equal(a.grad, np.ones(3, complex))
    a.data = np.array([1j, 2j, 3j])
    np.testing.assert_array_equal(a.data, [1j, 2j, 3j])


@pytest.mark.parametrize("how", ["p.grad", "set_grads", "p.data"])
def test_a_complex_value_for_a_real_parameter_is_refused(how):
    x = P(np.ones(3))
    opt = optim.SGD([x], lr=0.1)
    value = np.array([1j, 2, 3])
    with pytest.raises(TypeError, match="imaginary part"):
        if how == "p.grad":
            x.grad = value
        elif how == "set_grads":
            opt.set_grads([value])
        else:
            x.data = value
    assert x.grad is None
    np.testing.assert_array_equal(x.data, np.ones(3))


@pytest.mark.parametrize("name, error, message", [
    ("Adafactor", RuntimeError, "Adafactor does not support complex parameters"),
    ("Muon", RuntimeError, "Muon does not support complex parameters"),
    ("SparseAdam", ValueError, "SparseAdam does not support complex parameters")])
def test_optimizers_torch_refuses_complex_for_refuse_them(name, error, message):
    if name == "Muon":
        pytest.importorskip("scipy")
    z = P(np.ones((2, 3), np.complex64))
    with pytest.raises(error, match=message):
        getattr(optim, name)([z])
    assert z._arena is None                  # nothing was packed
    # and add_param_group refuses them before the arena grows
    opt = getattr(optim, name)([P(np.ones((2, 3), np.float32))])
    with pytest.raises(error, match=message):
        opt.add_param_group({"params": [z]})
    assert len(opt.param_groups) == 1 and len(opt.arena) == 1


def test_float16_and_other_dtypes_are_refused_clearly():
    with pytest.raises(TypeError, match="float16 has no arena kernels"):
        P(np.ones(3, np.float16))
    for dtype in (np.int32, np.bool_):
        with pytest.raises(TypeError, match="float32, float64, complex64 or complex128"):
            P(np.ones(3, dtype))
    with pytest.raises(TypeError, match="float32, float64, complex64 or complex128"):
        P(np.array([object()]))
    with pytest.raises(TypeError, match="share a dtype: parameter 0 is complex64, parameter 1 "
                                        "is float64. LBFGS steps one dtype"):
        optim.LBFGS([P(np.ones(2, np.complex64)), P(np.ones(2))])


def test_state_dict_round_trip_and_torchs_state_dict_loads():
    torch = pytest.importorskip("torch")
    values, targets, weights = ref.problem("complex64")
    tparams = [torch.tensor(v, requires_grad=True) for v in values]
    topt = torch.optim.Adam(tparams, lr=0.01, amsgrad=True)
    for _ in range(3):
        topt.zero_grad()
        sum((torch.tensor(w) * (p - torch.tensor(t)).abs() ** 2).sum()
            for p, t, w in zip(tparams, targets, weights)).backward()
        topt.step()
    tsd = topt.state_dict()
    sd = {"state": {i: {k: v.numpy().copy() for k, v in s.items()} for i, s in tsd["state"].items()},
          "param_groups": copy.deepcopy(tsd["param_groups"])}
    params = [P(p.detach().numpy().copy()) for p in tparams]
    opt = optim.Adam(params, lr=0.01, amsgrad=True)
    opt.load_state_dict(sd)
    assert opt.state[params[0]]["exp_avg"].dtype == np.complex64
    for _ in range(2):
        topt.zero_grad()
        sum((torch.tensor(w) * (p - torch.tensor(t)).abs() ** 2).sum()
            for p, t, w in zip(tparams, targets, weights)).backward()
        topt.step()
        _, grads = ref.loss_and_grads([p.data for p in params], targets, weights)
        opt.set_grads(grads)
        opt.step()
    for p, t in zip(params, tparams):
        assert_close(p.data, t.detach().numpy())
    ours = opt.state_dict()
    for i, entry in topt.state_dict()["state"].items():
        for key, value in entry.items():
            assert ours["state"][i][key].dtype == value.numpy().dtype, (i, key)
            assert_close(ours["state"][i][key], value.numpy())
    # and numbaopt's own state_dict loads into torch
    fresh = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    topt2 = torch.optim.Adam(fresh, lr=0.01, amsgrad=True)
    topt2.load_state_dict({"state": {i: {k: torch.tensor(np.asarray(v)) for k, v in s.items()}
                                     for i, s in ours["state"].items()},
                           "param_groups": ours["param_groups"]})
    assert topt2.state[fresh[0]]["exp_avg"].dtype == torch.complex64


def test_state_entries_are_live_complex_views_and_checked():
    z = P(np.ones(3, np.complex128))
    opt = optim.Adam([z], lr=0.1)
    z.grad = np.array([1j, 1, 1 + 1j])
    opt.step()
    entry = opt.state[z]
    assert entry["exp_avg"].dtype == np.complex128
    assert np.shares_memory(entry["exp_avg"], opt.arena.state["exp_avg"])
    opt.state[z]["exp_avg"] = np.array([1j, 2j, 3j])
    np.testing.assert_array_equal(opt.arena.state["exp_avg"], [0, 1, 0, 2, 0, 3])
    with pytest.raises(ValueError, match="finite complex array"):
        opt.state[z]["exp_avg"] = np.array([np.nan * 1j, 0, 0])
    # a real parameter's state takes no complex value
    x = P(np.ones(3))
    opt2 = optim.Adam([x])
    x.grad = np.ones(3)
    opt2.step()
    with pytest.raises(ValueError, match="finite real array"):
        opt2.state[x]["exp_avg"] = np.array([1j, 0, 0])
    sd = opt2.state_dict()
    sd["state"][0]["exp_avg"] = np.array([1j, 0, 0])
    before = opt2.arena.state["exp_avg"].copy()
    with pytest.raises(ValueError, match="non-real dtype complex128"):
        opt2.load_state_dict(sd)
    np.testing.assert_array_equal(opt2.arena.state["exp_avg"], before)


def test_save_load_add_param_group_and_pickle(tmp_path):
    z = P(np.array([1 + 1j, 2 - 1j], np.complex64))
    opt = optim.Adam([z], lr=0.1)
    z.grad = np.array([1j, -1], np.complex64)
    opt.step()
    w = P(np.array([[3j]], np.complex64))
    x = P(np.ones(2, np.float32))
    opt.add_param_group({"params": [w, x], "lr": 0.2})
    assert w.data.dtype == np.complex64 and np.shares_memory(w.data, opt.arena.data)
    opt.set_grads([np.array([1j, 1]), np.array([[2 + 0j]]), np.ones(2)])
    opt.step()
    numbaopt.save(tmp_path / "c.safetensors", opt)
    copied = copy.deepcopy(opt)
    params = [P(np.zeros(2, np.complex64)), P(np.zeros((1, 1), np.complex64)),
              P(np.zeros(2, np.float32))]
    other = optim.Adam([params[0]], lr=0.1)
    other.add_param_group({"params": params[1:], "lr": 0.2})
    numbaopt.load(tmp_path / "c.safetensors", other)
    for a, b, c in zip((z, w, x), params, copied.arena.params):
        np.testing.assert_array_equal(b.data, a.data)
        np.testing.assert_array_equal(c.data, a.data)
        assert c.data.dtype == a.data.dtype
    for a, b in zip(opt.state_dict()["state"].values(), other.state_dict()["state"].values()):
        for key in a:
            np.testing.assert_array_equal(b[key], a[key])
            assert np.asarray(b[key]).dtype == np.asarray(a[key]).dtype
    for o in (opt, other, copied):
        o.set_grads([np.array([1, 1j]), np.array([[1j]]), np.ones(2)])
        o.step()
    np.testing.assert_array_equal(params[0].data, z.data)
    np.testing.assert_array_equal(copied.arena.params[1].data, w.data)


def test_parameters_by_name_keep_their_complex_values(tmp_path):
    z = P(np.array([[1 + 2j, 3 - 4j]], np.complex128))
    x = P(np.array([5.0, 6.0]))
    numbaopt.save_parameters(tmp_path / "m.safetensors", {"z": z, "x": x})
    z2, x2 = P(np.zeros((1, 2), np.complex128)), P(np.zeros(2))
    numbaopt.load_parameters(tmp_path / "m.safetensors", {"z": z2, "x": x2})
    np.testing.assert_array_equal(z2.data, z.data)
    np.testing.assert_array_equal(x2.data, x.data)


def test_compiled_handle_steps_complex_parameters_as_real_pairs():
    from numba import njit
    from numbaopt import compiled

    @njit
    def loop(h, g, n):
        for _ in range(n):
            compiled.grad(h, 0)[:] = g          # parameter 0's slot: 2 * size reals
            compiled.mark_grad(h, 0)
            compiled.step(h)

    z1, z2 = P(np.array([1 + 1j, 2j], np.complex64)), P(np.array([1 + 1j, 2j], np.complex64))
    opt1, opt2 = optim.Adam([z1], lr=0.1), optim.Adam([z2], lr=0.1)
    g = np.array([0.5 - 1j, 1 + 0j], np.complex64)
    loop(opt1.compiled(), g.view(np.float32), 3)
    for _ in range(3):
        z2.grad = g
        opt2.step()
    np.testing.assert_array_equal(z1.data, z2.data)


# -- clipping, data parallelism, CUDA ----------------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, np.inf, -np.inf, 0.5])
def test_clip_grad_norm_of_complex_and_real_gradients_is_torchs(norm_type):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [(rng.standard_normal((4, 3)) + 1j * rng.standard_normal((4, 3))).astype(np.complex64),
             rng.standard_normal(5).astype(np.float32),
             (rng.standard_normal(2) + 1j * rng.standard_normal(2)).astype(np.complex64)]
    params = [P(np.zeros_like(g)) for g in grads]
    opt = optim.SGD(params, lr=0.1)
    opt.set_grads(grads)
    tparams = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True)
               for g in grads]
    for t, g in zip(tparams, grads):
        t.grad = torch.from_numpy(g.copy())
    total = numbaopt.utils.clip_grad_norm_(opt, 0.5, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(tparams, 0.5, norm_type=norm_type)
    assert total.dtype == np.float32
    assert_close(total, expected.numpy())
    for p, t in zip(params, tparams):
        assert_close(p.grad, t.grad.numpy())
    # get_total_norm of the complex views agrees
    assert_close(numbaopt.utils.get_total_norm([p.grad for p in params], norm_type),
                 torch.nn.utils.get_total_norm([t.grad for t in tparams], norm_type).numpy())


def test_clip_grad_value_of_a_complex_gradient_is_refused_as_torch_does():
    z, x = P(np.ones(2, np.complex64)), P(np.ones(2, np.float32))
    opt = optim.SGD([z, x], lr=0.1)
    opt.set_grads([np.array([3 + 3j, 1]), np.array([3.0, -3.0])])
    with pytest.raises(RuntimeError, match="clamp is not supported for complex types"):
        numbaopt.utils.clip_grad_value_(opt, 1.0)
    np.testing.assert_array_equal(x.grad, [3, -3])       # nothing clamped
    z.grad = None                                        # a complex parameter without grad
    numbaopt.utils.clip_grad_value_(opt, 1.0)
    np.testing.assert_array_equal(x.grad, [1, -1])


def run_ddp_script(name, tmp_path, nranks=2, env=None):
    """Run tests/mpi_scripts/<name> under mpiexec (with ``env`` added to the environment)
    and alone on the CPU (``--reference``); returns what rank 0 saved and what the single
    process saved."""
    pytest.importorskip("mpi4py")
    import pickle
    import subprocess

    import test_distributed as D       # its mpirun (and its skips without MPI)
    script = pathlib.Path(__file__).parent / "mpi_scripts" / name
    D.mpirun(nranks, script, tmp_path, env=dict(__import__("os").environ, **(env or {})))
    alone = {k: v for k, v in (env or {}).items() if k != "DDP_DEVICE"}    # on the CPU
    subprocess.run([sys.executable, str(script), str(tmp_path), "--reference", str(nranks)],
                   check=True, env=dict(__import__("os").environ, PYTHONPATH=str(D.ROOT),
                                        **alone))
    return (pickle.loads((tmp_path / "ranks.pkl").read_bytes()),
            pickle.loads((tmp_path / "reference.pkl").read_bytes()))


def test_data_parallel_complex_training_equals_one_process(tmp_path):
    """2 ranks, plain and sharded, with clipping, equal one process on the whole batch; the
    sharded checkpoint loads into one process."""
    import test_distributed as D
    ranks, reference = run_ddp_script("ddp_complex.py", tmp_path)
    script = pathlib.Path(__file__).parent / "mpi_scripts" / "ddp_complex.py"
    for shard in (False, True):
        for got, want in zip(ranks[shard]["data"], reference["data"]):
            assert got.dtype == want.dtype
            assert_close(got, want, err_msg=f"shard={shard}")
        D.assert_state_dicts_close(ranks[shard]["sd"], reference["sd"])
    assert "order 1 over complex parameters with shard=True" in ranks["order1"]
    sys.path.insert(0, str(script.parent))
    import ddp_complex
    opt, params = ddp_complex.make()
    numbaopt.load(tmp_path / "sharded.safetensors", opt)
    for p, want in zip(params, ranks[True]["data"]):
        np.testing.assert_array_equal(p.data, want)



def test_skip_nonfinite_sees_a_nan_in_an_imaginary_part():
    z, x = P(np.ones(2, np.complex64)), P(np.ones(2, np.float32))
    opt = optim.Adam([z, x], lr=0.1, skip_nonfinite=True)
    opt.set_grads([np.array([1, 1j * np.nan]), np.ones(2)])
    assert opt.step() is None and opt.found_nonfinite and opt.skipped_steps == 1
    np.testing.assert_array_equal(z.data, [1, 1])
    opt.set_grads([np.array([1, 1j]), np.ones(2)])
    opt.step()
    assert not opt.found_nonfinite and opt.state[z]["step"] == 1
