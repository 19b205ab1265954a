"""numbaopt.compiled: the optimizer stepped from @njit code, against the same steps taken
by opt.step() from Python (bit for bit), with hyperparameters edited on both sides,
skip_nonfinite, stale handles, and numba's cache across processes."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

import numbaopt
from numbaopt import compiled, optim
from numbaopt.optim import lr_scheduler
from tolerance import assert_same_steps

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = (7, 0, 12, 1)


@njit(cache=True)
def _train(h, grads, first, n, lr_every):
    """Steps ``first:first + n``; gradients from ``grads[k]``, the arena's layout."""
    for k in range(first, first + n):
        for i in range(compiled.num_params(h)):
            g = compiled.grad(h, i)
            lo = h.offsets[i]
            for j in range(g.shape[0]):
                g[j] = grads[k, lo + j]
            if (k + i) % 3 != 0:           # some parameters have no gradient on some steps
                compiled.mark_grad(h, i)
        compiled.step(h)
        compiled.zero_grad(h)
        if lr_every > 0 and k % lr_every == 0:
            compiled.set_lr(h, 1, compiled.get_lr(h, 1) * 0.5)


def _python(opt, params, grads, first, n, lr_every):
    offsets = opt.arena.offsets
    for k in range(first, first + n):
        for i, p in enumerate(params):
            if (k + i) % 3 != 0:
                p.grad = grads[k, offsets[i]:offsets[i + 1]].reshape(p.shape)
        opt.step()
        opt.zero_grad()
        if lr_every > 0 and k % lr_every == 0:
            opt.param_groups[1]["lr"] = opt.param_groups[1]["lr"] * 0.5


def _make(name, dtype, **kwargs):
    rng = np.random.default_rng(4)
    params = [numbaopt.Parameter(rng.standard_normal(s).astype(dtype)) for s in SIZES]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]
    return params, getattr(optim, name)(groups, lr=0.01, **kwargs)


CASES = [("Adam", {}), ("AdamW", dict(amsgrad=True)), ("SGD", dict(momentum=0.9)),
         ("NAdam", {}), ("ASGD", dict(t0=3)), ("Rprop", {}), ("RMSprop", dict(centered=True))]


# every case in float64, and Adam in float32 (each handle type compiles _train once: ~4 s)
@pytest.mark.parametrize("name, kwargs, dtype",
                         [(n, k, np.float64) for n, k in CASES] + [("Adam", {}, np.float32)],
                         ids=[c[0] for c in CASES] + ["Adam-float32"])
def test_a_compiled_loop_is_bit_for_bit_the_python_loop(name, kwargs, dtype):
    grads = np.random.default_rng(9).standard_normal((24, sum(SIZES))).astype(dtype)
    p1, o1 = _make(name, dtype, **kwargs)
    p2, o2 = _make(name, dtype, **kwargs)
    sched1 = lr_scheduler.StepLR(o1, step_size=1, gamma=0.9)
    sched2 = lr_scheduler.StepLR(o2, step_size=1, gamma=0.9)
    handle = o1.compiled()
    for epoch in range(3):
        _train(handle, grads, 8 * epoch, 8, 4)           # one handle across the epochs
        _python(o2, p2, grads, 8 * epoch, 8, 4)
        sched1.step()                                      # reaches the compiled step
        sched2.step()
        assert o1.param_groups[1]["lr"] == o2.param_groups[1]["lr"]
    assert_same_steps(o1, p1, o2, p2)
    # and Python steps continue exactly
    for p, q in zip(p1, p2):
        p.grad = q.grad = np.ones(p.shape, dtype)
    o1.step()
    o2.step()
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a.data, b.data)


def test_set_lr_from_compiled_code_shows_in_param_groups_state_dict_and_checkpoints(tmp_path):
    params, opt = _make("Adam", np.float64)
    handle = opt.compiled()

    @njit
    def set_it(h, lr):
        compiled.set_lr(h, 0, lr)

    set_it(handle, 0.125)
    assert opt.param_groups[0]["lr"] == 0.125
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.125
    numbaopt.save(tmp_path / "c", opt)
    other = _make("Adam", np.float64)[1]
    numbaopt.load(tmp_path / "c", other)
    assert other.param_groups[0]["lr"] == 0.125
    with pytest.raises(ValueError, match="Invalid learning rate"):
        set_it(handle, -1.0)


def test_skip_nonfinite_from_compiled_code():
    params, opt = _make("Adam", np.float32, skip_nonfinite=True)
    handle = opt.compiled()
    before = opt.arena.data.copy()

    @njit
    def nan_step(h):
        g = compiled.grad(h, 0)
        g[0] = np.nan
        compiled.mark_grad(h, 0)
        return compiled.step(h)

    assert nan_step(handle) is False
    np.testing.assert_array_equal(opt.arena.data, before)
    assert opt.found_nonfinite and opt.skipped_steps == 1 and compiled_skipped(handle) == 1


@njit
def compiled_skipped(h):
    return compiled.skipped_steps(h)


def test_step_called_from_python_is_opt_step():
    grads = np.random.default_rng(3).standard_normal((4, sum(SIZES))).astype(np.float32)
    p1, o1 = _make("Adam", np.float32, skip_nonfinite=True)
    p2, o2 = _make("Adam", np.float32, skip_nonfinite=True)
    handle = o1.compiled()
    for k in range(4):
        if k == 2:                                          # a live edit, seen by the step
            o1.param_groups[0]["lr"] = o2.param_groups[0]["lr"] = 0.5
        o1.set_grads(np.split(grads[k], np.cumsum(SIZES)[:-1]))
        o2.set_grads(np.split(grads[k], np.cumsum(SIZES)[:-1]))
        assert compiled.step(handle) is True
        o2.step()
    np.testing.assert_array_equal(o1.arena.data, o2.arena.data)
    p1[0].grad = np.full(SIZES[0], np.inf, np.float32)
    assert compiled.step(handle) is False and o1.skipped_steps == 1


def _function_ir(dispatcher, name):
    """The LLVM IR of ``dispatcher``'s own function (not its callees' or its wrapper's)."""
    ir = dispatcher.inspect_llvm(dispatcher.signatures[0])
    for function in ir.split("\ndefine ")[1:]:
        head = function.split("\n", 1)[0]     # "... @_ZN<mangled name>(...)"; wrappers: cpython, cfunc
        if f"{len(name)}{name}B" in head and not ("cpython" in head or "cfunc" in head):
            return function
    raise AssertionError(f"no function {name} in the IR")


def _arrays(handle):
    return sum(_arrays(a) if isinstance(a, tuple) else isinstance(a, np.ndarray)
               for a in handle)


@pytest.mark.parametrize("dtypes", ["one", "two"])
def test_a_compiled_step_takes_no_reference_per_step(dtypes):
    # What a compiled step cost beyond its kernel was reference counting: through an
    # @overload, each step took (and dropped) a reference to every array of the handle and
    # of the kernel's arguments (~60 atomic operations, ~0.5 us at Adam 1k/10). Now only
    # the function's entry takes one per array of the handle, and the loop none; over two
    # dtypes too, whose handle holds one handle per dtype.
    params, opt = _make("Adam", np.float32)
    if dtypes == "two":
        opt.add_param_group({"params": [numbaopt.Parameter(np.ones(3))]})
    handle = opt.compiled()

    @njit
    def step_loop(h, n):
        for _ in range(n):
            compiled.step(h)

    step_loop(handle, 2)
    ir = _function_ir(step_loop, "step_loop")
    arrays = _arrays(handle)
    assert ir.count("@NRT_incref(") <= arrays and ir.count("@NRT_decref(") <= arrays


def test_a_stale_handle_is_refused_and_a_new_one_works():
    params, opt = _make("SGD", np.float64)
    handle = opt.compiled()
    grads = np.zeros((4, sum(SIZES)))
    opt.param_groups[0]["momentum"] = 0.9               # needs a new state buffer
    with pytest.raises(RuntimeError, match="get a new one with opt.compiled"):
        _train(handle, grads, 0, 1, 0)
    _train(opt.compiled(), grads, 0, 1, 0)


def test_optimizers_without_one_compiled_kernel_are_refused_clearly():
    p = numbaopt.Parameter(np.zeros(3))
    with pytest.raises(NotImplementedError, match="cannot be stepped from compiled code"):
        optim.LBFGS([p]).compiled()


def test_a_cached_user_function_loads_in_a_second_process(tmp_path):
    script = tmp_path / "user_loop.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        from numba import njit
        import numbaopt
        from numbaopt import compiled, optim

        @njit(cache=True)
        def train(h, n):
            for k in range(n):
                for i in range(compiled.num_params(h)):
                    compiled.grad(h, i)[:] = 0.5
                    compiled.mark_grad(h, i)
                compiled.step(h)

        @njit(cache=True)
        def train_sparse(h, n):
            for k in range(n):
                compiled.sparse_grad(h, 0, np.array([k % 4, 1]), np.full((2, 3), 0.5))
                compiled.step(h)
                compiled.zero_grad(h)

        @njit(cache=True)
        def train_mixed(h, n):
            for k in range(n):
                compiled.grad(h.lanes[0], 0)[:] = 0.5
                compiled.grad(h.lanes[1], 0)[:] = 0.25
                compiled.mark_grad(h, 0)
                compiled.mark_grad(h, 1)
                compiled.step(h)
                compiled.set_lr(h, 0, compiled.get_lr(h, 0) * 0.5)

        params = [numbaopt.Parameter(np.ones(5)) for _ in range(3)]
        opt = optim.Adam(params, lr=0.1)
        train(opt.compiled(), 3)
        table = numbaopt.Parameter(np.ones((4, 3)))
        train_sparse(optim.SparseAdam([table], lr=0.1).compiled(), 3)
        pair = [numbaopt.Parameter(np.ones(2, np.float32)), numbaopt.Parameter(np.ones(3))]
        mixed = optim.Adam(pair, lr=0.1)
        train_mixed(mixed.compiled(), 3)
        print(sum(train.stats.cache_misses.values()), sum(train.stats.cache_hits.values()),
              repr(float(params[0].data[0])),
              sum(train_sparse.stats.cache_misses.values()),
              sum(train_sparse.stats.cache_hits.values()), repr(float(table.data[1, 0])),
              sum(train_mixed.stats.cache_misses.values()),
              sum(train_mixed.stats.cache_hits.values()), repr(float(pair[1].data[0])),
              repr(mixed.param_groups[0]["lr"]))
    """))
    # numba's own cache places, as a user gets them: the script's functions cache next to
    # it (a fresh directory), numbaopt's kernels load from numbaopt's (warm after the tests
    # above, which keeps this test from compiling every kernel again)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    runs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           env=env, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = (r.stdout.split() for r in runs)
    assert first[0] == "1" and second[:2] == ["0", "1"]      # compiled once, then loaded
    assert first[3] == "1" and second[3:5] == ["0", "1"]    # and a SparseAdam handle's loop
    assert first[6] == "1" and second[6:8] == ["0", "1"]    # and one over two dtypes
    assert first[2] == second[2] and first[5] == second[5] and first[8:] == second[8:]
    assert first[9] == repr(0.1 / 8)


@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
def test_adafactor_and_muon_step_from_compiled_code_as_from_python(name):
    """Their steps are one compiled call too (factored second moments; Newton-Schulz), so a
    handle steps them; bit for bit the Python loop."""
    if name == "Muon":
        pytest.importorskip("scipy")
    shapes = [(3, 4), (4, 2), (2, 5)] if name == "Muon" else [(3, 4), (5,), (2, 3, 4)]
    rng = np.random.default_rng(5)
    values = [rng.standard_normal(s) for s in shapes]
    grads = rng.standard_normal((12, sum(int(np.prod(s)) for s in shapes)))
    runs = []
    for _ in range(2):
        params = [numbaopt.Parameter(v.copy()) for v in values]
        groups = [{"params": params[:1]}, {"params": params[1:], "lr": 0.02}]
        runs.append((params, getattr(optim, name)(groups, lr=0.01)))
    (p1, o1), (p2, o2) = runs
    _train(o1.compiled(), grads, 0, 12, 5)
    _python(o2, p2, grads, 0, 12, 5)
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a.data, b.data)
    assert o1.param_groups[1]["lr"] == o2.param_groups[1]["lr"]


@njit
def _mark_and_step(h, n):
    for _ in range(n):
        for i in range(compiled.num_params(h)):
            compiled.mark_grad(h, i)
        compiled.step(h)


def test_step_hooks_run_around_a_compiled_step_as_around_opt_step():
    from numbaopt.optim import hooks, register_optimizer_step_pre_hook
    calls = []
    params, opt = _make("Adam", np.float64, skip_nonfinite=True)
    # (the flags table's layout, which optimizer.py and hooks.py write by number)
    assert opt._flags.shape[0] == compiled.N_FLAGS and hooks._FLAG_HOOKS == compiled.HOOKS

    def steps(o):
        return int(o.state_dict()["state"].get(0, {"step": 0})["step"])

    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(
        ("pre", steps(o), args == (o,), kwargs)))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", steps(o))))
    handle = opt.compiled()
    _mark_and_step(handle, 2)
    assert calls == [("pre", 0, True, {}), ("post", 1), ("pre", 1, True, {}), ("post", 2)]
    calls.clear()
    opt.arena.grad[0] = np.nan                   # a skipped step runs its hooks too
    _mark_and_step(handle, 1)
    assert calls == [("pre", 2, True, {}), ("post", 2)] and opt.skipped_steps == 1
    opt.arena.grad[0] = 0.0
    calls.clear()
    pre.remove()
    post.remove()
    _mark_and_step(handle, 1)                    # removed: none, and no objmode call
    assert calls == [] and handle.flags[compiled.HOOKS] == 0
    gpre = register_optimizer_step_pre_hook(lambda o, args, kwargs: calls.append("global"))
    try:
        _mark_and_step(handle, 2)
        assert calls == ["global", "global"]
    finally:
        gpre.remove()
    bad = opt.register_step_pre_hook(lambda o, args, kwargs: ((o, None), {}))
    data = opt.arena.data.copy()
    with pytest.raises(RuntimeError, match="pre-hook gave the step new arguments"):
        _mark_and_step(handle, 1)
    np.testing.assert_array_equal(opt.arena.data, data)
    bad.remove()
    assert compiled.step(handle) is True        # (from Python: the same)


@pytest.mark.parametrize("dtypes", ["one", "two"])
def test_an_optimizer_wrapped_for_data_parallelism_has_no_handle(dtypes):
    # its steps average gradients across ranks first, from Python: a compiled step would not
    pytest.importorskip("mpi4py")
    from numbaopt.distributed import DistributedOptimizer
    params, opt = _make("Adam", np.float64)
    if dtypes == "two":
        opt.add_param_group({"params": [numbaopt.Parameter(np.ones(2, np.float32))]})
    DistributedOptimizer(opt)                          # one process: a job of one rank
    with pytest.raises(NotImplementedError, match="stepped by a DistributedOptimizer"):
        opt.compiled()


@njit
def _set_lr_in(h, g, lr):
    compiled.set_lr(h, g, lr)


def test_a_copy_of_the_optimizer_does_not_take_over_its_handles():
    import copy
    calls = []
    params, opt = _make("Adam", np.float64)
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(o is opt))
    handle = opt.compiled()
    twin = copy.deepcopy(opt)
    twin.compiled()
    assert twin._flags[compiled.OWNER] != opt._flags[compiled.OWNER]
    shallow = copy.copy(opt)                     # (shares the flags table: numbered as is)
    assert shallow._flags[compiled.OWNER] == opt._flags[compiled.OWNER]
    opt.param_groups[0]["lr"] = 1.0              # must reach the original's handle
    ref_params, ref = _make("Adam", np.float64)
    ref.param_groups[0]["lr"] = 1.0
    for o, ps in ((opt, params), (ref, ref_params)):
        ps[0].grad = np.ones(ps[0].shape)
    compiled.step(handle)
    ref.step()
    assert calls == [True]
    np.testing.assert_array_equal(params[0].data, ref_params[0].data)


def test_zero_grad_keeping_zeros_then_writes_are_stepped_as_from_python():
    p1, o1 = _make("SGD", np.float64)
    p2, o2 = _make("SGD", np.float64)

    @njit
    def accumulate(h):
        compiled.zero_grad(h, False)         # every parameter then has a zero gradient
        for i in range(compiled.num_params(h)):
            compiled.grad(h, i)[:] += 1.0
        compiled.step(h)

    accumulate(o1.compiled())
    o2.zero_grad(set_to_none=False)
    o2.arena.grad[:] += 1.0
    o2.step()
    assert o1.arena.has_grad.all()
    np.testing.assert_array_equal(o1.arena.data, o2.arena.data)


def test_a_compiled_set_lr_keeps_an_unsynced_python_edit_of_another_group():
    params, opt = _make("SGD", np.float64)
    handle = opt.compiled()
    opt.param_groups[0]["lr"] = 0.5               # not synced yet
    _set_lr_in(handle, 1, 0.25)
    assert opt.state_dict()["param_groups"][1]["lr"] == 0.25    # (without param_groups)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    opt.param_groups[1]["lr"] = 0.75              # and then a compiled write of the value
    _set_lr_in(handle, 1, 0.25)                   # the table holds: the later write wins
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    before = opt.arena.data.copy()
    opt.set_grads([np.ones(p.shape) for p in params])
    compiled.step(handle)
    np.testing.assert_array_equal(opt.arena.data[:7], before[:7] - 0.5)
    np.testing.assert_array_equal(opt.arena.data[7:], before[7:] - 0.25)


def test_wrapping_for_data_parallelism_makes_a_handle_stale():
    pytest.importorskip("mpi4py")
    import copy

    from numbaopt.distributed import DistributedOptimizer
    params, opt = _make("Adam", np.float64)
    handle = opt.compiled()
    dist = DistributedOptimizer(opt)
    opt.set_grads([np.ones(p.shape) for p in params])
    dist.step()                                  # (its sync clears the optimizer's flags)
    with pytest.raises(NotImplementedError, match="stepped by a DistributedOptimizer"):
        _mark_and_step(handle, 1)
    copy.deepcopy(opt).compiled()                # a copy is not wrapped
