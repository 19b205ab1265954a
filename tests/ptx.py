"""Compiling CUDA kernels to PTX for a real device in tests (NVVM from numba-cuda[cu12];
no GPU needed, and nothing to compile under the simulator)."""

import pytest


def ptx_available():
    """Whether numba-cuda and NVVM can compile PTX here."""
    from numba.core import config
    if config.ENABLE_CUDASIM:
        return False
    try:
        from numba import cuda  # noqa: F401
        from numba.cuda.cudadrv import nvvm
        return bool(nvvm.is_available())
    except Exception:
        return False


def require_ptx():
    """``numba.cuda``, ready to compile PTX; the test is skipped where it cannot."""
    if not ptx_available():
        pytest.skip("no PTX compiler here: the simulator is on, or numba-cuda with NVVM is not "
                    "installed (pip install 'numbaopt[cuda]')")
    from numba import cuda
    return cuda
