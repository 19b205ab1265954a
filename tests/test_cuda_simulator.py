"""The CUDA tests (tests/cuda) in their own process under numba's simulator.

NUMBA_ENABLE_CUDASIM must be set before numba is imported, so they cannot run
in this process, which has imported numba already.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt import optim

CUDA_TESTS = pathlib.Path(__file__).parent / "cuda"


def _cuda_state():
    try:
        from numba import cuda
    except ImportError:
        return None
    return bool(cuda.is_available())


def test_cuda_suite_under_the_simulator():
    if _cuda_state() is None:
        pytest.skip("numba-cuda is not installed (pip install -e '.[cuda]')")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CUDA_TESTS)],
        env=env, capture_output=True, text=True, timeout=900,
        cwd=pathlib.Path(__file__).parents[1])
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_cuda_device_without_a_gpu_is_a_clear_error():
    if _cuda_state():
        pytest.skip("a GPU (or the simulator) is available here")
    p = numbaopt.Parameter(np.zeros(3))
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM|numba-cuda"):
        optim.Adam([p], device="cuda")
    assert p._arena is None                     # refused: nothing was packed
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        optim.Adam([p], device="gpu")
