"""Cold start: ``import numbaopt`` and the first step in a fresh process.

With numba's on-disk cache warm, the first step only loads the compiled kernel
(target: import + first step <= 0.5 s); from a clean cache it compiles the one
kernel the step needs. Nothing compiles at import time.
"""

import json
import os
import subprocess
import sys

import pytest

from .report import cold_start

_NOTHING_COMPILED = r"""
import json
import numba.core.registry
import numbaopt, numbaopt.kernels.cpu as cpu
dispatchers = [name for name, f in vars(cpu).items()
               if isinstance(f, numba.core.registry.CPUDispatcher)]
compiled = [name for name in dispatchers if getattr(cpu, name).signatures]
print(json.dumps({"dispatchers": dispatchers, "compiled": compiled}))
"""


def test_nothing_compiles_at_import():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _NOTHING_COMPILED], capture_output=True,
                         text=True, check=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dispatchers"], "no kernels found in numbaopt.kernels.cpu"
    assert result["compiled"] == []


@pytest.mark.parametrize("cache", ["warm", "clean"])
def test_import_and_first_step(benchmark, tmp_path, cache):
    if cache == "warm":
        cold_start(tmp_path / "cache")      # fills the cache
    runs = iter(range(1_000_000))

    def setup():
        # a fresh cache directory for every clean run, the same one for every warm run
        return (tmp_path / ("cache" if cache == "warm" else f"clean{next(runs)}"),), {}

    result = benchmark.pedantic(cold_start, setup=setup, rounds=3 if cache == "warm" else 1)
    benchmark.group = "cold start: import numbaopt + first Adam step"
    benchmark.extra_info.update(result)
