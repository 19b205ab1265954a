"""``p.grad = g``'s fast path (``Parameter._fast``, bound by ``Arena._bind``) keeps every
behaviour of the checked path: shapes, dtypes, complex values, the has-grad flag, and
survives whatever rebuilds or copies the arena."""

import copy
import os
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt.optim.adam import Adam
from numbaopt.optim.sgd import SGD
from numbaopt.optim.sparse_adam import SparseAdam
from numbaopt.parameter import Parameter
from numbaopt.sparse import RowSparseGrad

P = Parameter
COPIERS = {"deepcopy": copy.deepcopy, "pickle": lambda o: pickle.loads(pickle.dumps(o))}


def _fast_bound(params):
    return all(p._fast is not None and p._fast[0] is p._arena._grad_views[p._index]
               for p in params)


def _check_grads_in(params, rng):
    """Every parameter takes a gradient through the fast path, and the arena sees it."""
    arena = params[0]._arena
    arena.has_grad[:] = False
    for p in params:
        g = rng.standard_normal(p.shape) * (1 + 1j if p.dtype.kind == "c" else 1)
        p.grad = g
        assert arena.has_grad[p._index]
        np.testing.assert_array_equal(p.grad, g.astype(p.dtype))
        assert np.shares_memory(p.grad, arena.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shapes_and_exact_values(dtype, rng):
    shapes = [(), (0,), (3,), (2, 0), (2, 3), (2, 3, 4)]
    params = [P(np.zeros(s, dtype)) for s in shapes]
    opt = SGD(params, lr=0.1)
    assert _fast_bound(params)
    for p in params:
        g = rng.standard_normal(p.shape).astype(dtype)
        p.grad = g
        assert p.grad.shape == p.shape and p.grad.dtype == dtype
        np.testing.assert_array_equal(p.grad, g)
        assert not np.shares_memory(p.grad, g)          # copied in
    assert opt.arena.has_grad.all()


def test_shape_must_match_exactly_and_a_refusal_changes_nothing(rng):
    p, z = P(np.zeros((2, 3), np.float32)), P(np.zeros((), np.float32))
    opt = SGD([p, z])
    for bad in (np.ones(3), np.ones((1, 3)), np.ones((3, 2)), np.ones((2, 3, 1)),
                np.ones(6), np.float32(1.0) * np.ones(())):
        with pytest.raises(ValueError, match=r"gradient shape .* does not match parameter "
                                             r"shape \(2, 3\) \(no broadcasting\)"):
            p.grad = bad
    with pytest.raises(ValueError, match=r"gradient shape \(1,\) does not match parameter "
                                         r"shape \(\)"):
        z.grad = np.ones(1)
    assert not opt.arena.has_grad.any() and not opt.arena.grad.any()


def test_a_one_dimensional_parameter_refuses_every_other_shape(rng):
    # 1-D parameters take the memoryview copy, which checks the shape itself
    p = P(np.zeros(4, np.float32))
    opt = SGD([p])
    assert p._fast[3] is not None
    for bad in (np.ones(3, np.float32), np.ones((1, 4), np.float32), np.ones((4, 1), np.float32),
                np.ones(1, np.float32), np.float32(1.0) * np.ones((), np.float32),
                np.ones(5), np.ones((2, 2), np.float32)):
        with pytest.raises(ValueError, match=r"gradient shape .* does not match parameter "
                                             r"shape \(4,\) \(no broadcasting\)"):
            p.grad = bad
    assert not opt.arena.has_grad.any() and not opt.arena.grad.any()


@pytest.mark.parametrize("source", [np.float16, np.float32, np.float64, np.int8, np.int64,
                                    np.uint16, np.bool_, ">f8", "<f4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 2), (6,)], ids=["2d", "1d"])
def test_real_numeric_dtypes_are_cast_as_copyto_unsafe(dtype, source, shape, rng):
    p = P(np.zeros(shape, dtype))
    opt = SGD([p])
    g = (rng.standard_normal(shape) * 100).astype(source)
    p.grad = g
    expected = np.empty(shape, dtype)
    np.copyto(expected, g, casting="unsafe")
    np.testing.assert_array_equal(p.grad, expected)
    assert p.grad.dtype == dtype and opt.arena.has_grad[0]


def test_float64_to_float32_rounds_as_numpy(rng):
    p = P(np.zeros(5, np.float32))
    SGD([p])
    g = np.array([1e-46, 1 + 2 ** -30, 1e39, np.nan, -np.inf])
    with np.errstate(over="ignore"):
        p.grad = g
        expected = g.astype(np.float32)
    np.testing.assert_array_equal(p.grad, expected)


@pytest.mark.parametrize("bad", [np.array([["a"] * 2] * 2), np.zeros((2, 2), "M8[s]"),
                                 np.zeros((2, 2), object), np.zeros((2, 2), "V8")])
def test_non_numeric_dtypes_are_refused(bad):
    p, q = P(np.zeros((2, 2))), P(np.zeros(4))
    opt = SGD([p, q])
    for param, value in ((p, bad), (q, bad.reshape(4))):
        with pytest.raises(TypeError, match="gradient must be a real numeric array"):
            param.grad = value
    assert not opt.arena.has_grad.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_complex_value_refused_for_a_real_parameter(dtype):
    p = P(np.zeros(3, dtype))
    opt = SGD([p])
    for value in (np.ones(3, np.complex64), np.zeros(3, np.complex128)):
        with pytest.raises(TypeError, match="casting would drop the imaginary part"):
            p.grad = value
    assert not opt.arena.has_grad[0] and not opt.arena.grad.any()


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_parameter_takes_real_and_complex_values(dtype, rng):
    p, r = P(np.zeros((2, 3), dtype)), P(np.zeros(2, np.float32 if dtype == np.complex64
                                                   else np.float64))
    opt = Adam([p, r], lr=0.1)
    assert _fast_bound([p, r])
    for g in (rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3)),
              (rng.standard_normal((2, 3)) + 1j).astype(np.complex64),
              rng.standard_normal((2, 3)).astype(np.float32), np.arange(6).reshape(2, 3)):
        opt.arena.has_grad[:] = False
        p.grad = g
        assert p.grad.dtype == dtype and opt.arena.has_grad[0] and not opt.arena.has_grad[1]
        np.testing.assert_array_equal(p.grad, g.astype(dtype))
    # the real pairs in the arena: real part first, as torch's view_as_real
    g = np.full((2, 3), 1 + 2j)
    p.grad = g
    np.testing.assert_array_equal(opt.arena.grad[:12], np.tile([1.0, 2.0], 6))
    with pytest.raises(ValueError, match="gradient shape"):
        p.grad = np.ones(6, dtype)


def test_read_only_and_non_contiguous_inputs(rng):
    p, q, r = [P(np.zeros(s, np.float32)) for s in ((3, 4), (4, 3), (5,))]
    SGD([p, q, r])
    ro = rng.standard_normal((3, 4))
    ro.setflags(write=False)
    p.grad = ro
    np.testing.assert_array_equal(p.grad, ro.astype(np.float32))
    base = rng.standard_normal((8, 6))
    q.grad = base[::2, ::2]                            # strided view
    np.testing.assert_array_equal(q.grad, base[::2, ::2].astype(np.float32))
    q.grad = np.asfortranarray(base[:4, :3])
    np.testing.assert_array_equal(q.grad, base[:4, :3].astype(np.float32))
    q.grad = base[:3, :4].T                            # transposed
    np.testing.assert_array_equal(q.grad, base[:3, :4].T.astype(np.float32))
    r.grad = base[0, ::-1][:5]                         # negative strides
    np.testing.assert_array_equal(r.grad, base[0, ::-1][:5].astype(np.float32))
    r.grad = np.broadcast_to(np.float64(2.0), (5,))   # zero strides, read-only
    np.testing.assert_array_equal(r.grad, 2.0)


def test_the_grad_view_itself_and_overlapping_arena_slices(rng):
    p, q = P(rng.standard_normal(4)), P(rng.standard_normal(4))
    opt = SGD([p, q])
    p.grad = np.arange(4.0)
    q.grad = np.zeros(4)
    p.grad = p.grad                                    # self-assignment keeps the values
    np.testing.assert_array_equal(p.grad, np.arange(4.0))
    q.grad = opt.arena.grad[:4]                        # a view of another parameter's slot
    np.testing.assert_array_equal(q.grad, np.arange(4.0))
    p.grad = opt.arena.grad[1:5]                       # overlapping its own slot
    np.testing.assert_array_equal(p.grad, [1.0, 2.0, 3.0, 0.0])


def test_array_likes_and_subclasses_take_the_checked_path(rng):
    p = P(np.zeros((2, 2)))
    SGD([p])
    p.grad = [[1, 2], [3, 4]]
    np.testing.assert_array_equal(p.grad, [[1, 2], [3, 4]])
    p.grad = np.ma.masked_array(np.full((2, 2), 5.0))
    np.testing.assert_array_equal(p.grad, 5.0)
    p.grad = P(np.full((2, 2), 6.0))
    np.testing.assert_array_equal(p.grad, 6.0)
    with pytest.raises(ValueError, match="gradient shape"):
        p.grad = np.ma.masked_array(np.ones(4))


def test_has_grad_flag_set_and_none_clears_it(rng):
    params = [P(np.zeros(3)) for _ in range(4)]
    opt = SGD(params, lr=1.0)
    params[2].grad = np.ones(3)
    np.testing.assert_array_equal(opt.arena.has_grad, [False, False, True, False])
    assert params[1].grad is None and params[2].grad is not None
    params[2].grad = None
    assert params[2].grad is None and not opt.arena.has_grad.any()
    for p in params:
        p.grad = np.ones(3)
    params[0].grad = None
    opt.step()                                        # the cleared parameter is skipped
    np.testing.assert_array_equal(params[0].data, 0.0)
    np.testing.assert_array_equal(params[3].data, -1.0)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    params[1].grad = np.ones(3)                        # the flag memoryview writes has_grad
    np.testing.assert_array_equal(opt.arena.has_grad, [False, True, False, False])


def test_parameter_outside_an_arena_keeps_its_own_grad(rng):
    p = P(np.zeros((2, 2), np.float32))
    assert p._fast is None
    g = np.ones((2, 2))
    p.grad = g
    assert p.grad.dtype == np.float32 and not np.shares_memory(p.grad, g)
    p.grad = None
    assert p.grad is None
    with pytest.raises(TypeError, match="imaginary part"):
        p.grad = np.ones((2, 2), complex)


def test_after_add_param_group_the_fast_path_points_at_the_new_arena(rng):
    a, b = P(rng.standard_normal(3)), P(rng.standard_normal((2, 2)))
    opt = Adam([a], lr=0.1)
    old = opt.arena
    a.grad = np.ones(3)
    opt.add_param_group({"params": [b]})
    assert opt.arena is not old and _fast_bound([a, b])
    assert a._fast[4].obj is opt.arena.has_grad
    np.testing.assert_array_equal(a.grad, 1.0)         # the grad moved with the arena
    np.testing.assert_array_equal(opt.arena.has_grad, [True, False])
    b.grad = np.full((2, 2), 2.0)
    np.testing.assert_array_equal(opt.arena.grad[3:], 2.0)
    old_grad, old_flags = old.grad.copy(), old.has_grad.copy()
    a.grad = np.full(3, 3.0)                            # the old arena is not written
    a.grad = None
    np.testing.assert_array_equal(old.grad, old_grad)
    np.testing.assert_array_equal(old.has_grad, old_flags)
    assert not opt.arena.has_grad[0]
    _check_grads_in([a, b], rng)


def test_a_parameter_taken_by_another_optimizer_writes_the_new_arena(rng):
    a, b = P(rng.standard_normal(3)), P(rng.standard_normal(2))
    first = SGD([a, b])
    second = SGD([b])
    assert b._fast[0] is second.arena._grad_views[0] and b._fast[5] == 0
    b.grad = np.ones(2)
    assert second.arena.has_grad[0] and not first.arena.has_grad.any()
    first.arena.plain_grads = True                     # re-binding the old arena leaves b alone
    assert b._arena is second.arena and b._fast[0] is second.arena._grad_views[0]


@pytest.mark.parametrize("copier", COPIERS.values(), ids=COPIERS.keys())
def test_after_pickle_and_deepcopy(copier, rng):
    params = [P(rng.standard_normal(s).astype(np.float32)) for s in ((3,), (2, 2), ())] + \
        [P((rng.standard_normal(2) + 1j).astype(np.complex64))]
    opt = Adam(params, lr=0.1)
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    twin = copier(opt)
    assert "_grad_views" not in twin.arena.__getstate__()
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    assert _fast_bound(twin_params)
    assert all(q._fast[4].obj is twin.arena.has_grad for q in twin_params)
    twin.arena.has_grad[:] = False
    twin_params[1].grad = np.full((2, 2), 7.0)
    assert twin.arena.has_grad[1] and opt.arena.has_grad.all()
    np.testing.assert_array_equal(params[1].grad, 1.0)      # the original is not written
    _check_grads_in(twin_params, rng)
    _check_grads_in(params, rng)


@pytest.mark.parametrize("copier", COPIERS.values(), ids=COPIERS.keys())
def test_a_parameter_copied_alone_or_first(copier, rng):
    a, b = P(rng.standard_normal(3)), P(rng.standard_normal(2))
    opt = SGD([a, b])
    a2, opt2 = copier((a, opt))                        # the parameter unpickled before its arena
    assert a2._arena is opt2.arena and _fast_bound([a2])
    a2.grad = np.ones(3)
    assert opt2.arena.has_grad[0] and not opt.arena.has_grad[0]


def test_after_load_state_dict(rng):
    params = [P(rng.standard_normal(s)) for s in ((3,), (2, 2))]
    opt = Adam(params, lr=0.1)
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    other = [P(p.data.copy()) for p in params]
    opt2 = Adam(other, lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert _fast_bound(other)
    _check_grads_in(other, rng)
    for p, q in zip(params, other):
        g = rng.standard_normal(p.shape)
        p.grad = g
        q.grad = g
    opt.step()
    opt2.step()
    for p, q in zip(params, other):
        np.testing.assert_array_equal(p.data, q.data)


def test_sparse_staging_keeps_its_path(rng):
    emb = P(rng.standard_normal((5, 2)).astype(np.float32))
    opt = SparseAdam([emb], lr=0.1)
    assert not opt.arena.plain_grads and emb._fast is None
    emb.grad = RowSparseGrad(np.array([1, 3]), np.ones((2, 2), np.float32))
    assert isinstance(emb.grad, RowSparseGrad) and not opt.arena.has_grad[0]
    emb.grad = np.ones((5, 2))                          # a dense gradient: staged, then refused
    assert opt.arena.has_grad[0]
    with pytest.raises(RuntimeError):
        opt.step()
    emb.grad = None
    assert emb.grad is None
    twin = copy.deepcopy(opt)
    assert not twin.arena.plain_grads and twin.param_groups[0]["params"][0]._fast is None
    opt.arena.plain_grads = True                        # still staged: no fast path
    assert emb._fast is None


def test_setting_plain_grads_rebinds_the_fast_path(rng):
    a, b = P(np.zeros(3)), P(np.zeros((2, 2)))
    opt = SGD([a, b])
    opt.arena.plain_grads = False
    assert a._fast is None and b._fast is None
    a.grad = np.ones(3)                                 # the checked path, same result
    assert opt.arena.has_grad[0] and not opt.arena.has_grad[1]
    with pytest.raises(ValueError, match="gradient shape"):
        b.grad = np.ones(4)
    opt.arena.plain_grads = True
    assert _fast_bound([a, b])
    _check_grads_in([a, b], rng)


def test_has_grad_is_only_ever_written_in_place():
    # Parameter._fast holds a memoryview of arena.has_grad: a new array assigned anywhere
    # but Arena.__init__ (which binds afterwards) would leave p.grad = g writing the old one.
    root = pathlib.Path(numbaopt.__file__).parent
    found = [f"{path.relative_to(root)}: {line.strip()}"
             for path in root.rglob("*.py")
             for line in path.read_text().splitlines()
             if re.search(r"\.has_grad\s*=[^=]", line)]
    assert found == ["arena.py: self.has_grad = np.zeros(len(params), dtype=np.bool_)"], found


def test_set_grads_still_matches_per_parameter_assignment(rng):
    shapes = ((3,), (2, 2), ())
    a = [P(np.zeros(s, np.float32)) for s in shapes]
    b = [P(np.zeros(s, np.float32)) for s in shapes]
    oa, ob = SGD(a), SGD(b)
    grads = [rng.standard_normal(s) for s in shapes]
    oa.set_grads(grads)
    for p, g in zip(b, grads):
        p.grad = g
    np.testing.assert_array_equal(oa.arena.grad, ob.arena.grad)
    np.testing.assert_array_equal(oa.arena.has_grad, ob.arena.has_grad)


_CUDA_SCRIPT = """
import numpy as np
from numbaopt.optim.sgd import SGD
from numbaopt.parameter import Parameter
p = Parameter(np.zeros((2, 3), np.float32))
opt = SGD([p], lr=1.0, device="cuda")
assert not opt.arena.plain_grads and p._fast is None
p.grad = np.ones((2, 3))
assert opt.arena.has_grad[0] and (p.grad.copy_to_host() == 1).all()
try:
    p.grad = np.ones(6)
except ValueError:
    pass
else:
    raise AssertionError("a wrong shape was taken")
p.grad = None
assert not opt.arena.has_grad[0]
print("ok")
"""


def test_cuda_arena_keeps_its_path():
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-c", _CUDA_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_set_grads_takes_one_flat_vector():
    """A 1-D vector of every gradient end to end: one copy into a real host arena; split
    into views otherwise (complex parameters, several dtypes), with the same checks."""
    rng = np.random.default_rng(3)
    shapes = [(3, 4), (), (5,)]
    params = [numbaopt.Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    opt = numbaopt.optim.Adam(params)
    vector = rng.standard_normal(18)
    opt.set_grads(vector)
    np.testing.assert_array_equal(opt.arena.grad, vector.astype(np.float32))
    assert opt.arena.has_grad.all()
    for bad, error in ((np.ones(17), ValueError), (np.ones((18, 1)), ValueError),
                       (np.ones(18, complex), TypeError), (np.array(["a"] * 18), TypeError)):
        before = opt.arena.grad.copy()
        with pytest.raises(error):
            opt.set_grads(bad)
        np.testing.assert_array_equal(opt.arena.grad, before)
    # complex parameters, and several dtypes: the same vector, split
    z, w = numbaopt.Parameter(np.zeros(2, np.complex128)), numbaopt.Parameter(np.zeros(1, complex))
    numbaopt.optim.SGD([z, w], lr=1.0).set_grads(np.array([1 + 2j, 3j, 4]))
    np.testing.assert_array_equal(z.grad, [1 + 2j, 3j])
    np.testing.assert_array_equal(w.grad, [4])
    x, y = numbaopt.Parameter(np.zeros(3, np.float32)), numbaopt.Parameter(np.zeros(2))
    numbaopt.optim.SGD([x, y], lr=1.0).set_grads(np.arange(5.0))
    np.testing.assert_array_equal(x.grad, [0, 1, 2])
    np.testing.assert_array_equal(y.grad, [3, 4])
    # a complex vector for a real parameter is refused (casting would drop the imaginary part)
    mixed = numbaopt.optim.SGD([z, x], lr=1.0)
    with pytest.raises(TypeError, match="gradient 1: .*imaginary part"):
        mixed.set_grads(np.array([1 + 2j, 3j, 4, 5, 6]))
