"""Per-parameter options: parameter groups with their own learning rate or weight decay.

The two patterns of the torch.optim documentation, on a small two-layer
classifier (``model.base``, then ``model.classifier``) and three Gaussian
classes:

1. per-layer learning rates: ``model.base`` at lr 1e-2, ``model.classifier``
   at the default 1e-3, momentum 0.9 for both;
2. bias parameters without weight decay, found by name with ``named_parameters()``.

For each, the script prints the resulting ``param_groups`` (every option but
``params``, which is shown by name, with the slice of the optimizer's flat
arena the group occupies) and a short training run. ``--plot PATH`` writes the
minibatch loss curves of both runs to a PNG (needs matplotlib).
"""

import numpy as np

from _plotting import ArgumentParser, plot_curves     # examples/_plotting.py
from numbaopt import nn, optim

args = ArgumentParser(__doc__).parse_args()


class Net(nn.Module):
    def __init__(self, rng):
        self.base = nn.Linear(4, 16, rng=rng)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(16, 3, rng=rng)

    def forward(self, x):
        return self.classifier(self.relu(self.base(x)))

    def backward(self, grad_output):
        return self.base.backward(self.relu.backward(self.classifier.backward(grad_output)))


rng = np.random.default_rng(0)
centers = 2 * rng.standard_normal((3, 4)).astype(np.float32)


def sample(n):
    labels = rng.integers(0, 3, size=n)
    return centers[labels] + rng.standard_normal((n, 4), dtype=np.float32), labels


x_test, y_test = sample(1000)
criterion = nn.CrossEntropyLoss()


def show_param_groups(model, optimizer):
    names = {id(p): name for name, p in model.named_parameters()}
    arena, first = optimizer.arena, 0
    for i, group in enumerate(optimizer.param_groups):
        params = group['params']
        start, stop = arena.offsets[first], arena.offsets[first + len(params)]
        first += len(params)
        options = {k: v for k, v in group.items() if k != 'params'}
        print(f"  param_groups[{i}]: params {[names[id(p)] for p in params]} "
              f"(arena[{start}:{stop}]), {options}")


def train(model, optimizer, epochs=3, steps=100):
    """Train, print the test loss and accuracy after each epoch; return the minibatch losses."""
    losses = []
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            x, labels = sample(32)
            optimizer.zero_grad()
            loss = criterion(model(x), labels)
            model.backward(criterion.backward())
            optimizer.step()
            losses.append(loss.item())
        logits = model(x_test)
        accuracy = np.mean(logits.argmax(axis=1) == y_test)
        print(f'  epoch {epoch}: test loss {criterion(logits, y_test).item():.4f}, '
              f'accuracy {accuracy:.3f}')
    return losses


print("Per-layer learning rates:")
model = Net(rng)
optimizer = optim.SGD([
                {'params': model.base.parameters(), 'lr': 1e-2},
                {'params': model.classifier.parameters()}
            ], lr=1e-3, momentum=0.9)
show_param_groups(model, optimizer)
per_layer = train(model, optimizer)

print("Biases without weight decay:")
model = Net(rng)
bias_params = [p for name, p in model.named_parameters() if 'bias' in name]
others = [p for name, p in model.named_parameters() if 'bias' not in name]

optimizer = optim.SGD([
                {'params': others},
                {'params': bias_params, 'weight_decay': 0}
            ], weight_decay=1e-2, lr=1e-2)
show_param_groups(model, optimizer)
no_bias_decay = train(model, optimizer)

if args.plot:
    plot_curves(args.plot, "SGD with parameter groups, 4-16-3 classifier",
                {"minibatch loss": {"per-layer learning rates": per_layer,
                                    "biases without weight decay": no_bias_decay}},
                log=("minibatch loss",))
