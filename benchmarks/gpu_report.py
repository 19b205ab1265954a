"""The GPU check's parts: CUDA tests, GPU against CPU, step times against torch and a copy.

    bash scripts/gpu_check.sh            # all parts, one call, at most 8 minutes (needs a GPU)
    python -m benchmarks.gpu_report      # only the step times, printed (the ``bench`` part)
    python -m benchmarks.gpu_report PART --out FILE [--smoke] [--deadline EPOCH]

``scripts/gpu_check.sh`` runs each part in its own process (a crash or a
timeout in one loses nothing of the others) and ``assemble`` joins their
markdown into one file. Parts:

- ``machine``: GPU (nvidia-smi name, driver, CUDA version), CPU, library versions.
- ``tests``: the ``cuda_gpu`` tests, the CUDA suite (``tests/cuda``) and
  ``benchmarks/test_step_cuda.py`` in pytest subprocesses, without the simulator.
- ``parity``: every optimizer with a GPU kernel, stepped on the CPU and on the
  GPU from the same inputs, compared with the tolerances of ``tests/tolerance.py``;
  where float32 is not bitwise equal the table counts the fused multiply-adds
  in the kernels' PTX.
- ``bench``: Adam, AdamW, SGD with momentum, RMSprop and Adagrad steps
  (``device="cuda"``) beside torch's fused CUDA step and a device-to-device copy
  of the same bytes, timed interleaved.
- ``cpu``: ``benchmarks.report``'s step-time table on the CPU at 16M and 256M
  parameters, numba and torch at the machine's threads (16 on the GPU machine).

Every part rewrites its markdown after each row, so a part killed at its time
cap keeps its finished rows; it exits 1 when one of its checks failed.
``--smoke`` runs each part at tiny sizes, also under ``NUMBA_ENABLE_CUDASIM=1``.
"""

import argparse
import contextlib
import gc
import json
import math
import os
import pathlib
import platform
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np

try:        # optional (numba-cuda); a module global, so the simulator can swap it in kernels
    from numba import cuda
except Exception:    # not installed, or a broken CUDA install: the parts say so
    cuda = None

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: The optimizers timed on the GPU (names of ``benchmarks.cases.OPTIMIZERS``).
GPU_OPTIMIZERS = ("Adam", "AdamW", "SGD_momentum", "RMSprop", "Adagrad")

#: (elements, tensors) of the issue, float32; float64 at ``FLOAT64_SIZES``.
GPU_SIZES = [(n, t) for n in (1_000_000, 16_000_000, 100_000_000, 1_000_000_000)
             for t in (1, 1000)]
FLOAT64_SIZES = [(16_000_000, 1), (16_000_000, 1000)]
SMOKE_SIZES = [(512, 1), (512, 4)]
SMOKE_FLOAT64_SIZES = [(512, 1)]

#: Targets of the issue on the H200.
COPY_TARGET = 0.9            # of the copy's bandwidth, from ...
COPY_TARGET_FROM = 100_000_000   # ... parameters on
TORCH_TARGET = 1.0           # torch step time / numbaopt step time, at every size

FLOAT_RTOL = {"float64": 1e-10, "float32": 1e-5}    # tests/tolerance.py
#: the optimizers --smoke also checks in float32
SMOKE_FLOAT32 = ("SGD", "Adam")


# -- small helpers ---------------------------------------------------------------------
def simulator():
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def gpu():
    """numba.cuda when a real GPU is usable here, else None (the simulator does not count)."""
    if cuda is None or simulator() or not cuda.is_available():
        return None
    return cuda


def markdown_table(header, rows, left=1):
    """A markdown table; the first ``left`` columns left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_time(seconds):
    if not math.isfinite(seconds):
        return "–"
    us = seconds * 1e6
    if us < 1000:
        return f"{us:.1f} µs"
    return f"{us / 1000:.3f} ms"


def fmt_size(numel, tensors):
    for unit, scale in (("B", 10 ** 9), ("M", 10 ** 6), ("k", 10 ** 3)):
        if numel >= scale and numel % scale == 0:
            return f"{numel // scale}{unit}/{tensors}"
    return f"{numel}/{tensors}"


def fmt_bytes(n):
    if n >= 1e8:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


class Fragment:
    """One part's markdown section, rewritten after every change.

    ``path`` None prints the section at ``close()`` instead. Beside ``path`` a
    JSON file carries the part's one-line summary for the summary table.
    """

    def __init__(self, path, title, header=None, left=1):
        self.path = pathlib.Path(path) if path else None
        self.title, self.header, self.left = title, header, left
        self.rows, self.before, self.after = [], [], []
        self.summary = ""
        self.write()

    def text(self):
        parts = [f"## {self.title}", ""]
        if self.before:
            parts += self.before + [""]
        if self.header and self.rows:
            parts += [markdown_table(self.header, self.rows, self.left), ""]
        if self.after:
            parts += ["\n\n".join(self.after), ""]
        return "\n".join(parts)

    def write(self):
        if self.path is None:
            return
        self.path.write_text(self.text())
        self.path.with_suffix(".json").write_text(json.dumps({"summary": self.summary}))

    def add(self, row):
        self.rows.append(row)
        print(" | ".join(str(c) for c in row), file=sys.stderr, flush=True)
        self.write()

    def note(self, line, before=False):
        (self.before if before else self.after).append(line)
        self.write()

    def close(self, summary):
        self.summary = summary
        self.write()
        if self.path is None:
            print(self.text())


def time_left(deadline):
    return math.inf if deadline is None else deadline - time.time()


def free_gpu_memory():
    """Drop what the last case held: Python cycles, numba's pending frees, torch's cache."""
    gc.collect()
    try:
        cuda.current_context().deallocations.clear()
    except Exception:       # the simulator has no deallocation queue
        pass
    torch = sys.modules.get("torch")     # only if a part imported it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_cuda():
    """torch when it sees a CUDA device; never under the simulator (no GPU for torch)."""
    torch = None if simulator() else _torch()
    return torch if torch is not None and torch.cuda.is_available() else None


# -- machine --------------------------------------------------------------------------
def _run_text(cmd, timeout=20):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def peak_bandwidth(cuda=cuda):
    """Peak memory bandwidth from the device's attributes (memory clock x bus width x 2)."""
    device = cuda.get_current_device()
    clock_hz = device.MEMORY_CLOCK_RATE * 1e3
    return 2 * clock_hz * device.GLOBAL_MEMORY_BUS_WIDTH / 8, device.name


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return f"{int(line.split()[1]) / 2 ** 20:.0f} GiB"
    except OSError:
        pass
    return "unknown"


def _numba_device_line():
    if gpu() is None:
        return "- numba.cuda.is_available() is False in this process"
    peak, _ = peak_bandwidth(cuda)
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    try:
        runtime = ".".join(map(str, cuda.runtime.get_version()))
    except Exception as error:      # runtime library not found
        runtime = f"unknown ({type(error).__name__})"
    return (f"- numba sees {name}, compute capability "
            f"{'.'.join(map(str, device.compute_capability))}, {device.MULTIPROCESSOR_COUNT} "
            f"SMs, CUDA runtime {runtime}; peak memory bandwidth by its attributes "
            f"{peak / 1e12:.2f} TB/s")


def machine_lines():
    """Markdown bullets naming the machine: GPU, driver, CUDA, CPU, libraries."""
    import numba
    lines = []
    if simulator():
        lines.append("- GPU: none. numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): the numbers "
                     "below check the script's plumbing only")
    else:
        smi = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                         "--format=csv,noheader"])
        header = _run_text(["nvidia-smi"]) or ""
        cuda_version = re.search(r"CUDA Version:\s*([\d.]+)", header)
        lines.append(f"- GPU: {smi or 'nvidia-smi gave nothing'}; driver's CUDA "
                     f"{cuda_version.group(1) if cuda_version else 'version unknown'} "
                     f"(nvidia-smi)")
        try:
            lines.append(_numba_device_line())
        except Exception as error:      # an attribute this numba-cuda lacks: say so, go on
            lines.append(f"- numba's view of the device: {type(error).__name__}: {error}")
    torch = None if simulator() else _torch()
    if simulator():
        try:
            from importlib.metadata import version
            torch_text = f"{version('torch')} (not imported: the simulator is no GPU for it)"
        except Exception:
            torch_text = "not installed (torch rows are skipped)"
    elif torch is None:
        torch_text = "not installed (torch rows are skipped)"
    else:
        cuda_ok = torch.cuda.is_available()
        torch_text = (f"{torch.__version__}, CUDA {torch.version.cuda}, "
                      + (f"sees {torch.cuda.get_device_name()}" if cuda_ok
                         else "no CUDA device (the torch-CUDA rows are skipped)"))
    cupy_text = "not imported under the simulator"
    if not simulator():
        try:
            import cupy
            cupy_text = cupy.__version__
        except Exception:   # absent, or no CUDA library for it
            cupy_text = "not importable"
    try:
        from importlib.metadata import version
        numba_cuda = version("numba-cuda")
    except Exception:
        numba_cuda = "not installed"
    lines.append(f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, {host_memory()} memory")
    lines.append(f"- Python {platform.python_version()}, NumPy {np.__version__}, Numba "
                 f"{numba.__version__}, numba-cuda {numba_cuda}, torch {torch_text}, "
                 f"CuPy {cupy_text}; {platform.system()} {platform.release()}")
    lines.append(f"- {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    return lines


def part_machine(args):
    frag = Fragment(args.out, "Machine")
    for line in machine_lines():
        frag.note(line, before=True)
    frag.close("GPU and CPU named" if not simulator() else "simulator: no GPU")
    return 0


# -- tests -----------------------------------------------------------------------------
def run_capped(cmd, timeout, env=None, log=sys.stderr):
    """Run ``cmd`` in its own process group; kill the whole group after ``timeout`` s.

    Returns ``(returncode or None when killed, output)``; the output is also copied to ``log``.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    log.write(out)
    log.flush()
    return code, out


_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def pytest_counts(output):
    """``{"passed": n, ...}`` from pytest's last summary line."""
    counts = {}
    for line in reversed(output.splitlines()):
        found = _COUNTS.findall(line)
        if found and (" in " in line or "no tests ran" in line):
            for n, word in found:
                counts["errors" if word.startswith("error") else word] = int(n)
            break
    return counts


def pytest_runs(smoke):
    """``(label, pytest arguments, must pass something)`` of the tests part."""
    import importlib.util
    # no test here uses hypothesis, whose plugin costs a second or two to import
    base = ["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-rfE"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        base += ["--timeout=120"]
    workers = int(os.environ.get("GPU_CHECK_WORKERS", "0" if smoke else "4"))
    parallel = (["-n", str(workers)] if workers > 1
                and importlib.util.find_spec("xdist") is not None else [])
    if smoke:    # the simulator runs every GPU thread in Python: two quick tests
        suite = ["tests/cuda/test_cuda_optim.py", "-k",
                 "skip_nonfinite_on_gpu or zero_grad_and_add_param_group"]
    else:
        suite = ["tests/cuda", "-m", "not cuda_gpu"] + parallel
    bench = ["benchmarks/test_step_cuda.py"]
    if importlib.util.find_spec("pytest_benchmark") is not None:
        bench += ["--benchmark-disable"]
    # under the simulator every cuda_gpu test skips: one file shows that they are found
    marked = ["tests/cuda/test_cuda_optim.py" if smoke else "tests/cuda", "-m", "cuda_gpu"]
    no_bench = ["-p", "no:benchmark"]
    return [("`cuda_gpu` tests", base + no_bench + marked, not smoke),
            ("CUDA suite (tests/cuda), no simulator" if not smoke
             else "CUDA suite, 2 tests (simulator)", base + no_bench + suite, True),
            ("benchmarks/test_step_cuda.py", base + bench, not smoke)]


def part_tests(args):
    header = ["run", "passed", "failed", "errors", "skipped", "time", "result"]
    frag = Fragment(args.out, "CUDA tests" + (" (smoke, simulator)" if simulator() else
                                              ", no simulator"), header, 1)
    env = dict(os.environ)
    if not args.smoke:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    failed = 0
    runs = pytest_runs(args.smoke)
    for k, (label, pytest_args, must_pass) in enumerate(runs):
        # the later runs keep 20 s each; this one may use the rest
        cap = time_left(args.deadline) - 20 * (len(runs) - k - 1)
        if cap < 5:
            frag.add([label, "", "", "", "", "", "not run: time budget"])
            failed += 1
            continue
        cap = min(cap, 3600)
        cmd = [sys.executable, "-m", "pytest"] + pytest_args
        t0 = time.time()
        code, out = run_capped(cmd, cap, env)
        elapsed = time.time() - t0
        c = pytest_counts(out)
        ok = code == 0 and not c.get("failed") and not c.get("errors") \
            and (c.get("passed", 0) > 0 or not must_pass)
        if code is None:
            result = f"FAILED: killed at its {cap:.0f} s cap"
        elif ok:
            result = "ok" if c.get("passed") else "ok (all skipped: no GPU)"
        elif code == 0:
            result = "FAILED: nothing passed"
        else:
            result = f"FAILED (pytest exit {code})"
        failed += not ok
        frag.add([label, c.get("passed", 0), c.get("failed", 0), c.get("errors", 0),
                  c.get("skipped", 0), f"{elapsed:.0f} s", result])
        bad = [line for line in out.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        for line in bad[:15]:
            frag.note(f"- {label}: `{line[:300]}`")
        if len(bad) > 15:
            frag.note(f"- {label}: {len(bad) - 15} more; see gpu_check.log")
    frag.note("Commands: " + ", ".join(f"`{shlex.join(['python3', '-m', 'pytest'] + a)}`"
                                       for _, a, _ in runs) + ".", before=True)
    frag.close(f"{len(runs) - failed} of {len(runs)} runs passed")
    return 1 if failed else 0


# -- parity: GPU against CPU -----------------------------------------------------------
#: (label, class name in numbaopt.optim or "module:Class", kwargs, overrides of group 1, kind)
PARITY = [
    ("SGD", "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
     dict(lr=0.02), "dense"),
    ("Adam", "Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True), dict(weight_decay=0),
     "dense"),
    ("AdamW", "AdamW", dict(lr=0.01, weight_decay=0.1), dict(weight_decay=0.5), "dense"),
    ("RMSprop", "RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1),
     dict(centered=False), "dense"),
    ("Adagrad", "Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1,
                                initial_accumulator_value=0.2), dict(lr=0.05), "dense"),
    ("Adadelta", "Adadelta", dict(weight_decay=0.1), dict(rho=0.95), "dense"),
    ("Adamax", "Adamax", dict(weight_decay=0.1), dict(lr=0.01), "dense"),
    ("NAdam", "NAdam", dict(weight_decay=0.1, momentum_decay=0.006), dict(lr=0.01), "dense"),
    # decoupled decay; 10 steps take RAdam past its rectification threshold (rho_t > 5)
    ("RAdam", "RAdam", dict(weight_decay=0.1, decoupled_weight_decay=True), dict(lr=0.01),
     "dense"),
    # t0=3: the averaging starts within the steps
    ("ASGD", "ASGD", dict(t0=3, weight_decay=0.1), dict(lr=0.02), "dense"),
    ("Rprop", "Rprop", dict(), dict(etas=(0.4, 1.3)), "dense"),
    ("Adafactor", "numbaopt.optim.adafactor:Adafactor", dict(weight_decay=0.1), dict(d=1.2),
     "adafactor"),
    ("SparseAdam", "numbaopt.optim.sparse_adam:SparseAdam", dict(lr=0.01), dict(lr=0.02),
     "sparse"),
    ("LBFGS", "numbaopt.optim.lbfgs:LBFGS",
     dict(max_iter=5, history_size=4, line_search_fn="strong_wolfe"), None, "lbfgs"),
]

#: modules whose CUDA kernels a non-elementwise optimizer launches (for the PTX count)
_KERNEL_MODULES = {"adafactor": "numbaopt.optim._adafactor_cuda",
                   "sparse": "numbaopt.optim.sparse_adam",
                   "lbfgs": "numbaopt.optim._lbfgs_cuda"}


def _class(name):
    import importlib
    if ":" in name:
        module, _, cls = name.partition(":")
        return getattr(importlib.import_module(module), cls)
    from numbaopt import optim
    return getattr(optim, name)


def _shapes(kind, smoke):
    if kind == "sparse":
        return [(6, 3), (5, 2)] if smoke else [(1000, 64), (4097, 3)]
    if kind == "adafactor":
        return [(3, 4), (5,), (), (2, 3, 4)] if smoke else [(300, 400), (4097,), (),
                                                             (8, 33, 65)]
    if kind == "lbfgs":
        return [(3, 4), (5,), ()] if smoke else [(300, 400), (4097,), ()]
    # many GPU chunks; a 0-d, a zero-size and a small parameter
    return [(3, 4), (), (0,), (7,)] if smoke else [(300, 400), (4097,), (), (0,), (2, 3),
                                                    (150_001,)]


def _parity_inputs(kind, shapes, dtype, steps, seed=7):
    """Initial values and per-step gradients (None: no gradient that step), one set for both."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = []
    for k in range(steps):
        row = []
        for i, s in enumerate(shapes):
            if kind != "lbfgs" and (i + k) % 4 == 0:
                row.append(None)
            elif kind == "sparse":
                rows = rng.integers(0, s[0], size=max(1, s[0] // 3))   # repeats, any order
                row.append((rows, rng.standard_normal((rows.size,) + s[1:]).astype(dtype)))
            else:
                row.append(rng.standard_normal(s).astype(dtype))
        grads.append(row)
    return init, grads


@contextlib.contextmanager
def _serial(device):
    """Optimizers built inside pick the serial CPU kernels (the thresholds are read at
    construction, as benchmarks/report.py's --parallel-threshold uses).

    The CUDA tests compiled the serial kernels into numba's cache already; the
    parallel ones would compile here, seconds each, for the same numbers.
    """
    from numbaopt.optim import lbfgs, optimizer
    saved = optimizer.PARALLEL_THRESHOLD, lbfgs.PARALLEL_THRESHOLD
    if device == "cpu":
        optimizer.PARALLEL_THRESHOLD = lbfgs.PARALLEL_THRESHOLD = np.iinfo(np.int64).max // 8
    try:
        yield
    finally:
        optimizer.PARALLEL_THRESHOLD, lbfgs.PARALLEL_THRESHOLD = saved


def _run_parity(entry, dtype, device, init, grads):
    """Step the optimizer of ``entry`` on ``device``; the final parameters and its state."""
    import numbaopt
    from numbaopt.sparse import RowSparseGrad
    _, cls_name, kwargs, group1, kind = entry
    cls = _class(cls_name)
    params = [numbaopt.Parameter(a.copy()) for a in init]
    if kind == "lbfgs":
        with _serial(device):
            opt = cls(params, device=device, **kwargs)
        curv = [np.linspace(0.1, 10.0, a.size).reshape(a.shape) for a in init]
        shift = [np.cos(np.arange(a.size)).reshape(a.shape) for a in init]

        def closure():
            loss = 0.0
            for p, c, b in zip(params, curv, shift):
                x = p.numpy().astype(np.float64)
                loss += float(np.sum(0.5 * c * x * x + b * x))
                p.grad = (c * x + b).astype(dtype)
            return loss
        for _ in grads:
            opt.step(closure)
    else:
        half = len(params) // 2
        with _serial(device):
            opt = cls([{"params": params[:half]}, dict(group1, params=params[half:])],
                      device=device, **kwargs)
        for row in grads:
            for p, g in zip(params, row):
                if g is None:
                    p.grad = None
                elif kind == "sparse":
                    p.grad = RowSparseGrad(*g)
                else:
                    p.grad = g
            opt.step()
    final = np.concatenate([p.numpy().reshape(-1) for p in params])
    return opt, final, opt.state_dict()["state"]


def _flat_state(state):
    """``{name: float64 array}`` of every number in a state_dict's ``state``."""
    out = {}
    for i, entry in state.items():
        for key, value in entry.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for k, v in enumerate(values):
                if isinstance(v, (np.ndarray, np.generic, int, float)) \
                        and not isinstance(v, bool):
                    out[f"{i}.{key}.{k}"] = np.asarray(v, dtype=np.float64)
    return out


def close_error(actual, expected):
    """``max |actual - expected| / (|expected| + max |expected|)``: tests/tolerance.py's measure.

    ``assert_close`` passes where this is at most the dtype's rtol (the absolute
    floor being rtol times the array's largest magnitude). NaN where the other
    is not, or different shapes, give inf.
    """
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if np.any(nan_a != nan_e):
        return math.inf
    keep = ~nan_e
    a, e = a[keep], e[keep]
    if a.size == 0:
        return 0.0
    diff = np.abs(a - e)
    den = np.abs(e) + np.max(np.abs(e))
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(diff == 0, 0.0, diff / den)
    return float(np.max(err))


def _fma_count(opt, kind, dtype):
    """Fused multiply-adds of ``dtype`` in the PTX of the kernels ``opt`` ran (None: no PTX)."""
    if simulator():
        return None
    dispatchers = []
    rule = getattr(type(opt), "_rule", None)
    if rule is not None:
        dispatchers.append(rule.cuda().kernel)
    if kind in _KERNEL_MODULES:
        import importlib
        module = importlib.import_module(_KERNEL_MODULES[kind])
        for value in vars(module).values():
            for v in (value.values() if isinstance(value, dict) else [value]):
                if type(v).__name__ == "CUDADispatcher":
                    dispatchers.append(v)
    tag = "fma.rn.f32" if dtype == "float32" else "fma.rn.f64"
    count, seen = 0, False
    for d in dispatchers:
        try:
            texts = d.inspect_asm().values()
        except Exception:       # nothing compiled for this dispatcher, or no PTX kept
            continue
        for text in texts:
            seen = True
            count += text.count(tag)
    if not seen and rule is not None:
        try:    # a kernel loaded from numba's cache may keep no PTX: compile it again
            count, seen = rule.cuda().ptx(dtype).count(tag), True
        except Exception:
            pass
    return count if seen else None


def part_parity(args):
    header = ["optimizer", "options", "dtype", "steps", "elements", "max error", "rtol",
              "bitwise equal", "result", "note"]
    frag = Fragment(args.out, "GPU against CPU: every optimizer with a GPU kernel", header, 3)
    smoke = args.smoke
    if smoke:
        # tiny blocks and chunks: small arenas still span several blocks
        from numbaopt.kernels import cuda as kernels
        from numbaopt.optim import _lbfgs_cuda, adafactor
        kernels.THREADS_PER_BLOCK, kernels.CHUNK = 4, 5
        _lbfgs_cuda.THREADS_PER_BLOCK, _lbfgs_cuda.REDUCE_THREADS = 4, 7
        adafactor.FACTORED_TASK, adafactor.MIN_TASK_ROWS, adafactor.VECTOR_TASK = 10, 1, 4
    steps = 3 if smoke else 10
    dtypes = args.dtypes or ["float64", "float32"]
    entries = [e for e in PARITY if not args.optimizers or e[0] in args.optimizers]
    failed = differ = 0
    for entry in entries:
        label, _, kwargs, group1, kind = entry
        options = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"
        if group1:
            options += "; group 1: " + ", ".join(f"{k}={v}" for k, v in group1.items())
        for dtype in dtypes:
            if smoke and dtype == "float32" and label not in SMOKE_FLOAT32:
                continue     # each float32 kernel would compile: seconds each
            shapes = _shapes(kind, smoke)
            elements = sum(int(np.prod(s, dtype=np.int64)) for s in shapes)
            row = [label, options, dtype, steps, elements]
            if time_left(args.deadline) < 3:
                frag.add(row + ["", "", "", "not run: time budget", ""])
                failed += 1
                continue
            try:
                init, grads = _parity_inputs(kind, shapes, dtype, steps)
                _, cpu_final, cpu_state = _run_parity(entry, dtype, "cpu", init, grads)
                gpu_opt, gpu_final, gpu_state = _run_parity(entry, dtype, "cuda", init, grads)
                cpu_arrays = dict(_flat_state(cpu_state), params=cpu_final)
                gpu_arrays = dict(_flat_state(gpu_state), params=gpu_final)
                if sorted(cpu_arrays) != sorted(gpu_arrays):
                    missing = sorted(set(cpu_arrays) ^ set(gpu_arrays))
                    raise AssertionError(f"state entries differ: {missing[:4]}")
                err = max(close_error(gpu_arrays[k], cpu_arrays[k]) for k in cpu_arrays)
                same = all(np.array_equal(gpu_arrays[k], cpu_arrays[k], equal_nan=True)
                           for k in cpu_arrays)
                fma = _fma_count(gpu_opt, kind, dtype)
            except Exception as error:      # one optimizer's fault must not stop the others
                frag.add(row + ["", "", "", "ERROR", f"{type(error).__name__}: "
                                f"{str(error)[:200]}".replace("|", "/")])
                failed += 1
                continue
            rtol = FLOAT_RTOL[dtype]
            ok = err <= rtol
            if same:
                note = "bitwise equal to the CPU"
            elif simulator():
                note = "simulator: rounding differs"
            else:
                differ += 1
                reduction = " and the GPU's summation order" if kind in ("adafactor",
                                                                         "lbfgs") else ""
                tag = "fma.rn.f32" if dtype == "float32" else "fma.rn.f64"
                note = (f"rounding: FMA contraction ({fma} {tag} in the PTX; the CPU rounds "
                        f"a*b before +c){reduction}" if fma else
                        f"rounding{reduction} (no {tag} found in the PTX)" if fma == 0 else
                        f"rounding: FMA contraction{reduction} (PTX not inspected)")
            failed += not ok
            frag.add(row + [f"{err:.2e}", f"{rtol:.0e}", "yes" if same else "no",
                            "ok" if ok else "FAILED", note])
    frag.note(f"Each optimizer is stepped {steps} times from the same parameters and "
              "gradients on the CPU and on the GPU (default launch configuration"
              + (", here tiny blocks under the simulator" if smoke else "")
              + "); compared are the final parameters and every state_dict entry.", before=True)
    frag.note("max error = max over elements of |gpu − cpu| / (|cpu| + max|cpu|), the measure "
              "of tests/tolerance.py: it passes at rtol (float64 1e-10, float32 1e-5). "
              "NVVM contracts a multiply and an add into one fused multiply-add (no numba-cuda "
              "option turns that off); the CPU kernels round the product first, so the GPU "
              "agrees to rounding, not bit for bit, where the note says FMA.")
    checked = len(frag.rows)
    frag.close(f"{checked - failed} of {checked} within tolerance"
               + (f", {differ} not bitwise equal (FMA)" if differ else ""))
    return 1 if failed else 0


# -- bench: step times -----------------------------------------------------------------
def _spec(name):
    from .cases import OPTIMIZERS
    return OPTIMIZERS[name]


def _bytes_per_step(name, numel, itemsize):
    from .roofline import bytes_moved
    return bytes_moved(_spec(name).pattern, numel, itemsize)


def _fill(out, seed, scale):
    # Writes out: fractional parts of a golden-ratio walk, spread over [0, 1), not repeating.
    i = cuda.grid(1)
    while i < out.size:
        x = (i * 0.6180339887498949 + seed) % 1.0
        out[i] = scale * (x - 0.5) + scale * 1e-3
        i += cuda.gridsize(1)


_FILL = []


def device_values(n, dtype, seed, scale):
    """A device array of ``n`` deterministic values spread over about ``[-scale/2, scale/2)``.

    Made on the GPU (a host array of 1B values would take seconds to draw and upload).
    """
    if not _FILL:
        _FILL.append(cuda.jit(_fill))
    out = cuda.device_array(n, dtype=dtype)
    threads = 8 if simulator() else 256
    blocks = 1 if simulator() else max(1, min(4096, -(-n // threads)))
    if n:
        _FILL[0][blocks, threads](out, float(seed), float(scale))
    return out


def build_numbaopt(name, numel, tensors, dtype=np.float32):
    """A warmed-up ``(step, optimizer)`` of numbaopt with ``device="cuda"``; step() does not sync.

    The parameters start as host zeros (cheap to pack) and get their values and
    gradients from the GPU, then one step allocates the state.
    """
    import numbaopt
    from numbaopt import optim
    spec = _spec(name)
    m = numel // tensors
    params = [numbaopt.Parameter(np.zeros(m, dtype=dtype)) for _ in range(tensors)]
    opt = getattr(optim, spec.cls)(params, device="cuda", **spec.kwargs)
    values, grads = device_values(m, dtype, 0.1, 2.0), device_values(m, dtype, 0.7, 0.2)
    for p in params:
        p.data = values
        p.grad = grads
    del values, grads
    opt.step()
    return opt.step, opt


def build_torch(name, numel, tensors, dtype=np.float32):
    """A warmed-up ``(step, variant)`` of torch.optim on CUDA: fused=True, else foreach=True.

    torch has no fused CUDA kernel for every optimizer (RMSprop has none at all,
    Adagrad's is CPU-only); the variant says which ran.
    """
    torch = _torch_cuda()
    spec = _spec(name)
    m = numel // tensors
    tdtype = getattr(torch, np.dtype(dtype).name)
    cls = getattr(torch.optim, spec.cls)
    reasons = []
    for variant in ("fused", "foreach"):
        params = [torch.randn(m, device="cuda", dtype=tdtype, requires_grad=True)
                  for _ in range(tensors)]
        for p in params:
            p.grad = 0.1 * torch.randn_like(p)
        try:
            opt = cls(params, **{variant: True}, **spec.kwargs)
            opt.step()
            torch.cuda.synchronize()
        except Exception as error:     # TypeError (no such flag) or no kernel for CUDA
            reasons.append(f"{variant}: {type(error).__name__}")
            del params
            free_gpu_memory()
            continue
        label = variant if not reasons else f"{variant} (no fused CUDA kernel)"
        return opt.step, label
    raise RuntimeError("torch ran neither fused nor foreach: " + ", ".join(reasons))


def build_copy(nbytes):
    """A step that copies ``nbytes // 2`` bytes device to device (reads + writes = nbytes)."""
    half = max(1, nbytes // 2)
    src = device_values(half // 4, np.float32, 0.3, 1.0) if half >= 4 else \
        cuda.to_device(np.ones(half, np.uint8))
    dst = cuda.device_array(src.shape, dtype=src.dtype)

    def step():
        dst.copy_to_device(src)
    step()
    return step


def synchronize():
    cuda.synchronize()
    torch = _torch_cuda()
    if torch is not None:
        torch.cuda.synchronize()


def interleaved(steps, rounds, block=0.02):
    """``{name: [seconds per step, one per round]}``, the implementations taking turns.

    Each round times a block of steps of each implementation (about ``block``
    seconds), synchronized before and after, starting at a different one each
    round, so drift of the machine hits all alike.
    """
    names = list(steps)
    inner = {}
    for name in names:
        synchronize()
        t = time.perf_counter()
        steps[name]()
        synchronize()
        inner[name] = max(1, min(20_000, int(block / max(time.perf_counter() - t, 1e-6))))
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            f, n = steps[name], inner[name]
            synchronize()
            t = time.perf_counter()
            for _ in range(n):
                f()
            synchronize()
            times[name].append((time.perf_counter() - t) / n)
    return times


def _needed_bytes(name, numel, tensors, itemsize, with_torch):
    from .roofline import PATTERNS
    buffers = 2 + PATTERNS[_spec(name).pattern][2]
    ours = buffers * numel * itemsize + 2 * (numel // tensors) * itemsize
    return ours + (buffers * numel * itemsize if with_torch else 0) + \
        _bytes_per_step(name, numel, itemsize)


def _gpu_free():
    try:
        free, _ = cuda.current_context().get_memory_info()
        return float(free)
    except Exception:
        return math.inf


def bench_case(name, numel, tensors, dtype, rounds, with_torch):
    """One row's numbers: ``{impl: [seconds per round]}``, the torch variant, notes."""
    steps, notes, variant = {}, [], ""
    step, opt = build_numbaopt(name, numel, tensors, dtype)
    steps["numbaopt"] = step
    if with_torch:
        try:
            steps["torch"], variant = build_torch(name, numel, tensors, dtype)
        except Exception as error:    # e.g. out of memory: numbaopt and the copy still run
            notes.append(f"torch: {type(error).__name__}: {str(error)[:80]}")
    steps["copy"] = build_copy(_bytes_per_step(name, numel, np.dtype(dtype).itemsize))
    times = interleaved(steps, rounds)
    del steps, step, opt
    return times, variant, notes


def median(xs):
    return float(np.median(xs))


def median_ratio(num, den):
    return median([a / b for a, b in zip(num, den)])


def part_bench(args):
    header = ["optimizer", "dtype", "size", "bytes/step", "numbaopt", "GB/s", "% of copy",
              "torch", "torch variant", "torch / numbaopt", "copy", "copy GB/s"]
    frag = Fragment(args.out, "Step time on the GPU: numbaopt, torch's fused step, a copy",
                    header, 3)
    torch = _torch_cuda()
    if _torch() is None:
        frag.note("torch is not installed: the torch columns are empty.", before=True)
    elif torch is None:
        frag.note("torch has no CUDA device here: the torch columns are empty.", before=True)
    smoke = args.smoke
    if smoke and simulator():
        from numbaopt.kernels import cuda as kernels
        kernels.THREADS_PER_BLOCK, kernels.CHUNK = 4, 256
    sizes = [(n, t, "float32") for n, t in (SMOKE_SIZES if smoke else GPU_SIZES)]
    for n, t in (SMOKE_FLOAT64_SIZES if smoke else FLOAT64_SIZES):
        sizes.insert(max(i for i, s in enumerate(sizes) if s[0] == n) + 1, (n, t, "float64"))
    names = [o for o in GPU_OPTIMIZERS if not args.optimizers or o in args.optimizers]
    misses, errors, timed = [], 0, 0
    for numel, tensors, dtype in sizes:
        rounds = 2 if smoke else 3 if numel >= 10 ** 9 else 5 if numel >= 10 ** 8 else 7
        # a 1B case builds ~30 GB on the device and times a few steps: about 10 s
        needs_time = 2 if smoke else 12 if numel >= 10 ** 9 else 4
        for name in names:
            itemsize = np.dtype(dtype).itemsize
            nbytes = _bytes_per_step(name, numel, itemsize)
            row = [name.replace("_", " "), dtype, fmt_size(numel, tensors), fmt_bytes(nbytes)]
            if time_left(args.deadline) < needs_time:
                frag.add(row + ["skipped: time budget"] + [""] * 7)
                continue
            need, free = _needed_bytes(name, numel, tensors, itemsize, torch), _gpu_free()
            if need > 0.95 * free:
                frag.add(row + [f"skipped: needs {need / 1e9:.0f} GB, {free / 1e9:.0f} GB "
                                "free"] + [""] * 7)
                continue
            try:
                times, variant, notes = bench_case(name, numel, tensors, dtype, rounds, torch)
            except Exception as error:     # out of memory, a launch failure: the next runs
                errors += 1
                frag.add(row + [f"ERROR {type(error).__name__}: {str(error)[:120]}"
                                .replace("|", "/")] + [""] * 7)
                continue
            finally:
                if numel >= 10 ** 7:    # gc.collect() takes a quarter second: where it pays
                    free_gpu_memory()
            t_ours, t_copy = median(times["numbaopt"]), median(times["copy"])
            of_copy = median_ratio(times["copy"], times["numbaopt"])
            mark = " ✗" if numel >= COPY_TARGET_FROM and of_copy < COPY_TARGET else ""
            if mark:
                misses.append(f"{name} {dtype} {fmt_size(numel, tensors)}: {of_copy:.0%} of "
                              f"the copy (target {COPY_TARGET:.0%})")
            row += [fmt_time(t_ours), f"{nbytes / t_ours / 1e9:.0f}", f"{of_copy:.0%}{mark}"]
            if "torch" in times:
                ratio = median_ratio(times["torch"], times["numbaopt"])
                tmark = " ✗" if ratio < TORCH_TARGET else ""
                if tmark:
                    misses.append(f"{name} {dtype} {fmt_size(numel, tensors)}: torch "
                                  f"({variant}) {ratio:.2f}x numbaopt's time (target >= 1)")
                row += [fmt_time(median(times["torch"])), variant, f"{ratio:.2f}{tmark}"]
            else:
                row += ["–", "; ".join(notes) or "–", "–"]
            row += [fmt_time(t_copy), f"{nbytes / t_copy / 1e9:.0f}"]
            frag.add(row)
            timed += 1
    frag.note("bytes/step = (reads + writes per element) × elements × itemsize: SGD with "
              "momentum, RMSprop and Adagrad read p, g and one state buffer and write p and "
              "the state (5); Adam and AdamW read p, g, m, v and write p, m, v (7). The copy "
              "moves bytes/step ÷ 2 from one device buffer to another (read + written = "
              "bytes/step): the bandwidth roofline. GB/s = bytes/step / step time.")
    frag.note("Timed interleaved in the same process: each round runs a block of ~20 ms of "
              "steps of each implementation in turn, synchronized before and after "
              "(numba's cuda.synchronize and torch.cuda.synchronize); medians over rounds "
              "(3 at 1B, 5 at 100M, 7 below); ratios are medians of per-round ratios. The "
              "numbaopt time is the whole opt.step(): the has-grad upload and one launch.")
    frag.note(f"Targets: at least {COPY_TARGET:.0%} of the copy from "
              f"{COPY_TARGET_FROM // 10 ** 6}M parameters on, and torch / numbaopt >= "
              f"{TORCH_TARGET:g} at every size; ✗ marks a miss.")
    if misses:
        frag.note("Missed targets:\n\n" + "\n".join(f"- {m}" for m in misses))
    frag.close(f"{timed} of {len(frag.rows)} cases timed, {len(misses)} targets missed"
               + (f", {errors} errors" if errors else ""))
    return 1 if errors else 0


# -- cpu: the CPU report at the GPU machine's threads ----------------------------------
def _parse_size(name):
    from .cases import Size
    numel, _, tensors = name.partition("/")
    scale = {"k": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9}.get(numel[-1:], 1)
    digits = numel[:-1] if scale > 1 else numel
    return Size(name, int(digits) * scale, int(tensors or 1))


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def report_rows(text):
    """``(header, rows, notes, misses)`` of the markdown ``benchmarks.report`` printed."""
    lines = text.splitlines()
    table = [i for i, line in enumerate(lines) if line.startswith("|")]
    if len(table) < 3:
        return None, [], [], []
    header, rows = _cells(lines[table[0]]), [_cells(lines[i]) for i in table[2:]]
    rest = lines[table[-1] + 1:]
    cut = next((i for i, line in enumerate(rest) if line.startswith("Missed targets")),
               len(rest))
    notes = [line for line in rest[:cut] if line.strip()]
    misses = [line for line in rest[cut:] if line.startswith("- ")]
    return header, rows, notes, misses


def part_cpu(args):
    import contextlib
    import io

    import numba

    from . import cases, report
    threads = args.threads or os.cpu_count()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if cases.torch is not None:
        cases.torch.set_num_threads(threads)
    smoke = args.smoke
    sizes = args.sizes or (["1k/10"] if smoke else ["16M/1", "256M/1"])
    opts = args.optimizers or (["Adam"] if smoke else list(GPU_OPTIMIZERS))
    dtypes = args.dtypes or ["float32"]
    frag = Fragment(args.out, f"CPU: benchmarks.report's table at {', '.join(sizes)}; "
                    f"threads: numba {numba.get_num_threads()}, torch "
                    f"{cases.torch.get_num_threads() if cases.torch is not None else '–'}",
                    left=3)
    for line in report.environment_lines():
        frag.note(line, before=True)
    frag.note("", before=True)
    frag.note(f"`benchmarks.report.section_table`, one case at a time: {', '.join(opts)}; "
              f"{', '.join(dtypes)}; no naive NumPy step; no waiting for an idle machine.",
              before=True)
    misses, cases_run, wanted = [], 0, 0
    for name in sizes:
        size = _parse_size(name)
        for dtype in dtypes:
            for opt in opts:
                wanted += 1
                # a 256M case: ~10 s to draw the inputs once, then ~5 s a case
                if time_left(args.deadline) < (3 if smoke else 15 if size.numel >= 10 ** 8
                                               else 5):
                    frag.note(f"- not run (time budget): {opt} {dtype} {name}")
                    continue
                ns = argparse.Namespace(optimizers=[opt], dtypes=[dtype], no_numpy=True,
                                        wait_idle=0, rounds=2 if smoke else 9,
                                        case_time=0.05 if smoke else 1.5)
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    report.section_table(ns, [size])
                header, rows, notes, missed = report_rows(buf.getvalue())
                if header is None:
                    frag.note(f"- {opt} {dtype} {name}: the report printed no table")
                    continue
                frag.header = header
                if not frag.after:
                    frag.after = ["\n".join(notes)]
                misses += missed
                for row in rows:
                    frag.add(row)
                cases_run += 1
    if misses:
        frag.note("Missed targets (benchmarks.report's own):\n\n" + "\n".join(misses))
    frag.close(f"{cases_run} of {wanted} cases measured")
    return 0 if cases_run == wanted else 1


# -- assemble --------------------------------------------------------------------------
PARTS = ("machine", "tests", "parity", "bench", "cpu")


def assemble(work, out, smoke):
    """Join the parts' markdown under a summary table; ``status.tsv`` has each part's exit."""
    work = pathlib.Path(work)
    status = {}
    path = work / "status.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            name, rc, elapsed, cap = (line.split("\t") + ["", "", ""])[:4]
            status[name] = (rc, elapsed, cap)
    rows, failed = [], 0
    for name in PARTS:
        frag = work / f"{name}.json"
        summary = json.loads(frag.read_text()).get("summary", "") if frag.exists() else ""
        rc, elapsed, cap = status.get(name, ("", "", ""))
        if rc == "":
            result = "not run"
        elif rc == "skip":
            result = "not run: no time left"
        elif rc == "0":
            result = "ok"
        elif rc == "1":
            result = "FAILED"
        elif rc in ("124", "137"):
            result = f"FAILED: killed at its {cap} s cap (its finished rows are below)"
        else:
            result = f"FAILED: crashed (exit {rc}); see gpu_check.log"
        failed += result != "ok"
        if name != "machine":
            rows.append([name, result, f"{elapsed} s" if elapsed else "", summary])
    machine = work / "machine.md"
    sections = [(work / f"{name}.md").read_text().strip() for name in PARTS[1:]
                if (work / f"{name}.md").exists()]
    verdict = "all parts passed" if not failed else f"{failed} part(s) failed or did not run"
    summary = "## Summary\n\n" + markdown_table(["part", "result", "time", "summary"], rows, 2)
    text = "\n\n".join(["# numbaopt GPU check" + (" (smoke)" if smoke else ""),
                         machine.read_text().strip() if machine.exists()
                         else "## Machine\n\nnot recorded",
                         summary + f"\n\nResult: {verdict}."] + sections)
    pathlib.Path(out).write_text(text + "\n")
    return 1 if failed else 0


# -- main ------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", default="bench", choices=PARTS + ("assemble",))
    parser.add_argument("--out", help="the part's markdown file (default: print it)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the plumbing")
    parser.add_argument("--deadline", type=float, help="epoch seconds: start nothing after")
    parser.add_argument("--optimizers", nargs="+", help="restrict the optimizers")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "float64"))
    parser.add_argument("--sizes", nargs="+", help="cpu part: size names, e.g. 16M/1 256M/1")
    parser.add_argument("--threads", type=int, help="cpu part: numba and torch threads")
    parser.add_argument("--work", help="assemble: the folder of the parts' files")
    args = parser.parse_args(argv)
    if args.part == "assemble":
        return assemble(args.work, args.out, args.smoke)
    if args.part in ("parity", "bench") and gpu() is None and not simulator():
        print("no CUDA GPU here (numba.cuda.is_available() is False), and "
              "NUMBA_ENABLE_CUDASIM=1 is not set", file=sys.stderr)
        return 3
    return globals()["part_" + args.part](args)


if __name__ == "__main__":
    sys.exit(main())
