"""Phase retrieval: recover a complex signal from the magnitudes of its measurements, with
Adam on a complex parameter.

Diffraction imaging, crystallography and optical metrology measure intensities
``y = |A x|**2`` and lose the phase of ``A x``. Here ``x`` is a complex signal of 64
samples, ``A`` a random complex measurement matrix with 6x more rows, and ``x`` is found
by minimising ``L(x) = mean((|A x|**2 - y)**2)`` from a spectral start (Wirtinger flow),
with Adam stepping the complex parameter as torch does: its real and imaginary parts
are stepped as independent reals (``view_as_real``). The gradient handed to the
optimizer is torch's convention for a real loss of a complex variable,
``dL/dRe + 1j dL/dIm = (4 / m) A^H ((|A x|**2 - y) * A x)``. The signal is recovered up
to a global phase, which no intensity can see.

The same run is repeated on the real pairs of the signal (a float64 parameter of shape
``(64, 2)``), and the two agree bit for bit. Run it as
``python examples/phase_retrieval.py``; it is seeded. ``--plot PATH`` writes the loss
and the error curves to a PNG (needs matplotlib).
"""

import numpy as np

from _plotting import ArgumentParser, plot_curves     # examples/_plotting.py
import numbaopt
from numbaopt import optim

args = ArgumentParser(__doc__).parse_args()
rng = np.random.default_rng(0)
n, m = 64, 384
x_true = rng.standard_normal(n) + 1j * rng.standard_normal(n)
A = (rng.standard_normal((m, n)) + 1j * rng.standard_normal((m, n))) / np.sqrt(2)
y = np.abs(A @ x_true) ** 2


def loss_and_grad(x):
    """``L(x)`` and torch's gradient of it (the one a complex parameter's ``.grad`` holds)."""
    z = A @ x
    r = np.abs(z) ** 2 - y
    return float(np.mean(r ** 2)), (4 / m) * (A.conj().T @ (r * z))


def error(x):
    """Relative distance to the true signal, up to the best global phase."""
    phase = np.vdot(x, x_true)
    phase = phase / abs(phase) if phase != 0 else 1.0
    return float(np.linalg.norm(x_true - phase * x) / np.linalg.norm(x_true))


# Spectral start: the top eigenvector of mean(y_i a_i a_i^H), scaled to the measured power.
eigenvalues, eigenvectors = np.linalg.eigh((A.conj().T * y) @ A / m)
x0 = eigenvectors[:, -1] * np.sqrt(np.mean(y))
print(f"spectral start: error {error(x0):.3f}")

signal = numbaopt.Parameter(x0.copy())                                   # complex128
pairs = numbaopt.Parameter(x0.view(np.float64).reshape(n, 2).copy())     # its real pairs
opt = optim.Adam([signal], lr=0.02)
twin = optim.Adam([pairs], lr=0.02)

losses, errors = [], []
steps = 2000
for step in range(1, steps + 1):
    loss, g = loss_and_grad(signal.data)
    signal.grad = g
    opt.step()
    pairs.grad = g.view(np.float64).reshape(n, 2)        # the same gradient, as pairs
    twin.step()
    losses.append(loss)
    errors.append(error(signal.data))
    if step % 400 == 0:
        print(f"step {step:4d}: loss {loss:.3e}, error {errors[-1]:.2e}")

same = np.array_equal(signal.data.view(np.float64).reshape(n, 2), pairs.data)
print(f"recovered up to a global phase: error {errors[-1]:.1e} "
      f"({'below' if errors[-1] < 1e-6 else 'above'} 1e-6)")
print(f"complex Adam steps the real pairs: the twin on (64, 2) float64 agrees bit for bit: {same}")

if args.plot:
    plot_curves(args.plot, "Phase retrieval: Adam on a complex signal",
                {"loss": {"mean((|Ax|² - y)²)": losses}, "error": {"up to a global phase": errors}},
                log=("loss", "error"))
