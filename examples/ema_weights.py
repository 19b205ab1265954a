"""An exponential moving average (EMA) of the weights, next to the weights themselves.

A small MLP fits a noisy 1-D-output regression with AdamW at a constant learning
rate, so the weights keep jittering around a good solution from minibatch to
minibatch. ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))`` keeps
``ema = 0.99 * ema + 0.01 * weights`` after every step (one compiled pass that
reads the optimizer's arena directly), and its held-out loss is lower and
steadier than the raw model's. The same lines in torch::

    ema_model = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99))
    ...
    optimizer.step()
    ema_model.update_parameters(model)

Run it as ``python examples/ema_weights.py``; it is seeded, so it prints the same
numbers every time. ``--plot PATH`` writes both held-out loss curves to a PNG
(needs matplotlib).
"""

import numpy as np

from _plotting import ArgumentParser, plot_curves     # examples/_plotting.py
from numbaopt import nn, optim
from numbaopt.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

args = ArgumentParser(__doc__).parse_args()
rng = np.random.default_rng(0)


def target(x):
    return np.sin(3 * x[:, :1]) + 0.5 * x[:, 1:2] ** 2 - x[:, 2:3] + 0.25 * x[:, 3:4]


def sample(n, noise=0.3):
    x = rng.uniform(-1, 1, (n, 4)).astype(np.float32)
    return x, (target(x) + noise * rng.standard_normal((n, 1))).astype(np.float32)


class MLP(nn.Module):
    def __init__(self):
        self.fc1 = nn.Linear(4, 64, rng=rng)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(64, 1, rng=rng)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def backward(self, grad_output):
        return self.fc1.backward(self.act.backward(self.fc2.backward(grad_output)))


x_train, y_train = sample(512)
x_test, y_test = sample(4096)
model = MLP()
optimizer = optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-2)
ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))
criterion = nn.MSELoss()

raw_losses, ema_losses = [], []
steps, batch, every = 2000, 16, 50
for step in range(1, steps + 1):
    rows = rng.integers(0, len(x_train), batch)
    optimizer.zero_grad()
    criterion(model(x_train[rows]), y_train[rows])
    model.backward(criterion.backward())
    optimizer.step()
    ema_model.update_parameters(model)        # the first call copies, later ones average
    if step % every == 0:
        raw_losses.append(criterion(model(x_test), y_test).item())
        ema_losses.append(criterion(ema_model(x_test), y_test).item())
        if step % 500 == 0:
            print(f"step {step:4d}: eval loss raw {raw_losses[-1]:.4f}, EMA {ema_losses[-1]:.4f}")

# Judge the second half, once both have settled; 0.09 is the noise floor (0.3 ** 2).
raw, ema = np.array(raw_losses[len(raw_losses) // 2:]), np.array(ema_losses[len(ema_losses) // 2:])
print(f"last {len(raw)} evaluations: raw mean {raw.mean():.4f} (std {raw.std():.4f}), "
      f"EMA mean {ema.mean():.4f} (std {ema.std():.4f}); EMA lower at {(ema < raw).sum()} "
      f"of {len(raw)}")
print(f"EMA of the weights: lower eval loss {ema.mean() < raw.mean()}, "
      f"smoother {ema.std() < raw.std()}")

if args.plot:
    evaluated = range(every, steps + 1, every)
    plot_curves(args.plot, "AdamW(lr=0.01) and an EMA of its weights (decay 0.99)",
                {"held-out MSE loss": {"raw weights": (evaluated, raw_losses),
                                       "EMA of the weights": (evaluated, ema_losses)}},
                log=("held-out MSE loss",))
