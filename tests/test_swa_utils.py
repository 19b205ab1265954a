"""numbaopt.optim.swa_utils against torch 2.13's torch.optim.swa_utils.

The case tables and torch's drivers live in scripts/make_swa_reference.py, which also
wrote tests/data/swa_reference.npz with torch. Every case runs here on numbaopt and is
compared with that data, and with torch live when torch is importable. The bodies of
torch's test/optim/test_swa_utils.py and of test_lrscheduler.py's SWALR tests are ported
below them (update_bn's are not: numbaopt has no BatchNorm, see the module docstring).
"""

import copy
import functools
import importlib.util
import math
import os
import pathlib
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import numbaopt
from numbaopt import nn, optim
from numbaopt.optim import _swa_kernels, swa_utils
from numbaopt.optim.lr_scheduler import MultiplicativeLR
from numbaopt.optim.swa_utils import (SWALR, AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn,
                                      get_swa_avg_fn, get_swa_multi_avg_fn)
from tolerance import assert_close

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_reference_script():
    path = ROOT / "scripts" / "make_swa_reference.py"
    spec = importlib.util.spec_from_file_location("make_swa_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference_script()
DATA = np.load(ref.DATA)
DTYPES = ref.DTYPES
SOURCES = ["live", "committed"]

#: Cases whose every rounding is torch's: a division, products and sums, no lerp. torch's
#: CPU lerp fuses its multiply-add (vec::fmadd, one rounding), ours rounds twice
#: (no fastmath), so the lerp cases agree to an ulp per update, inside assert_close.
BITWISE = ("swa", "ema", "swa_avg_fn", "custom_avg_fn", "custom_multi_avg_fn")

GET_LR_WARNING = ("To get the last learning rate computed by the scheduler, please use "
                  "`get_last_lr()`.")


class Net(nn.Module):
    """Linear(3, 4) -> ReLU -> Linear(4, 2): the reference script's model, torch's names."""

    def __init__(self, dtype=np.float32):
        self.fc1 = nn.Linear(3, 4, rng=0, dtype=dtype)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 2, rng=1, dtype=dtype)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _flat(params):
    return np.concatenate([p.data.reshape(-1) for p in params])


# -- the layouts a source model's parameters can have -------------------------------------------
# "arena": exactly one optimizer's parameters (the pass reads that arena's span);
# "plain": in no arena; "split": in two optimizers' arenas; "strided": a Fortran-order
# weight (copied into a staging buffer); "iterable": an AveragedModel of the parameters.
LAYOUTS = ("arena", "plain", "split", "strided", "iterable")


def make_source(dtype, layout):
    """A model holding the reference inputs, and what to pass to AveragedModel for it."""
    init, _ = ref.make_inputs(dtype)
    model = Net(dtype)
    for p, value in zip(model.parameters(), init):
        p.data = value
    if layout == "strided":
        model.fc1.weight = numbaopt.Parameter(np.asfortranarray(init[0]))
    params = model.parameters()
    keep = []
    if layout == "arena":
        keep.append(optim.SGD(params, lr=0.1))
    elif layout == "split":
        keep += [optim.SGD(params[:2], lr=0.1), optim.SGD(params[2:], lr=0.1)]
    target = params if layout == "iterable" else model
    return model, target, keep


def run_ours(case, dtype, layout):
    """numbaopt's AveragedModel over the case: ``(traj, n_averaged per update, averaged)``."""
    _, noise = ref.make_inputs(dtype)
    model, target, keep = make_source(dtype, layout)
    averaged = AveragedModel(target, **ref.build_kwargs(case, swa_utils, ref.numpy_custom))
    traj = np.empty((ref.UPDATES, sum(int(np.prod(s)) for s in ref.SHAPES)), dtype=dtype)
    counts = np.empty(ref.UPDATES, dtype=np.int64)
    for k in range(ref.UPDATES):
        for p, change in zip(model.parameters(), noise[k]):
            p.data += change
        averaged.update_parameters(target)
        traj[k] = _flat(averaged.parameters())
        counts[k] = averaged.n_averaged
    return traj, counts, averaged


@functools.lru_cache(maxsize=None)
def _live_averaged(case, dtype):
    return ref.run_torch_averaged(case, dtype)


def reference_averaged(case, dtype, source):
    """torch's run: live (torch importable) or the committed one."""
    if source == "live":
        pytest.importorskip("torch")
        return _live_averaged(case, dtype)
    prefix = f"averaged|{case}|{dtype}|"
    keys = [str(k) for k in DATA[prefix + "state_keys"]]
    return {"traj": DATA[prefix + "traj"], "n_averaged": DATA[prefix + "n_averaged"],
            "state_dict": {k: DATA[prefix + "state|" + k] for k in keys}}


# -- torch's numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(ref.AVERAGED_CASES))
def test_averaged_model_matches_torch(case, dtype, layout, source):
    theirs = reference_averaged(case, dtype, source)
    traj, counts, _ = run_ours(case, dtype, layout)
    for k in range(ref.UPDATES):
        assert_close(traj[k], theirs["traj"][k], dtype, f"{case} {dtype} update {k + 1}")
    np.testing.assert_array_equal(counts, theirs["n_averaged"])
    if case in BITWISE:
        np.testing.assert_array_equal(traj, theirs["traj"])


def test_layouts_and_threads_give_the_same_bits(dtype="float32"):
    """The arena pass, the typed-List pass and their threaded twins round alike (float32
    only: the threaded kernels are the serial ones' code, and each dtype compiles ~4 s)."""
    serial, _, _ = run_ours("ema_multi", dtype, "arena")
    for layout in ("arena", "split"):
        _, noise = ref.make_inputs(dtype)
        model, target, keep = make_source(dtype, layout)
        averaged = AveragedModel(target, multi_avg_fn=get_ema_multi_avg_fn(0.9))
        averaged.parallel_threshold = 0
        for k in range(ref.UPDATES):
            for p, change in zip(model.parameters(), noise[k]):
                p.data += change
            averaged.update_parameters(target)
        np.testing.assert_array_equal(_flat(averaged.parameters()), serial[-1])


def test_the_plan_reads_the_optimizers_arena_directly():
    model = Net()
    opt = optim.Adam(model.parameters())
    averaged = AveragedModel(model)
    averaged.update_parameters(model)
    assert averaged._plan.span == (0, opt.arena.size)
    # a model whose parameters are a contiguous run of a larger arena reads that run
    extra = numbaopt.Parameter(np.zeros(5, np.float32))
    opt2 = optim.SGD([extra] + model.parameters(), lr=0.1)
    averaged.update_parameters(model)
    assert averaged._plan.span == (5, opt2.arena.size)
    # out of order: per-parameter views
    shuffled = model.parameters()[::-1]
    opt3 = optim.SGD(shuffled, lr=0.1)
    averaged.update_parameters(model)
    assert averaged._plan.span is None and len(averaged._plan.views) == 4
    assert len(opt3.arena) == 4


def test_a_new_arena_after_add_param_group_is_followed():
    model = Net()
    opt = optim.SGD(model.fc1.parameters(), lr=0.1)
    averaged = AveragedModel(model)
    averaged.update_parameters(model)
    first_plan = averaged._plan
    opt.add_param_group({"params": model.fc2.parameters()})     # every parameter moves
    for p in model.parameters():
        p.data += 1.0
    a, c = _flat(averaged.parameters()), _flat(model.parameters())
    expected = a + (c - a) / np.float32(2)
    averaged.update_parameters(model)
    assert averaged._plan is not first_plan and averaged._plan.span == (0, opt.arena.size)
    np.testing.assert_array_equal(_flat(averaged.parameters()), expected)


def test_steady_state_keeps_its_plan_and_signatures():
    model = Net()
    optim.SGD(model.parameters(), lr=0.1)
    averaged = AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn())
    averaged.update_parameters(model)
    averaged.update_parameters(model)
    plan = averaged._plan
    kernels = (_swa_kernels._average_flat, _swa_kernels._average_list)
    before = [len(k.signatures) for k in kernels]
    for _ in range(5):
        averaged.update_parameters(model)
    assert averaged._plan is plan
    assert [len(k.signatures) for k in kernels] == before


def test_kernels_load_from_the_cache_in_a_second_process():
    run_ours("swa", "float32", "arena")
    run_ours("swa", "float32", "plain")
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from test_swa_utils import run_ours\n"
        "from numbaopt.optim import _swa_kernels as s\n"
        "run_ours('swa', 'float32', 'arena'); run_ours('swa', 'float32', 'plain')\n"
        "ks = (s._average_flat, s._average_list)\n"
        "print(sum(sum(k.stats.cache_misses.values()) for k in ks),"
        " sum(sum(k.stats.cache_hits.values()) for k in ks))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(ROOT / "tests")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NUMBA_DISABLE_JIT": "0"})
    assert proc.returncode == 0, proc.stderr
    misses, hits = map(int, proc.stdout.split())
    assert (misses, hits) == (0, 2)


_GPU_SOURCE = """
import numpy as np
import numbaopt
from numbaopt import optim
from numbaopt.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
rng = np.random.default_rng(0)
values = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,)]]
on_gpu = [numbaopt.Parameter(v.copy()) for v in values]
opt = optim.SGD(on_gpu, lr=0.1, device="cuda")
host = [numbaopt.Parameter(v.copy()) for v in values]
split = [numbaopt.Parameter(v.copy()) for v in values]
keep = [optim.SGD(split[:1], lr=0.1, device="cuda"), optim.SGD(split[1:], lr=0.1, device="cuda")]
models = (on_gpu, host, split)
averaged = [AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.5)) for m in models]
for k in range(3):
    for m in models:
        for p in m:
            p.data = p.numpy() + np.float32(k + 1)
    for a, m in zip(averaged, models):
        a.update_parameters(m)
assert averaged[0]._plan.span == (0, 17) and len(averaged[2]._plan.staged) == 2
assert all(isinstance(p.data, np.ndarray) for p in averaged[0].parameters())
print(all(np.array_equal(a.arena.data, averaged[1].arena.data) for a in averaged))
"""


def test_a_model_on_the_gpu_is_averaged_on_the_host():
    """Under numba's CUDA simulator: a model in one device arena (its span comes to the host)
    and in two (each parameter staged) averages as the same model on the host."""
    pytest.importorskip("numba.cuda")
    proc = subprocess.run([sys.executable, "-c", _GPU_SOURCE], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"]


# -- state_dict ------------------------------------------------------------------------------
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_torch_state_dict_loads(dtype, source):
    theirs = reference_averaged("ema_multi", dtype, source)
    averaged = AveragedModel(Net(dtype), multi_avg_fn=get_ema_multi_avg_fn(0.9))
    assert list(averaged.state_dict()) == list(theirs["state_dict"])
    assert repr(averaged.load_state_dict(theirs["state_dict"])) == "<All keys matched successfully>"
    np.testing.assert_array_equal(_flat(averaged.parameters()), theirs["traj"][-1])
    assert averaged.n_averaged.shape == () and averaged.n_averaged.dtype == np.int64
    assert int(averaged.n_averaged) == ref.UPDATES


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dicts_go_both_ways_with_torch_and_both_continue_alike(dtype):
    torch = pytest.importorskip("torch")
    from torch.optim import swa_utils as torch_swa

    ours_model = Net(dtype)
    theirs_model = torch.nn.Sequential()
    theirs_model.fc1 = torch.nn.Linear(3, 4, dtype=getattr(torch, dtype))
    theirs_model.act = torch.nn.ReLU()
    theirs_model.fc2 = torch.nn.Linear(4, 2, dtype=getattr(torch, dtype))
    ours = AveragedModel(ours_model)
    theirs = torch_swa.AveragedModel(theirs_model)
    rng = np.random.default_rng(3)
    for p in ours_model.parameters():
        p.data = rng.standard_normal(p.shape)
    ours.update_parameters(ours_model)
    ours.update_parameters(ours_model)
    # numbaopt -> torch
    sd = ours.state_dict()
    assert list(sd) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    assert int(theirs.n_averaged) == 2
    with torch.no_grad():
        for p, q in zip(theirs_model.parameters(), ours_model.parameters()):
            p.copy_(torch.from_numpy(q.data))
    for _ in range(3):
        for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
            change = rng.standard_normal(p.shape).astype(dtype)
            p.data += change
            with torch.no_grad():
                q.add_(torch.from_numpy(change))
        ours.update_parameters(ours_model)
        theirs.update_parameters(theirs_model)
    np.testing.assert_array_equal(
        _flat(ours.parameters()),
        np.concatenate([p.detach().numpy().reshape(-1) for p in theirs.parameters()]))
    # torch -> numbaopt: tensors load as they are, and through .numpy()
    for state in (theirs.state_dict(), {k: v.numpy() for k, v in theirs.state_dict().items()}):
        fresh = AveragedModel(Net(dtype))
        fresh.load_state_dict(state)
        assert int(fresh.n_averaged) == 5
        np.testing.assert_array_equal(_flat(fresh.parameters()), _flat(ours.parameters()))


def test_state_dict_is_a_copy_and_load_copies_in():
    averaged = AveragedModel(Net())
    averaged.update_parameters(averaged.module)
    sd = averaged.state_dict()
    sd["module.fc1.bias"][...] = 7.0
    sd["n_averaged"][...] = 9
    assert int(averaged.n_averaged) == 1 and not (averaged.module.fc1.bias.data == 7).any()
    averaged.load_state_dict(sd)
    sd["module.fc1.bias"][...] = 8.0
    np.testing.assert_array_equal(averaged.module.fc1.bias.data, 7.0)
    assert int(averaged.n_averaged) == 9


def test_load_state_dict_errors_leave_it_unchanged():
    averaged = AveragedModel(Net())
    averaged.update_parameters(averaged.module)
    before = averaged.state_dict()
    bad = {k: v + 1 for k, v in before.items()}
    del bad["module.fc1.bias"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(RuntimeError) as info:
        averaged.load_state_dict(bad)
    assert str(info.value) == (
        'Error(s) in loading state_dict for AveragedModel:\n\tMissing key(s) in state_dict: '
        '"module.fc1.bias". \n\tUnexpected key(s) in state_dict: "extra". ')
    bad2 = {k: v + 1 for k, v in before.items()}
    bad2["module.fc2.bias"] = np.zeros(5, np.float32)
    with pytest.raises(RuntimeError, match=r"size mismatch for module\.fc2\.bias: copying a "
                       r"param with shape \(5,\) from checkpoint, the shape in current model "
                       r"is \(2,\)\."):
        averaged.load_state_dict(bad2, strict=False)
    with pytest.raises(TypeError, match="Expected state_dict to be dict-like"):
        averaged.load_state_dict([("n_averaged", 1)])
    with pytest.raises(TypeError, match="real numeric"):
        averaged.load_state_dict({**before, "n_averaged": np.array("x")})
    for key, value in averaged.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    keys = averaged.load_state_dict(bad, strict=False)
    assert keys.missing_keys == ["module.fc1.bias"] and keys.unexpected_keys == ["extra"]
    assert int(averaged.n_averaged) == 2
    # torch loads a 1-element array into the 0-d n_averaged
    averaged.load_state_dict({**before, "n_averaged": np.array([4])})
    assert averaged.n_averaged.shape == () and int(averaged.n_averaged) == 4


def test_load_state_dict_messages_are_torchs():
    torch = pytest.importorskip("torch")
    from torch.optim import swa_utils as torch_swa
    theirs = torch_swa.AveragedModel(torch.nn.Linear(2, 1))
    ours = AveragedModel(numbaopt.nn.Linear(2, 1))
    assert list(ours.state_dict()) == ["n_averaged", "module.weight", "module.bias"]
    bad = {"n_averaged": 0, "other": 0}
    with pytest.raises(RuntimeError) as mine:
        ours.load_state_dict({k: np.asarray(v) for k, v in bad.items()})
    with pytest.raises(RuntimeError) as torchs:
        theirs.load_state_dict({k: torch.tensor(v) for k, v in bad.items()})
    assert str(mine.value) == str(torchs.value)
    assert repr(ours.load_state_dict({"n_averaged": np.array(1)}, strict=False)) == repr(
        theirs.load_state_dict({"n_averaged": torch.tensor(1)}, strict=False))


# -- ported from torch's test/optim/test_swa_utils.py ------------------------------------------
class DNN(nn.Module):
    """torch's test network, without its Conv2d/MaxPool2d/BatchNorm2d (numbaopt.nn has none)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.l1 = nn.Linear(5, 5, rng=rng)
        self.act1 = nn.ReLU()
        self.l2 = nn.Linear(5, 10, rng=rng)
        self.act2 = nn.ReLU()
        self.l3 = nn.Linear(10, 5, bias=False, rng=rng)

    def forward(self, x):
        return self.l3(self.act2(self.l2(self.act1(self.l1(x)))))


def _run_averaged_steps(dnn, ema):
    ema_decay = 0.999
    if ema:
        averaged_dnn = AveragedModel(dnn, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
    else:
        averaged_dnn = AveragedModel(dnn, multi_avg_fn=get_swa_multi_avg_fn())
    averaged_params = [np.zeros_like(p.data) for p in dnn.parameters()]
    rng = np.random.default_rng(1)
    n_updates = 10
    for i in range(n_updates):
        for p, p_avg in zip(dnn.parameters(), averaged_params):
            p.data += rng.standard_normal(p.shape)
            if ema:
                p_avg += (p.data * ema_decay ** (n_updates - i - 1)
                          * ((1 - ema_decay) if i > 0 else 1.0))
            else:
                p_avg += p.data / n_updates
        averaged_dnn.update_parameters(dnn)
    return averaged_params, averaged_dnn


@pytest.mark.parametrize("ema", [True, False])
def test_averaged_model_all_devices(ema):
    # torch also runs it across CPU and CUDA; here the averaged copy is on the host
    dnn = DNN()
    optim.SGD(dnn.parameters(), lr=0.1)
    averaged_params, averaged_dnn = _run_averaged_steps(dnn, ema)
    for p_avg, p_swa in zip(averaged_params, averaged_dnn.parameters()):
        assert_close(p_swa.data, p_avg)
        assert isinstance(p_swa.data, np.ndarray)
    assert isinstance(averaged_dnn.n_averaged, np.ndarray)


@pytest.mark.parametrize("ema", [True, False])
def test_averaged_model_mixed_device(ema):
    # torch's version puts the layers on two devices; numbaopt's counterpart is parameters
    # in two optimizers' arenas (and one in none)
    dnn = DNN()
    optim.SGD(dnn.l1.parameters(), lr=0.1)
    optim.Adam(dnn.l2.parameters())
    averaged_params, averaged_dnn = _run_averaged_steps(dnn, ema)
    assert averaged_dnn._plan.span is None
    for p_avg, p_swa in zip(averaged_params, averaged_dnn.parameters()):
        assert_close(p_swa.data, p_avg)


def test_averaged_model_state_dict():
    dnn = DNN()
    averaged_dnn = AveragedModel(dnn)
    averaged_dnn2 = AveragedModel(dnn)
    rng = np.random.default_rng(2)
    n_updates = 10
    for i in range(n_updates):
        for p in dnn.parameters():
            p.data += rng.standard_normal(p.shape)
        averaged_dnn.update_parameters(dnn)
    averaged_dnn2.load_state_dict(averaged_dnn.state_dict())
    for p_swa, p_swa2 in zip(averaged_dnn.parameters(), averaged_dnn2.parameters()):
        np.testing.assert_array_equal(p_swa.data, p_swa2.data)
    assert averaged_dnn.n_averaged == averaged_dnn2.n_averaged


def test_averaged_model_default_avg_fn_picklable():
    dnn = DNN()
    averaged_dnn = AveragedModel(dnn)
    pickle.dumps(averaged_dnn)
    # and after updates, a copy (pickled or deep-copied) goes on as the original
    averaged_dnn.update_parameters(dnn)
    for make_copy in (lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy):
        clone = make_copy(averaged_dnn)
        for p in dnn.parameters():
            p.data += 1.0
        averaged_dnn.update_parameters(dnn)
        clone.update_parameters(dnn)
        np.testing.assert_array_equal(_flat(clone.parameters()), _flat(averaged_dnn.parameters()))
        assert int(clone.n_averaged) == int(averaged_dnn.n_averaged)
    # this module's averaging functions pickle too (torch's are closures, which do not)
    ema = AveragedModel(dnn, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    assert repr(pickle.loads(pickle.dumps(ema)).multi_avg_fn) == "get_ema_multi_avg_fn(decay=0.9)"


@pytest.mark.parametrize("use_multi_avg_fn", [True, False])
def test_averaged_model_exponential(use_multi_avg_fn):
    # torch's use_buffers=True half needs BatchNorm buffers: see test_use_buffers_is_refused
    dnn = DNN()
    decay = 0.9
    if use_multi_avg_fn:
        averaged_dnn = AveragedModel(dnn, multi_avg_fn=get_ema_multi_avg_fn(decay))
    else:
        def avg_fn(p_avg, p, n_avg):
            return decay * p_avg + (1 - decay) * p
        averaged_dnn = AveragedModel(dnn, avg_fn=avg_fn)
    dnn_params = dnn.parameters()
    averaged_params = [np.zeros_like(p.data) for p in dnn_params]
    rng = np.random.default_rng(3)
    n_updates = 10
    for i in range(n_updates):
        updated_averaged_params = []
        for p, p_avg in zip(dnn_params, averaged_params):
            p.data += rng.standard_normal(p.shape)
            if i == 0:
                updated_averaged_params.append(p.data.copy())
            else:
                updated_averaged_params.append((p_avg * decay + p.data * (1 - decay)).copy())
        averaged_dnn.update_parameters(dnn)
        averaged_params = updated_averaged_params
    for p_avg, p_swa in zip(averaged_params, averaged_dnn.parameters()):
        assert_close(p_swa.data, p_avg)


# -- the averaging functions on their own ---------------------------------------------------------
def test_swa_multi_avg_fn_weight_follows_torchs_dtypes():
    """From AveragedModel's 0-d int64 count the weight is float32, even for float64 arrays;
    from a Python int it is a float64 1 / (n + 1)."""
    rng = np.random.default_rng(4)
    a0, c = rng.standard_normal(7), rng.standard_normal(7)
    fn = get_swa_multi_avg_fn()
    from_array, from_int = a0.copy(), a0.copy()
    fn([from_array], [c], np.array(2, np.int64))
    fn([from_int], [c], 2)
    w32 = float(np.float32(1) / np.float32(3))
    np.testing.assert_allclose(from_array, a0 + w32 * (c - a0), rtol=1e-15)
    np.testing.assert_allclose(from_int, a0 + (c - a0) / 3, rtol=1e-15)
    assert np.abs(from_array - from_int).max() > 1e-9     # the float32 weight shows
    torch = pytest.importorskip("torch")
    from torch.optim import swa_utils as torch_swa
    for count, ours in ((torch.tensor(2), from_array), (2, from_int)):
        theirs = torch.from_numpy(a0.copy())
        torch_swa.get_swa_multi_avg_fn()([theirs], [torch.from_numpy(c)], count)
        assert_close(ours, theirs.numpy())


def test_ema_multi_avg_fn_standalone_and_integer_branch():
    rng = np.random.default_rng(5)
    for decay in (0.9, 0.25):        # lerp weights 0.1 and 0.75: both of torch's formulas
        a = rng.standard_normal(9).astype(np.float32)
        c = rng.standard_normal(9).astype(np.float32)
        out = a.copy()
        get_ema_multi_avg_fn(decay)([out], [numbaopt.Parameter(c)], None)
        assert out.dtype == np.float32
        assert_close(out, decay * a.astype(np.float64) + (1 - decay) * c.astype(np.float64),
                     np.float32)
    ints = np.array([1, 2, 3])
    get_ema_multi_avg_fn(0.5)([ints], [np.array([4, 5, 9])], 1)
    np.testing.assert_array_equal(ints, [2, 3, 6])          # torch: copy_ truncates
    with pytest.raises(RuntimeError, match="Integer division with addcdiv"):
        get_swa_multi_avg_fn()([np.array([1])], [np.array([2])], np.array(1))
    with pytest.raises(RuntimeError, match="argument alpha must not be a floating point"):
        get_swa_multi_avg_fn()([np.array([1])], [np.array([2])], 1)
    with pytest.raises(RuntimeError, match="same number of tensors"):
        get_swa_multi_avg_fn()([np.zeros(1)], [], 1)
    with pytest.raises(RuntimeError, match="expected dtype float32 for `end`"):
        get_ema_multi_avg_fn()([np.zeros(1, np.float32)], [np.zeros(1)], 1)


def test_avg_fns_keep_float32_and_match_torch():
    rng = np.random.default_rng(6)
    a = rng.standard_normal(11).astype(np.float32)
    c = rng.standard_normal(11).astype(np.float32)
    ours_swa = get_swa_avg_fn()(a, c, np.array(3))
    ours_ema = get_ema_avg_fn(0.7)(a, c, np.array(3))
    assert ours_swa.dtype == ours_ema.dtype == np.float32
    np.testing.assert_array_equal(ours_swa, a + (c - a) / np.float32(4))
    np.testing.assert_array_equal(get_swa_avg_fn()(a, c, 3), ours_swa)
    torch = pytest.importorskip("torch")
    from torch.optim import swa_utils as torch_swa
    ta, tc, n = torch.from_numpy(a), torch.from_numpy(c), torch.tensor(3)
    np.testing.assert_array_equal(ours_swa, torch_swa.get_swa_avg_fn()(ta, tc, n).numpy())
    np.testing.assert_array_equal(ours_ema, torch_swa.get_ema_avg_fn(0.7)(ta, tc, n).numpy())


def test_decay_outside_zero_one_is_refused_with_torchs_message():
    for factory in (get_ema_multi_avg_fn, get_ema_avg_fn):
        with pytest.raises(ValueError, match=r"Invalid decay value 1.5 provided. Please provide "
                                             r"a value in \[0,1\] range."):
            factory(1.5)
        with pytest.raises(ValueError, match="Invalid decay value -0.1"):
            factory(-0.1)


def test_python_averaging_functions_see_live_views_and_the_count():
    model = Net()
    optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def multi(averaged, current, n):
        calls.append((len(averaged), n.shape, n.dtype, int(n)))
        for a, p, q in zip(averaged, current, model.parameters()):
            assert isinstance(a, np.ndarray) and np.shares_memory(p, q.data)
            a[...] = -1.0

    averaged = AveragedModel(model, multi_avg_fn=multi)
    averaged.update_parameters(model)       # the first call copies, without the function
    averaged.update_parameters(model)
    assert calls == [(4, (), np.dtype(np.int64), 1)]
    assert (_flat(averaged.parameters()) == -1).all()

    per_param = []
    averaged = AveragedModel(model, avg_fn=lambda a, c, n: per_param.append(int(n)) or a + 1)
    for _ in range(3):
        averaged.update_parameters(model)
    assert per_param == [1] * 4 + [2] * 4
    np.testing.assert_array_equal(_flat(averaged.parameters()),
                                  (_flat(model.parameters()) + 1) + 1)


# -- construction and update errors ------------------------------------------------------------
def test_only_one_averaging_function():
    with pytest.raises(AssertionError,
                       match="Only one of avg_fn and multi_avg_fn should be provided"):
        AveragedModel(Net(), avg_fn=get_swa_avg_fn(), multi_avg_fn=get_swa_multi_avg_fn())
    with pytest.raises(TypeError, match="avg_fn must be callable"):
        AveragedModel(Net(), avg_fn=0.9)


def test_use_buffers_is_refused():
    with pytest.raises(ValueError, match="numbaopt.nn modules have no buffers"):
        AveragedModel(Net(), use_buffers=True)
    with pytest.raises(ValueError, match="device must be None or 'cpu'"):
        AveragedModel(Net(), device="cuda")
    assert AveragedModel(Net(), device="cpu", use_buffers=False).use_buffers is False


def test_model_argument_errors():
    with pytest.raises(TypeError, match="one of the params is numpy.ndarray"):
        AveragedModel([np.zeros(2)])
    with pytest.raises(TypeError, match="model must be a numbaopt.nn.Module or an iterable"):
        AveragedModel(3)
    mixed = [numbaopt.Parameter(np.zeros(2, np.float32)), numbaopt.Parameter(np.zeros(2))]
    with pytest.raises(TypeError, match="must share a dtype"):
        AveragedModel(mixed)


def test_update_with_another_model_is_refused_and_changes_nothing():
    model = Net()
    averaged = AveragedModel(model)
    averaged.update_parameters(model)
    before = averaged.state_dict()
    wrong_dtype = Net(np.float64)
    wider = Net()
    wider.fc2 = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="the model has 2 parameters, the AveragedModel 4"):
        averaged.update_parameters(model.fc1)
    with pytest.raises(RuntimeError, match="parameter 2 of the model has shape"):
        averaged.update_parameters(wider)
    with pytest.raises(RuntimeError, match="parameter 0 of the model is float64"):
        averaged.update_parameters(wrong_dtype)
    for key, value in averaged.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_tied_parameters_are_averaged_once():
    model = Net()
    model.tied = model.fc1.weight           # torch's parameters() lists it once
    averaged = AveragedModel(model)
    assert len(averaged.parameters()) == 4
    assert averaged.module.tied is averaged.module.fc1.weight
    assert "module.tied" in averaged.state_dict()        # torch's state_dict names it twice
    averaged.update_parameters(model)
    model.fc1.weight.data += 1
    averaged.update_parameters(model)
    assert_close(averaged.module.tied.data, model.fc1.weight.data - 0.5)


def test_the_copy_is_the_models_and_forward_delegates():
    model = Net()
    opt = optim.Adam(model.parameters())
    averaged = AveragedModel(model)
    assert opt.arena.stale is None          # copying the model left its optimizer alone
    assert [n for n, _ in averaged.named_parameters()] == [
        "module.fc1.weight", "module.fc1.bias", "module.fc2.weight", "module.fc2.bias"]
    for p, q in zip(averaged.parameters(), model.parameters()):
        assert p is not q and not np.shares_memory(p.data, q.data)
        assert p._arena is averaged.arena
    x = np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_array_equal(averaged(x), model(x))
    layer = AveragedModel(nn.Linear(3, 2))
    layer(x)
    assert layer.backward(np.ones((5, 2), np.float32)).shape == (5, 3)
    assert layer.module.weight.grad.shape == (2, 3)
    # an AveragedModel of parameters names them as torch's ParameterList does
    listed = AveragedModel(model.parameters())
    assert list(listed.state_dict())[1:] == ["module.0", "module.1", "module.2", "module.3"]
    assert listed.module[1].shape == (4,) and len(listed.module) == 4


def test_an_averaged_copy_taken_by_an_optimizer_stops_updates():
    model = Net()
    averaged = AveragedModel(model)
    optim.SGD(averaged.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="AveragedModel can no longer update"):
        averaged.update_parameters(model)


# -- SWALR ------------------------------------------------------------------------------------
def swalr_optimizer(lrs, kind="sgd"):
    cls = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}[kind]
    groups = []
    for lr in lrs:
        p = numbaopt.Parameter(np.zeros(2))
        p.grad = np.array([1.0, -0.5])
        groups.append({"params": [p], "lr": lr})
    return cls(groups, lr=lrs[0])


def run_swalr(case, kind="sgd"):
    lrs, kwargs, before = ref.SWALR_CASES[case]
    optimizer = swalr_optimizer(lrs, kind)
    scheduler = MultiplicativeLR(optimizer, lr_lambda=lambda epoch: 0.9) if before else None
    swa_scheduler = SWALR(optimizer, **kwargs)
    out = [[g["lr"] for g in optimizer.param_groups]]
    for epoch in range(ref.EPOCHS):
        optimizer.step()
        (scheduler if epoch < before else swa_scheduler).step()
        out.append([g["lr"] for g in optimizer.param_groups])
    return np.array(out, dtype=np.float64), swa_scheduler


@functools.lru_cache(maxsize=None)
def _live_swalr(case):
    return ref.run_torch_swalr(case)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("case", list(ref.SWALR_CASES))
def test_swalr_matches_torch(case, kind, source):
    if source == "live":
        pytest.importorskip("torch")
        theirs = _live_swalr(case)
    else:
        theirs = DATA[f"swalr|{case}"]
    ours, _ = run_swalr(case, kind)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)


def test_swalr_state_dict_keys_are_torchs():
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import SWALR as TorchSWALR
    theirs = TorchSWALR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), swa_lr=0.5)
    _, ours = run_swalr("cos_groups")
    assert set(ours.state_dict()) == set(theirs.state_dict())


def _sched_opt():
    # torch's test fixture: two groups, lr 0.05 and 0.5
    return swalr_optimizer([0.05, 0.5])


def _test_swalr(opt, swa_scheduler, scheduler, targets, swa_start, epochs):
    for epoch in range(epochs):
        for param_group, target in zip(opt.param_groups, targets):
            assert param_group["lr"] == pytest.approx(target[epoch], abs=1e-5, rel=0), epoch
        if epoch >= swa_start:
            opt.step()
            swa_scheduler.step()
        elif scheduler is not None:
            opt.step()
            scheduler.step()


def test_swalr_no_anneal():
    opt = _sched_opt()
    epochs, swa_start, swa_lr = 10, 5, 0.01
    initial_lrs = [group["lr"] for group in opt.param_groups]
    targets = [[lr] * (swa_start + 1) + [swa_lr] * (epochs - swa_start - 1) for lr in initial_lrs]
    swa_scheduler = SWALR(opt, anneal_epochs=1, swa_lr=swa_lr)
    _test_swalr(opt, swa_scheduler, None, targets, swa_start, epochs)


def test_swalr_cosine_anneal_after_multiplicative():
    # same swa_lr for different param_groups
    opt = _sched_opt()
    epochs, swa_start, swa_lr, anneal_epochs = 15, 5, 0.01, 5
    mult_factor = 0.9
    scheduler = MultiplicativeLR(opt, lr_lambda=lambda epoch: mult_factor)
    swa_scheduler = SWALR(opt, anneal_epochs=anneal_epochs, swa_lr=swa_lr)

    def anneal_coef(t):
        if t + 1 >= anneal_epochs:
            return 0.0
        return (1 + math.cos(math.pi * (t + 1) / anneal_epochs)) / 2

    initial_lrs = [group["lr"] for group in opt.param_groups]
    targets_before_swa = [[lr * mult_factor**i for i in range(swa_start + 1)] for lr in initial_lrs]
    swa_epochs = epochs - swa_start - 1
    targets = [lrs + [lrs[-1] * anneal_coef(t) + swa_lr * (1 - anneal_coef(t))
                      for t in range(swa_epochs)]
               for lrs in targets_before_swa]
    _test_swalr(opt, swa_scheduler, scheduler, targets, swa_start, epochs)


def test_swalr_linear_anneal_after_multiplicative():
    # separate swa_lr for different param_groups
    opt = _sched_opt()
    epochs, swa_start, swa_lrs, anneal_epochs = 15, 5, [0.01, 0.02], 4
    mult_factor = 0.9
    scheduler = MultiplicativeLR(opt, lr_lambda=lambda epoch: mult_factor)
    swa_scheduler = SWALR(opt, anneal_epochs=anneal_epochs, anneal_strategy="linear",
                          swa_lr=swa_lrs)

    def anneal_coef(t):
        if t + 1 >= anneal_epochs:
            return 0.0
        return 1 - (t + 1) / anneal_epochs

    initial_lrs = [group["lr"] for group in opt.param_groups]
    targets_before_swa = [[lr * mult_factor**i for i in range(swa_start + 1)] for lr in initial_lrs]
    swa_epochs = epochs - swa_start - 1
    targets = [lrs + [lrs[-1] * anneal_coef(t) + swa_lr * (1 - anneal_coef(t))
                      for t in range(swa_epochs)]
               for lrs, swa_lr in zip(targets_before_swa, swa_lrs)]
    _test_swalr(opt, swa_scheduler, scheduler, targets, swa_start, epochs)


def test_swalr_hypers():
    # Test that SWALR raises errors for incorrect hyper-parameters
    opt = _sched_opt()
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match="anneal_strategy must"):
        SWALR(opt, anneal_strategy="exponential", swa_lr=1.0)
    with pytest.raises(ValueError, match="anneal_epochs must"):
        SWALR(opt, anneal_epochs=-1, swa_lr=1.0)
    with pytest.raises(ValueError, match="anneal_epochs must"):
        SWALR(opt, anneal_epochs=1.7, swa_lr=1.0)
    with pytest.raises(ValueError, match="swa_lr must"):
        SWALR(opt, swa_lr=[1.0, 0.1, 0.01])
    # numbaopt's additions: a non-number is refused up front (torch fails in get_lr), and a
    # refused construction leaves the groups as they were (torch has written swa_lr by then)
    with pytest.raises(TypeError, match="swa_lr must be a float"):
        SWALR(opt, swa_lr="0.1")
    with pytest.raises(KeyError, match="param 'initial_lr' is not specified"):
        SWALR(opt, swa_lr=0.1, last_epoch=3)
    assert [dict(g) for g in opt.param_groups] == before


def test_swalr_errors_match_torchs_messages():
    torch = pytest.importorskip("torch")
    from torch.optim.swa_utils import SWALR as TorchSWALR
    theirs = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                              {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1)
    for kwargs in (dict(anneal_strategy="exponential"), dict(anneal_epochs=-1),
                   dict(anneal_epochs=1.7), dict(swa_lr=[1.0, 0.1, 0.01])):
        kwargs = {"swa_lr": 1.0, **kwargs}
        with pytest.raises(ValueError) as mine:
            SWALR(_sched_opt(), **kwargs)
        with pytest.raises(ValueError) as torchs:
            TorchSWALR(theirs, **kwargs)
        assert str(mine.value) == str(torchs.value)


def _check_scheduler_state_dict(constr, constr2, epochs=10):
    scheduler = constr()
    for _ in range(epochs):
        scheduler.optimizer.step()
        scheduler.step()
    scheduler_copy = constr2()
    scheduler_copy.load_state_dict(scheduler.state_dict())
    for key in scheduler.__dict__.keys():
        if key != "optimizer":
            assert scheduler.__dict__[key] == scheduler_copy.__dict__[key], key
    assert scheduler.get_last_lr() == scheduler_copy.get_last_lr()


def test_swa_lr_state_dict():
    opt = _sched_opt()
    _check_scheduler_state_dict(
        lambda: SWALR(opt, anneal_epochs=3, swa_lr=0.5),
        lambda: SWALR(opt, anneal_epochs=10, anneal_strategy="linear", swa_lr=5.0))


def test_swalr_state_dict_load():
    # torch's test_lr_scheduler_state_dict_load, through pickle instead of torch.save
    opt = _sched_opt()
    scheduler = SWALR(opt, swa_lr=0.01)
    state_dict = scheduler.state_dict()
    assert "anneal_func" not in state_dict and "optimizer" not in state_dict
    loaded = pickle.loads(pickle.dumps(state_dict))
    assert loaded == state_dict
    scheduler2 = SWALR(opt, swa_lr=0.01)
    scheduler2.load_state_dict(loaded)
    assert scheduler2.state_dict() == state_dict
    assert scheduler2.anneal_func is SWALR._cosine_anneal


def test_swalr_checkpoint():
    # torch's test_lr_scheduler_checkpoint
    model = nn.Linear(3, 3)
    opt = optim.AdamW(model.parameters())
    sch = SWALR(opt, swa_lr=0.01)
    model.zero_grad()
    model(np.ones((1, 3), np.float32))
    model.backward(np.ones((1, 3), np.float32))
    opt.step()
    sch.step()
    opt2 = optim.AdamW(model.parameters())
    opt2.load_state_dict(opt.state_dict())
    sch2 = SWALR(opt2, swa_lr=0.01, last_epoch=0)
    assert sch2.get_last_lr()[0] == opt.param_groups[0]["lr"]


def test_constant_initial_params_swalr():
    # torch's test with a tensor swa_lr: the group keeps its own copy
    swa_lr = np.array(0.05)
    opt = swalr_optimizer([0.1])
    sch = SWALR(opt, swa_lr=swa_lr)
    ori_param_groups = copy.deepcopy(opt.param_groups)
    for _ in range(2):
        swa_lr *= 0.5
        opt.step()
        sch.step()
        for group, ori_group in zip(opt.param_groups, ori_param_groups):
            assert group["initial_lr"] == ori_group["initial_lr"]
            assert group["swa_lr"] == ori_group["swa_lr"] == 0.05
            assert sch.base_lrs == [0.1]


def test_swalr_get_lr_outside_step_warns():
    _, sch = run_swalr("cos_groups")
    with pytest.warns(UserWarning, match=GET_LR_WARNING.replace("(", r"\(").replace(")", r"\)")):
        sch.get_lr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = _sched_opt()
        sch = SWALR(opt, swa_lr=0.01)
        opt.step()
        sch.step()


# -- the example ------------------------------------------------------------------------------
def test_ema_weights_example_prints_a_lower_smoother_ema_loss():
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "ema_weights.py")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "EMA of the weights: lower eval loss True, smoother True"
    assert lines[-2].endswith("EMA lower at 20 of 20")
