"""The CUDA tests (tests/cuda) in their own process under numba's simulator.

NUMBA_ENABLE_CUDASIM must be set before numba is imported, so they cannot run
in this process, which has imported numba already.
"""

import os
import pathlib
import subprocess
import sys
import tempfile

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


_SUITE = {}


def start_cuda_suite():
    """Start the run of tests/cuda under the simulator in its own process (once).

    tests/conftest.py starts it as soon as the session has collected this test, which
    it moves to the end: the simulator (the suite's longest part, ~3.5 min) then runs on
    the second core while the other tests run.
    """
    if "proc" not in _SUITE and _cuda_state() is not None:
        _SUITE["out"] = tempfile.TemporaryFile(mode="w+")
        _SUITE["proc"] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CUDA_TESTS)],
            env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"), stdout=_SUITE["out"],
            stderr=subprocess.STDOUT, text=True, cwd=pathlib.Path(__file__).parents[1])
    return _SUITE.get("proc")


def stop_cuda_suite():
    """Kill the simulator run if it is still going (a session that ended early)."""
    proc = _SUITE.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if "out" in _SUITE:
        _SUITE["out"].close()


def test_cuda_suite_under_the_simulator():
    proc = start_cuda_suite()
    if proc is None:
        pytest.skip("numba-cuda is not installed (pip install -e '.[cuda]')")
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        stop_cuda_suite()
        pytest.fail("the CUDA suite under the simulator ran past 900 s")
    _SUITE["out"].seek(0)
    output = _SUITE["out"].read()
    print(output[-3000:])
    assert proc.returncode == 0, output[-9000:]
    assert " passed" in output


def test_cuda_device_without_a_gpu_is_a_clear_error():
    if _cuda_state():
        pytest.skip("a GPU (or the simulator) is available here")
    p = numbaopt.Parameter(np.zeros(3))
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM|numba-cuda"):
        optim.Adam([p], device="cuda")
    assert p._arena is None                     # refused: nothing was packed
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        optim.Adam([p], device="gpu")
