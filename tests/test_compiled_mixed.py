"""An optimizer over several dtypes stepped from @njit code (numbaopt.compiled): a handle of
one lane handle per dtype, against the same steps taken by opt.step() from Python (bit for
bit), with lrs edited on both sides, skip_nonfinite across the lanes, stale handles."""

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

import numbaopt
from numbaopt import compiled, optim
from numbaopt.optim import lr_scheduler
from tolerance import assert_same_steps

P = numbaopt.Parameter
STEPS = 12


def _values(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4),
            rng.standard_normal(2).astype(np.float32),
            rng.standard_normal(3) + 1j * rng.standard_normal(3), rng.standard_normal(5)]


def _make(name="Adam", **kwargs):
    params = [P(v.copy()) for v in _values()]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]
    return params, getattr(optim, name)(groups, lr=0.05, **kwargs)


def _grads(k):
    out = []
    for j, v in enumerate(_values()):
        g = np.cos(np.arange(v.size) * (k + 1) + j).reshape(v.shape)
        out.append((g + 1j * np.sin(np.arange(v.size) - k).reshape(v.shape)
                    if v.dtype.kind == "c" else g).astype(v.dtype))
    return out


def _arena_grads(opt):
    """Each step's gradients as the two arenas hold them (float32, float64)."""
    out = {dtype: [] for dtype in opt.arenas}
    for k in range(STEPS):
        opt.set_grads(_grads(k))
        for dtype, arena in opt.arenas.items():
            out[dtype].append(arena.grad.copy())
    opt.zero_grad()
    return [np.array(v) for v in out.values()]


def _has_grad(k, i):
    return (k + i) % 3 != 0           # some parameters have no gradient on some steps


@njit(cache=True)
def _train(h, g0, g1, first, n, lr_every):
    for k in range(first, first + n):
        for i in range(compiled.num_params(h)):
            j = h.param_index[i]
            if h.param_lane[i] == 0:
                lane = h.lanes[0]
                compiled.grad(lane, j)[:] = g0[k, lane.offsets[j]:lane.offsets[j + 1]]
            else:
                lane = h.lanes[1]
                compiled.grad(lane, j)[:] = g1[k, lane.offsets[j]:lane.offsets[j + 1]]
            if (k + i) % 3 != 0:
                compiled.mark_grad(h, i)
        compiled.step(h)
        compiled.zero_grad(h)
        if lr_every > 0 and k % lr_every == 0:
            compiled.set_lr(h, 1, compiled.get_lr(h, 1) * 0.5)


def _python(opt, params, first, n, lr_every):
    for k in range(first, first + n):
        grads = _grads(k)
        for i, p in enumerate(params):
            if _has_grad(k, i):
                p.grad = grads[i]
        opt.step()
        opt.zero_grad()
        if lr_every > 0 and k % lr_every == 0:
            opt.param_groups[1]["lr"] = opt.param_groups[1]["lr"] * 0.5


def test_a_compiled_loop_over_two_dtypes_is_bit_for_bit_the_python_loop():
    # (Adam with amsgrad: the lanes' own kernels are those test_compiled.py checks one by one)
    p1, o1 = _make("Adam", amsgrad=True)
    p2, o2 = _make("Adam", amsgrad=True)
    g0, g1 = _arena_grads(o1)
    s1 = lr_scheduler.StepLR(o1, step_size=1, gamma=0.9)
    s2 = lr_scheduler.StepLR(o2, step_size=1, gamma=0.9)
    handle = o1.compiled()
    assert [lane.data.dtype for lane in handle.lanes] == list(o1.arenas)
    for epoch in range(3):
        _train(handle, g0, g1, 4 * epoch, 4, 3)
        _python(o2, p2, 4 * epoch, 4, 3)
        s1.step()                          # reaches every lane of the compiled step
        s2.step()
        assert o1.param_groups[1]["lr"] == o2.param_groups[1]["lr"]
    assert_same_steps(o1, p1, o2, p2)
    grads = _grads(0)                      # and Python steps continue exactly
    o1.set_grads(grads)
    o2.set_grads(grads)
    o1.step()
    o2.step()
    assert_same_steps(o1, p1, o2, p2)


def test_set_lr_from_compiled_code_reaches_every_lane_and_the_groups():
    params, opt = _make()
    handle = opt.compiled()

    @njit
    def set_it(h, lr):
        compiled.set_lr(h, 1, lr)
        return compiled.get_lr(h, 1)

    assert set_it(handle, 0.125) == 0.125
    assert opt.param_groups[1]["lr"] == 0.125
    assert all(lane.param_groups[-1]["lr"] == 0.125 for lane in opt._lanes)
    assert opt.state_dict()["param_groups"][1]["lr"] == 0.125
    set_it(handle, 0.25)
    opt.param_groups[0]["lr"] = 0.5        # a Python edit after it keeps the compiled lr
    opt.set_grads(_grads(0))
    opt.step()
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    assert compiled.get_lr(handle, 1) == 0.25 and compiled.get_lr(handle, 0) == 0.5
    with pytest.raises(ValueError, match="Invalid learning rate"):
        set_it(handle, -1.0)


def test_skip_nonfinite_skips_every_lane():
    params, opt = _make(skip_nonfinite=True)
    handle = opt.compiled()
    before = {dtype: arena.data.copy() for dtype, arena in opt.arenas.items()}

    @njit
    def nan_step(h):
        for i in range(compiled.num_params(h)):
            compiled.mark_grad(h, i)
        compiled.grad(h.lanes[1], 1)[0] = np.nan         # one float64 value
        return compiled.step(h)

    assert nan_step(handle) is False
    for dtype, arena in opt.arenas.items():
        np.testing.assert_array_equal(arena.data, before[dtype])
    assert opt.found_nonfinite and opt.skipped_steps == 1
    assert compiled.skipped_steps(handle) == 1
    opt.zero_grad()
    opt.set_grads(_grads(0))
    assert compiled.step(handle) is True                 # (called from Python)
    assert not opt.found_nonfinite


def test_a_stale_handle_is_refused_and_a_new_one_works():
    params, opt = _make()
    handle = opt.compiled()
    g0, g1 = _arena_grads(opt)
    opt.add_param_group({"params": [P(np.ones(3)), P(np.ones(2, np.float32))]})
    with pytest.raises(RuntimeError, match="get a new one with opt.compiled"):
        _train(handle, g0, g1, 0, 1, 0)
    fresh = opt.compiled()
    assert compiled.num_params(fresh) == 7
    opt.set_grads(_grads(0) + [np.ones(3), np.ones(2, np.float32)])
    assert compiled.step(fresh) is True


def test_values_and_gradients_are_taken_from_the_lanes():
    params, opt = _make()
    handle = opt.compiled()

    @njit
    def gradient(h):
        return compiled.grad(h, 0)

    with pytest.raises(TypingError, match=r"compiled.grad\(h.lanes\[k\], j\)"):
        gradient(handle)
    with pytest.raises(TypeError, match=r"compiled.params\(h.lanes\[k\], j\)"):
        compiled.params(handle, 0)
    # the maps: parameter i is h.param_index[i] of lane h.param_lane[i]
    lanes = list(opt.arenas)
    for i, p in enumerate(params):
        assert lanes[handle.param_lane[i]] == p.data.real.dtype
        assert opt.arenas[p.data.real.dtype].params[handle.param_index[i]] is p
    np.testing.assert_array_equal(handle.group_map, [[0, 0], [1, 1]])


def test_step_hooks_run_once_a_step_not_once_a_lane():
    from numbaopt.optim import register_optimizer_step_post_hook
    params, opt = _make()
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o is opt)))
    glob = register_optimizer_step_post_hook(lambda o, args, kwargs: calls.append(("post",
                                                                                 o is opt)))
    try:
        handle = opt.compiled()

        @njit
        def two_steps(h):
            for _ in range(2):
                for i in range(compiled.num_params(h)):
                    compiled.mark_grad(h, i)
                compiled.step(h)

        two_steps(handle)
        assert calls == [("pre", True), ("post", True)] * 2
        assert all(lane._flags[compiled.HOOKS] == 0 for lane in opt._lanes)
    finally:
        glob.remove()


def test_a_compiled_set_lr_keeps_an_unsynced_python_edit_of_another_group():
    params, opt = _make("SGD")
    handle = opt.compiled()
    opt.param_groups[0]["lr"] = 0.5               # not synced yet

    @njit
    def set_it(h):
        compiled.set_lr(h, 1, 0.25)

    set_it(handle)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    before = [p.data.copy() for p in params]
    opt.set_grads([np.ones(p.shape, p.dtype) for p in params])
    compiled.step(handle)
    for k, (p, b) in enumerate(zip(params, before)):
        np.testing.assert_array_equal(p.data, b - (0.5 if k < 2 else 0.25))
