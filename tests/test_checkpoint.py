"""numbaopt.checkpoint: bit-identical resumption, a pickle-free format, refusals, atomic writes."""

import io
import json
import os
import pathlib
import zipfile

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from numbaopt.checkpoint import load, save

P = numbaopt.Parameter
SHAPES = ((3, 4), (), (0,), (5,), (2, 3))
CASES = {
    "sgd_momentum": (optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "adam_amsgrad": (optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    "adamw": (optim.AdamW, dict(lr=0.01, betas=(0.8, 0.99))),
    "rmsprop_centered_momentum": (optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.9)),
    "adagrad": (optim.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
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
    return ([p.data.copy() for p in params], opt.state_dict(),
            None if sched is None else sched.state_dict())


def assert_same(a, b):
    """Bit-identical snapshots: parameter values, state arrays, param_groups, scheduler."""
    (pa, sa, ca), (pb, sb, cb) = a, b
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype
    assert sorted(sa["state"]) == sorted(sb["state"])
    for i in sa["state"]:
        assert sorted(sa["state"][i]) == sorted(sb["state"][i])
        for k in sa["state"][i]:
            x, y = sa["state"][i][k], sb["state"][i][k]
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
    assert sa["param_groups"] == sb["param_groups"]
    assert ca == cb


@pytest.fixture
def ckpt(tmp_path):
    """The checkpoint's path, alone in its directory (so leftover temp files show)."""
    (tmp_path / "run").mkdir()
    return tmp_path / "run" / "model.ckpt"


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
    load(ckpt, opt2)
    train(params2, opt2, 4, first=5)
    assert_same(snapshot(params, opt), snapshot(params2, opt2))


def test_round_trip_restores_everything_exactly(ckpt):
    params, opt = make("adam_amsgrad", np.float32)
    train(params, opt, 3)
    opt.param_groups[1]["betas"] = (0.5, 0.75)           # a tuple must come back a tuple
    before = snapshot(params, opt)
    save(str(ckpt), opt)                                 # str and PathLike both work
    params2, opt2 = make("adam_amsgrad", np.float32, seed=7)
    load(ckpt, opt2)
    assert_same(before, snapshot(params2, opt2))
    assert isinstance(opt2.param_groups[1]["betas"], tuple)
    for p in params2:                                    # values were copied into the arena
        assert np.shares_memory(p.data, opt2.arena.data) or p.size == 0


def test_file_is_a_plain_npz_with_json_metadata_at_the_exact_path(ckpt):
    params, opt = make("sgd_momentum")
    train(params, opt, 2)
    save(ckpt, opt)
    assert sorted(os.listdir(ckpt.parent)) == ["model.ckpt"]     # no suffix added, no leftovers
    with np.load(ckpt, allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        np.testing.assert_array_equal(npz["params"], opt.arena.data)
        assert npz["sha256"].shape == (32,)
    assert meta["optimizer"] == "SGD" and meta["dtype"] == "float64"
    assert meta["shapes"] == [list(s) for s in SHAPES] and meta["group_sizes"] == [2, 3]
    assert meta["numbaopt_version"] == numbaopt.__version__
    assert all("params" in g for g in meta["param_groups"])      # indices, not arrays


# -- schedulers --------------------------------------------------------------------------------
def _lr_scheduler():
    try:
        from numbaopt.optim import lr_scheduler
    except ImportError:
        pytest.skip("numbaopt.optim.lr_scheduler does not exist yet")
    if not hasattr(lr_scheduler, "StepLR"):
        pytest.skip("numbaopt.optim.lr_scheduler.StepLR does not exist yet")
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
    # a hand-edited file, with a recomputed digest, whose group 1 asks for an invalid lr
    _rewrite(ckpt, meta=lambda m: m["param_groups"][1].update(lr=-1.0))
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


# -- refusals: the file is broken or hostile -------------------------------------------------
def _rewrite(path, meta=None, arrays=None, digest=True):
    """Re-save ``path`` with edits; with ``digest`` the SHA-256 is recomputed (a careful
    tamperer), without it the old digest is kept."""
    from numbaopt.checkpoint import _digest
    with np.load(path, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    m = json.loads(members.pop("meta").tobytes())
    if meta is not None:
        meta(m)
    if arrays is not None:
        arrays(members)
    old = members.pop("sha256")
    meta_bytes = json.dumps(m).encode()
    members["meta"] = np.frombuffer(meta_bytes, np.uint8)
    payload = {k: v for k, v in members.items() if k != "meta"}
    members["sha256"] = np.frombuffer(_digest(meta_bytes, payload), np.uint8) if digest else old
    with open(path, "wb") as f:
        np.savez(f, **members)


def _saved(ckpt, case="adam_amsgrad"):
    params, opt = make(case)
    train(params, opt, 3)
    save(ckpt, opt)
    params2, opt2 = make(case, seed=11)
    train(params2, opt2, 1)
    return params2, opt2


@pytest.mark.parametrize("keep", [0, 1, 3, 4, 30, 100, 0.25, 0.5, 0.9, 0.999, -22, -1])
def test_truncated_file_is_refused(keep, ckpt):
    params2, opt2 = _saved(ckpt)
    blob = ckpt.read_bytes()
    n = int(keep * len(blob)) if isinstance(keep, float) else keep % len(blob)
    ckpt.write_bytes(blob[:n])
    unchanged = _unchanged(params2, opt2)
    with pytest.raises(ValueError, match=f"{ckpt}: not a valid numbaopt checkpoint"):
        load(ckpt, opt2)
    unchanged()


def _member_data_ranges(blob):
    """Byte ranges of the stored members' contents (the .npy files) inside the zip."""
    ranges = []
    with zipfile.ZipFile(io.BytesIO(bytes(blob))) as z:
        for info in z.infolist():
            local = blob[info.header_offset:info.header_offset + 30]
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            ranges.append(range(start, start + info.compress_size))
    return ranges


def test_flipped_bytes_are_refused_or_harmless(ckpt):
    # a flip inside any stored array (meta, digest, values) is refused with a ValueError;
    # a flip elsewhere either is refused or (a byte the zip format ignores: timestamps,
    # version fields) restores exactly what was saved. Never anything in between.
    shapes = ((2, 3), (), (0,), (2,), (1, 2))
    params, opt = make("adam_amsgrad", shapes=shapes)
    train(params, opt, 3)
    save(ckpt, opt)
    saved = snapshot(params, opt)
    blob = bytearray(ckpt.read_bytes())
    inside = sorted({i for r in _member_data_ranges(blob) for i in r})
    outside = sorted(set(range(len(blob))) - set(inside))
    rng = np.random.default_rng(0)
    positions = [(int(i), True) for i in rng.choice(inside, 250, replace=False)] + \
                [(int(i), False) for i in rng.choice(outside, 250, replace=False)]
    params2, opt2 = make("adam_amsgrad", seed=4, shapes=shapes)
    train(params2, opt2, 1)
    before = snapshot(params2, opt2)
    for i, must_refuse in positions:
        bit = 1 << int(rng.integers(8))
        blob[i] ^= bit
        ckpt.write_bytes(blob)
        blob[i] ^= bit
        try:
            load(ckpt, opt2)
        except ValueError as exc:
            assert str(ckpt) in str(exc)
            assert_same(before, snapshot(params2, opt2))
        else:
            assert not must_refuse, f"a flipped bit in stored data at byte {i} was accepted"
            assert_same(saved, snapshot(params2, opt2))
            for p, v in zip(params2, before[0]):           # back to the pre-load state
                p.data = v
            opt2.load_state_dict(before[1])


def test_tampered_payload_with_valid_zip_is_refused_by_the_checksum(ckpt):
    params2, opt2 = _saved(ckpt)
    _rewrite(ckpt, arrays=lambda m: m["params"].__setitem__(0, 123.0), digest=False)
    with np.load(ckpt, allow_pickle=False) as npz:            # the zip itself is fine
        assert npz["params"][0] == 123.0
    unchanged = _unchanged(params2, opt2)
    with pytest.raises(ValueError, match="SHA-256 checksum mismatch"):
        load(ckpt, opt2)
    _rewrite(ckpt, meta=lambda m: m["param_groups"][0].update(lr=5.0), digest=False)
    with pytest.raises(ValueError, match="SHA-256 checksum mismatch"):
        load(ckpt, opt2)
    unchanged()


def test_extra_or_missing_entries_are_refused(ckpt):
    params2, opt2 = _saved(ckpt)
    good = ckpt.read_bytes()
    _rewrite(ckpt, arrays=lambda m: m.__setitem__("extra", np.zeros(3)))
    with pytest.raises(ValueError, match=r"unexpected entries \['extra'\]"):
        load(ckpt, opt2)
    ckpt.write_bytes(good)
    _rewrite(ckpt, arrays=lambda m: m.pop("state/0/exp_avg"))
    with pytest.raises(ValueError, match="lacks the array 'state/0/exp_avg'"):
        load(ckpt, opt2)
    ckpt.write_bytes(good)
    _rewrite(ckpt, arrays=lambda m: m.__setitem__("state/0/exp_avg", np.zeros(12)))
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape \(12,\)"):
        load(ckpt, opt2)


class _Exploit:
    """Unpickling this would create a file (what a malicious pickle could do)."""

    marker = None

    def __reduce__(self):
        return (pathlib.Path.touch, (_Exploit.marker,))


@pytest.mark.parametrize("where", ["extra", "params", "state", "only"])
def test_pickled_object_array_is_refused_never_executed(where, ckpt, tmp_path):
    params2, opt2 = _saved(ckpt)
    _Exploit.marker = tmp_path / "pwned"
    evil = np.array([_Exploit()], dtype=object)
    with np.load(ckpt, allow_pickle=False) as npz:
        members = {k: npz[k] for k in npz.files}
    if where == "extra":
        members["evil"] = evil
    elif where == "params":
        members["params"] = evil
    elif where == "state":
        members["state/0/exp_avg"] = evil
    else:
        members = {"meta": evil}
    with open(ckpt, "wb") as f:
        np.savez(f, **members)                             # np.savez pickles object arrays
    assert b"pathlib" in ckpt.read_bytes()                 # the payload is in there
    unchanged = _unchanged(params2, opt2)
    with pytest.raises(ValueError, match="pickled object array, which is never loaded"):
        load(ckpt, opt2)
    assert not _Exploit.marker.exists()
    unchanged()


def test_a_raw_pickle_or_other_file_is_refused_never_executed(ckpt, tmp_path):
    import pickle
    params2, opt2 = _saved(ckpt)
    _Exploit.marker = tmp_path / "pwned"
    for blob in (pickle.dumps(_Exploit()), b"", b"\x93NUMPY garbage", b"PK\x03\x04junk"):
        ckpt.write_bytes(blob)
        with pytest.raises(ValueError, match="not a valid numbaopt checkpoint"):
            load(ckpt, opt2)
    assert not _Exploit.marker.exists()


def test_a_member_that_is_not_an_npy_array_is_refused(ckpt):
    params2, opt2 = _saved(ckpt)
    with zipfile.ZipFile(ckpt, "a") as z:          # a valid zip entry, but raw bytes
        z.writestr("notes.txt", b"hello")
    with pytest.raises(ValueError, match="entry 'notes.txt' is not a NumPy array"):
        load(ckpt, opt2)


def test_newer_format_version_is_refused(ckpt):
    params2, opt2 = _saved(ckpt)
    _rewrite(ckpt, meta=lambda m: m.update(format_version=2))
    with pytest.raises(ValueError, match="format version 2"):
        load(ckpt, opt2)


def test_malformed_metadata_with_a_valid_checksum_is_a_value_error(ckpt):
    params2, opt2 = _saved(ckpt)
    good = ckpt.read_bytes()
    for edit in (lambda m: m.update(state=5), lambda m: m.update(state=[["x", 1]]),
                 lambda m: m.update(param_groups=[1, 2]), lambda m: m.update(state=[[99, []]])):
        ckpt.write_bytes(good)
        _rewrite(ckpt, meta=edit)
        unchanged = _unchanged(params2, opt2)
        with pytest.raises(ValueError, match=str(ckpt)):
            load(ckpt, opt2)
        unchanged()


# -- atomic writes -------------------------------------------------------------------------
@pytest.mark.parametrize("fail_at", ["savez", "fsync", "replace"])
def test_crash_while_writing_keeps_the_previous_checkpoint(fail_at, ckpt, monkeypatch):
    params, opt = make("adagrad")
    train(params, opt, 2)
    save(ckpt, opt)
    previous = ckpt.read_bytes()
    train(params, opt, 2, first=2)

    def crash(*args, **kwargs):
        raise OSError(f"simulated crash in {fail_at}")
    target = {"savez": (np, "savez"), "fsync": (os, "fsync"), "replace": (os, "replace")}
    monkeypatch.setattr(*target[fail_at], crash)
    with pytest.raises(OSError, match="simulated crash"):
        save(ckpt, opt)
    monkeypatch.undo()
    assert ckpt.read_bytes() == previous
    assert sorted(os.listdir(ckpt.parent)) == ["model.ckpt"]          # no temp file left
    params2, opt2 = make("adagrad", seed=8)
    load(ckpt, opt2)                                                  # and it still loads


def test_a_half_written_temp_file_never_replaces_the_target(ckpt, monkeypatch):
    # the process dies inside np.savez after writing part of the archive
    params, opt = make("adamw")
    save(ckpt, opt)
    previous = ckpt.read_bytes()
    real_savez = np.savez

    def partial_savez(f, **arrays):
        buf = io.BytesIO()
        real_savez(buf, **arrays)
        f.write(buf.getvalue()[:100])
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", partial_savez)
    with pytest.raises(KeyboardInterrupt):
        save(ckpt, opt)
    assert ckpt.read_bytes() == previous
    assert sorted(os.listdir(ckpt.parent)) == ["model.ckpt"]


def test_save_creates_a_new_file_and_overwrites_an_old_one(ckpt):
    params, opt = make("sgd_momentum")
    save(ckpt, opt)
    first = ckpt.read_bytes()
    train(params, opt, 1)
    save(ckpt, opt)
    assert ckpt.read_bytes() != first
    assert zipfile.is_zipfile(ckpt)
    if os.name != "nt":                   # created like open() would: 0o666 less the umask
        umask = os.umask(0)
        os.umask(umask)
        assert ckpt.stat().st_mode & 0o777 == 0o666 & ~umask


def test_device_arenas_are_refused_clearly(ckpt):
    params, opt = make("adamw")
    save(ckpt, opt)
    opt.arena.data = object()          # stands in for a device="cuda" arena's device array
    for call in (save, load):
        with pytest.raises(NotImplementedError, match="device='cpu'"):
            call(ckpt, opt)
