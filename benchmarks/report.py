"""Print numbaopt's performance tables: against torch.optim and the roofline, measured interleaved.

    python -m benchmarks.report                     # everything (about 12 minutes on 2 cores)
    python -m benchmarks.report --sections table --sizes 1k/10 100k/100
    python -m benchmarks.report --sections beyond        # LBFGS, SparseAdam, Adafactor, Muon
    python -m benchmarks.report --quick             # small sizes, few rounds: a smoke test

For every optimizer, dtype and size, all implementations (numbaopt, torch,
naive NumPy, roofline) are built side by side and timed in rounds: each round
times a block of steps of each implementation in turn, starting at a different
one each round, after one untimed step and a short pause (so one
implementation's cache state or spinning threads do not land on the next).
Times are medians over rounds; ratios are medians of the per-round ratios, so
slow drift of a noisy machine cancels out.

Sections:

- ``table``: step time and ratios per optimizer, dtype and size.
- ``overhead``: where the time of a step at 1k parameters goes.
- ``threshold``: serial against parallel kernel by arena size (PARALLEL_THRESHOLD).
- ``threads``: the parallel kernel at 16M with 1 and with all of numba's threads.
- ``cold``: import + first step in a fresh process, numba's cache warm and clean.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

from . import cases
from .cases import DTYPES, IMPLEMENTATIONS, OPTIMIZERS, SIZES, SMALL_SIZES, Size, build

SECTIONS = ("table", "beyond", "dtypes", "overhead", "compiled", "threshold", "threads",
            "cold")

# Targets of the issue.
SPEEDUP_TARGET = 1.5
SPEEDUP_TARGET_SMALL = 10.0     # at 1k parameters in 10 tensors
ROOFLINE_TARGET = 0.9           # at 16M parameters


# -- timing -------------------------------------------------------------------------------
def measure(steps, rounds=21, block_time=0.01, case_time=8.0, min_rounds=7, pause=0.002):
    """Interleaved timing of zero-argument callables.

    ``steps`` maps names to callables. Returns ``{name: [seconds per call, one per round]}``.
    Stops after ``rounds`` rounds, or earlier once ``min_rounds`` are done and the
    case has run for ``case_time`` seconds.
    """
    names = list(steps)
    per_block = {}
    for name in names:
        f = steps[name]
        one = []
        for _ in range(3):
            t = time.perf_counter()
            f()
            one.append(time.perf_counter() - t)
        per_block[name] = max(1, int(block_time / max(min(one), 1e-7)))
    times = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            f, n = steps[name], per_block[name]
            time.sleep(pause)
            f()
            t = time.perf_counter()
            for _ in range(n):
                f()
            times[name].append((time.perf_counter() - t) / n)
        if r + 1 >= min_rounds and time.perf_counter() - start > case_time:
            break
    return times


def _cpu_busy(interval=0.25):
    """Fraction of the machine's CPU time used by others while this process sleeps ``interval``."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]          # idle + iowait
        return sum(fields), idle
    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


_waited = [0.0]


def wait_for_idle(max_wait, busy=0.1):
    """Sleep until other processes use less than ``busy`` of the machine, at most ``max_wait`` s.

    On a shared machine another process on one of two cores stalls every
    parallel region (the thread pool waits for its descheduled worker), so
    cases are started in quiet moments where there are any.
    """
    if max_wait <= 0:
        return
    start = time.perf_counter()
    try:
        while _cpu_busy() > busy and time.perf_counter() - start < max_wait:
            time.sleep(0.5)
    except OSError:       # no /proc/stat: not Linux
        return
    _waited[0] += time.perf_counter() - start


def median(xs):
    return statistics.median(xs)


def median_ratio(num, den):
    """Median over rounds of ``num[r] / den[r]``."""
    return median([a / b for a, b in zip(num, den)])


def fmt_time(seconds):
    us = seconds * 1e6
    if us < 10:
        return f"{us:.2f} µs"
    if us < 1000:
        return f"{us:.1f} µs"
    return f"{us / 1000:.2f} ms"


def markdown_table(header, rows, left=3):
    """A markdown table; the first ``left`` columns are left-aligned, the others right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i >= left else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- machine ------------------------------------------------------------------------------
def machine_description():
    model = platform.processor() or platform.machine()
    family = cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    model = value
                elif key == "cpu family" and family is None:
                    family = value
                elif key == "model" and cpu_model is None:
                    cpu_model = value
                elif key == "processor" and value != "0":
                    break
    except OSError:
        pass
    if family is not None:
        model += f" (family {family}, model {cpu_model})"
    return model


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return "load average " + " ".join(f.read().split()[:3])
    except OSError:
        return "load average unknown"


def environment_lines():
    torch_version = cases.torch.__version__ if cases.torch is not None else "not installed"
    threads = f"numba {numba.get_num_threads()} threads"
    if cases.torch is not None:
        threads += f", torch {cases.torch.get_num_threads()} threads"
    load = load_average()
    return [
        f"- CPU: {machine_description()}, {os.cpu_count()} logical cores ({threads})",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, "
        f"Numba {numba.__version__}, torch {torch_version}; "
        f"{platform.system()} {platform.release()}",
        f"- {time.strftime('%Y-%m-%d %H:%M')}, {load}",
    ]


# -- sections -----------------------------------------------------------------------------
def section_table(args, sizes):
    print("## Step time: numbaopt against torch.optim, naive NumPy and the roofline\n")
    impls = [i for i in IMPLEMENTATIONS if not (i == "torch" and cases.torch is None)
             and not (i == "numpy" and args.no_numpy)]
    header = ["optimizer", "dtype", "size", "numbaopt"]
    if "torch" in impls:
        header += ["torch", "torch variant"]
    if "numpy" in impls:
        header += ["naive NumPy"]
    header += ["roofline"]
    if "torch" in impls:
        header += ["speedup vs torch"]
    header += ["% of roofline"]
    if "torch" in impls:
        header += ["torch % of roofline"]
    header += ["numbaopt GB/s"]
    rows = []
    misses = []
    for opt in args.optimizers:
        for dtype in args.dtypes:
            for size in sizes:
                built = {impl: build(impl, opt, dtype, size) for impl in impls}
                wait_for_idle(args.wait_idle)
                times = measure({k: c.step for k, c in built.items()}, rounds=args.rounds,
                                case_time=args.case_time)
                nb = built["numbaopt"]
                t_nb = median(times["numbaopt"])
                row = [opt.replace("_", " "), dtype, size.name, fmt_time(t_nb)]
                if "torch" in impls:
                    row += [fmt_time(median(times["torch"])),
                            built["torch"].label.split("(")[1].rstrip(")")]
                if "numpy" in impls:
                    row += [fmt_time(median(times["numpy"]))]
                row += [fmt_time(median(times["roofline"]))]
                if "torch" in impls:
                    speedup = median_ratio(times["torch"], times["numbaopt"])
                    target = SPEEDUP_TARGET_SMALL if size.numel <= 1000 else SPEEDUP_TARGET
                    mark = "" if speedup >= target else " ✗"
                    if mark:
                        misses.append(f"{opt} {dtype} {size.name}: {speedup:.1f}x faster than "
                                      f"torch (target {target}x)")
                    row += [f"{speedup:.1f}x{mark}"]
                fraction = median_ratio(times["roofline"], times["numbaopt"])
                mark = ""
                if size.numel >= 16_000_000 and fraction < ROOFLINE_TARGET:
                    mark = " ✗"
                    misses.append(f"{opt} {dtype} {size.name}: {fraction:.0%} of the roofline "
                                  f"(target {ROOFLINE_TARGET:.0%})")
                row += [f"{fraction:.0%}{mark}"]
                if "torch" in impls:
                    row += [f"{median_ratio(times['roofline'], times['torch']):.0%}"]
                row += [f"{nb.nbytes / t_nb / 1e9:.1f}"]
                rows.append(row)
                print(markdown_table(header, rows[-1:]).splitlines()[-1], file=sys.stderr,
                      flush=True)
                del built
    print(markdown_table(header, rows))
    print()
    print("speedup vs torch = torch step time / numbaopt step time (median of per-round ratios);")
    print("% of roofline = roofline time / numbaopt time, the roofline moving the same bytes")
    print("(torch % of roofline: the same for torch's step);")
    print("GB/s = bytes the update must move / numbaopt step time.")
    print(f"Targets: speedup >= {SPEEDUP_TARGET}x ({SPEEDUP_TARGET_SMALL}x at 1k/10), "
          f">= {ROOFLINE_TARGET:.0%} of the roofline at 16M; ✗ marks a miss.\n")
    if misses:
        print("Missed targets:\n")
        print("\n".join(f"- {m}" for m in misses))
        print()


def _beyond_cases(quick):
    """``(label, {impl: zero-argument step builder})`` for the optimizers that are not
    elementwise, built from their pytest-benchmark files at the README's sizes."""
    from . import test_adafactor, test_lbfgs, test_muon, test_sparse_adam

    n, tensors = (10_000, 10) if quick else (1_000_000, 100)
    rng = np.random.default_rng(0)
    curv = np.logspace(-3, 3, n)[rng.permutation(n)]
    x0 = rng.standard_normal(n)

    def lbfgs(make, dtype):
        def build():
            step = make(n, tensors, curv, x0, dtype)
            for _ in range(test_lbfgs.HISTORY + 5):   # fill the history
                step()
            return step
        return build

    rows = 20_000 if quick else 1_000_000
    af = ("10k/100", 100, (10, 10)) if quick else ("1M/100", 100, (100, 100))
    mu = ("4x64x32", 4, (64, 32)) if quick else ("16x256x128", 16, (256, 128))
    out = []
    for dtype in ("float32", "float64"):
        out.append((f"LBFGS iteration, {n} in {tensors}, {dtype}",
                    {"numbaopt": lbfgs(test_lbfgs._numbaopt, dtype),
                     "torch": lbfgs(test_lbfgs._torch, dtype)}))
    out.append((f"SparseAdam, {rows} x {test_sparse_adam.WIDTH}, 1000 rows, float32",
                {impl: (lambda impl=impl: test_sparse_adam._build(impl, rows, 1000))
                 for impl in ("numbaopt", "torch")}))
    out.append((f"Adafactor, {af[0]}, float32",
                {impl: (lambda impl=impl, key=key: test_adafactor._build(key, af[1], af[2],
                                                                         quick))
                 for impl, key in (("numbaopt", "numbaopt"), ("torch", "torch_default"))}))
    out.append((f"Muon, {mu[0]}, float32",
                {impl: (lambda impl=impl: test_muon._build(impl, mu[1], mu[2]))
                 for impl in ("numbaopt", "torch")}))
    return out


def section_beyond(args):
    print("## LBFGS, SparseAdam, Adafactor and Muon against torch.optim\n")
    if cases.torch is None:
        print("torch is not installed: nothing to compare with.\n")
        return
    rows = []
    for label, builders in _beyond_cases(args.quick):
        steps = {impl: build() for impl, build in builders.items()}
        wait_for_idle(args.wait_idle)
        times = measure(steps, rounds=args.rounds, case_time=args.case_time, min_rounds=5)
        rows.append([label, fmt_time(median(times["numbaopt"])), fmt_time(median(times["torch"])),
                     f"{median_ratio(times['torch'], times['numbaopt']):.2f}x"])
        print(markdown_table(["case", "numbaopt", "torch", "torch / numbaopt"], rows[-1:],
                             left=1).splitlines()[-1], file=sys.stderr, flush=True)
        del steps
    print(markdown_table(["case", "numbaopt", "torch", "torch / numbaopt"], rows, left=1))
    print()
    print("Steps measured interleaved, medians; the LBFGS rows are one step(closure) with "
          "max_iter=1 and a full history of 100 pairs.\n")


def section_dtypes(args):
    """Adam on complex64 against torch's complex tensors, and over float32 and float64 in one
    optimizer against two (benchmarks/dtype_cases.py)."""
    from .dtype_cases import complex_cases, mixed_cases
    size = "small" if args.quick else "full"
    print("## Complex parameters: Adam complex64\n")
    steps = complex_cases(size)
    wait_for_idle(args.wait_idle)
    times = measure(steps, rounds=args.rounds, case_time=args.case_time, min_rounds=5)
    first = median(next(iter(times.values())))
    rows = [[name, fmt_time(median(ts)), f"{median(ts) / first:.2f}x"]
            for name, ts in times.items()]
    print(markdown_table(["case", "step", "time / numbaopt complex64"], rows, left=1))
    print()
    del steps
    print("## Several dtypes in one optimizer: Adam over float32 and float64 halves\n")
    steps = mixed_cases(size)
    rows = []
    for name in dict.fromkeys(k[0] for k in steps):
        mine = {case: step for (n, case), step in steps.items() if n == name}
        wait_for_idle(args.wait_idle)
        times = measure(mine, rounds=args.rounds, case_time=args.case_time, min_rounds=5)
        both = median(times["float32 and float64 optimizers, back to back"])
        rows += [[name, case, fmt_time(median(ts)), f"{median(ts) / both:.2f}x"]
                 for case, ts in times.items()]
    print(markdown_table(["size", "case", "step", "time / the two optimizers"], rows, left=2))
    print()


_EMPTY_KERNELS = {}


def empty_kernel(nargs):
    """An ``@njit`` function of ``nargs`` arguments that does nothing (made once per arity).

    The elementwise kernels take ``(param, grad, has_grad, step, group, hyper, chunks,
    scalars, *state_buffers)``: 8 arguments plus one per state buffer of the rule.
    """
    if nargs not in _EMPTY_KERNELS:
        names = ", ".join(f"a{k}" for k in range(nargs))
        namespace = {}
        exec(f"def _empty{nargs}({names}):\n    return None\n", namespace)
        _EMPTY_KERNELS[nargs] = numba.njit(namespace[f"_empty{nargs}"])
    return _EMPTY_KERNELS[nargs]


#: the optimizers of the overhead section unless --optimizers names others
OVERHEAD_OPTIMIZERS = ("SGD", "Adam")


def section_overhead(args):
    """Break a small step into Python call, dispatcher and kernel."""
    size = SIZES[0]
    print(f"## Per-step overhead at {size.name} (float32)\n")
    rows = []
    for opt in args.optimizers if args.optimizers_given else OVERHEAD_OPTIMIZERS:
        nb = build("numbaopt", opt, "float32", size)
        o = nb.handle
        steps = {"opt.step()": nb.step}
        if hasattr(o, "register_step_pre_hook"):
            hooked = build("numbaopt", opt, "float32", size)
            hooked.handle.register_step_pre_hook(lambda optimizer, args, kwargs: None)
            steps["opt.step() with a no-op step pre-hook"] = hooked.step
        kernel, kargs = getattr(o, "_kernel", None), getattr(o, "_args", None)
        if kernel is not None and kargs is not None:
            steps["kernel(*args) via the dispatcher"] = lambda: kernel(*kargs)
            try:
                sig = tuple(numba.typeof(a) for a in kargs)
                entry = kernel.overloads[sig].entry_point
                steps["kernel(*args) via the compiled entry point"] = lambda: entry(*kargs)
            except (KeyError, AttributeError):
                pass
            empty = empty_kernel(len(kargs))
            empty(*kargs)
            steps[f"empty @njit function, same {len(kargs)} arguments"] = lambda: empty(*kargs)
        if cases.torch is not None:
            steps["torch (" + cases.torch_variant(OPTIMIZERS[opt].cls) + ") opt.step()"] = \
                build("torch", opt, "float32", size).step
        wait_for_idle(args.wait_idle)
        times = measure(steps, rounds=args.rounds, block_time=0.02)
        for name, ts in times.items():
            rows.append([opt.replace("_", " "), name, fmt_time(median(ts))])
    print(markdown_table(["optimizer", "call", "time per call"], rows, left=2))
    print("\nThe dispatcher checks the type of every argument on each call; the compiled entry "
          "point\n(`kernel.overloads[signature].entry_point`) skips that check.\n")


def section_compiled(args):
    """Steps from a compiled loop (numbaopt.compiled) against opt.step() and torch."""
    from .compiled_loop import STEPS, cases, mixed_cases, sparse_cases
    print("## A step inside a compiled loop: Adam float32, 1k/10\n")
    steps = cases()
    wait_for_idle(args.wait_idle)

    def beyond(steps, floor_label, header):
        times = measure(steps, rounds=args.rounds, block_time=0.05)
        floor = median(times[floor_label])
        rows = [[name, fmt_time(median(ts) / STEPS),
                 fmt_time((median(ts) - floor) / STEPS)] for name, ts in times.items()]
        print(markdown_table(["loop", "time per step", header], rows, left=1))

    beyond(steps, "the kernel alone in an @njit loop", "beyond the kernel's own work")
    print("\n## Over two dtypes: Adam float32 + float64, 1k/10 (5 tensors each)\n")
    beyond(mixed_cases(), "the two lanes' kernels alone in an @njit loop",
           "beyond the kernels' own work")
    print("\n## SparseAdam, a batch's rows a step: float32 10000x64, 32 rows\n")
    times = measure(sparse_cases(), rounds=args.rounds, block_time=0.05)
    rows = [[name, fmt_time(median(ts) / STEPS)] for name, ts in times.items()]
    print(markdown_table(["loop", "time per step"], rows, left=1))
    print()


def section_threshold(args):
    """Serial against parallel kernel as the arena grows: where should PARALLEL_THRESHOLD be?"""
    print("## Serial against parallel kernel (PARALLEL_THRESHOLD)\n")
    from numbaopt import arena
    from numbaopt.optim import optimizer as optimizer_module
    exps = range(12, 23) if not args.quick else range(10, 17, 2)
    rows = []
    crossover = {}
    for opt, dtype in (("SGD", "float32"), ("SGD", "float64"), ("Adam", "float32"),
                       ("Adam", "float64")):
        first_win = None
        for e in exps:
            n = 1 << e
            tensors = max(1, n // 4096)          # tensors of 4096 elements at most
            steps = {}
            for parallel in (False, True):
                c = build("numbaopt", opt, dtype, Size(f"{n}", n, tensors, parallel))
                steps[parallel] = c.step
            wait_for_idle(args.wait_idle)
            times = measure(steps, rounds=args.rounds, case_time=args.case_time / 4)
            ratio = median_ratio(times[False], times[True])
            best = min(times[False]) / min(times[True])
            # the crossover: from here on the parallel kernel wins, at its median and its best
            if min(ratio, best) > 1:
                first_win = n if first_win is None else first_win
            else:
                first_win = None
            rows.append([opt, dtype, f"2^{e} = {n}", fmt_time(median(times[False])),
                         fmt_time(median(times[True])), f"{ratio:.2f}", f"{best:.2f}"])
        crossover[(opt, dtype)] = first_win
    print(markdown_table(["optimizer", "dtype", "elements", "serial", "parallel",
                          "serial / parallel", "best serial / best parallel"], rows))
    print()
    for (opt, dtype), n in crossover.items():
        where = f"from {n} elements on" if n else "at no measured size"
        print(f"- {opt} {dtype}: the parallel kernel is faster {where}")
    print(f"\nPARALLEL_THRESHOLD = {optimizer_module.PARALLEL_THRESHOLD}, CHUNK = {arena.CHUNK}, "
          f"numba threads = {numba.get_num_threads()}.\n")


def section_threads(args):
    size = SMALL_SIZES[2] if args.quick else SIZES[3]
    size = size._replace(parallel=True)
    print(f"## numba.set_num_threads: Adam float32, {size.name}, parallel kernel\n")
    nmax = numba.config.NUMBA_NUM_THREADS
    c = build("numbaopt", "Adam", "float32", size)
    counts = sorted({1, nmax})

    def with_threads(k):
        def step():
            numba.set_num_threads(k)
            c.step()
        return step

    try:
        wait_for_idle(args.wait_idle)
        times = measure({k: with_threads(k) for k in counts}, rounds=args.rounds,
                        case_time=args.case_time)
    finally:
        numba.set_num_threads(nmax)
    base = median(times[1])
    rows = [[str(k), fmt_time(median(times[k])), f"{base / median(times[k]):.2f}x"]
            for k in counts]
    print(markdown_table(["threads", "step", "speedup over 1 thread"], rows, left=1))
    print()


_COLD_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import numbaopt
t1 = time.perf_counter()
p = numbaopt.Parameter(np.zeros(1000, dtype=np.float32))
p.grad = np.ones(1000, dtype=np.float32)
opt = getattr(numbaopt.optim, OPTIMIZER)([p], lr=1e-3)
opt.step()
t2 = time.perf_counter()

# After the timing: which compiled functions the step loaded from numba's cache and
# which it compiled (a dispatcher counts a cache miss for every signature it compiles).
from numba.core.dispatcher import Dispatcher
kernel = opt._kernel
stats = kernel.stats
dispatchers = {kernel.py_func.__qualname__: kernel}
for name, module in list(sys.modules.items()):
    if name.split(".")[0] == "numbaopt":
        for attr, f in list(vars(module).items()):
            if isinstance(f, Dispatcher):
                dispatchers.setdefault(name + "." + attr, f)
compiled = sorted(name for name, f in dispatchers.items() if sum(f.stats.cache_misses.values()))
print(json.dumps({"import": t1 - t0, "first_step": t2 - t1,
                  "kernel": kernel.py_func.__qualname__,
                  "cache_hits": sum(stats.cache_hits.values()),
                  "cache_misses": sum(stats.cache_misses.values()),
                  "compiled": compiled}))
"""

#: the optimizers of the cold-start section and test: SGD (whose rule calls @njit loop
#: copies) and Adam, and two of the later ones: NAdam (per-parameter scalar state, an
#: advance step) and Rprop (branches per element)
COLD_OPTIMIZERS = ("SGD", "Adam", "NAdam", "Rprop")


def cold_start(cache_dir, optimizer="Adam"):
    """Run import + first step in a fresh interpreter with ``NUMBA_CACHE_DIR=cache_dir``.

    Returns ``{"import", "first_step", "total", "process"}`` in seconds (``process``
    includes interpreter start-up) and what the step's kernel did: ``kernel`` (its
    name), ``cache_hits`` and ``cache_misses`` (signatures loaded from numba's cache,
    and compiled), and ``compiled`` (every numbaopt function that compiled in the
    process; empty when everything came from the cache).
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    script = f"OPTIMIZER = {optimizer!r}\n" + _COLD_SCRIPT
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         check=True)
    process = time.perf_counter() - t
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["total"] = result["import"] + result["first_step"]
    result["process"] = process
    return result


def section_cold(args):
    classes = [OPTIMIZERS[o].cls for o in args.optimizers] if args.optimizers_given \
        else COLD_OPTIMIZERS
    classes = list(dict.fromkeys(classes))
    print("## Cold start: import numbaopt + first step (1k float32) in a fresh process\n")
    runs = 2 if args.quick else 5
    rows = []
    misses = []
    with tempfile.TemporaryDirectory() as tmp:
        for cls in classes:
            clean = []
            for k in range(max(1, runs // 2)):
                clean.append(cold_start(os.path.join(tmp, f"{cls}-clean{k}"), cls))
            warm = [cold_start(os.path.join(tmp, f"{cls}-clean0"), cls) for _ in range(runs)]
            for name, res in (("warm on-disk cache", warm), ("clean cache (compiles)", clean)):
                loaded = sum(r["cache_hits"] for r in res)
                compiled = sorted({c for r in res for c in r["compiled"]})
                rows.append([cls, name, str(len(res)),
                             f"{median([r['import'] for r in res]):.3f} s",
                             f"{median([r['first_step'] for r in res]):.3f} s",
                             f"{median([r['total'] for r in res]):.3f} s",
                             f"{median([r['process'] for r in res]):.3f} s",
                             f"{loaded}/{len(res)}"])
                if name.startswith("warm") and compiled:
                    misses.append(f"{cls}: compiled with a warm cache: {', '.join(compiled)}")
    print(markdown_table(["optimizer", "numba cache", "runs", "import", "first step",
                          "import + first step", "whole process", "kernel from cache"],
                         rows, left=2))
    print("\n(medians; the target is import + first step <= 0.5 s with a warm cache;")
    print("kernel from cache: runs whose step loaded its kernel from numba's cache)\n")
    if misses:
        print("\n".join(f"- {m}" for m in misses) + "\n")


# -- main ---------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS),
                        help="optimizers of the table (default: all), and of the overhead "
                             f"and cold sections (default: {', '.join(OVERHEAD_OPTIMIZERS)} "
                             f"and {', '.join(COLD_OPTIMIZERS)})")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--sizes", nargs="+", help="size names, e.g. 1k/10 16M/1")
    parser.add_argument("--rounds", type=int, default=21, help="most rounds per case")
    parser.add_argument("--case-time", type=float, default=8.0,
                        help="seconds after which a case stops (at least 7 rounds)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the naive NumPy step")
    parser.add_argument("--wait-idle", type=float, default=20.0,
                        help="before each case wait up to this many seconds for other "
                             "processes to go quiet (0: never wait)")
    parser.add_argument("--parallel-threshold", type=int,
                        help="override numbaopt.optim.optimizer.PARALLEL_THRESHOLD for this run")
    parser.add_argument("--chunk", type=int,
                        help="override numbaopt.arena.CHUNK (elements per chunk) for this run")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few rounds: checks that the report runs")
    args = parser.parse_args(argv)
    args.optimizers_given = args.optimizers is not None
    if args.optimizers is None:
        args.optimizers = list(OPTIMIZERS)
    sizes = SMALL_SIZES if args.quick else SIZES
    if args.sizes:
        known = {s.name: s for s in SIZES + SMALL_SIZES}
        unknown = [s for s in args.sizes if s not in known]
        if unknown:
            parser.error(f"unknown sizes {unknown}; known: {sorted(known)}")
        sizes = [known[s] for s in args.sizes]
    if args.quick:
        args.rounds = min(args.rounds, 3)
        args.case_time = min(args.case_time, 0.5)
        args.wait_idle = 0

    import numbaopt.arena
    import numbaopt.optim.optimizer
    if args.parallel_threshold is not None:
        numbaopt.optim.optimizer.PARALLEL_THRESHOLD = args.parallel_threshold
    if args.chunk is not None:
        numbaopt.arena.CHUNK = args.chunk

    print("# numbaopt performance\n")
    print("\n".join(environment_lines()))
    print(f"- PARALLEL_THRESHOLD = {numbaopt.optim.optimizer.PARALLEL_THRESHOLD}, "
          f"CHUNK = {numbaopt.arena.CHUNK}"
          + (" (overridden for this run)" if args.parallel_threshold or args.chunk else ""))
    print()
    for section in args.sections:
        globals()["section_" + section](*((args, sizes) if section == "table" else (args,)))
    if args.wait_idle > 0:
        print(f"(waited {_waited[0]:.0f} s in all for other processes to go quiet; "
              f"{load_average()} at the end)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
