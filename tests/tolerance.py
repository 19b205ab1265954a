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


def assert_same_steps(o1, p1, o2, p2):
    """Two optimizers over parameters ``p1`` and ``p2`` took the same steps, bit for bit
    (no tolerance): the parameters, ``param_groups`` and every state entry."""
    for a, b in zip(p1, p2):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.data, b.data)
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys()
    for i in s2["state"]:
        assert s1["state"][i].keys() == s2["state"][i].keys()
        for key in s2["state"][i]:
            np.testing.assert_array_equal(s1["state"][i][key], s2["state"][i][key])
