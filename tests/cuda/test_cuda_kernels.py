"""The CUDA kernels against the CPU kernels and the NumPy reference, kernel by kernel.

Every case of ``tests/cases.py`` (two groups, 0-d and zero-size parameters,
gradients that are None on some steps), in float64 and float32: the arena
arrays are built here from the case, the CPU kernel and the CUDA kernel take
the same steps side by side, and after each step the parameters, the state
buffers and the step counts must agree (and agree with ``tests/reference.py``).
Tiny blocks and chunks make 25 elements span 9 blocks, several per
parameter. Run with ``NUMBA_ENABLE_CUDASIM=1`` (see conftest.py).
"""

import importlib.util
import pathlib

import numpy as np
import pytest
from numba.core import config

_here = pathlib.Path(__file__).parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# This folder's conftest.py, by path: the name "conftest" also belongs to tests/conftest.py.
_cuda_conftest = _load("_numbaopt_cuda_conftest", _here / "conftest.py")
if _cuda_conftest.UNAVAILABLE:
    pytest.skip(_cuda_conftest.UNAVAILABLE, allow_module_level=True)

from numba import cuda  # noqa: E402

import numbaopt  # noqa: E402
from numbaopt import optim  # noqa: E402
from numbaopt.kernels import cuda as K  # noqa: E402
from cases import CASES, DTYPES, SIMULATOR_CASES, groups_of, make_inputs, shapes  # noqa: E402
from reference import reference_optimizer  # noqa: E402
from tolerance import assert_close  # noqa: E402

SIMULATOR = bool(config.ENABLE_CUDASIM)
STEPS = 8          # the simulator runs kernels as Python threads: keep it short
TINY_CHUNK = 5     # the 12-element parameter spans 3 chunks, the 6-element one 2
TINY_BLOCK = 4     # threads per block: a 5-element chunk takes a block two passes

# The geometries every case runs under: (chunk size, threads per block, blocks or None).
GEOMETRIES = {
    "tiny": (TINY_CHUNK, TINY_BLOCK, None),        # one block per chunk
    "strided": (TINY_CHUNK, TINY_BLOCK, 3),        # 3 blocks walk 9 chunks
    "arena_chunks": (1 << 14, 2, None),            # numbaopt.arena's chunk size: one per parameter
}

# One case per optimizer for the slower checks (the parity table has several each).
ONE_CASE = {}
for _case, (_name, _, _) in CASES.items():
    ONE_CASE.setdefault(_name, _case)

# The simulator runs kernels as Python threads: every geometry for the hand-written cases
# and each optimizer's first case, the tiny one for the rest of SIMULATOR_CASES.
KERNEL_CASES = [(case, geometry) for case in SIMULATOR_CASES for geometry in GEOMETRIES
                if geometry == "tiny" or "/" not in case or ONE_CASE[CASES[case][0]] == case]


# ----------------------------------------------------------------------- the arena, by hand

class HostArena:
    """The kernel arguments of one case as host arrays, laid out as numbaopt.arena lays them.

    The hyperparameter rows, state names and initial state come from a CPU optimizer
    built on the case, so every rule is covered without a table here.
    """

    def __init__(self, case, dtype, init, chunk):
        name, kwargs, _ = CASES[case]
        self.name = name
        self.dtype = np.dtype(dtype)
        params = [numbaopt.Parameter(a.copy()) for a in init]
        opt = getattr(optim, name)(groups_of(params, case), **kwargs)
        self.rule = opt._rule
        arena = opt.arena
        self.offsets = arena.offsets.copy()
        self.group = arena.param_group.copy()
        n = arena.size
        self.param = arena.data.copy()
        self.grad = np.full(n, np.nan, dtype=dtype)
        self.has_grad = np.zeros(len(init), dtype=np.bool_)
        self.step = np.zeros(len(init), dtype=np.float64)
        self.scalars = np.zeros((len(init), len(opt._scalar_state)), dtype=np.float64)
        self.hyper = np.array([opt._hyper_row(g) for g in opt.param_groups], dtype=np.float64)
        self.chunks = K.chunk_table(self.offsets, chunk)
        used = set()
        for g in opt.param_groups:
            used.update(opt._group_state_keys(g))
        self.state_names = tuple(opt._state_keys)
        # Adagrad's sum starts at initial_accumulator_value: take the optimizer's own buffers.
        self.state = [arena.state[k].copy() if k in used else np.empty(0, dtype=dtype)
                      for k in self.state_names]

    def set_grads(self, grads):
        """One step's gradients; a missing one leaves NaN behind, which no kernel may read."""
        for i, g in enumerate(grads):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            self.has_grad[i] = g is not None
            self.grad[lo:hi] = np.nan if g is None else g.reshape(-1)

    def args(self):
        return (self.param, self.grad, self.has_grad, self.step, self.group, self.hyper,
                self.chunks, self.scalars) + tuple(self.state)

    def cpu_step(self):
        self.rule.cpu()[0](*self.args())

    def to_device(self):
        # The GPU keeps one step count and scalar row per chunk (see numbaopt.kernels.cuda).
        args = list(self.args())
        args[3] = K.chunk_steps(self.step, self.chunks)
        args[7] = np.ascontiguousarray(K.chunk_steps(self.scalars, self.chunks).reshape(
            self.chunks.shape[0], self.scalars.shape[1]))
        return [cuda.to_device(a) for a in args]

    def launch(self, dev, **geometry):
        self.rule.cuda()(*dev, **geometry)


def copy_inputs(host, dev):
    """Upload what the host writes between steps: the gradients and their flags."""
    dev[1].copy_to_device(host.grad)
    dev[2].copy_to_device(host.has_grad)


def device_state(host, dev):
    """``{name: host array}`` of everything a step writes, per parameter where per chunk."""
    out = {"param": dev[0].copy_to_host(),
           "step": K.param_steps(dev[3].copy_to_host(), host.chunks),
           "scalars": K.param_steps(dev[7].copy_to_host(), host.chunks)}
    out.update(zip(host.state_names, (d.copy_to_host() for d in dev[8:])))
    return out


def check_same(host, dev, dtype, label, exact=False):
    """The device arrays against the CPU kernel's."""
    want = {"param": host.param, "step": host.step, "scalars": host.scalars}
    want.update(zip(host.state_names, host.state))
    got = device_state(host, dev)
    for name, value in want.items():
        if exact:
            np.testing.assert_array_equal(got[name], value, err_msg=f"{label}: {name}")
        else:
            kind = np.float64 if name in ("step", "scalars") else dtype
            assert_close(got[name], value, kind, f"{label}: {name}")


# ------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, geometry", KERNEL_CASES)
def test_matches_cpu_kernel_and_reference(case, dtype, geometry):
    name, kwargs, _ = CASES[case]
    chunk, tpb, blocks = GEOMETRIES[geometry]
    init, grads = make_inputs(case, dtype)
    host = HostArena(case, dtype, init, chunk)
    dev = host.to_device()
    arrays = [a.copy() for a in init]
    ref = reference_optimizer(name, groups_of(arrays, case), **kwargs)
    for k in range(STEPS):
        host.set_grads(grads[k])
        copy_inputs(host, dev)
        host.launch(dev, threads_per_block=tpb, blocks=blocks)
        host.cpu_step()
        ref.step(grads[k])
        label = f"{case} {dtype} {geometry} step {k + 1}"
        # The simulator runs the same operations in the same dtype as the CPU kernel: no
        # rounding difference. A GPU contracts multiply-adds (FMA): project tolerances.
        check_same(host, dev, dtype, label, exact=SIMULATOR)
        assert_close(dev[0].copy_to_host(), np.concatenate([a.reshape(-1) for a in arrays]),
                     dtype, f"{label}: params vs NumPy reference")

    # State and step counts against the reference (torch's semantics), parameter by parameter.
    state = device_state(host, dev)
    step = state["step"]
    scalar_names = getattr(optim, name)._scalar_state
    for i, entry in enumerate(ref.state):
        lo, hi = host.offsets[i], host.offsets[i + 1]
        for key, value in entry.items():
            if key == "step":
                assert step[i] == value, f"{case} {dtype}: step of parameter {i}"
            elif key in scalar_names:
                got = np.float32(state["scalars"][i, scalar_names.index(key)])
                assert got == np.float32(value), f"{case} {dtype}: {key} of parameter {i}"
            else:
                got = state[key][lo:hi]
                assert_close(got.reshape(np.shape(value)), value, dtype,
                             f"{case} {dtype}: state[{i}][{key!r}]")
        if name != "SGD" and not entry:
            assert step[i] == 0, f"{case} {dtype}: parameter {i} never had a gradient"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the simulator's NumPy sees the NaNs
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ONE_CASE))
def test_nonfinite_values_propagate_like_the_cpu_kernel(name, dtype):
    """NaN and inf in gradients and state: the same NaNs where the CPU kernel has them.

    amsgrad's running max keeps a NaN from either side (torch.maximum); the centered
    RMSprop variance can go below zero, where sqrt gives NaN (and must not raise).
    """
    case = {"Adam": "adam_amsgrad_wd", "RMSprop": "rmsprop_centered_momentum",
            "Adagrad": "adagrad_decay", "SGD": "sgd_momentum"}.get(name, ONE_CASE[name])
    init, _ = make_inputs(case, dtype)
    host = HostArena(case, dtype, init, TINY_CHUNK)
    n = host.param.size
    bad = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0], dtype=dtype)
    if name == "RMSprop":
        # square_avg 0 below a grad_avg of 1 with a zero gradient: variance < 0 on element 3.
        host.state[0][3] = 0.0
        host.state[2][3] = 1.0
    if name == "Adam":
        host.state[2][5] = np.nan    # a NaN already in max_exp_avg_sq stays there
    dev = host.to_device()
    for k in range(3):
        rng = np.random.default_rng(k)
        g = rng.standard_normal(n).astype(dtype)
        g[:bad.size] = bad
        grads = [g[host.offsets[i]:host.offsets[i + 1]].reshape(s) for i, s in enumerate(shapes())]
        host.set_grads(grads)
        copy_inputs(host, dev)
        host.launch(dev, threads_per_block=TINY_BLOCK)
        with np.errstate(invalid="ignore", over="ignore"):
            host.cpu_step()
        param = dev[0].copy_to_host()
        np.testing.assert_array_equal(np.isnan(param), np.isnan(host.param), f"{name} step {k}")
        check_same(host, dev, dtype, f"{name} {dtype} step {k + 1}", exact=SIMULATOR)
    if name != "Rprop":   # torch's sign(NaN) is 0: Rprop does not move on a NaN gradient
        assert np.isnan(host.param).any()
    assert not np.isnan(host.param).all()
    if name == "Adam":
        assert np.isnan(dev[10].copy_to_host()[5])   # max_exp_avg_sq
    if name == "RMSprop":
        assert np.isnan(dev[0].copy_to_host()[3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_grads_finite(dtype):
    init, grads = make_inputs("adam", dtype)
    host = HostArena("adam", dtype, init, TINY_CHUNK)
    host.set_grads(grads[0])   # parameter 4 has no gradient: its NaNs are not looked at
    dev = host.to_device()
    args = (dev[1], dev[2], dev[6])   # grad, has_grad, chunks
    assert not host.has_grad[4] and np.isnan(host.grad[host.offsets[4]:host.offsets[5]]).all()
    assert K.grads_finite(*args, threads_per_block=TINY_BLOCK)
    assert cpu_finite(host)
    j = host.offsets[3] + 1    # parameter 3 has a gradient at step 0
    for value in (np.inf, -np.inf, np.nan):
        host.grad[j] = value
        dev[1].copy_to_device(host.grad)
        assert not K.grads_finite(*args, threads_per_block=TINY_BLOCK, blocks=2)
        assert not cpu_finite(host)
        host.grad[j] = 0.0


def cpu_finite(host):
    from numbaopt.kernels.finite import grads_finite
    return grads_finite(host.grad, host.has_grad, host.chunks)


def test_chunk_table_covers_every_parameter_without_straddling():
    sizes = [12, 0, 1, 5, 0, 4097, 4096, 3]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    for chunk in (1, 4, 5, K.CHUNK, 1 << 14):
        table = K.chunk_table(offsets, chunk)
        assert table.dtype == np.int64 and table.flags.c_contiguous and table.shape[1] == 3
        param, start, stop = table.T
        assert np.all(stop - start <= chunk) and np.all(stop >= start)
        for i, size in enumerate(sizes):
            mine = table[param == i]
            assert len(mine) == max(1, -(-size // chunk))   # a zero-size parameter: one empty chunk
            assert mine[0, 1] == offsets[i] and mine[-1, 2] == offsets[i + 1]
            assert np.array_equal(mine[1:, 1], mine[:-1, 2])


def test_adamw_shares_adams_rule_and_kernel():
    assert optim.AdamW._rule is optim.Adam._rule
    init, grads = make_inputs("adamw", "float64")
    host = HostArena("adamw", "float64", init, TINY_CHUNK)
    host.set_grads(grads[0])
    dev = host.to_device()
    host.launch(dev, threads_per_block=TINY_BLOCK)
    host.cpu_step()
    check_same(host, dev, "float64", "AdamW")


# ------------------------------------------------------------------------- real GPU only

@pytest.mark.cuda_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["sgd_nesterov", "adam_amsgrad_wd", "adamw",
                                  "rmsprop_centered_momentum", "adagrad_decay"]
                         + [ONE_CASE[n] for n in ("Adadelta", "Adamax", "NAdam", "RAdam",
                                                  "ASGD", "Rprop")])
def test_large_arena_default_launch(case, dtype):
    """Default blocks and chunks on an arena of a few hundred thousand elements."""
    name, _, _ = CASES[case]
    rng = np.random.default_rng(7)
    sizes = [(300, 400), (), (0,), (4097,), (2, 3), (150_001,)]
    init = [rng.standard_normal(s).astype(dtype) for s in sizes]
    host = HostArena(case, dtype, init, K.CHUNK)   # groups: the first three, the rest
    dev = host.to_device()
    for k in range(4):
        grads = [rng.standard_normal(s).astype(dtype) if (k + i) % 4 else None
                 for i, s in enumerate(sizes)]
        host.set_grads(grads)
        copy_inputs(host, dev)
        host.launch(dev)
        host.cpu_step()
        check_same(host, dev, dtype, f"{case} {dtype} step {k + 1}")


@pytest.mark.cuda_gpu
def test_compiled_without_fastmath():
    """IEEE sqrt and division in the PTX (no .approx or .ftz outside libdevice's pow)."""
    init, grads = make_inputs("adam", "float32")
    host = HostArena("adam", "float32", init, TINY_CHUNK)
    host.set_grads(grads[0])
    host.launch(host.to_device())
    ptx = "\n".join(host.rule.cuda().kernel.inspect_asm().values())
    assert "sqrt.rn.f32" in ptx and "div.rn.f32" in ptx
    assert "sqrt.approx" not in ptx and "div.approx" not in ptx and "div.full" not in ptx
