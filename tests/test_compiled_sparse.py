"""SparseAdam stepped from @njit code (numbaopt.compiled): row-sparse gradients staged with
compiled.sparse_grad, against the same steps taken with p.grad = RowSparseGrad(...) and
opt.step() from Python, bit for bit; the stage's capacity, its checks, stale handles."""

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

import numbaopt
from numbaopt import compiled, optim
from numbaopt.optim import lr_scheduler
from numbaopt.sparse import RowSparseGrad
from tolerance import assert_same_steps

SHAPES = ((40, 6), (15, 2, 3), (9,), (12, 4))
STEPS = 12


def _plan(dtype, seed=3):
    """Each step's gradients: (param, rows, values) triples, some with repeated rows, some
    empty, some parameters left without a gradient; and whether zero_grad keeps empty ones."""
    rng = np.random.default_rng(seed)
    plan = []
    for k in range(STEPS):
        step = []
        for i, shape in enumerate(SHAPES):
            if (k + i) % 4 == 3:
                continue                                   # no gradient this step
            n = 0 if (k + i) % 5 == 4 else int(rng.integers(1, 7))
            rows = rng.integers(0, shape[0], n)
            if n > 2:
                rows[-1] = rows[0]                         # a repeated row: summed
            step.append((i, rows, rng.standard_normal((n,) + shape[1:]).astype(dtype)))
        plan.append(step)
    return plan


def _flatten(plan):
    """The plan as arrays compiled code can index: per step and parameter, rows and values."""
    nnz = max(len(r) for step in plan for _, r, _ in step)
    width = max(int(np.prod(s[1:])) for s in SHAPES)
    rows = np.zeros((STEPS, len(SHAPES), nnz), np.int64)
    values = np.zeros((STEPS, len(SHAPES), nnz * width), plan[0][0][2].dtype)
    counts = np.full((STEPS, len(SHAPES)), -1, np.int64)
    for k, step in enumerate(plan):
        for i, r, v in step:
            counts[k, i] = len(r)
            rows[k, i, :len(r)] = r
            values[k, i, :v.size] = v.reshape(-1)
    return rows, values, counts


def _make(dtype, **kwargs):
    rng = np.random.default_rng(8)
    params = [numbaopt.Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]
    return params, optim.SparseAdam(groups, lr=0.01, **kwargs)


@njit(cache=True)
def _train(h, rows, values, counts, first, n, width):
    for k in range(first, first + n):
        for i in range(counts.shape[1]):
            c = counts[k, i]
            if c >= 0:
                compiled.sparse_grad(h, i, rows[k, i, :c], values[k, i, :c * width[i]])
        compiled.step(h)
        compiled.zero_grad(h, k % 3 != 1)      # every third step keeps empty gradients
        if k % 4 == 0:
            compiled.set_lr(h, 1, compiled.get_lr(h, 1) * 0.5)


def _python(opt, params, plan, first, n):
    for k in range(first, first + n):
        for i, r, v in plan[k]:
            params[i].grad = RowSparseGrad(r, v)
        opt.step()
        opt.zero_grad(k % 3 != 1)
        if k % 4 == 0:
            opt.param_groups[1]["lr"] = opt.param_groups[1]["lr"] * 0.5


WIDTH = np.array([int(np.prod(s[1:])) for s in SHAPES], np.int64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [False, True], ids=["serial", "threaded"])
def test_a_compiled_loop_is_bit_for_bit_the_python_loop(dtype, threads):
    plan = _plan(dtype)
    rows, values, counts = _flatten(plan)
    p1, o1 = _make(dtype)
    p2, o2 = _make(dtype)
    if threads:                       # the threaded kernel, chosen per step as opt.step() does
        o1.parallel_threshold = o2.parallel_threshold = 1
    s1 = lr_scheduler.StepLR(o1, step_size=1, gamma=0.8)
    s2 = lr_scheduler.StepLR(o2, step_size=1, gamma=0.8)
    handle = o1.compiled()
    for epoch in range(3):
        _train(handle, rows, values, counts, 4 * epoch, 4, WIDTH)
        _python(o2, p2, plan, 4 * epoch, 4)
        s1.step()                     # reaches the compiled step
        s2.step()
    assert_same_steps(o1, p1, o2, p2)
    # the staged gradients read back in Python, then Python steps continue exactly
    for i, r, v in plan[-1]:
        p1[i].grad = p2[i].grad = RowSparseGrad(r, v)
    for a, b in zip(p1, p2):
        ga, gb = a.grad, b.grad
        assert (ga is None) == (gb is None)
        if ga is not None:
            np.testing.assert_array_equal(ga.indices, gb.indices)
            np.testing.assert_array_equal(ga.values, gb.values)
    o1.step()
    o2.step()
    assert_same_steps(o1, p1, o2, p2)


@njit
def _stage(h, i, rows, values):
    compiled.sparse_grad(h, i, rows, values)


@njit
def _stage_and_step(h, i, rows, values):
    compiled.sparse_grad(h, i, rows, values)
    return compiled.step(h)


def test_staged_rows_read_back_in_python_as_assigned():
    params, opt = _make(np.float32)
    h = opt.compiled()
    values = np.arange(12.0).reshape(2, 2, 3)
    _stage(h, 1, np.array([4, 4]), values)                  # float64 values into float32
    g = params[1].grad
    np.testing.assert_array_equal(g.indices, [4, 4])
    np.testing.assert_array_equal(g.values, values.astype(np.float32))
    _stage(h, 1, np.array([0]), values[0].reshape(-1))      # flat rows; replaces the first
    np.testing.assert_array_equal(params[1].grad.indices, [0])
    assert params[0].grad is None


def test_bad_gradients_are_refused_and_change_nothing():
    params, opt = _make(np.float64)
    h = opt.compiled()
    _stage(h, 0, np.array([1, 2]), np.ones((2, 6)))
    before = opt._stage.used.copy(), opt._stage.count.copy()
    for rows, values, match in [
            (np.array([40]), np.ones((1, 6)), "out of range"),
            (np.array([-1]), np.ones((1, 6)), "out of range"),
            (np.array([1]), np.ones((1, 5)), "one row of the parameter per index"),
            (np.array([1, 2]), np.ones((1, 6)), "one row of the parameter per index")]:
        with pytest.raises(ValueError, match=match):
            _stage(h, 0, rows, values)
    assert np.array_equal(opt._stage.used, before[0])
    assert np.array_equal(opt._stage.count, before[1])
    np.testing.assert_array_equal(params[0].grad.indices, [1, 2])
    scalar = numbaopt.Parameter(np.zeros(()))
    with pytest.raises(ValueError, match="0-d parameter has no rows"):
        _stage(optim.SparseAdam([scalar]).compiled(), 0, np.zeros(0, np.int64), np.zeros(0))


def test_dense_gradients_are_refused_at_the_step_as_from_python():
    params, opt = _make(np.float64)
    h = opt.compiled()
    data = opt.arena.data.copy()

    @njit
    def dense(h):
        compiled.grad(h, 0)[:] = 1.0
        compiled.mark_grad(h, 0)
        return compiled.step(h)

    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        dense(h)
    np.testing.assert_array_equal(opt.arena.data, data)
    assert all(opt.arena.step == 0)


def test_skip_nonfinite_checks_the_staged_rows():
    params, opt = _make(np.float32, skip_nonfinite=True)
    h = opt.compiled()
    data = opt.arena.data.copy()
    bad = np.ones((1, 6), np.float32)
    bad[0, 3] = np.nan
    assert _stage_and_step(h, 0, np.array([2]), bad) is False
    np.testing.assert_array_equal(opt.arena.data, data)
    assert opt.found_nonfinite and opt.skipped_steps == 1 and opt.state_dict()["state"] == {}
    assert _stage_and_step(h, 0, np.array([2]), np.ones((1, 6), np.float32)) is True
    assert not opt.found_nonfinite and opt.state_dict()["state"][0]["step"] == 1


def test_the_stage_holds_sparse_rows_and_compacts_dead_rows():
    params, opt = _make(np.float64)
    h = opt.compiled(sparse_rows=5)
    assert opt._stage.indices.shape[0] >= 5
    cap = opt._stage.indices.shape[0]
    for k in range(3 * cap):          # re-staging leaves dead rows: compacted when full
        _stage(h, 0, np.array([k % 40, (k + 1) % 40]), np.full((2, 6), float(k)))
    _stage(h, 1, np.array([3]), np.ones((1, 6)))
    np.testing.assert_array_equal(params[0].grad.indices, [(3 * cap - 1) % 40, (3 * cap) % 40])
    np.testing.assert_array_equal(params[0].grad.values, float(3 * cap - 1))
    with pytest.raises(ValueError, match=r"stage is full: .*opt.compiled\(sparse_rows=...\)"):
        _stage(h, 2, np.zeros(cap, np.int64), np.zeros(cap))
    np.testing.assert_array_equal(params[1].grad.indices, [3])     # unchanged
    assert params[2].grad is None
    with pytest.raises(ValueError, match="sparse_rows must be a non-negative int"):
        opt.compiled(sparse_rows=-1)


def test_python_compaction_keeps_every_gradient(rng):
    # the stage's compaction (compiled, shared by Python and compiled code) moves live rows
    # to the front: after many re-assignments, each parameter still has its last gradient
    params, opt = _make(np.float64)
    last = {}
    for k in range(200):
        i = k % 3
        rows = rng.integers(0, SHAPES[i][0], 1 + k % 4)
        values = rng.standard_normal((len(rows),) + SHAPES[i][1:])
        params[i].grad = last[i] = RowSparseGrad(rows, values)
    for i, g in last.items():
        np.testing.assert_array_equal(params[i].grad.indices, g.indices)
        np.testing.assert_array_equal(params[i].grad.values, g.values)
    assert opt._stage.used_rows <= sum(g.nnz for g in last.values()) + 3


def test_a_stage_grown_from_python_makes_the_handle_stale():
    params, opt = _make(np.float64)
    h = opt.compiled(sparse_rows=4)
    big = opt._stage.indices.shape[0] + 1
    params[0].grad = RowSparseGrad(np.zeros(big, np.int64), np.ones((big, 6)))   # grows it
    with pytest.raises(RuntimeError, match="get a new one with opt.compiled"):
        _stage_and_step(h, 1, np.array([0]), np.ones((1, 6)))
    assert params[1].grad is None
    assert _stage_and_step(opt.compiled(), 1, np.array([0]), np.ones((1, 6))) is True


def test_sparse_grad_needs_a_sparse_adam_handle():
    p = numbaopt.Parameter(np.zeros((3, 2)))
    h = optim.Adam([p]).compiled()
    with pytest.raises(TypingError, match="takes the handle of a SparseAdam"):
        _stage(h, 0, np.array([0]), np.ones((1, 2)))
    with pytest.raises(TypeError, match="takes the handle of a SparseAdam"):
        compiled.sparse_grad(h, 0, np.array([0]), np.ones((1, 2)))


def test_the_functions_called_from_python_are_opt_step():
    plan = _plan(np.float64)
    p1, o1 = _make(np.float64, skip_nonfinite=True)
    p2, o2 = _make(np.float64, skip_nonfinite=True)
    h = o1.compiled()
    for k in range(4):
        for i, r, v in plan[k]:
            compiled.sparse_grad(h, i, r, v)
            p2[i].grad = RowSparseGrad(r, v)
        assert compiled.step(h) is True
        o2.step()
        compiled.zero_grad(h, False)
        o2.zero_grad(False)
    assert_same_steps(o1, p1, o2, p2)
    compiled.sparse_grad(h, 0, np.array([1]), np.full((1, 6), np.inf))
    assert compiled.step(h) is False and o1.skipped_steps == 1


def test_step_hooks_run_around_a_compiled_sparse_step():
    params, opt = _make(np.float64)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(
        ("post", o.state_dict()["state"][0]["step"])))
    _stage_and_step(opt.compiled(), 0, np.array([1]), np.ones((1, 6)))
    assert calls == ["pre", ("post", 1)]


def test_a_handle_is_stale_after_add_param_group():
    params, opt = _make(np.float64)
    h = opt.compiled()
    opt.add_param_group({"params": [numbaopt.Parameter(np.zeros((3, 2)))]})
    with pytest.raises(RuntimeError, match="get a new one with opt.compiled"):
        _stage(h, 0, np.array([1]), np.ones((1, 6)))
    assert params[0].grad is None
    _stage(opt.compiled(), 4, np.array([2]), np.ones((1, 2)))
    np.testing.assert_array_equal(opt.param_groups[2]["params"][0].grad.indices, [2])


def test_sparse_grad_from_python_checks_the_rows_and_values():
    params, opt = _make(np.float64)
    h = opt.compiled()
    with pytest.raises(TypeError, match="rows must be a 1-D integer array"):
        compiled.sparse_grad(h, 0, np.array([0.9, 1.7]), np.ones((2, 6)))
    with pytest.raises(TypeError, match="values must be a real numeric array"):
        compiled.sparse_grad(h, 0, np.array([1]), np.ones((1, 6), complex))
    assert params[0].grad is None


def test_a_compiled_set_lr_keeps_sparse_adams_bound():
    params, opt = _make(np.float64)

    @njit
    def set_lr(h, lr):
        compiled.set_lr(h, 0, lr)

    with pytest.raises(ValueError, match="needs lr > 0"):
        set_lr(opt.compiled(), 0.0)
    assert opt.param_groups[0]["lr"] == 0.01


def test_a_stage_pickled_before_its_counters_were_an_array_loads():
    from numbaopt.sparse import SparseGradStage
    params, opt = _make(np.float64)
    params[0].grad = RowSparseGrad([1, 2], np.ones((2, 6)))
    state = dict(opt._stage.__dict__)
    used = state.pop("used")
    del state["ndims"]
    state.update(used_rows=int(used[0]), used_values=int(used[1]), live=int(used[2]),
                 generation=int(used[3]))
    old = object.__new__(SparseGradStage)
    old.__setstate__(state)
    assert old.used_rows == 2 and old.live == 1 and old.used.tolist() == used.tolist()
    assert old.ndims.tolist() == [len(s) for s in SHAPES]
