"""Run every example in a subprocess and compare what it prints with the documented logs.

The documented lines are copied here from the seed documents (the torch tutorials the
examples translate); when the seeds are found beside the repository
(``../shared/seeds``) a test also checks that the copies match them.

Each example runs once, with ``--plot`` into a temporary directory when matplotlib is
installed: its stdout is compared with the documented log and its PNG checked.
"""

import functools
import importlib.util
import os
import pathlib
import re
import struct
import subprocess
import sys
import zlib

import numba
import numpy as np
import pytest

import numbaopt
from numbaopt import nn, optim

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SEEDS = ROOT.parent / "shared" / "seeds"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
NO_MATPLOTLIB = "matplotlib is not installed (pip install -e '.[examples]'): no --plot"
# every example takes --plot PATH; these need more than numbaopt to run at all
NEEDS = {"distributed_data_parallel.py": ("mpi4py", "mpi4py is not installed "
                                          "(pip install -e '.[distributed]')"),
         "digits_mlp.py": ("sklearn", "scikit-learn is not installed (pip install -e "
                                      "'.[examples]'): the digits example needs its data set")}
PLOTTING = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))

# seed 001_fc4bd19e608032db.txt: Adam(lr=0.01) on y = 2x
ADAM_LOG = """\
Epoch 10, Loss: 9.0166
Epoch 20, Loss: 7.0211
Epoch 30, Loss: 5.3501
Epoch 40, Loss: 3.9961
Epoch 50, Loss: 2.9324
The predicted value for input 5: 6.4472""".splitlines()

# seeds 003_6e4d7b1dfab88e0b.txt and 004_4159d1e02a2991bf.txt: StepLR(step_size=4, gamma=0.1)
STEPLR_LOG = [f"Epoch {e}, lr {100 * 0.1 ** (e // 4):0.4f}" for e in range(1, 25)]

# seed 002_1671b058f64db888.txt: SGD(lr=0.1), published on one line
SGD_PUBLISHED = ("Step 1, Loss: 22.9271 Step 2, Loss: 3.0343 Step 3, Loss: 0.4160 "
                 "Step 4, Loss: 0.0620 Step 5, Loss: 0.0100")
# what the program prints from the start the example uses (checked against torch below)
SGD_TRUE = """\
Step 1, Loss: 22.9271
Step 2, Loss: 10.2938
Step 3, Loss: 4.6217
Step 4, Loss: 2.0751
Step 5, Loss: 0.9317""".splitlines()


def example_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def plot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plots")


@pytest.fixture(scope="module")
def run_example(plot_dir):
    """``run_example(name)``: run ``examples/<name>`` once from the repository root (with
    ``--plot plot_dir/<name>.png`` when matplotlib is installed); its stdout lines.
    """

    @functools.lru_cache(maxsize=None)
    def run(name):
        if name in NEEDS:
            pytest.importorskip(NEEDS[name][0], reason=NEEDS[name][1])
        plot = ["--plot", str(plot_dir / name.replace(".py", ".png"))] if HAVE_MATPLOTLIB else []
        proc = subprocess.run([sys.executable, str(EXAMPLES / name), *plot], cwd=ROOT,
                              env=example_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout.splitlines()

    return run


@pytest.fixture(scope="module")
def load_example(tmp_path_factory):
    """``load_example(name)``: import an example as a module (one that guards its main code).

    Its @njit(cache=True) functions get a cache directory of their own, a pytest
    temporary one: entries the example wrote when it ran as ``__main__`` do not load
    under another module name.
    """
    cache_dir = str(tmp_path_factory.mktemp("numba-cache"))

    def load(name):
        module_name = "example_" + name.removesuffix(".py")
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        saved = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = cache_dir
        try:
            spec.loader.exec_module(module)
        finally:
            numba.config.CACHE_DIR = saved
        return module

    return load


def hard_coded_start(name):
    """The ``model.weight.data[...] = w0`` / ``model.bias.data[...] = b0`` values of an example."""
    source = (EXAMPLES / name).read_text()
    w0 = float(re.search(r"model\.weight\.data\[\.\.\.\] = (\S+)", source).group(1))
    b0 = float(re.search(r"model\.bias\.data\[\.\.\.\] = (\S+)", source).group(1))
    return w0, b0


def test_the_documented_examples_exist():
    # (other examples, e.g. distributed_data_parallel.py, are tested where their feature is)
    tested = {"adam_linear_regression.py", "steplr_schedule.py", "sgd_linear_regression.py",
              "per_parameter_options.py", "linear_classifier.py", "numba_model.py"}
    assert tested <= {p.name for p in EXAMPLES.glob("*.py")}


def test_no_example_imports_torch():
    for path in EXAMPLES.glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+torch\b", path.read_text(), re.M), path.name


@pytest.mark.skipif(not SEEDS.is_dir(), reason="seed documents not beside the repository")
def test_documented_logs_are_copied_from_the_seeds():
    def text(prefix):
        (path,) = SEEDS.glob(prefix + "_*.txt")
        return path.read_text()

    assert "\n".join(ADAM_LOG) in text("001")
    assert SGD_PUBLISHED in text("002")
    assert "\n".join(STEPLR_LOG) in text("003")
    assert "\n".join(STEPLR_LOG) in text("004")


# -- documented logs -------------------------------------------------------------------

def test_adam_linear_regression_prints_the_documented_log(run_example):
    assert run_example("adam_linear_regression.py") == ADAM_LOG


def test_steplr_schedule_prints_the_documented_log(run_example):
    assert run_example("steplr_schedule.py") == STEPLR_LOG


def test_sgd_linear_regression_prints_the_true_trajectory_and_the_verdict(run_example):
    lines = run_example("sgd_linear_regression.py")
    assert lines[:5] == SGD_TRUE
    published = re.findall(r"Step \d, Loss: [\d.]+", SGD_PUBLISHED)
    assert lines[0] == published[0]           # the same start, as far as the log tells
    assert all(a != b for a, b in zip(lines[1:5], published[1:]))
    assert "one step with lr=0.1 multiplies the loss by 0.4490 to 0.9410" in lines[5]
    assert lines[-1].startswith("The published log is not from this program")


def test_published_sgd_log_breaks_the_eigenvalue_bound():
    """The argument of sgd_linear_regression.py, recomputed independently."""
    x = np.array([1.0, 2.0, 3.0, 4.0])
    # L(w, b) = mean((w x + b - 2x)^2): its Hessian in (w, b)
    hessian = 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])
    factors = (1 - 0.1 * np.linalg.eigvalsh(hessian)) ** 2
    low = factors.min()
    assert low == pytest.approx(0.44898, abs=1e-5)
    losses = [float(v) for v in re.findall(r"Loss: ([\d.]+)", SGD_PUBLISHED)]
    ratios = np.array(losses[1:]) / np.array(losses[:-1])
    # even the widest rounding of the 4-decimal numbers keeps every ratio far below the bound
    widest = (np.array(losses[1:]) + 5e-5) / (np.array(losses[:-1]) - 5e-5)
    assert np.all(ratios < 0.17) and np.all(widest < low / 2)


# -- the torch programs themselves (live, when torch is importable) --------------------

def torch_linear_regression(torch, w0, b0, optimizer_name, lr, steps):
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[2.0], [4.0], [6.0], [8.0]])
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(w0)
        model.bias.fill_(b0)
    optimizer = getattr(torch.optim, optimizer_name)(model.parameters(), lr=lr)
    criterion = torch.nn.MSELoss()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        prediction = model(torch.tensor([[5.0]])).item()
    return losses, prediction


def test_torch_from_the_recovered_start_prints_the_documented_adam_log():
    torch = pytest.importorskip("torch")
    losses, prediction = torch_linear_regression(
        torch, *hard_coded_start("adam_linear_regression.py"), "Adam", 0.01, 50)
    lines = [f"Epoch {e}, Loss: {losses[e - 1]:.4f}" for e in range(10, 51, 10)]
    lines.append(f"The predicted value for input 5: {prediction:.4f}")
    assert lines == ADAM_LOG


def test_torch_from_the_sgd_start_prints_the_same_true_trajectory():
    torch = pytest.importorskip("torch")
    losses, _ = torch_linear_regression(
        torch, *hard_coded_start("sgd_linear_regression.py"), "SGD", 0.1, 5)
    assert [f"Step {k + 1}, Loss: {v:.4f}" for k, v in enumerate(losses)] == SGD_TRUE


def adam_log(w0, b0):
    """The Adam example's six printed lines, in process, from the start (w0, b0)."""
    x = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    model = nn.Linear(1, 1)
    model.weight.data[...] = w0
    model.bias.data[...] = b0
    optimizer = optim.Adam(model.parameters(), lr=0.01)
    criterion = nn.MSELoss()
    lines = []
    for epoch in range(1, 51):
        loss = criterion(model(x), 2 * x)
        optimizer.zero_grad()
        model.backward(criterion.backward())
        optimizer.step()
        if epoch % 10 == 0:
            lines.append(f"Epoch {epoch}, Loss: {loss.item():.4f}")
    prediction = model(np.array([[5.0]], np.float32)).item()
    lines.append(f"The predicted value for input 5: {prediction:.4f}")
    return lines


def test_the_adam_log_pins_the_start_down():
    """The start sits inside a sliver about 6e-5 wide in w0 and 2e-4 in b0: a small step
    out of it changes at least one printed line."""
    w0, b0 = hard_coded_start("adam_linear_regression.py")
    assert adam_log(w0, b0) == ADAM_LOG
    for dw, db in [(1e-4, 0), (-1e-4, 0), (0, 3e-4), (0, -3e-4), (0.01, 0.01), (-0.5, 0.5)]:
        assert adam_log(w0 + dw, b0 + db) != ADAM_LOG, (dw, db)


# -- examples without a documented log ------------------------------------------------

def accuracies(lines):
    return [float(v) for v in re.findall(r"accuracy ([\d.]+)", "\n".join(lines))]


def test_per_parameter_options(run_example):
    lines = run_example("per_parameter_options.py")
    text = "\n".join(lines)
    assert re.search(r"params \['base.weight', 'base.bias'\] \(arena\[0:80\]\), \{'lr': 0.01, "
                     r"'momentum': 0.9", text)
    assert re.search(r"params \['classifier.weight', 'classifier.bias'\] \(arena\[80:131\]\), "
                     r"\{'lr': 0.001, 'momentum': 0.9", text)
    assert re.search(r"params \['base.weight', 'classifier.weight'\] .*'weight_decay': 0.01", text)
    assert re.search(r"params \['base.bias', 'classifier.bias'\] .*\{'weight_decay': 0, 'lr': 0.01",
                     text)
    acc = accuracies(lines)
    assert len(acc) == 6
    assert acc[2] > acc[0] and acc[5] > acc[3] and min(acc[2], acc[5]) > 0.7


def test_linear_classifier(run_example):
    lines = run_example("linear_classifier.py")
    assert "(class probabilities)" in lines[0]
    assert lines[1].endswith(": True")
    before = float(re.search(r"loss ([\d.]+)$", lines[0]).group(1))
    after = float(re.search(r"step: ([\d.]+)$", lines[2]).group(1))
    assert after < before
    acc = accuracies(lines)
    assert len(acc) == 5 and acc[-1] > acc[0] and acc[-1] > 0.9


def test_numba_model_trains(run_example):
    lines = run_example("numba_model.py")
    assert len(lines) == 20 and lines[0].startswith("epoch  1/20  lr 0.0500")
    losses = [float(v) for v in re.findall(r"loss ([\d.]+)", "\n".join(lines))]
    assert losses[-1] < 0.5 * losses[0]
    assert accuracies(lines)[-1] > 0.9


def test_numba_model_gradient_matches_finite_differences(load_example):
    example = load_example("numba_model.py")
    # The same source compiled afresh: the example's cache=True entries belong to its own runs.
    loss_and_grad = numba.njit(error_model="numpy")(example.loss_and_grad.py_func)
    rng = np.random.default_rng(0)
    layers = [nn.Linear(2, 5, rng=rng, dtype=np.float64),
              nn.Linear(5, 1, rng=rng, dtype=np.float64)]
    params = [p.data for layer in layers for p in layer.parameters()]
    offsets = np.concatenate([[0], np.cumsum([a.size for a in params])]).astype(np.int64)
    data = np.concatenate([a.ravel() for a in params])
    grad = np.full_like(data, np.nan)          # every entry must be overwritten
    x, y = example.make_data(rng, 7)
    x, y = x.astype(np.float64), y.astype(np.float64)

    loss, _ = loss_and_grad(data, grad, offsets, x, y)
    scratch = np.empty_like(data)
    numeric = np.empty_like(data)
    for i in range(data.size):
        old = data[i]
        data[i] = old + 1e-6
        up, _ = loss_and_grad(data, scratch, offsets, x, y)
        data[i] = old - 1e-6
        down, _ = loss_and_grad(data, scratch, offsets, x, y)
        data[i] = old
        numeric[i] = (up - down) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)

    # and the loss is the mean binary cross-entropy of the same two layers in numpy
    logits = layers[1](np.tanh(layers[0](x)))[:, 0]
    bce = np.mean(np.logaddexp(0, logits) - y * logits)
    assert loss == pytest.approx(bce, rel=1e-12)


# -- writing optimizers: torch's Python step() and a compiled elementwise rule ----------

def test_custom_optimizer_example(run_example):
    lines = run_example("custom_optimizer.py")
    text = "\n".join(lines)
    losses = [float(v) for v in re.findall(r"^step +\d+  loss ([\d.]+)$", text, re.M)]
    assert len(losses) == 4 and losses[-1] < 0.01 < losses[0]
    diff = float(re.search(r"max \|PyAdam - numbaopt.optim.Adam\| over 200 steps: (\S+)",
                           text).group(1))
    assert diff <= 1e-12
    assert "keys ['exp_avg', 'exp_avg_sq', 'step'], step 200" in text
    assert lines[-1] == "load_state_dict round trip: the next 20 steps identical: True"


def test_custom_optimizer_matches_adam_in_float32_too(load_example):
    example = load_example("custom_optimizer.py")
    rng = np.random.default_rng(3)
    init = [rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal(())]
    trajectories = []
    for cls in (example.PyAdam, optim.Adam):
        params = [numbaopt.Parameter(a.astype(np.float32)) for a in init]
        opt = cls([{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:]}],
                  lr=0.01, betas=(0.8, 0.95))
        grads = np.random.default_rng(4)
        traj = []
        for k in range(12):
            for i, p in enumerate(params):
                g = grads.standard_normal(p.shape)
                p.grad = None if (i == 1 and k % 3 == 0) else g
            opt.step()
            traj.append(np.concatenate([p.data.ravel() for p in params]))
        trajectories.append(np.array(traj))
    np.testing.assert_allclose(*trajectories, rtol=1e-5, atol=1e-5)


def test_lion_example(run_example):
    lines = run_example("lion.py")
    text = "\n".join(lines)
    losses = [float(v) for v in re.findall(r"^step +\d+  loss ([\d.]+)$", text, re.M)]
    assert len(losses) == 5 and losses[-1] < 0.1 * losses[0]
    diff = float(re.search(r"NumPy reference, float64, .*max relative difference (\S+)$",
                           text, re.M).group(1))
    assert diff <= 1e-12
    assert "keys ['exp_avg', 'step'], step 400" in text
    assert lines[-2] == "load_state_dict round trip: the next 20 steps identical: True"
    assert lines[-1] == ("numbaopt.save / numbaopt.load round trip: the next 20 steps "
                         "identical: True")


@pytest.fixture(scope="module")
def lion_example(load_example):
    return load_example("lion.py")


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-10)],
                         ids=["float32", "float64"])
def test_lion_matches_the_numpy_reference(lion_example, dtype, rtol, parallel):
    init, groups, defaults, grads = lion_example.make_case(dtype, steps=30, seed=1)
    opt, params, ours = lion_example.run_lion(init, groups, defaults, grads, parallel)
    assert (opt.arena.size >= opt.parallel_threshold) == parallel
    ref_groups = [dict(g, params=[init[i].copy() for i in g["params"]]) for g in groups]
    theirs, exp_avg = lion_example.lion_reference(ref_groups, defaults, grads)
    assert ours.dtype == dtype
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale)
    sd = opt.state_dict()
    for i, (p, m) in enumerate(zip(params, exp_avg)):
        np.testing.assert_allclose(opt.state[p]["exp_avg"], m, rtol=rtol,
                                   atol=rtol * max(np.abs(m).max(initial=0), 1e-30))
        # step counts only the steps with a gradient
        assert float(sd["state"][i]["step"]) == sum(g[i] is not None for g in grads)
    assert lion_example.reference_difference(dtype, parallel) <= rtol


def test_lion_reference_first_step_by_hand(lion_example):
    """The oracle itself: from m = 0, one step is p (1 - lr wd) - lr sign(g)."""
    p, g = np.array([1.0, -2.0, 0.5, 3.0]), np.array([0.3, -0.1, 0.0, -4.0])
    groups = [{"params": [p.copy()], "weight_decay": 0.5}]
    defaults = dict(lr=0.1, betas=(0.9, 0.99), weight_decay=0.0, maximize=False)
    traj, (m,) = lion_example.lion_reference(groups, defaults, [[g]])
    np.testing.assert_allclose(traj[0], p * 0.95 - 0.1 * np.sign(g), rtol=1e-15)
    np.testing.assert_allclose(m, 0.01 * g, rtol=1e-15)
    opt_p = numbaopt.Parameter(p.copy())
    opt = lion_example.Lion([{"params": [opt_p], "weight_decay": 0.5}], **defaults)
    opt_p.grad = g
    opt.step()
    np.testing.assert_array_equal(opt_p.data, traj[0])     # sign(0) = 0: element 2 only decays
    maximized = numbaopt.Parameter(p.copy())
    opt = lion_example.Lion([maximized], lr=0.1, maximize=True)
    maximized.grad = g
    opt.step()
    np.testing.assert_array_equal(maximized.data, p + 0.1 * np.sign(g))


def test_lion_validates_its_options(lion_example):
    Lion = lion_example.Lion
    p = numbaopt.Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="Invalid learning rate: -0.1"):
        Lion([p], lr=-0.1)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        Lion([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        Lion([p], weight_decay=-1)
    with pytest.raises(ValueError, match="'maximize' must be True or False"):
        Lion([p], maximize=1)
    opt = Lion([p])
    opt.param_groups[0]["betas"] = (-0.1, 0.9)
    p.grad = np.ones(3)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        opt.step()


LION_CACHE_SCRIPT = """
import importlib.util, sys
import numpy as np
import numbaopt
spec = importlib.util.spec_from_file_location("lion_example", sys.argv[1])
lion = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lion)
p = numbaopt.Parameter(np.ones(5, np.float32))
opt = lion.Lion([p], lr=0.1)
p.grad = np.arange(5, dtype=np.float32) - 2
opt.step()
assert np.array_equal(p.data, np.float32(1) - np.float32(0.1) * np.sign(p.grad)), p.data
stats = opt._kernel.stats
print("misses", sum(stats.cache_misses.values()), "hits", sum(stats.cache_hits.values()))
"""


def test_lion_kernel_loads_from_the_cache_in_a_second_process(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    counts = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", LION_CACHE_SCRIPT, str(EXAMPLES / "lion.py")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        misses, hits = re.fullmatch(r"misses (\d+) hits (\d+)\n", proc.stdout).groups()
        counts.append((int(misses), int(hits)))
    assert counts[0][0] >= 1                    # the first process compiled the kernel ...
    assert counts[1][0] == 0 and counts[1][1] >= 1, counts   # ... the second loaded it
    assert any(tmp_path.rglob("*.nbi"))


LION_CUDA_SCRIPT = """
import importlib.util, sys
import numpy as np
from numba import config
assert config.ENABLE_CUDASIM
from numbaopt.kernels import cuda as kernels
kernels.THREADS_PER_BLOCK = 4      # small arenas span several blocks and chunks
kernels.CHUNK = 5
spec = importlib.util.spec_from_file_location("lion_example", sys.argv[1])
lion = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lion)
for dtype in (np.float32, np.float64):
    init, groups, defaults, grads = lion.make_case(dtype, steps=6, seed=2)
    cpu, cpu_params, cpu_traj = lion.run_lion(init, groups, defaults, grads)
    gpu, gpu_params, gpu_traj = lion.run_lion(init, groups, defaults, grads, device="cuda")
    assert gpu.device == "cuda" and gpu_traj.dtype == dtype
    a, b = cpu.state_dict(), gpu.state_dict()
    assert sorted(a["state"]) == sorted(b["state"])
    diff = np.abs(gpu_traj - cpu_traj).max()
    for i in a["state"]:
        for key in ("step", "exp_avg"):
            gap = np.abs(np.asarray(b["state"][i][key]) - a["state"][i][key])
            diff = max(diff, gap.max(initial=0))
    print(np.dtype(dtype).name, "max |cuda - cpu|", diff)
"""


def test_lion_on_cuda_under_the_simulator_matches_the_cpu():
    try:
        import numba.cuda  # noqa: F401   (numba-cuda, or numba's own target)
    except ImportError:
        pytest.skip("numba-cuda is not installed (pip install -e '.[cuda]')")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", LION_CUDA_SCRIPT, str(EXAMPLES / "lion.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = dict(re.findall(r"^(float32|float64) max \|cuda - cpu\| (\S+)$", proc.stdout, re.M))
    assert set(found) == {"float32", "float64"}, proc.stdout
    assert float(found["float32"]) <= 1e-5 and float(found["float64"]) <= 1e-10, found


def test_custom_optimizer_checkpoint_round_trip(load_example, tmp_path):
    """numbaopt.save / load work for a Python-step optimizer too (its state comes back
    as arrays, a 0-d array for ``step``), and training continues bit for bit."""
    example = load_example("custom_optimizer.py")
    w, b = example.make_params()
    opt = example.make_optimizer(example.PyAdam, w, b)
    example.train(opt, w, b, 30)
    numbaopt.save(tmp_path / "pyadam.npz", opt)
    w2, b2 = example.make_params()
    opt2 = example.make_optimizer(example.PyAdam, w2, b2)
    numbaopt.load(tmp_path / "pyadam.npz", opt2)
    assert float(opt2.state[w2]["step"]) == 30 and float(opt2.state[b2]["step"]) == 20
    np.testing.assert_array_equal(example.train(opt, w, b, 100, first=30),
                                  example.train(opt2, w2, b2, 100, first=30))


# -- --plot PATH: every example draws its curves, matplotlib only when asked ----------------

def test_every_example_takes_plot():
    assert len(PLOTTING) >= 11
    for name in PLOTTING:
        assert '"--plot"' in (EXAMPLES / name).read_text() or \
            "ArgumentParser(__doc__)" in (EXAMPLES / name).read_text(), name


def check_png(path):
    """A complete PNG (every chunk's CRC right, the pixels inflate to the size IHDR says),
    300 to 4000 pixels each way, over 10 kB, and not a blank page."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind}"
        chunks.append((kind, body))
        at += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    assert 300 <= width <= 4000 and 300 <= height <= 4000, (width, height)
    assert len(data) > 10_000, len(data)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert depth == 8 and len(pixels) == height * (1 + width * channels)

    from matplotlib.image import imread
    image = imread(path)
    assert image.shape[:2] == (height, width)
    ink = np.any(image[..., :3] < 0.9, axis=-1).mean()    # axes, lines and text on white
    assert 0.01 < ink < 0.5, ink


@pytest.mark.parametrize("name", PLOTTING)
def test_example_writes_its_plot(run_example, plot_dir, name):
    if not HAVE_MATPLOTLIB:
        pytest.skip(NO_MATPLOTLIB)
    run_example(name)
    check_png(plot_dir / name.replace(".py", ".png"))


ONLY_WITH_PLOT_SCRIPT = """
import contextlib, io, runpy, sys
sys.path.insert(0, sys.argv[1])
example = sys.argv[1] + "/adam_linear_regression.py"
sys.argv = [example]
with contextlib.redirect_stdout(io.StringIO()):
    runpy.run_path(example, run_name="__main__")
print("imported without --plot:", "matplotlib" in sys.modules)
sys.modules["matplotlib"] = None              # as if it were not installed
sys.argv = [example, "--plot", "never.png"]
try:
    runpy.run_path(example, run_name="__main__")
except SystemExit as e:
    print("exit", e.code)
"""


def test_matplotlib_is_imported_only_with_plot(tmp_path):
    proc = subprocess.run([sys.executable, "-c", ONLY_WITH_PLOT_SCRIPT, str(EXAMPLES)],
                          cwd=tmp_path, env=example_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.splitlines() == ["imported without --plot: False", "exit 2"], \
        proc.stdout + proc.stderr
    # refused before training, with the command that fixes it
    assert "--plot needs matplotlib: pip install matplotlib" in proc.stderr
    assert not (tmp_path / "never.png").exists()


# -- the digits MLP: accuracy, and a resume that ends where the uninterrupted run does ------

def test_digits_mlp_reaches_95_percent_and_resumes_exactly(run_example):
    lines = run_example("digits_mlp.py")
    text = "\n".join(lines)
    first = re.search(r"^epoch 20: train loss [\d.]+, train accuracy ([\d.]+), "
                      r"test accuracy ([\d.]+) \(([\d.]+) s\)$", text, re.M)
    resumed = re.search(r"^resumed run, epochs 11-20: train accuracy ([\d.]+), "
                        r"test accuracy ([\d.]+)$", text, re.M)
    assert first and resumed, text
    train_acc, test_acc, seconds = map(float, first.groups())
    assert test_acc >= 0.95 and train_acc >= test_acc
    assert seconds < 30                 # the uninterrupted run, its numba compilation included
    assert tuple(map(float, resumed.groups())) == (train_acc, test_acc)
    assert "checkpoint after epoch 10" in text
    assert lines[-1] == "resumed run ends with the same parameters as the uninterrupted run: True"


def test_phase_retrieval_recovers_the_signal_with_complex_adam(run_example):
    lines = run_example("phase_retrieval.py")
    assert lines[0].startswith("spectral start: error")
    assert any("recovered up to a global phase" in line and "(below 1e-6)" in line
               for line in lines), lines
    assert any(line.endswith("agrees bit for bit: True") for line in lines), lines
