"""Recover the initial (weight, bias) of the torch.optim tutorial's Adam run from its log.

Runs the tutorial's 50 Adam steps (lr=0.01, MSE on x=1..4, y=2x; float64) from every
start of a grid and keeps those whose six printed numbers round to the documented ones.
About 3 minutes on 2 cores. Used for examples/adam_linear_regression.py.
"""
import math

import numba
import numpy as np

LOG = np.array([9.0166, 7.0211, 5.3501, 3.9961, 2.9324, 6.4472])


@numba.njit(parallel=True)
def worst_error(w_lo, b_lo, h, nw, nb, log):
    """max over the six printed numbers of |value - log|, for each start of the grid."""
    err = np.empty((nw, nb))
    for i in numba.prange(nw):
        for j in range(nb):
            w, b = w_lo + i * h, b_lo + j * h
            mw = mb = vw = vb = e = 0.0
            for t in range(1, 51):
                loss = gw = gb = 0.0
                for k in range(4):
                    x = k + 1.0
                    r = w * x + b - 2 * x
                    loss += r * r / 4
                    gw += 2 * r * x / 4
                    gb += 2 * r / 4
                if t % 10 == 0:
                    e = max(e, abs(loss - log[t // 10 - 1]))
                mw = 0.9 * mw + 0.1 * gw
                mb = 0.9 * mb + 0.1 * gb
                vw = 0.999 * vw + 0.001 * gw * gw
                vb = 0.999 * vb + 0.001 * gb * gb
                bc1, bc2 = 1 - 0.9 ** t, 1 - 0.999 ** t
                w -= 0.01 / bc1 * mw / (math.sqrt(vw) / math.sqrt(bc2) + 1e-8)
                b -= 0.01 / bc1 * mb / (math.sqrt(vb) / math.sqrt(bc2) + 1e-8)
            err[i, j] = max(e, abs(5 * w + b - log[5]))
    return err


def box(err, w_lo, b_lo, h, mask):
    i, j = np.nonzero(mask)
    return (w_lo + i.min() * h, w_lo + i.max() * h, b_lo + j.min() * h, b_lo + j.max() * h)


h = 2e-4
err = worst_error(-1.0, -1.0, h, 10001, 10001, LOG)
print("whole square every 2e-4: starts within 0.02 of the log in", box(err, -1, -1, h, err < 0.02))
print("largest change between neighbours:", np.abs(np.diff(err, axis=0)).max(),
      np.abs(np.diff(err, axis=1)).max())
h = 1e-5
err = worst_error(0.65, 0.28, h, 4001, 13001, LOG)
print("[0.65, 0.69] x [0.28, 0.41] every 1e-5: solutions in", box(err, 0.65, 0.28, h, err <= 5e-5))
h = 2e-7
err = worst_error(0.6703, 0.3462, h, 601, 2001, LOG)
ok = err <= 5e-5
print("every 2e-7: solutions in", box(err, 0.6703, 0.3462, h, ok), "area", ok.sum() * h * h)
i, j = np.unravel_index(np.argmin(np.where(ok, err, np.inf)), err.shape)
print("deepest start:", 0.6703 + i * h, 0.3462 + j * h, "margin", 5e-5 - err[i, j])
