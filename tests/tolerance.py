"""The project's tolerances, in one place."""

import numpy as np


def assert_close(actual, expected, dtype=None, err_msg=""):
    """Compare with the project's tolerances: float64 rtol 1e-10, float32 rtol 1e-5 (complex
    by its real dtype).

    The absolute floor is the same relative tolerance times the array's largest
    magnitude, so elements that cancel to near zero are judged on the scale of
    the array, not of themselves.
    """
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    dtype = np.dtype(dtype or expected.dtype)
    rtol = 1e-10 if dtype in (np.float64, np.complex128) else 1e-5
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    assert actual.shape == expected.shape, err_msg
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=err_msg)
