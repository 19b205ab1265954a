"""numbaopt.checkpoint: bit-identical resumption, the safetensors format, what users asked
for (extra=, key=, file objects, parameter files by name), refusals of mismatched objects.

The probes of broken, hostile and interrupted files are in test_checkpoint_faults.py.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt import _checkpoint_digest as digest
from numbaopt import optim
from numbaopt.checkpoint import load, load_parameters, save, save_parameters

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open                       # noqa: E402
from safetensors.numpy import load_file, save_file      # noqa: E402

P = numbaopt.Parameter
SHAPES = ((3, 4), (), (0,), (5,), (2, 3))
CASES = {
    "sgd_momentum": (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "adam_amsgrad": (optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    "adamw": (optim.AdamW, dict(lr=0.01, betas=(0.8, 0.99))),
    "rmsprop_centered_momentum": (optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.9)),
    "adagrad": (optim.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    "nadam": (optim.NAdam, dict(lr=0.01, momentum_decay=0.004)),      # float64 scalar state
    "asgd": (optim.ASGD, dict(lr=0.01, t0=2.0)),                      # eta, mu
}


def make(case, dtype=np.float64, seed=0, shapes=SHAPES):
    cls, kwargs = CASES[case]
    rng = np.random.default_rng(seed)
    params = [P(rng.standard_normal(s).astype(dtype)) for s in shapes]
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], **kwargs)
    return params, opt


def grads_for(step, params, dtype):
    rng = np.random.default_rng(1000 + step)
    out = [rng.standard_normal(p.shape).astype(dtype) for p in params]
    out[(step % (len(params) - 1)) + 1] = None           # some parameter has no grad each step
    return out


def train(params, opt, steps, first=0, sched=None):
    for k in range(first, first + steps):
        for p, g in zip(params, grads_for(k, params, opt.arena.dtype)):
            p.grad = g
        opt.step()
        if sched is not None:
            sched.step()


def snapshot(params, opt, sched=None):
    return ([p.numpy().copy() for p in params], opt.state_dict(),
            None if sched is None else sched.state_dict())


def assert_same(a, b):
    """Bit-identical snapshots: parameter values, state arrays, param_groups, scheduler."""
    (pa, sa, ca), (pb, sb, cb) = a, b
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype
    assert sorted(sa["state"], key=repr) == sorted(sb["state"], key=repr)
    for i in sa["state"]:
        if not isinstance(i, int):
            assert sa["state"][i] == sb["state"][i]
            continue
        assert sorted(sa["state"][i]) == sorted(sb["state"][i])
        for k in sa["state"][i]:
            x, y = sa["state"][i][k], sb["state"][i][k]
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
    assert sa["param_groups"] == sb["param_groups"]
    assert ca == cb


@pytest.fixture
def ckpt(tmp_path):
    """The checkpoint's path, alone in its directory (so leftover temp files show)."""
    (tmp_path / "run").mkdir()
    return tmp_path / "run" / "model.ckpt"


def members_of(path):
    with safe_open(path, framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def rewrite(path, meta=None, arrays=None, recompute=True, key=None):
    """Re-save ``path`` with edits; with ``recompute`` the checksum is recomputed (what a
    careful tamperer, or a tool, does), without it the old one is kept."""
    tensors, md = members_of(path)
    description = json.loads(md["numbaopt.checkpoint"])
    if meta is not None:
        meta(description)
    if arrays is not None:
        arrays(tensors)
    md["numbaopt.checkpoint"] = json.dumps(description)
    if recompute:
        md["numbaopt.checksum"] = digest.checksum(md["numbaopt.checkpoint"], tensors, key)
    save_file(tensors, path, metadata=md)


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_round_trip_then_training_is_bit_identical(case, dtype, ckpt):
    params, opt = make(case, dtype)
    train(params, opt, 5)
    save(ckpt, opt)
    train(params, opt, 4, first=5)                       # the run that never stopped
    # a "new process": same model code, different initial values, fresh optimizer
    params2, opt2 = make(case, dtype, seed=99)
    assert load(ckpt, opt2) == {}
    train(params2, opt2, 4, first=5)
    assert_same(snapshot(params, opt), snapshot(params2, opt2))


def test_round_trip_restores_everything_exactly(ckpt):
    params, opt = make("adam_amsgrad", np.float32)
    train(params, opt, 3)
    opt.param_groups[1]["betas"] = (0.5, 0.75)           # a tuple must come back a tuple
    opt.param_groups[0]["lr"] = np.asarray([0.003])      # a 1-element array hyperparameter
    opt.state[params[0]]["mine"] = np.arange(6).reshape(2, 3)    # the user's own state keys
    opt.state[params[3]]["note"] = {"a": (1, 2.5), 3: None}
    opt.state["other"] = [1, "x"]                        # state keys that are not parameters
    before = snapshot(params, opt)
    save(str(ckpt), opt)                                 # str and PathLike both work
    params2, opt2 = make("adam_amsgrad", np.float32, seed=7)
    load(ckpt, opt2)
    assert_same(before, snapshot(params2, opt2))
    assert isinstance(opt2.param_groups[1]["betas"], tuple)
    assert isinstance(opt2.param_groups[0]["lr"], np.ndarray)
    assert opt2.state["other"] == [1, "x"] and opt2.state[params2[3]]["note"][3] is None
    for p in params2:                                    # values were copied into the arena
        assert np.shares_memory(p.data, opt2.arena.data) or p.size == 0


def test_step_counts_are_exact_above_2_to_the_24(ckpt):
    # torch keeps step as float32 (state_dict() does too); numbaopt's file holds float64
    params, opt = make("adamw")
    train(params, opt, 1)
    big = 2 ** 24 + 1                                     # float32 rounds it to 2**24
    opt.state[params[0]]["step"] = np.float64(big)
    save(ckpt, opt)
    tensors, _ = members_of(ckpt)
    assert tensors["state/0/step"].dtype == np.float64 and tensors["state/0/step"] == big
    params2, opt2 = make("adamw", seed=1)
    load(ckpt, opt2)
    assert opt2.arena.step_counts()[0] == big
    assert opt2.state_dict()["state"][0]["step"].dtype == np.float32     # torch's, kept


@pytest.mark.parametrize("name", ["LBFGS", "Adafactor", "SparseAdam", "Muon", "python-step"])
def test_other_optimizers_round_trip_bit_identically(name, ckpt):
    from numbaopt.optim.adafactor import Adafactor
    from numbaopt.optim.lbfgs import LBFGS
    from numbaopt.optim.muon import Muon
    from numbaopt.optim.sparse_adam import SparseAdam

    class SignSGD(optim.Optimizer):                      # a Python step, state in opt.state
        def __init__(self, params):
            super().__init__(params, dict(lr=0.1))

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    st = self.state[p]
                    st["count"] = st.get("count", 0) + 1
                    st["last"] = np.sign(p.grad).copy()
                    p.data = p.data - group["lr"] * st["last"]

    build = {"LBFGS": lambda ps: LBFGS(ps),           # 'al': 100 slots, mostly None
             "Adafactor": lambda ps: Adafactor(ps, lr=0.01),
             "SparseAdam": lambda ps: SparseAdam(ps, lr=0.01),
             "Muon": lambda ps: Muon(ps, lr=0.02),
             "python-step": SignSGD}[name]
    shapes = ((4, 3), (3, 5))

    def setup(seed):
        rng = np.random.default_rng(seed)
        ps = [P(rng.standard_normal(s)) for s in shapes]
        return ps, build(ps)

    def run(ps, opt, first, steps):
        for k in range(first, first + steps):
            for j, p in enumerate(ps):
                g = np.cos(np.arange(p.size) + k + j).reshape(p.shape)
                p.grad = numbaopt.sparse.RowSparseGrad(np.arange(p.shape[0]), g) \
                    if name == "SparseAdam" else g
            if name == "LBFGS":
                def closure(k=k):
                    for p in ps:
                        p.grad = p.data * (k + 1.0)
                    return float(sum((p.data ** 2).sum() for p in ps))
                opt.step(closure)
            else:
                opt.step()

    ps, opt = setup(0)
    run(ps, opt, 0, 3)
    save(ckpt, opt)
    run(ps, opt, 3, 3)
    ps2, opt2 = setup(5)
    load(ckpt, opt2)
    run(ps2, opt2, 3, 3)
    assert_same(snapshot(ps, opt), snapshot(ps2, opt2))


def test_a_state_dict_hook_runs_and_the_file_still_round_trips(ckpt):
    params, opt = make("adamw")
    train(params, opt, 2)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append(o))
    save(ckpt, opt)                                      # through state_dict(), with hooks
    assert calls == [opt]
    params2, opt2 = make("adamw", seed=3)
    load(ckpt, opt2)
    np.testing.assert_array_equal(opt2.arena.data, opt.arena.data)
    assert opt2.arena.step_counts().dtype == np.float64


# -- the file ------------------------------------------------------------------------------
def test_the_file_is_plain_safetensors_at_the_exact_path(ckpt):
    params, opt = make("sgd_momentum")
    train(params, opt, 2)
    save(ckpt, opt)
    assert sorted(os.listdir(ckpt.parent)) == ["model.ckpt"]     # no suffix added, no leftovers
    tensors = load_file(ckpt)
    np.testing.assert_array_equal(tensors["params"], opt.arena.data)
    np.testing.assert_array_equal(tensors["state/0/momentum_buffer"],
                                  opt.state[params[0]]["momentum_buffer"])
    _, md = members_of(ckpt)
    assert sorted(md) == ["numbaopt.checkpoint", "numbaopt.checksum"]
    meta = json.loads(md["numbaopt.checkpoint"])
    assert meta["optimizer"] == "SGD" and meta["dtype"] == "float64"
    assert meta["shapes"] == [list(s) for s in SHAPES] and meta["group_sizes"] == [2, 3]
    assert meta["numbaopt_version"] == numbaopt.__version__ and meta["format_version"] == 2
    assert all("params" in g for g in meta["param_groups"])      # indices, not arrays
    assert json.loads(md["numbaopt.checksum"])["algorithm"] == "sha256"


def test_the_file_opens_with_safetensors_alone_in_a_fresh_process(ckpt):
    params, opt = make("adam_amsgrad", np.float32)
    train(params, opt, 2)
    save(ckpt, opt)
    code = ("import sys, json; from safetensors.numpy import load_file; "
            "from safetensors import safe_open; t = load_file(sys.argv[1]); "
            "m = json.loads(safe_open(sys.argv[1], 'np').metadata()['numbaopt.checkpoint']); "
            "assert 'numbaopt' not in sys.modules and 'numba' not in sys.modules; "
            "print(t['params'].dtype, t['params'].shape, t['state/0/exp_avg'].shape, "
            "m['optimizer'])")
    out = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["float32", f"({opt.arena.size},)", "(3,", "4)", "Adam"]


def test_extra_round_trips_and_must_be_json(ckpt):
    params, opt = make("adagrad")
    extra = {"epoch": 7, "best_loss": float("inf"), "history": (0.5, 0.25), "tag": None}
    save(ckpt, opt, extra=extra)
    assert load(ckpt, make("adagrad", seed=2)[1]) == extra
    with pytest.raises(TypeError, match="extra must be a dict"):
        save(ckpt, opt, extra=[1, 2])
    with pytest.raises(TypeError, match=r"cannot save extra\['fn'\]: it is a callable"):
        save(ckpt, opt, extra={"fn": print})
    assert load(ckpt, opt) == extra                       # the refused saves wrote nothing


def test_file_objects_as_well_as_paths(ckpt, tmp_path):
    params, opt = make("rmsprop_centered_momentum")
    train(params, opt, 3)
    buf = io.BytesIO()
    save(buf, opt, extra={"e": 1})
    assert buf.getvalue()[8:9] == b"{"                   # a safetensors file
    with open(tmp_path / "f.bin", "wb") as f:
        save(f, opt)
    train(params, opt, 2, first=3)
    for source in (io.BytesIO(buf.getvalue()), open(tmp_path / "f.bin", "rb")):
        params2, opt2 = make("rmsprop_centered_momentum", seed=6)
        with source:
            load(source, opt2)
        train(params2, opt2, 2, first=3)
        assert_same(snapshot(params, opt), snapshot(params2, opt2))
    assert load_file(tmp_path / "f.bin")["params"].shape == (opt.arena.size,)


# -- keys: HMAC against tampering -------------------------------------------------------
def test_a_key_signs_the_file_and_a_wrong_or_missing_key_is_refused(ckpt):
    params, opt = make("adamw")
    train(params, opt, 2)
    save(ckpt, opt, key=b"secret")
    params2, opt2 = make("adamw", seed=4)
    unchanged = _unchanged(params2, opt2)
    with pytest.raises(ValueError, match="signed with an HMAC.*pass the same key="):
        load(ckpt, opt2)
    with pytest.raises(ValueError, match="HMAC-SHA256 mismatch: a wrong key"):
        load(ckpt, opt2, key=b"other")
    # a forger without the key re-signs with SHA-256 after an edit: refused under the key
    rewrite(ckpt, arrays=lambda t: t["params"].__setitem__(0, 1e6))
    with pytest.raises(ValueError, match="carries no HMAC"):
        load(ckpt, opt2, key=b"secret")
    unchanged()
    save(ckpt, opt, key="secret")                         # str keys are UTF-8
    load(ckpt, opt2, key=b"secret")
    np.testing.assert_array_equal(opt2.arena.data, opt.arena.data)
    save(ckpt, opt)
    with pytest.raises(ValueError, match="carries no HMAC"):
        load(ckpt, opt2, key=b"secret")
    with pytest.raises(ValueError, match="key must not be empty"):
        save(ckpt, opt, key=b"")
    with pytest.raises(TypeError, match="key must be bytes or str"):
        load(ckpt, opt2, key=123)


# -- parameter files by name ------------------------------------------------------------
def _mlp(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    from numbaopt.nn import Linear, Module, ReLU

    class MLP(Module):
        def __init__(self):
            self.fc1 = Linear(3, 4, rng=rng, dtype=dtype)
            self.act = ReLU()
            self.fc2 = Linear(4, 2, rng=rng, dtype=dtype)
    return MLP()


def test_parameters_by_name_from_a_module_an_optimizer_or_a_list(tmp_path):
    model = _mlp(0)
    path = tmp_path / "model.safetensors"
    save_parameters(path, model)
    tensors = load_file(path)
    assert sorted(tensors) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    np.testing.assert_array_equal(tensors["fc1.weight"], model.fc1.weight.data)
    other = _mlp(1)
    assert load_parameters(path, other) == ([], [])
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    # an optimizer built from named parameters uses their names; otherwise "0", "1", ...
    opt = optim.Adam(model.named_parameters())
    save_parameters(tmp_path / "named.safetensors", opt)
    assert sorted(load_file(tmp_path / "named.safetensors")) == sorted(tensors)
    plain = optim.SGD(other.parameters(), lr=0.1)
    save_parameters(tmp_path / "plain.safetensors", plain)
    assert sorted(load_file(tmp_path / "plain.safetensors")) == ["0", "1", "2", "3"]
    load_parameters(tmp_path / "plain.safetensors", [P(np.zeros(p.shape, np.float32))
                                                     for p in other.parameters()])


def test_parameter_files_from_elsewhere_and_their_refusals(tmp_path):
    model = _mlp(0)
    path = tmp_path / "foreign.safetensors"
    # a file torch or JAX wrote: no numbaopt metadata, float64 values
    save_file({n: p.data.astype(np.float64) + 1 for n, p in model.named_parameters()}, path,
              metadata={"format": "pt"})
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    load_parameters(path, model)                          # cast into float32, as torch's copy_
    np.testing.assert_array_equal(model.fc2.bias.data, before["fc2.bias"] + 1)
    with pytest.raises(ValueError, match="carries no HMAC"):
        load_parameters(path, model, key=b"k")
    save_file({"fc1.weight": np.zeros((4, 3), np.float32), "extra": np.zeros(2)}, path)
    with pytest.raises(ValueError, match=rf"{path}.*missing \['fc1.bias', 'fc2.weight', "
                                         r"'fc2.bias'\], unexpected \['extra'\]"):
        load_parameters(path, model)
    assert load_parameters(path, model, strict=False) == (["fc1.bias", "fc2.weight",
                                                           "fc2.bias"], ["extra"])
    assert not model.fc1.weight.data.any()
    save_file({"fc1.weight": np.zeros((3, 4), np.float32)}, path)
    with pytest.raises(ValueError, match=r"member 'fc1.weight' has shape \(3, 4\), the "
                                         r"parameter \(4, 3\)"):
        load_parameters(path, model, strict=False)
    save_file({"fc1.weight": np.zeros((4, 3), np.int64)}, path)
    load_parameters(path, model, strict=False)            # int64 -> float32 is a safe cast
    header = json.dumps({"0": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(6))
    for source in (path, io.BytesIO(path.read_bytes())):
        with pytest.raises(ValueError, match="member '0' has dtype BF16"):
            load_parameters(source, [P(np.ones(3))])
    # with a key
    save_parameters(path, model, key=b"k")
    with pytest.raises(ValueError, match="signed with an HMAC"):
        load_parameters(path, model)
    load_parameters(path, model, key=b"k")


def test_parameter_files_open_in_torch():
    torch = pytest.importorskip("torch")
    import safetensors.torch
    model = _mlp(0)
    blob = io.BytesIO()
    save_parameters(blob, model)
    tensors = safetensors.torch.load(blob.getvalue())
    assert torch.equal(tensors["fc1.weight"], torch.from_numpy(model.fc1.weight.data))
    # and back: a torch state_dict saved by safetensors.torch loads by name
    blob = io.BytesIO(safetensors.torch.save({k: v * 2 for k, v in tensors.items()}))
    load_parameters(blob, model)
    np.testing.assert_array_equal(model.fc1.weight.data, tensors["fc1.weight"].numpy() * 2)


# -- the collective writer (numbaopt.distributed plugs in here) ---------------------------
class _OneRank:
    """``_checkpoint_collective()``'s contract, for one process: rank 0 writes and reads."""

    def __init__(self, optimizer, log):
        self.optimizer, self.writer, self.log = optimizer, True, log

    def snapshot(self):
        from numbaopt._checkpoint_snapshot import snapshot as take
        self.log.append("snapshot")
        return take(self.optimizer)

    def agree(self, error):
        self.log.append(("agree", type(error).__name__ if error else None))
        if error is not None:
            raise error

    def load(self, loaded):
        self.log.append("load")
        from numbaopt.checkpoint import _commit
        _commit("ckpt", self.optimizer, *loaded, None, None)

    def bcast(self, obj):
        return obj


class _Wrapper:
    def __init__(self, optimizer):
        self.inner, self.log = optimizer, []

    def _checkpoint_collective(self):
        return _OneRank(self.inner, self.log)


def test_an_optimizer_with_a_collective_writer_saves_and_loads_through_it(ckpt):
    params, opt = make("adamw")
    train(params, opt, 2)
    w = _Wrapper(opt)
    save(ckpt, w, extra={"e": 2})
    assert w.log == ["snapshot", ("agree", None)]
    params2, opt2 = make("adamw", seed=3)
    w2 = _Wrapper(opt2)
    assert load(ckpt, w2) == {"e": 2}
    assert w2.log == [("agree", None), "load"]
    assert_same(snapshot(params, opt), snapshot(params2, opt2))
    _, opt3 = make("sgd_momentum")
    w3 = _Wrapper(opt3)
    with pytest.raises(ValueError, match="class AdamW, not SGD"):
        load(ckpt, w3)
    assert w3.log == [("agree", "ValueError")]           # every rank would raise it


# -- schedulers --------------------------------------------------------------------------------
def _lr_scheduler():
    from numbaopt.optim import lr_scheduler
    return lr_scheduler


@pytest.mark.parametrize("make_sched", [
    lambda L, o: L.StepLR(o, step_size=2, gamma=0.5),
    lambda L, o: L.MultiStepLR(o, milestones=[2, 5], gamma=0.3),         # a Counter, int keys
    lambda L, o: L.OneCycleLR(o, max_lr=0.1, total_steps=20),            # nested dicts, strings
    lambda L, o: L.SequentialLR(o, [L.ConstantLR(o, factor=0.5, total_iters=2),
                                    L.ExponentialLR(o, gamma=0.9)], milestones=[3]),
], ids=["StepLR", "MultiStepLR", "OneCycleLR", "SequentialLR"])
def test_scheduler_round_trip_is_bit_identical(make_sched, ckpt):
    L = _lr_scheduler()
    params, opt = make("sgd_momentum")
    sched = make_sched(L, opt)
    train(params, opt, 4, sched=sched)
    save(ckpt, opt, sched)
    train(params, opt, 5, first=4, sched=sched)
    params2, opt2 = make("sgd_momentum", seed=3)
    sched2 = make_sched(L, opt2)
    load(ckpt, opt2, sched2)
    train(params2, opt2, 5, first=4, sched=sched2)
    assert_same(snapshot(params, opt, sched), snapshot(params2, opt2, sched2))
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_reduce_lr_on_plateau_infinities_round_trip(ckpt):
    L = _lr_scheduler()
    params, opt = make("adamw")
    sched = L.ReduceLROnPlateau(opt, patience=1)          # best = inf, mode_worse = inf
    state = sched.state_dict()
    save(ckpt, opt, sched)
    params2, opt2 = make("adamw", seed=1)
    sched2 = L.ReduceLROnPlateau(opt2, patience=1)
    sched2.best = 0.0
    load(ckpt, opt2, sched2)
    assert sched2.state_dict() == state and sched2.best == np.inf


class _FakeScheduler:
    def __init__(self, optimizer, state):
        self.optimizer, self.state = optimizer, state

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


@pytest.mark.parametrize("bad", [lambda e: e, print, np.zeros(100), object(), {1, 2}, b"x"],
                         ids=["lambda", "builtin", "big ndarray", "object", "set", "bytes"])
def test_unsaveable_scheduler_values_are_refused_and_nothing_is_written(bad, ckpt):
    params, opt = make("adamw")
    save(ckpt, opt)
    before = ckpt.read_bytes()
    sched = _FakeScheduler(opt, {"ok": [1, 2.5, None, "s"], "nested": {"fn": [bad]}})
    with pytest.raises(TypeError, match=r"cannot save scheduler.state_dict\(\)\['nested'\]"
                                        r"\['fn'\]\[0\]"):
        save(ckpt, opt, sched)
    assert ckpt.read_bytes() == before
    assert sorted(os.listdir(ckpt.parent)) == ["model.ckpt"]


def test_scheduler_mismatches_are_refused(ckpt):
    L = _lr_scheduler()
    params, opt = make("sgd_momentum")
    save(ckpt, opt)                                       # no scheduler in the file
    with pytest.raises(ValueError, match="holds no scheduler state"):
        load(ckpt, opt, L.StepLR(opt, 2))
    sched = L.StepLR(opt, 2)
    save(ckpt, opt, sched)
    with pytest.raises(ValueError, match="state of a scheduler of class StepLR, not ExponentialLR"):
        load(ckpt, opt, L.ExponentialLR(opt, 0.9))
    load(ckpt, opt)                                       # the scheduler part may be ignored
    _, other = make("sgd_momentum", seed=2)
    with pytest.raises(ValueError, match="another optimizer"):
        save(ckpt, other, sched)


# -- refusals: the optimizer does not match -------------------------------------------------
def _unchanged(params, opt):
    """A check that params and optimizer still equal their state at the call."""
    before = snapshot(params, opt)
    return lambda: assert_same(before, snapshot(params, opt))


@pytest.mark.parametrize("other, match", [
    (lambda: make("adam_amsgrad"), "state of an optimizer of class SGD, not Adam"),
    (lambda: make("sgd_momentum", np.float32), "parameters are float64, the optimizer's are "
                                                "float32"),
    (lambda: make("sgd_momentum", shapes=((3, 4), (), (0,), (5,), (3, 2))),
     r"parameter 4 has shape \(2, 3\) in the checkpoint and \(3, 2\) in the optimizer"),
    (lambda: make("sgd_momentum", shapes=SHAPES[:4]), "groups of sizes"),
], ids=["class", "dtype", "shape", "group-size"])
def test_mismatched_optimizer_is_refused_before_any_change(other, match, ckpt):
    params, opt = make("sgd_momentum")
    train(params, opt, 2)
    save(ckpt, opt)
    params2, opt2 = other()
    train(params2, opt2, 1)
    unchanged = _unchanged(params2, opt2)
    with pytest.raises(ValueError, match=match) as info:
        load(ckpt, opt2)
    assert str(ckpt) in str(info.value)
    unchanged()


def test_refused_state_dict_is_reported_with_the_path_and_changes_nothing(ckpt):
    # same class, shapes and groups, but group options that make the saved state not fit
    params, opt = make("rmsprop_centered_momentum")
    opt.param_groups[0]["momentum"] = 0.0
    train(params, opt, 2)
    save(ckpt, opt)
    # a hand-edited file, with a recomputed checksum, whose group 1 asks for an invalid lr
    rewrite(ckpt, meta=lambda m: m["param_groups"][1].update(lr=-1.0))
    params2, opt2 = make("rmsprop_centered_momentum", seed=5)
    unchanged = _unchanged(params2, opt2)
    with pytest.raises(ValueError, match=f"{ckpt}.*Invalid learning rate"):
        load(ckpt, opt2)
    unchanged()


def test_stale_optimizer_is_refused(ckpt):
    params, opt = make("adamw")
    optim.SGD(params[:1])                     # the parameter moved to another optimizer
    with pytest.raises(RuntimeError, match="can no longer step"):
        save(ckpt, opt)
    with pytest.raises(RuntimeError, match="can no longer step"):
        load(ckpt, opt)


def test_unknown_arenas_are_refused_clearly(ckpt):
    params, opt = make("adamw")
    save(ckpt, opt)
    opt.arena.data = object()          # neither a host array nor a device array
    for call in (save, load):
        with pytest.raises(NotImplementedError, match="device='cpu' or device='cuda'"):
            call(ckpt, opt)
