"""numbaopt.optim.lr_scheduler against torch 2.13's torch.optim.lr_scheduler.

The case table and the driver live in scripts/make_lr_scheduler_reference.py,
which also wrote tests/data/lr_scheduler_reference.json with torch. Every case
runs here on real numbaopt optimizers and is compared with that data, and with
torch live when torch is importable.
"""

import importlib.util
import inspect
import json
import math
import pathlib
import pickle
import re
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose

import numbaopt
from numbaopt import optim
from numbaopt.optim import lr_scheduler

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_reference_script():
    path = ROOT / "scripts" / "make_lr_scheduler_reference.py"
    spec = importlib.util.spec_from_file_location("make_lr_scheduler_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference_script()
REFERENCE = json.loads((ROOT / "tests" / "data" / "lr_scheduler_reference.json").read_text())
CASES = {case["name"]: case for case in ref.CASES}
RTOL = 1e-12

# torch's texts, copied here so a change on either side shows.
STEP_ORDER_WARNING = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. In PyTorch 1.1.0 and "
    "later, you should call them in the opposite order: `optimizer.step()` before "
    "`lr_scheduler.step()`.  Failure to do this will result in PyTorch skipping the first value "
    "of the learning rate schedule. See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate")
STEP_OVERRIDDEN_WARNING = (
    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
    "initialization. Please, make sure to call `optimizer.step()` before `lr_scheduler.step()`. "
    "See more details at https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate")
GET_LR_WARNING = "To get the last learning rate computed by the scheduler, please use `get_last_lr()`."

SEED_003_LOG = """\
Epoch 1, lr 100.0000
Epoch 2, lr 100.0000
Epoch 3, lr 100.0000
Epoch 4, lr 10.0000
Epoch 5, lr 10.0000
Epoch 6, lr 10.0000
Epoch 7, lr 10.0000
Epoch 8, lr 1.0000
Epoch 9, lr 1.0000
Epoch 10, lr 1.0000
Epoch 11, lr 1.0000
Epoch 12, lr 0.1000
Epoch 13, lr 0.1000
Epoch 14, lr 0.1000
Epoch 15, lr 0.1000
Epoch 16, lr 0.0100
Epoch 17, lr 0.0100
Epoch 18, lr 0.0100
Epoch 19, lr 0.0100
Epoch 20, lr 0.0010
Epoch 21, lr 0.0010
Epoch 22, lr 0.0010
Epoch 23, lr 0.0010
Epoch 24, lr 0.0001
"""


def make_optimizer(kind, groups):
    """A numbaopt optimizer with one small parameter (with a gradient) per group."""
    cls = {"sgd": optim.SGD, "adam": optim.Adam, "adagrad": optim.Adagrad}[kind]
    params = []
    for group in groups:
        p = numbaopt.Parameter(np.zeros(2))
        p.grad = np.array([1.0, -0.5])
        params.append({"params": [p], **group})
    return cls(params, lr=groups[0]["lr"])


def sgd():
    return make_optimizer("sgd", ref.SGD_GROUPS)


def steps(scheduler, n):
    for _ in range(n):
        scheduler.optimizer.step()
        scheduler.step()


@pytest.fixture(scope="module")
def torch_lr_scheduler():
    torch = pytest.importorskip("torch", exc_type=ImportError)
    from torch.optim import lr_scheduler as torch_module
    return torch, torch_module


def assert_run_matches(run, expected, case):
    assert_allclose(np.array(run["lr"], dtype=float), np.array(expected["lr"], dtype=float),
                    rtol=RTOL, atol=0)
    if case["momentum"]:
        assert_allclose(np.array(run["momentum"]), np.array(expected["momentum"]), rtol=RTOL, atol=0)


# -- the seed example -------------------------------------------------------------------------
def test_steplr_seed_003_log(capsys):
    optimizer = optim.SGD([numbaopt.Parameter(np.zeros(1))], lr=100)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.1)
    with pytest.warns(UserWarning) as record:
        for epoch in range(1, 25):
            scheduler.step()
            print("Epoch {}, lr {:0.4f}".format(epoch, optimizer.param_groups[0]["lr"]))
    assert capsys.readouterr().out == SEED_003_LOG
    assert [str(w.message) for w in record] == [STEP_ORDER_WARNING]


# -- sequences against torch ----------------------------------------------------------------------------
def test_reference_data_covers_the_case_table():
    assert REFERENCE["steps"] == ref.STEPS >= 50
    assert set(REFERENCE["cases"]) == set(CASES)
    assert all(len(case["groups"]) == 2 for case in CASES.values())


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name):
    case = CASES[name]
    run = ref.run_case(case, lr_scheduler, make_optimizer)
    assert len(run["lr"]) == ref.STEPS + 1
    assert_run_matches(run, REFERENCE["cases"][name], case)
    assert run["last_lr"] == run["lr"]


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_live(name, torch_lr_scheduler):
    torch, torch_module = torch_lr_scheduler
    case = CASES[name]
    expected = ref.run_case(case, torch_module, ref.make_torch_optimizer)
    assert_run_matches(ref.run_case(case, lr_scheduler, make_optimizer), expected, case)
    if torch.__version__ == REFERENCE["torch_version"]:
        stored = REFERENCE["cases"][name]
        assert expected["lr"] == stored["lr"], "stale reference data: rerun the script"


@pytest.mark.parametrize("name", list(CASES))
def test_resume_from_state_dict_continues_exactly(name):
    case = CASES[name]
    uninterrupted = ref.run_case(case, lr_scheduler, make_optimizer)
    resumed = ref.run_case(case, lr_scheduler, make_optimizer, resume_at=23)
    assert resumed["lr"] == uninterrupted["lr"]
    assert resumed["momentum"] == uninterrupted["momentum"]
    assert resumed["last_lr"] == resumed["lr"]


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case["closed_form"]])
def test_closed_form_equals_chainable(name):
    case = CASES[name]
    chainable = ref.new_optimizer(case, make_optimizer)
    closed = ref.new_optimizer(case, make_optimizer)
    a = ref.build_scheduler(lr_scheduler, chainable, case["scheduler"])
    b = ref.build_scheduler(lr_scheduler, closed, case["scheduler"])
    for epoch in range(1, ref.STEPS + 1):
        chainable.step()
        closed.step()
        a.step()
        with pytest.warns(UserWarning, match=re.escape(lr_scheduler.EPOCH_DEPRECATION_WARNING)):
            b.step(epoch)
        assert_allclose(a.get_last_lr(), b.get_last_lr(), rtol=RTOL, atol=0)


@pytest.mark.parametrize("name", [name for name, case in CASES.items()
                                  if not (case["metrics"] or case["epochs"])])
def test_state_dict_equals_torch(name, torch_lr_scheduler):
    _, torch_module = torch_lr_scheduler
    case = CASES[name]
    ours = ref.build_scheduler(lr_scheduler, ref.new_optimizer(case, make_optimizer), case["scheduler"])
    theirs = ref.build_scheduler(torch_module, ref.new_optimizer(case, ref.make_torch_optimizer),
                                 case["scheduler"])
    for scheduler in (ours, theirs):
        steps(scheduler, 17)
    assert ours.state_dict() == theirs.state_dict()


# -- torch's warnings, texts and API ----------------------------------------------------------------------
def _warning_texts(module, make):
    """The warnings of four misuses, in order."""
    texts = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt = make("sgd", ref.SGD_GROUPS)
        module.StepLR(opt, step_size=2).step()                  # before optimizer.step()
        opt = make("sgd", ref.SGD_GROUPS)
        sched = module.StepLR(opt, step_size=2)
        opt.step = lambda closure=None: None                    # replaced after the scheduler
        sched.step()
        sched.get_lr()                                          # outside step()
        opt = make("sgd", ref.SGD_GROUPS)
        sched = module.StepLR(opt, step_size=2)
        opt.step()
        sched.step()                                            # the right order: silent
        sched.step(5)                                           # deprecated epoch
        texts = [str(w.message) for w in record]
    return texts


def test_warnings():
    assert _warning_texts(lr_scheduler, make_optimizer) == [
        STEP_ORDER_WARNING, STEP_OVERRIDDEN_WARNING, GET_LR_WARNING,
        lr_scheduler.EPOCH_DEPRECATION_WARNING]


def test_warnings_equal_torch(torch_lr_scheduler):
    _, torch_module = torch_lr_scheduler
    assert _warning_texts(lr_scheduler, make_optimizer) == \
        _warning_texts(torch_module, ref.make_torch_optimizer)


def test_step_order_warning_once_per_scheduler():
    opt = sgd()
    sched = lr_scheduler.ExponentialLR(opt, gamma=0.9)
    with pytest.warns(UserWarning, match=re.escape(STEP_ORDER_WARNING)) as record:
        sched.step()
        sched.step()
        opt.step()
        sched.step()
    assert len(record) == 1
    # One wrapper however many schedulers share the optimizer; it keeps step's result.
    wrapped = opt.step
    lr_scheduler.StepLR(opt, step_size=3)
    assert opt.step is wrapped and wrapped._wrapped_by_lr_sched
    assert opt.step(closure=lambda: 4.5) == 4.5


def test_public_names_and_signatures_equal_torch(torch_lr_scheduler):
    _, torch_module = torch_lr_scheduler
    assert lr_scheduler.__all__ == torch_module.__all__
    assert lr_scheduler.EPOCH_DEPRECATION_WARNING == torch_module.EPOCH_DEPRECATION_WARNING
    for name in torch_module.__all__ + ["_LRScheduler"]:
        ours, theirs = getattr(lr_scheduler, name), getattr(torch_module, name)
        for method in ("__init__", "step", "get_lr", "get_last_lr", "state_dict", "load_state_dict"):
            a = inspect.signature(getattr(ours, method)).parameters.values()
            b = inspect.signature(getattr(theirs, method)).parameters.values()
            assert [(p.name, p.kind, p.default) for p in a] == \
                [(p.name, p.kind, p.default) for p in b], (name, method)


# -- groups, epochs, state ------------------------------------------------------------------------------
def test_initial_lr_recorded_and_required_to_resume():
    opt = sgd()
    first = lr_scheduler.StepLR(opt, step_size=3)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.03]
    assert first.base_lrs == [0.1, 0.03] and first.last_epoch == 0
    assert first.get_last_lr() == [0.1, 0.03]
    opt.param_groups[0]["lr"] = 0.5
    second = lr_scheduler.ExponentialLR(opt, gamma=0.9)     # keeps the recorded initial_lr
    assert second.base_lrs == [0.1, 0.03]
    resumed = lr_scheduler.StepLR(opt, step_size=3, last_epoch=5)
    assert resumed.last_epoch == 6
    with pytest.raises(KeyError, match=re.escape("param 'initial_lr' is not specified in "
                                                 "param_groups[0] when resuming")):
        lr_scheduler.StepLR(sgd(), step_size=3, last_epoch=5)


def test_state_dict_stores_no_callables_and_shares_nothing():
    sched = lr_scheduler.LambdaLR(sgd(), lr_lambda=[ref.inverse_epoch, ref.Power(0.9)])
    steps(sched, 3)
    state = sched.state_dict()
    assert "optimizer" not in state
    assert state["lr_lambdas"] == [None, {"base": 0.9}]
    state = pickle.loads(pickle.dumps(state))
    state["base_lrs"].append(1.0)
    assert sched.base_lrs == [0.1, 0.03]
    other = lr_scheduler.LambdaLR(sgd(), lr_lambda=[ref.inverse_epoch, ref.Power(0.5)])
    other.load_state_dict(state)
    assert other.lr_lambdas[1].base == 0.9 and other.last_epoch == 3
    assert state["lr_lambdas"] == [None, {"base": 0.9}]     # loading leaves the input intact
    state["base_lrs"].append(2.0)
    assert len(other.base_lrs) == 3

    plain = lr_scheduler.StepLR(sgd(), step_size=2)
    state = plain.state_dict()
    state["base_lrs"].append(1.0)
    assert plain.base_lrs == [0.1, 0.03]
    plain.load_state_dict(state)
    state["base_lrs"].append(2.0)
    assert plain.base_lrs == [0.1, 0.03, 1.0]

    cyclic = lr_scheduler.CyclicLR(sgd(), 0.01, 0.1, scale_fn=ref.harmonic_scale)
    assert cyclic.state_dict()["_scale_fn_custom"] is None
    assert "_scale_fn_ref" not in lr_scheduler.CyclicLR(sgd(), 0.01, 0.1).state_dict()
    cyclic = lr_scheduler.CyclicLR(sgd(), 0.01, 0.1, scale_fn=ref.Power(0.9), scale_mode="iterations")
    assert cyclic.state_dict()["_scale_fn_custom"] == {"base": 0.9}


def test_nested_state_dicts_round_trip():
    def build(opt):
        return lr_scheduler.SequentialLR(opt, [lr_scheduler.ConstantLR(opt, factor=0.5),
                                               lr_scheduler.ExponentialLR(opt, gamma=0.9)], [4])
    a = build(sgd())
    steps(a, 6)
    b_opt = sgd()
    b = build(b_opt)
    b_opt.load_state_dict(a.optimizer.state_dict())
    b.load_state_dict(a.state_dict())
    assert b._schedulers[1].last_epoch == a._schedulers[1].last_epoch == 2
    steps(a, 3)
    steps(b, 3)
    assert a.get_last_lr() == b.get_last_lr() == [g["lr"] for g in b_opt.param_groups]


def test_cycled_momentum_keeps_beta2_and_reaches_the_optimizer():
    opt = make_optimizer("adam", ref.ADAM_GROUPS)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10, max_momentum=0.97)
    assert [g["betas"] for g in opt.param_groups] == [(0.97, 0.999), (0.97, 0.99)]
    assert [g["max_lr"] for g in opt.param_groups] == [0.01, 0.01]
    steps(sched, 10)
    assert [g["betas"][1] for g in opt.param_groups] == [0.999, 0.99]
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        sched.step()
    sgd_opt = sgd()
    lr_scheduler.CyclicLR(sgd_opt, base_lr=0.01, max_lr=0.1, max_momentum=[0.9, 0.95])
    assert [g["momentum"] for g in sgd_opt.param_groups] == [0.9, 0.95]
    with pytest.raises(ValueError, match="optimizer must support momentum or beta1"):
        lr_scheduler.CyclicLR(make_optimizer("adagrad", [{"lr": 0.1}, {"lr": 0.2}]), 0.01, 0.1)


def test_reduce_on_plateau_details():
    opt = sgd()
    sched = lr_scheduler.ReduceLROnPlateau(opt, patience=0, min_lr=[0.0, 0.0])
    assert sched.get_last_lr() == [0.1, 0.03] and "initial_lr" not in opt.param_groups[0]
    sched.step(1.0)
    sched.step(2.0)
    assert sched.get_last_lr() == pytest.approx([0.01, 0.003], rel=1e-15)
    with pytest.warns(UserWarning, match=re.escape(lr_scheduler.EPOCH_DEPRECATION_WARNING)):
        sched.step(3.0, epoch=10)
    assert sched.last_epoch == 10
    state = sched.state_dict()
    fresh = lr_scheduler.ReduceLROnPlateau(sgd(), mode="max")
    fresh.load_state_dict(state)
    assert fresh.mode == "min" and fresh.mode_worse == math.inf and fresh.best == 1.0
    opt.add_param_group({"params": [numbaopt.Parameter(np.zeros(2))], "lr": 0.5})
    with pytest.raises(RuntimeError, match="The number of param groups"):
        sched.step(4.0)


def test_cosine_warm_restarts_epoch_formula():
    sched = lr_scheduler.CosineAnnealingWarmRestarts(sgd(), T_0=10, T_mult=2)
    sched.optimizer.step()
    for epoch in range(20):
        sched.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step(26)                  # no deprecation warning: fractional epochs are its API
    assert (sched.T_cur, sched.T_i, sched.last_epoch) == (16, 20, 26)
    sched.step()
    assert (sched.T_cur, sched.T_i, sched.last_epoch) == (17, 20, 27)
    with pytest.raises(ValueError, match="Expected non-negative epoch"):
        sched.step(-1)


# -- constructor validation -------------------------------------------------------------------------
def _fn(epoch):
    return 1.0


CONSTRUCTORS = [
    ("LambdaLR", {"lr_lambda": _fn}),
    ("MultiplicativeLR", {"lr_lambda": _fn}),
    ("StepLR", {"step_size": 2}),
    ("MultiStepLR", {"milestones": [2]}),
    ("ConstantLR", {}),
    ("LinearLR", {}),
    ("ExponentialLR", {"gamma": 0.9}),
    ("SequentialLR", {"schedulers": [], "milestones": []}),
    ("CosineAnnealingLR", {"T_max": 5}),
    ("ReduceLROnPlateau", {}),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1}),
    ("CosineAnnealingWarmRestarts", {"T_0": 3}),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10}),
    ("PolynomialLR", {}),
    ("LRScheduler", {}),
]


@pytest.mark.parametrize("name, kwargs", CONSTRUCTORS, ids=[c[0] for c in CONSTRUCTORS])
@pytest.mark.parametrize("not_an_optimizer", [None, "sgd", [numbaopt.Parameter(np.zeros(2))],
                                              {"lr": 0.1}], ids=["None", "str", "params", "dict"])
def test_rejects_a_non_optimizer(name, kwargs, not_an_optimizer):
    with pytest.raises(TypeError, match="is not an Optimizer"):
        getattr(lr_scheduler, name)(not_an_optimizer, **kwargs)


def test_rejects_a_torch_optimizer(torch_lr_scheduler):
    torch_opt = ref.make_torch_optimizer("sgd", ref.SGD_GROUPS)
    with pytest.raises(TypeError, match=r"SGD is not an Optimizer .*torch\.optim\.sgd\.SGD"):
        lr_scheduler.StepLR(torch_opt, step_size=2)


def test_chained_scheduler_rejects_a_non_optimizer():
    sched = lr_scheduler.StepLR(sgd(), step_size=2)
    with pytest.raises(TypeError, match="is not an Optimizer"):
        lr_scheduler.ChainedScheduler([sched], optimizer=object())


def _other_scheduler():
    return lr_scheduler.StepLR(sgd(), step_size=2)


INVALID = [
    # (class name, kwargs, exception, message pattern)
    ("StepLR", {"step_size": 0}, ValueError, "positive integer step_size"),
    ("StepLR", {"step_size": -3}, ValueError, "positive integer step_size"),
    ("StepLR", {"step_size": 2.5}, ValueError, "positive integer step_size"),
    ("StepLR", {"step_size": 4.0}, ValueError, "positive integer step_size"),
    ("StepLR", {"step_size": "4"}, ValueError, "positive integer step_size"),
    ("StepLR", {"step_size": True}, ValueError, "positive integer step_size"),
    ("StepLR", {"step_size": 2, "gamma": 0}, ValueError, "positive gamma"),
    ("StepLR", {"step_size": 2, "gamma": -0.5}, ValueError, "positive gamma"),
    ("StepLR", {"step_size": 2, "gamma": float("nan")}, ValueError, "positive gamma"),
    ("MultiStepLR", {"milestones": [3], "gamma": 0.0}, ValueError, "positive gamma"),
    ("ExponentialLR", {"gamma": -0.9}, ValueError, "positive gamma"),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "gamma": 0}, ValueError, "positive gamma"),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0}, ValueError,
     "positive step_size_up"),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_down": -1}, ValueError,
     "non-negative step_size_down"),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "mode": "square"}, ValueError,
     "mode is invalid and scale_fn is None"),
    ("ConstantLR", {"factor": 0}, ValueError, "must be > 0"),
    ("ConstantLR", {"factor": 1.5}, ValueError, "expected to be between 0 and 1"),
    ("LinearLR", {"start_factor": 0}, ValueError, "Starting multiplicative factor"),
    ("LinearLR", {"end_factor": 1.5}, ValueError, "Ending multiplicative factor"),
    ("CosineAnnealingLR", {"T_max": 0}, ValueError, "positive T_max"),
    ("CosineAnnealingWarmRestarts", {"T_0": 0}, ValueError, "positive integer T_0"),
    ("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 1.5}, ValueError, "T_mult >= 1"),
    ("OneCycleLR", {"max_lr": 0.1}, ValueError, "You must define either total_steps"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 0}, ValueError, "positive integer total_steps"),
    ("OneCycleLR", {"max_lr": 0.1, "epochs": 2, "steps_per_epoch": 0}, ValueError,
     "positive integer steps_per_epoch"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "pct_start": 1}, ValueError,
     "float between 0 and 1 pct_start"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "anneal_strategy": "step"}, ValueError,
     "anneal_strategy must be one of"),
    ("ReduceLROnPlateau", {"factor": 1.0}, ValueError, "Factor should be < 1.0"),
    ("ReduceLROnPlateau", {"mode": "up"}, ValueError, "mode up is unknown"),
    ("ReduceLROnPlateau", {"threshold_mode": "pct"}, ValueError, "threshold mode pct is unknown"),
    ("LambdaLR", {"lr_lambda": 0.5}, TypeError, "lr_lambda should be a function"),
    # list arguments must have one entry per param group (two here)
    ("LambdaLR", {"lr_lambda": [_fn]}, ValueError, "Expected 2 lr_lambdas, but got 1"),
    ("MultiplicativeLR", {"lr_lambda": [_fn] * 3}, ValueError, "Expected 2 lr_lambdas, but got 3"),
    ("CyclicLR", {"base_lr": [0.01], "max_lr": 0.1}, ValueError, "base_lr must have the same length"),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": (0.1, 0.2, 0.3)}, ValueError,
     "max_lr must have the same length"),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "base_momentum": [0.8]}, ValueError,
     "base_momentum must have the same length"),
    ("OneCycleLR", {"max_lr": [0.1], "total_steps": 10}, ValueError, "max_lr must have the same length"),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 10, "max_momentum": [0.9] * 3}, ValueError,
     "max_momentum must have the same length"),
    ("ReduceLROnPlateau", {"min_lr": [0.1]}, ValueError, "expected 2 min_lrs, got 1"),
    ("SequentialLR", {"schedulers": [], "milestones": []}, ValueError, "at least one scheduler"),
]


@pytest.mark.parametrize("name, kwargs, error, pattern", INVALID,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(INVALID)])
def test_rejects_invalid_arguments(name, kwargs, error, pattern):
    opt = sgd()
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(error, match=re.escape(pattern)):
        getattr(lr_scheduler, name)(opt, **kwargs)
    assert [dict(g) for g in opt.param_groups] == before      # nothing half-applied


def test_rejects_bad_scheduler_lists():
    opt = sgd()
    a = lr_scheduler.StepLR(opt, step_size=2)
    b = lr_scheduler.ExponentialLR(opt, gamma=0.9)
    with pytest.raises(ValueError, match="one more than the number of milestone points"):
        lr_scheduler.SequentialLR(opt, [a, b], milestones=[2, 4])
    with pytest.raises(ValueError, match="belong to the same optimizer"):
        lr_scheduler.SequentialLR(opt, [a, _other_scheduler()], milestones=[3])
    with pytest.raises(ValueError, match="does not support `ReduceLROnPlateau`"):
        lr_scheduler.ChainedScheduler([a, lr_scheduler.ReduceLROnPlateau(opt)])
    with pytest.raises(ValueError, match="at least one scheduler to be chained"):
        lr_scheduler.ChainedScheduler([])


def test_numpy_integers_are_integers():
    sched = lr_scheduler.StepLR(sgd(), step_size=np.int64(2), gamma=np.float64(0.5))
    steps(sched, 4)
    assert sched.get_last_lr() == [0.025, 0.0075]
    lr_scheduler.OneCycleLR(sgd(), max_lr=0.1, total_steps=np.int32(10))
