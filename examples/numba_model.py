"""A model written in Numba, trained in place in the optimizer's arena.

A small MLP (2 inputs, 16 tanh units, 1 logit) learns which points of the
square lie inside a circle. Its loss and gradient are one ``@njit`` function
that reads the parameters straight from ``optimizer.arena.data`` and writes
the gradients straight into ``optimizer.arena.grad``: no per-parameter
Python, no copies. This is the path the arena exists for. Adam steps the
whole arena in one kernel call; a cosine schedule anneals the learning rate.

Run it with ``python examples/numba_model.py``; it prints one line per epoch.
``--plot PATH`` writes the loss and lr curves to a PNG (needs matplotlib).
"""

import math

import numpy as np
from numba import njit

from numbaopt import nn, optim
from numbaopt.optim import lr_scheduler


@njit(cache=True, error_model="numpy")
def loss_and_grad(data, grad, offsets, x, y):
    """Binary cross-entropy (with logits) of the MLP on the batch ``(x, y)``.

    Reads the parameters from ``data`` at ``offsets``, in the order weight1 (H, D),
    bias1 (H,), weight2 (1, H), bias2 (1,), the layout of two ``nn.Linear`` layers;
    overwrites their gradients in ``grad`` (same layout). Returns (mean loss, accuracy).
    """
    n, d = x.shape
    h = offsets[2] - offsets[1]
    w1 = data[offsets[0]:offsets[1]].reshape((h, d))
    b1 = data[offsets[1]:offsets[2]]
    w2 = data[offsets[2]:offsets[3]]
    b2 = data[offsets[3]:offsets[4]]
    gw1 = grad[offsets[0]:offsets[1]].reshape((h, d))
    gb1 = grad[offsets[1]:offsets[2]]
    gw2 = grad[offsets[2]:offsets[3]]
    gb2 = grad[offsets[3]:offsets[4]]
    grad[offsets[0]:offsets[4]] = 0
    act = np.empty(h, dtype=data.dtype)
    loss = 0.0
    correct = 0
    for i in range(n):
        z = b2[0]
        for j in range(h):
            s = b1[j]
            for k in range(d):
                s += w1[j, k] * x[i, k]
            act[j] = math.tanh(s)
            z += w2[j] * act[j]
        # log(1 + exp(-|z|)) keeps the loss finite for large logits
        loss += max(z, 0.0) - z * y[i] + math.log1p(math.exp(-abs(z)))
        correct += (z > 0) == (y[i] > 0.5)
        dz = (1.0 / (1.0 + math.exp(-z)) - y[i]) / n
        gb2[0] += dz
        for j in range(h):
            gw2[j] += dz * act[j]
            ds = dz * w2[j] * (1.0 - act[j] * act[j])
            gb1[j] += ds
            for k in range(d):
                gw1[j, k] += ds * x[i, k]
    return loss / n, correct / n


def make_data(rng, n):
    """Points uniform in [-1, 1]^2, labelled 1 inside the circle of radius 0.65."""
    x = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    y = (np.hypot(x[:, 0], x[:, 1]) < 0.65).astype(np.float32)
    return x, y


def main(epochs=20, batch_size=64, plot=None):
    rng = np.random.default_rng(0)
    x, y = make_data(rng, 1024)
    hidden, output = nn.Linear(2, 16, rng=rng), nn.Linear(16, 1, rng=rng)   # torch's init
    optimizer = optim.Adam(hidden.parameters() + output.parameters(), lr=0.05)
    scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    arena = optimizer.arena
    losses, lrs = [], []

    for epoch in range(1, epochs + 1):
        lr = optimizer.param_groups[0]['lr']
        order = rng.permutation(len(x))
        total, hits = 0.0, 0.0
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            # The kernel overwrites every gradient (torch: zero_grad(); loss.backward()),
            # then flags them all as present so step() updates every parameter.
            loss, accuracy = loss_and_grad(arena.data, arena.grad, arena.offsets,
                                           x[batch], y[batch])
            arena.has_grad[:] = True
            optimizer.step()
            losses.append(loss)
            lrs.append(lr)
            total += loss * len(batch)
            hits += accuracy * len(batch)
        scheduler.step()
        print(f'epoch {epoch:2d}/{epochs}  lr {lr:.4f}  loss {total / len(x):.4f}  '
              f'accuracy {hits / len(x):.3f}')

    if plot:
        from _plotting import plot_curves     # examples/_plotting.py, beside this script
        plot_curves(plot, "A Numba MLP trained in the arena: Adam(lr=0.05), CosineAnnealingLR",
                    {"minibatch loss (BCE)": {"train": losses}, "lr": {"lr": lrs}})


if __name__ == '__main__':
    from _plotting import ArgumentParser
    main(plot=ArgumentParser(__doc__).parse_args().plot)
