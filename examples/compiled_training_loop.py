"""Online parameter estimation inside one @njit loop: a damped oscillator, per-sample Adam.

A sensor streams positions x_k of a damped oscillator x'' + 2 zeta w x' + w^2 x = f(t),
driven by random forcing and sampled every h seconds. Sampled, the motion obeys
x_{k+1} = a x_k + b x_{k-1} + noise with a = 2 exp(-zeta w h) cos(w_d h),
b = -exp(-2 zeta w h) and w_d = w sqrt(1 - zeta^2) (structural health monitoring
estimates w and zeta of a bridge this way).
We learn theta = (a, b) online, one Adam step per sample on the squared one-step
prediction error, and read w and zeta back from the estimate. The whole loop
(simulate the sensor, predict, gradient, step) is compiled; numbaopt's step runs inside
it through ``numbaopt.compiled``. The same loop in Python, with ``opt.step()``, gives the
same numbers bit for bit and is timed against it.

    python examples/compiled_training_loop.py [--samples N] [--plot PATH]
"""

import math
import time

import numpy as np
from numba import njit

import numbaopt
from numbaopt import compiled, optim

if __name__ == "__main__":
    from _plotting import ArgumentParser, plot_curves

OMEGA, ZETA, H, NOISE = 2.0 * math.pi * 1.5, 0.02, 0.05, 0.003


def true_coefficients():
    """The exact sampling of the oscillator: x_{k+1} = a x_k + b x_{k-1}."""
    r = math.exp(-ZETA * OMEGA * H)
    wd = OMEGA * math.sqrt(1 - ZETA ** 2)
    return 2 * r * math.cos(wd * H), -r * r


@njit(cache=True)
def _simulate(a, b, forcing):
    x = np.zeros(forcing.shape[0])
    for k in range(2, x.shape[0]):
        x[k] = a * x[k - 1] + b * x[k - 2] + forcing[k]
    return x


def observations(n, seed=0):
    """The sensor's stream: the oscillator driven by random forcing (wind, traffic, ...)."""
    a, b = true_coefficients()
    return _simulate(a, b, NOISE * np.random.default_rng(seed).standard_normal(n))


def physical(theta):
    """(w, zeta) from theta = (a + b, -b): the model predicts
    x_{k+1} = theta_0 x_k + theta_1 (x_k - x_{k-1}), whose two regressors are far less
    correlated than x_k and x_{k-1} (a plain (a, b) fit converges slowly)."""
    a, b = float(theta[0] + theta[1]), float(-theta[1])
    r = math.sqrt(max(-b, 1e-300))            # exp(-zeta w h)
    wd_h = math.acos(max(-1.0, min(1.0, a / (2 * r))))
    decay = -math.log(r) / H                  # zeta w
    wd = wd_h / H
    w = math.sqrt(wd ** 2 + decay ** 2)
    return w, decay / w


LR0, DECAY_SAMPLES = 3e-3, 3000.0


@njit(cache=True)
def train_compiled(h, x, losses, lr0=LR0, decay=DECAY_SAMPLES):
    """One Adam step per sample, lr decaying as lr0 / (1 + k / decay), set from
    inside the loop; the loss is averaged per block of len(x) // len(losses) samples."""
    block = x.shape[0] // losses.shape[0]
    theta = compiled.params(h, 0)
    g = compiled.grad(h, 0)
    acc = 0.0
    for k in range(2, x.shape[0]):
        v = x[k - 1] - x[k - 2]
        e = x[k] - (theta[0] * x[k - 1] + theta[1] * v)
        g[0] = -2.0 * e * x[k - 1]
        g[1] = -2.0 * e * v
        compiled.mark_grad(h, 0)
        compiled.step(h)
        compiled.set_lr(h, 0, lr0 / (1.0 + k / decay))
        acc += e * e
        if (k + 1) % block == 0:
            losses[(k + 1) // block - 1] = acc / block
            acc = 0.0


def train_python(opt, theta, x, losses):
    """The same loop, in Python, with opt.step()."""
    block = x.shape[0] // losses.shape[0]
    acc = 0.0
    grad = np.empty(2)
    for k in range(2, x.shape[0]):
        data = theta.data
        v = x[k - 1] - x[k - 2]
        e = x[k] - (data[0] * x[k - 1] + data[1] * v)
        grad[0] = -2.0 * e * x[k - 1]
        grad[1] = -2.0 * e * v
        theta.grad = grad
        opt.step()
        opt.param_groups[0]["lr"] = LR0 / (1.0 + k / DECAY_SAMPLES)
        acc += e * e
        if (k + 1) % block == 0:
            losses[(k + 1) // block - 1] = acc / block
            acc = 0.0


def model():
    # start from a = 2, b = -1: an undamped oscillation of zero frequency
    theta = numbaopt.Parameter(np.array([1.0, 1.0]))
    return theta, optim.Adam([theta], lr=LR0)


def main():
    parser = ArgumentParser(__doc__)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--python-samples", type=int, default=20_000,
                        help="samples for the timed Python loop (it is slow)")
    args = parser.parse_args()
    x = observations(args.samples)

    theta, opt = model()
    losses = np.zeros(100)
    train_compiled(opt.compiled(), x[:1000], np.zeros(1))           # compile (or load cache)
    theta, opt = model()
    start = time.perf_counter()
    train_compiled(opt.compiled(), x, losses)
    t_compiled = time.perf_counter() - start
    w, zeta = physical(theta.data)
    print(f"true:      w = {OMEGA:.4f} rad/s, zeta = {ZETA:.4f}")
    print(f"estimated: w = {w:.4f} rad/s, zeta = {zeta:.4f} after {args.samples} samples")
    print(f"one-step prediction error (mean square): first block {losses[0]:.2e}, "
          f"last block {losses[-1]:.2e} (the forcing's variance: {NOISE ** 2:.1e})")

    n = min(args.python_samples, args.samples)
    theta_c, opt_c = model()
    train_compiled(opt_c.compiled(), x[:n], np.zeros(10))
    theta_p, opt_p = model()
    start = time.perf_counter()
    train_python(opt_p, theta_p, x[:n], np.zeros(10))
    t_python = time.perf_counter() - start
    same = np.array_equal(theta_c.data, theta_p.data) and \
        opt_c.state_dict()["state"][0]["step"] == opt_p.state_dict()["state"][0]["step"]
    per_c = t_compiled / args.samples * 1e6
    per_p = t_python / n * 1e6
    print(f"compiled loop: {per_c:.2f} us per sample; Python loop with opt.step(): "
          f"{per_p:.2f} us per sample ({per_p / per_c:.0f}x); same numbers: {same}")

    if args.plot:
        plot_curves(args.plot, "Online estimation of a damped oscillator (Adam, per sample)",
                    {"one-step prediction error (mean square)": {"train": list(losses)}},
                    xlabel=f"block of {args.samples // losses.size} samples",
                    log=("one-step prediction error (mean square)",))


if __name__ == "__main__":
    main()
