"""Cold start: ``import numbaopt`` and the first step in a fresh process.

With numba's on-disk cache warm, the first step only loads the compiled kernel
(target: import + first step <= 0.5 s); from a clean cache it compiles the one
kernel the step needs. Nothing compiles at import time: the optimizers' kernels
are built from their rules (``type(opt)._rule.cpu()``) on the first step.

The fresh process reports, besides its times, where the step's kernel
(``opt._kernel``) came from: numba's dispatcher counts a cache hit for every
signature it loaded from disk and a cache miss for every one it compiled.
"""

import json
import os
import subprocess
import sys

import pytest

from .report import COLD_OPTIMIZERS, cold_start

_NOTHING_COMPILED = r"""
import json, sys
from numba.core.dispatcher import Dispatcher
import numbaopt
from numbaopt.optim import ElementwiseOptimizer

# every @njit function of every numbaopt module the import loaded
dispatchers = {}
for name, module in list(sys.modules.items()):
    if name.split(".")[0] == "numbaopt":
        for attr, f in list(vars(module).items()):
            if isinstance(f, Dispatcher):
                dispatchers[name + "." + attr] = f
compiled = sorted(name for name, f in dispatchers.items() if f.signatures)

# the optimizers' kernels: built from each rule on first use, so none should exist yet
rules, built = [], []
for name in numbaopt.optim.__all__:
    cls = getattr(numbaopt.optim, name)
    if isinstance(cls, type) and issubclass(cls, ElementwiseOptimizer) and cls._rule is not None:
        rules.append(name)
        if cls._rule._cpu is not None:
            built.append(name)
            compiled += [name + " " + k.py_func.__qualname__ for k in cls._rule._cpu
                         if k.signatures]
print(json.dumps({"dispatchers": sorted(dispatchers), "compiled": compiled,
                  "rules": rules, "built": built}))
"""


def _run(script, **env_extra):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **env_extra)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_nothing_compiles_at_import():
    result = _run(_NOTHING_COMPILED)
    assert result["dispatchers"], "no @njit functions found in numbaopt's modules"
    for name in ("Adam", "SGD", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop"):
        assert name in result["rules"], f"{name} has no elementwise rule"
    assert result["built"] == [], "optimizer kernels were built at import time"
    assert result["compiled"] == []


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A directory for numba caches, and per optimizer one the clean run filled."""
    return tmp_path_factory.mktemp("numba-cache"), {}


@pytest.mark.parametrize("optimizer", COLD_OPTIMIZERS)
@pytest.mark.parametrize("cache", ["clean", "warm"])     # clean runs first: they fill the cache
def test_import_and_first_step(benchmark, caches, cache, optimizer):
    root, filled = caches
    if cache == "warm" and optimizer not in filled:       # e.g. run alone with -k warm
        result = cold_start(root / f"{optimizer}-fill", optimizer)
        assert result["cache_misses"] == 1, result          # a fresh cache dir: compiled
        filled[optimizer] = root / f"{optimizer}-fill"
    runs = iter(range(1_000_000))
    used = []

    def setup():
        # a fresh cache directory for every clean run, the same one for every warm run
        path = filled[optimizer] if cache == "warm" else root / f"{optimizer}-clean{next(runs)}"
        used.append(path)
        return (path, optimizer), {}

    result = benchmark.pedantic(cold_start, setup=setup, rounds=3 if cache == "warm" else 1)
    benchmark.group = f"cold start: import numbaopt + first {optimizer} step"
    benchmark.extra_info.update(result)
    assert result["kernel"].startswith("_serial_"), result   # 1k elements: the serial kernel
    if cache == "warm":
        # the step's kernel was loaded from numba's cache, and nothing else compiled
        assert result["cache_hits"] == 1 and result["cache_misses"] == 0, result
        assert result["compiled"] == [], result
    else:
        # it compiled the step's kernel (and whatever @njit helpers its rule calls:
        # SGD's loop copies)
        assert result["cache_hits"] == 0 and result["cache_misses"] == 1, result
        assert result["kernel"] in result["compiled"], result
        filled[optimizer] = used[-1]
