"""CUDA kernel tests: run under numba's simulator or on a real GPU, skipped otherwise.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q

The variable must be set before numba is imported (numba reads it once), so set
it in the environment, not from Python. Tests marked ``cuda_gpu`` need a real
GPU and are skipped under the simulator.
"""

import pytest
from numba.core import config


def _cuda_status():
    """``(simulator, gpu, reason)``: what can run the tests here, and why not when nothing."""
    try:
        from numba import cuda
    except ImportError as error:   # numba-cuda not installed (pip install numba-cuda)
        return False, False, f"numba.cuda is not importable: {error}"
    if config.ENABLE_CUDASIM:
        return True, False, ""
    try:
        gpu = bool(cuda.is_available())
    except Exception:   # pragma: no cover - a broken driver install
        gpu = False
    if not gpu:
        return False, False, "no CUDA GPU, and NUMBA_ENABLE_CUDASIM=1 is not set"
    return False, True, ""


SIMULATOR, GPU, UNAVAILABLE = _cuda_status()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda_gpu: needs a real CUDA GPU (skipped under the simulator)")
    config.addinivalue_line("markers", "needs_cuda: needs a GPU or numba's CUDA simulator")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a real CUDA GPU (the simulator is running)"
                            if SIMULATOR else "needs a real CUDA GPU")
    unavailable = pytest.mark.skip(
        reason=f"needs numba-cuda and a GPU or NUMBA_ENABLE_CUDASIM=1 "
               f"(tests/test_cuda_simulator.py runs it): {UNAVAILABLE}")
    for item in items:
        if "cuda_gpu" in item.keywords and not GPU:
            item.add_marker(skip)
        if "needs_cuda" in item.keywords and not (SIMULATOR or GPU):
            item.add_marker(unavailable)


@pytest.fixture
def tiny_blocks(monkeypatch):
    """4-thread blocks and 5-element chunks, so small parameters span many blocks (the
    simulator runs a Python thread per GPU thread)."""
    from numbaopt.kernels import cuda as kernels
    monkeypatch.setattr(kernels, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(kernels, "CHUNK", 5)
