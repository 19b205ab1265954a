"""Property tests (hypothesis): random layouts, options and gradient patterns.

Each example draws an optimizer class, a dtype, 1-3 parameter groups of 1-3
parameters (0-d and zero-size shapes included), per-group options in their valid
ranges, and a gradient schedule in which random parameters have no gradient on
random steps. Properties:

- every step equals the NumPy reference in tests/reference.py;
- a state_dict loaded into a fresh optimizer continues in lockstep, bit for bit;
- so does a checkpoint (numbaopt.checkpoint) loaded into a fresh optimizer;
- clip_grad_norm_ over the arena equals the NumPy reference norm.

Only float32/float64 arenas of small sizes are drawn: the serial kernels, no new
numba signatures. ``NUMBAOPT_HYPOTHESIS_EXAMPLES=500`` explores more.
"""

import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbaopt
from numbaopt import optim, utils
from numbaopt.checkpoint import load, save
from reference import reference_optimizer
from tolerance import assert_close

_SCALE = int(os.environ.get("NUMBAOPT_HYPOTHESIS_EXAMPLES", "0"))


def _settings(examples):
    return settings(max_examples=_SCALE or examples, deadline=None, database=None,
                    derandomize=not _SCALE, suppress_health_check=[HealthCheck.too_slow])


# -- strategies --------------------------------------------------------------------------------
unit = st.floats(0.0, 1.0)
shapes = st.one_of(st.just(()), st.just((0,)), st.just((2, 0)),
                   st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))


def _options(name):
    """Strategy of one group's options for optimizer ``name`` (valid ranges, edges included)."""
    lr = st.sampled_from([0.0, 1e-3, 0.01, 0.1, 0.5])
    wd = st.sampled_from([0.0, 0.01, 0.3])
    eps = st.sampled_from([1e-10, 1e-8, 1e-3])
    maximize = st.booleans()
    if name == "SGD":
        def sgd(d):
            if d["nesterov"]:
                d["momentum"] = d["momentum"] or 0.5
                d["dampening"] = 0.0
            return d
        return st.fixed_dictionaries(dict(
            lr=lr, momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
            dampening=st.sampled_from([0.0, 0.1, 1.0]), weight_decay=wd,
            nesterov=st.booleans(), maximize=maximize)).map(sgd)
    if name in ("Adam", "AdamW"):
        beta = st.sampled_from([0.0, 0.3, 0.9, 0.999])
        return st.fixed_dictionaries(dict(
            lr=lr, betas=st.tuples(beta, beta), eps=eps, weight_decay=wd,
            amsgrad=st.booleans(), maximize=maximize))
    if name == "RMSprop":
        return st.fixed_dictionaries(dict(
            lr=lr, alpha=st.sampled_from([0.0, 0.5, 0.99, 1.0]), eps=eps, weight_decay=wd,
            momentum=st.sampled_from([0.0, 0.5, 0.9]), centered=st.booleans(),
            maximize=maximize))
    return st.fixed_dictionaries(dict(
        lr=lr, lr_decay=st.sampled_from([0.0, 0.1]), weight_decay=wd, eps=eps,
        initial_accumulator_value=st.sampled_from([0.0, 0.1, 1.0]), maximize=maximize))


@st.composite
def problems(draw, max_steps=4):
    """``(name, dtype, layout, kwargs, group_options, seed, steps, grad_mask)``."""
    name = draw(st.sampled_from(["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]))
    dtype = draw(st.sampled_from(["float64", "float32"]))
    layout = draw(st.lists(st.lists(shapes, min_size=1, max_size=3), min_size=1, max_size=3))
    options = _options(name)
    kwargs = draw(options)
    # each group overrides some of the constructor's options
    group_options = []
    for _ in layout:
        own = draw(options)
        keep = draw(st.lists(st.sampled_from(sorted(own)), unique=True, max_size=len(own)))
        g = {k: own[k] for k in keep}
        if name == "SGD":   # nesterov's constraint is checked on the merged group
            merged = dict(kwargs, **g)
            if merged["nesterov"] and (merged["momentum"] <= 0 or merged["dampening"] != 0):
                g.update(nesterov=False)
        group_options.append(g)
    nparams = sum(len(g) for g in layout)
    steps = draw(st.integers(1, max_steps))
    grad_mask = draw(st.lists(st.lists(st.booleans(), min_size=nparams, max_size=nparams),
                              min_size=steps, max_size=steps))
    seed = draw(st.integers(0, 2**32 - 1))
    return name, dtype, layout, kwargs, group_options, seed, steps, grad_mask


def _values(layout, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for group in layout for s in group]


def _grads(layout, dtype, seed, grad_mask):
    """One list of grads (None where the mask says so) per step, from ``seed``."""
    rng = np.random.default_rng(seed + 1)
    flat = [s for group in layout for s in group]
    return [[rng.standard_normal(s).astype(dtype) if has else None
             for s, has in zip(flat, mask)] for mask in grad_mask]


def _groups(items, layout, group_options):
    out, k = [], 0
    for shapes_, options in zip(layout, group_options):
        out.append(dict(options, params=items[k:k + len(shapes_)]))
        k += len(shapes_)
    return out


def _build(problem, values=None, group_options=None):
    name, dtype, layout, kwargs, drawn_options, seed, _, _ = problem
    if group_options is None:
        group_options = drawn_options
    if values is None:
        values = _values(layout, dtype, seed)
    params = [numbaopt.Parameter(v.copy()) for v in values]
    opt = getattr(optim, name)(_groups(params, layout, group_options), **kwargs)
    return params, opt


def _step(params, opt, grads):
    for p, g in zip(params, grads):
        p.grad = g
    with np.errstate(all="ignore"):
        opt.step()


def _assert_identical(params_a, opt_a, params_b, opt_b):
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(opt_a.arena.data, opt_b.arena.data)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sorted(sa["state"]) == sorted(sb["state"])
    for i in sa["state"]:
        assert sorted(sa["state"][i]) == sorted(sb["state"][i])
        for k in sa["state"][i]:
            np.testing.assert_array_equal(sa["state"][i][k], sb["state"][i][k])


# -- properties --------------------------------------------------------------------------------
@_settings(600)
@given(problems())
def test_every_step_equals_the_numpy_reference(problem):
    name, dtype, layout, kwargs, group_options, seed, steps, grad_mask = problem
    values = _values(layout, dtype, seed)
    arrays = [v.copy() for v in values]
    ref = reference_optimizer(name, _groups(arrays, layout, group_options), **kwargs)
    params, opt = _build(problem, values)
    for k, grads in enumerate(_grads(layout, dtype, seed, grad_mask)):
        _step(params, opt, grads)
        with np.errstate(all="ignore"):
            ref.step(grads)
        for i, (p, a) in enumerate(zip(params, arrays)):
            assert_close(p.data, a, dtype, f"{name} step {k + 1}, parameter {i}")
    state = opt.state_dict()["state"]
    for i, entry in enumerate(ref.state):
        if name == "SGD":
            entry = {k: v for k, v in entry.items() if k != "step"}
        assert sorted(state.get(i, {})) == sorted(entry), f"state keys of parameter {i}"
        for key, value in entry.items():
            assert_close(state[i][key], value, dtype, f"state[{i}][{key!r}]")


def _lockstep_after(problem, restore):
    """Train, restore into a fresh optimizer with ``restore(opt, params, opt2, params2)``,
    then continue both with the same grads: they must stay bit-identical."""
    name, dtype, layout, kwargs, group_options, seed, steps, grad_mask = problem
    schedule = _grads(layout, dtype, seed, grad_mask + grad_mask[::-1])
    params, opt = _build(problem)
    for grads in schedule[:steps]:
        _step(params, opt, grads)
    # the fresh optimizer: other values, and none of the groups' own options
    params2, opt2 = _build(problem, [np.full(v.shape, 7.0, dtype) for v in
                                     _values(layout, dtype, seed)], [{} for _ in layout])
    restore(opt, params, opt2, params2)
    _assert_identical(params, opt, params2, opt2)
    for grads in schedule[steps:]:
        _step(params, opt, grads)
        _step(params2, opt2, grads)
        _assert_identical(params, opt, params2, opt2)


@_settings(300)
@given(problems())
def test_state_dict_round_trip_continues_in_lockstep(problem):
    def restore(opt, params, opt2, params2):
        opt2.load_state_dict(opt.state_dict())
        for p, q in zip(params, params2):
            q.data = p.data
    _lockstep_after(problem, restore)


@_settings(200)
@given(problems())
def test_checkpoint_round_trip_continues_in_lockstep(problem):
    def restore(opt, params, opt2, params2):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ckpt.npz")
            save(path, opt)
            load(path, opt2)
            assert os.listdir(tmp) == ["ckpt.npz"]
    _lockstep_after(problem, restore)


@_settings(300)
@given(problems(max_steps=1), st.sampled_from([2.0, 1.0, 0.5, 3.0, 0.0]),
       st.sampled_from([1e-3, 1.0, 1e6]), st.booleans())
def test_clip_grad_norm_over_the_arena_equals_the_reference(problem, norm_type, max_norm,
                                                            subset):
    name, dtype, layout, kwargs, group_options, seed, _, grad_mask = problem
    params, opt = _build(problem)
    grads = _grads(layout, dtype, seed, grad_mask)[0]
    for p, g in zip(params, grads):
        p.grad = g
    chosen = params[::2] if subset else params
    picked = [g for p, g in zip(params, grads) if p in chosen and g is not None]
    with np.errstate(all="ignore"):
        total = utils.clip_grad_norm_(chosen if subset else opt, max_norm, norm_type)
    norms = [np.linalg.norm(g.astype(np.float64).reshape(-1), norm_type) for g in picked]
    want = np.linalg.norm(np.array(norms), norm_type) if norms else 0.0
    assert total.shape == () and total.dtype == (np.dtype(dtype) if picked else np.float32)
    assert_close(total, want, dtype)
    coef = min(max_norm / (want + 1e-6), 1.0)
    for p, g in zip(params, grads):
        if g is None:
            assert p.grad is None
        elif p in chosen:
            assert_close(p.grad, g * coef, dtype)
        else:
            np.testing.assert_array_equal(p.grad, g)
