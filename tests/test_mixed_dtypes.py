"""One optimizer over parameters of several dtypes (issue 14): one arena per real dtype.

Checked here: torch's numbers over every registry kwarg set of every elementwise optimizer
with complex64, float64 and float32 parameters in one optimizer (committed data from
scripts/make_complex_reference.py, and live); that a mixed optimizer is bit for bit its
single-dtype optimizers side by side; groups mixing dtypes, edits and schedulers reaching
every arena, state and state_dict in torch's numbering, loading (all or nothing),
add_param_group, skip_nonfinite over all arenas, clipping with torch's promotion, pickle,
and the clear refusals where a mixed optimizer is not supported.
"""

import copy
import pathlib
import pickle
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt import optim, utils
from numbaopt.optim import lr_scheduler
from tolerance import assert_close

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_complex import DATA, _check_against, _reference, _run, ref, run_ddp_script  # noqa: E402,E501

P = numbaopt.Parameter
MIXED = ref.mixed_cases()
NAMES = sorted({c[0] for c in MIXED})


@pytest.mark.parametrize("case", MIXED, ids=[f"{c[0]}-{c[2]}" for c in MIXED])
def test_mixed_dtypes_step_as_torch_reference(case):
    name, k, desc, kwargs, precision = case
    assert str(DATA[f"{ref.key(name, k, precision)}/desc"]) == desc
    params, opt = _run(name, kwargs, precision)
    assert set(opt.arenas) == {np.dtype(np.float32), np.dtype(np.float64)}
    _check_against(params, opt, *_reference(name, k, precision), f"{name} {desc} mixed")


@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtypes_step_as_torch_live(name):
    pytest.importorskip("torch")
    for _, k, desc, kwargs, precision in [c for c in MIXED if c[0] == name]:
        params, opt = _run(name, kwargs, precision)
        _check_against(params, opt, *ref.run_torch(name, kwargs, precision),
                       f"{name} {desc} mixed (live)")


def _values(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4),
            rng.standard_normal(2).astype(np.float32),
            (rng.standard_normal(3) + 1j * rng.standard_normal(3))]


def _grads(values, k):
    out = []
    for j, v in enumerate(values):
        g = np.cos(np.arange(v.size) + k + j).reshape(v.shape)
        out.append((g + 1j * np.sin(np.arange(v.size) - k).reshape(v.shape)
                    if v.dtype.kind == "c" else g).astype(v.dtype))
    return out


@pytest.mark.parametrize("name, kwargs", [("Adam", dict(lr=0.05, amsgrad=True)),
                                          ("NAdam", dict(lr=0.05)), ("ASGD", dict(lr=0.05)),
                                          ("Rprop", dict(lr=0.05)),
                                          ("SGD", dict(lr=0.05, momentum=0.9))])
def test_a_mixed_optimizer_is_its_single_dtype_optimizers_side_by_side(name, kwargs):
    values = _values()
    mixed = [P(v.copy()) for v in values]
    opt = getattr(optim, name)([{"params": mixed[:2]}, {"params": mixed[2:], "lr": 0.02}],
                               **kwargs)
    single = [P(v.copy()) for v in values]
    o32 = getattr(optim, name)([{"params": [single[0]]}, {"params": [single[2]], "lr": 0.02}],
                               **kwargs)
    o64 = getattr(optim, name)([{"params": [single[1]]}, {"params": [single[3]], "lr": 0.02}],
                               **kwargs)
    for k in range(5):
        g = _grads(values, k)
        opt.set_grads(g)
        for p, gk in zip(single, g):
            p.grad = gk
        opt.step()
        o32.step()
        o64.step()
    for a, b in zip(mixed, single):
        assert a.data.dtype == b.data.dtype
        np.testing.assert_array_equal(a.data, b.data)
    sd, s32, s64 = opt.state_dict(), o32.state_dict(), o64.state_dict()
    for i, (src, j) in enumerate([(s32, 0), (s64, 0), (s32, 1), (s64, 1)]):
        for key, value in src["state"][j].items():
            np.testing.assert_array_equal(sd["state"][i][key], value, err_msg=f"{i} {key}")


def _mixed_adam(**kwargs):
    params = [P(v.copy()) for v in _values()]
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.05,
                     **kwargs)
    return params, opt


def test_the_arenas_and_the_arena():
    params, opt = _mixed_adam()
    arenas = opt.arenas
    assert list(arenas) == [np.dtype(np.float32), np.dtype(np.float64)]
    assert arenas[np.dtype(np.float32)].params == [params[0], params[2]]
    assert arenas[np.dtype(np.float64)].params == [params[1], params[3]]
    for p in params:
        assert np.shares_memory(p.data, arenas[np.dtype(np.float32 if p.dtype in (
            np.float32, np.complex64) else np.float64)].data)
    with pytest.raises(AttributeError, match=r"several dtypes \(float32, float64\).*opt.arenas"):
        opt.arena.data
    single = optim.Adam([P(np.ones(2))])
    assert single.arenas == {np.dtype(np.float64): single.arena}
    # the zero-copy path, arena by arena
    for arena in opt.arenas.values():
        arena.grad[:] = 1.0
        arena.has_grad[:] = True
    opt.step()
    assert all(float(opt.state[p]["step"]) == 1 for p in params)


def test_edits_and_schedulers_reach_every_arena():
    params, opt = _mixed_adam()
    ref_params, ref_opt = _mixed_adam()
    sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for k in range(6):
        g = _grads(_values(), k)
        opt.set_grads(g)
        opt.step()
        sched.step()
        if k == 3:
            opt.param_groups[1]["betas"] = (0.5, 0.9)
    # the same by hand, on one dtype at a time
    for k in range(6):
        ref_opt.set_grads(_grads(_values(), k))
        ref_opt.step()
        for g in ref_opt.param_groups:
            if k % 2 == 1:
                g["lr"] *= 0.5
        if k == 3:
            ref_opt.param_groups[1]["betas"] = (0.5, 0.9)
    for a, b in zip(params, ref_params):
        np.testing.assert_array_equal(a.data, b.data)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):
        opt.step()
    np.testing.assert_array_equal(params[0].data, ref_params[0].data)    # nothing stepped


def test_state_dict_loads_all_or_nothing_and_round_trips(tmp_path):
    params, opt = _mixed_adam(amsgrad=True)
    for k in range(3):
        opt.set_grads(_grads(_values(), k))
        opt.step()
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    assert sd["param_groups"][0]["params"] == [0, 1] and sd["param_groups"][1]["params"] == [2, 3]
    assert sd["state"][1]["exp_avg"].dtype == np.float64
    assert sd["state"][3]["exp_avg"].dtype == np.complex128
    other_params, other = _mixed_adam(amsgrad=True)
    other.load_state_dict(sd)
    for a, b in zip(opt.state_dict()["state"].values(), other.state_dict()["state"].values()):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # a bad entry of the float64 arena's parameter leaves the float32 arena untouched too
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"] * 0 + 7
    bad["state"][3]["exp_avg"] = np.zeros(5)
    before = {k: v.copy() for k, v in other.arenas[np.dtype(np.float32)].state.items()}
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(bad)
    for k, v in other.arenas[np.dtype(np.float32)].state.items():
        np.testing.assert_array_equal(v, before[k])
    # pickle and deepcopy keep the arenas and step on
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        clone.set_grads(_grads(_values(), 5))
        clone.step()
        assert float(clone.state_dict()["state"][3]["step"]) == 4


def test_state_dict_of_torch_loads_into_a_mixed_optimizer():
    torch = pytest.importorskip("torch")
    values = _values()
    tparams = [torch.tensor(v, requires_grad=True) for v in values]
    topt = torch.optim.Adam([{"params": tparams[:2]}, {"params": tparams[2:], "lr": 0.02}],
                            lr=0.05)
    for k in range(2):
        for t, g in zip(tparams, _grads(values, k)):
            t.grad = torch.tensor(g)
        topt.step()
    tsd = topt.state_dict()
    params = [P(t.detach().numpy().copy()) for t in tparams]
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.05)
    opt.load_state_dict({"state": {i: {k: v.numpy().copy() for k, v in s.items()}
                                   for i, s in tsd["state"].items()},
                         "param_groups": copy.deepcopy(tsd["param_groups"])})
    for k in range(2, 4):
        g = _grads(values, k)
        for t, gk in zip(tparams, g):
            t.grad = torch.tensor(gk)
        topt.step()
        opt.set_grads(g)
        opt.step()
    for p, t in zip(params, tparams):
        assert_close(p.data, t.detach().numpy())


def test_add_param_group_and_groups_appended_to_param_groups():
    params, opt = _mixed_adam()
    x, y = P(np.ones(2, np.float32)), P(np.ones(3))
    opt.add_param_group({"params": [x, y], "lr": 0.1})
    assert opt.arenas[np.dtype(np.float32)].params[-1] is x
    z = P(np.ones(1))
    opt.param_groups.append({"params": [z]})
    opt.set_grads(_grads(_values(), 0) + [np.ones(2), np.ones(3), np.ones(1)])
    opt.step()
    assert float(opt.state[z]["step"]) == 1 and float(opt.state[x]["step"]) == 1
    assert opt.state_dict()["param_groups"][2]["params"] == [4, 5]
    w = P(np.ones(2))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [w], "lr": -1.0})
    assert len(opt.param_groups) == 4 and w._arena is None


def test_skip_nonfinite_skips_every_arena():
    params, opt = _mixed_adam(skip_nonfinite=True)
    g = _grads(_values(), 0)
    g[1][0] = np.nan                      # in the float64 arena
    opt.set_grads(g)
    before = [p.data.copy() for p in params]
    assert opt.step() is None and opt.found_nonfinite and opt.skipped_steps == 1
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)
    opt.set_grads(_grads(_values(), 0))
    opt.step()
    assert not opt.found_nonfinite


@pytest.mark.parametrize("norm_type", [2.0, np.inf, 1.0])
def test_clipping_over_several_dtypes_is_torchs(norm_type):
    torch = pytest.importorskip("torch")
    params, opt = _mixed_adam()
    g = _grads(_values(), 1)
    opt.set_grads(g)
    tparams = [torch.zeros(v.shape, dtype=torch.from_numpy(v).dtype, requires_grad=True)
               for v in g]
    for t, gk in zip(tparams, g):
        t.grad = torch.from_numpy(gk.copy())
    total = utils.clip_grad_norm_(opt, 0.5, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(tparams, 0.5, norm_type=norm_type)
    assert total.dtype == np.float64           # torch stacks the norms, promoting
    # float32's tolerance on a float64 total: it is a norm of float32 per-parameter norms,
    # which numbaopt sums in float64 and torch in float32 (numbaopt.utils' docstring), so
    # they may differ in their last float32 bit
    assert_close(total, expected.numpy(), dtype=np.float32)
    for p, t in zip(params, tparams):                 # (scaled by a coefficient of that total)
        assert_close(p.grad, t.grad.numpy(), dtype=np.float32)


def test_what_a_mixed_optimizer_refuses_clearly():
    a, b = P(np.ones((2, 2), np.float32)), P(np.ones((2, 2)))
    for cls in (optim.LBFGS, optim.SparseAdam, optim.Adafactor):
        with pytest.raises(TypeError, match="share a dtype"):
            cls([a, b])
    assert a._arena is None
    with pytest.raises(TypeError, match="share a dtype"):
        optim.SparseAdam([a]).add_param_group({"params": [b]})


def test_checkpoints_of_a_mixed_optimizer(tmp_path):
    params, opt = _mixed_adam(amsgrad=True)
    sched = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for k in range(3):
        opt.set_grads(_grads(_values(), k))
        opt.step()
        sched.step()
    numbaopt.save(tmp_path / "m.safetensors", opt, sched, extra={"epoch": 3})
    other_params, other = _mixed_adam(amsgrad=True)
    other_sched = lr_scheduler.StepLR(other, step_size=1, gamma=0.5)
    assert numbaopt.load(tmp_path / "m.safetensors", other, other_sched) == {"epoch": 3}
    for a, b in zip(params, other_params):
        assert b.data.dtype == a.data.dtype
        np.testing.assert_array_equal(b.data, a.data)
    for o in (opt, other):
        o.set_grads(_grads(_values(), 7))
        o.step()
    for a, b in zip(params, other_params):
        np.testing.assert_array_equal(b.data, a.data)
    # a single-dtype optimizer refuses the file, naming the dtypes
    single = optim.Adam([P(v.astype(np.float64)) for v in _values()[:3]] +
                        [P(_values()[3])], lr=0.05, amsgrad=True)
    with pytest.raises(ValueError, match="mixed:float32,float64,float32,complex128"):
        numbaopt.load(tmp_path / "m.safetensors", single)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_data_parallel_training_over_several_dtypes_equals_one_process(tmp_path, device):
    """2 ranks, plain and sharded: one DistributedOptimizer per arena, with clipping (the norm
    over every arena), a NaN on one rank (skipped everywhere), a scheduler; then a
    state_dict and a checkpoint of the sharded run resume as one process would. On
    device="cuda" arenas too, under the simulator, against the same CPU process."""
    env = None
    if device == "cuda":
        pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
        env = {"DDP_DEVICE": "cuda", "NUMBA_ENABLE_CUDASIM": "1", "DDP_STEPS": "3"}
    ranks, reference = run_ddp_script("ddp_mixed.py", tmp_path, env=env)
    script = pathlib.Path(__file__).parent / "mpi_scripts" / "ddp_mixed.py"
    assert reference["skipped"] == 1
    # float32's tolerance for every parameter, float64 ones too: the clipping coefficient
    # comes from the total norm over all arenas, which includes the float32 gradient, and
    # the ranks' average of it rounds in float32 differently from the whole batch's
    # gradient, so the coefficient (and through it every parameter) differs at ~1e-8
    for shard in (False, True):
        assert ranks[shard]["skipped"] == 1
        for got, want in zip(ranks[shard]["data"], reference["data"]):
            assert got.dtype == want.dtype
            assert_close(got, want, dtype=np.float32, err_msg=f"shard={shard}")
        sd, want_sd = ranks[shard]["sd"], reference["sd"]
        assert sd["param_groups"] == want_sd["param_groups"]
        for i, entry in want_sd["state"].items():
            for key, value in entry.items():
                assert_close(sd["state"][i][key], value, dtype=np.float32,
                             err_msg=f"shard={shard} {i} {key}")
    sys.path.insert(0, str(script.parent))
    import ddp_mixed
    ddp_mixed.SIZE = 2
    opt, params = ddp_mixed.make()
    opt.load_state_dict(reference["sd"])
    for p, v in zip(params, reference["data"]):
        p.data = v
    steps = int((env or {}).get("DDP_STEPS", ddp_mixed.STEPS))
    opt.set_grads(ddp_mixed.gradients(params, *ddp_mixed.batch(steps, 8)))
    opt.step()
    for resumed in ranks["resumed"]:
        for got, p in zip(resumed, params):
            assert_close(got, p.data, dtype=np.float32)      # (as above)


def test_a_group_of_a_new_dtype_gives_the_optimizer_a_second_arena():
    """torch takes a float64 group into a float32 optimizer: here the arena becomes the first
    of two, with its state, and the steps are those of the two optimizers side by side."""
    values = _values()
    a, b = P(values[0].copy()), P(values[2].copy())            # float32
    c, d = P(values[1].copy()), P(values[3].copy())            # float64, complex128
    opt = optim.Adam([a, b], lr=0.05, amsgrad=True)
    ref32 = optim.Adam([P(values[0].copy()), P(values[2].copy())], lr=0.05, amsgrad=True)
    ref64 = None
    handle = opt.compiled()
    for k in range(4):
        g = _grads(values, k)
        if k == 2:
            opt.add_param_group({"params": (p for p in (c, d)), "lr": 0.02})
            ref64 = optim.Adam([P(values[1].copy()), P(values[3].copy())], lr=0.02,
                               amsgrad=True)
            assert set(opt.arenas) == {np.dtype(np.float32), np.dtype(np.float64)}
        if ref64 is None:
            opt.set_grads([g[0], g[2]])
        else:
            opt.set_grads([g[0], g[2], g[1], g[3]])
            ref64.set_grads([g[1], g[3]])
            ref64.step()
        ref32.set_grads([g[0], g[2]])
        ref32.step()
        opt.step()
    for p, q in zip((a, b), ref32.arena.params):
        np.testing.assert_array_equal(p.data, q.data)
    for p, q in zip((c, d), ref64.arena.params):
        np.testing.assert_array_equal(p.data, q.data)
    sd = opt.state_dict()
    assert float(sd["state"][0]["step"]) == 4 and float(sd["state"][2]["step"]) == 2
    with pytest.raises(AttributeError, match="several dtypes"):
        opt.arena.data
    from numba import njit
    from numbaopt import compiled

    @njit
    def one_step(h):
        compiled.step(h)

    with pytest.raises(RuntimeError, match="get a new one"):
        one_step(handle)                 # the handle of the one arena went stale


def test_a_distributed_optimizer_refuses_a_group_of_a_new_dtype():
    pytest.importorskip("mpi4py")
    from numbaopt.distributed import DistributedOptimizer
    opt = optim.Adam([P(np.ones(2, np.float32))], lr=0.1)
    dist = DistributedOptimizer(opt)                   # one process: a job of one rank
    new = P(np.ones(2))
    with pytest.raises(NotImplementedError, match="another dtype"):
        dist.add_param_group({"params": (p for p in [new])})
    assert opt._lanes is None and len(opt.param_groups) == 1 and new._arena is None
