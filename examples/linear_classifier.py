"""A linear classifier: Linear(5, 2), CrossEntropyLoss, SGD(lr=1e-3, weight_decay=0.5).

The tutorial's snippet, then the loop it describes ("update the parameters of
the classifier via SGD at the end of each minibatch"). The tutorial prints
nothing; this script prints the loss, checks the update SGD made, and trains
on a few minibatches.

Note on the tutorial's target: ``torch.tensor([1, 2], dtype=torch.float32)``
has the logits' shape and a float dtype, so torch's CrossEntropyLoss reads it
as class *probabilities* (1 for class 0, 2 for class 1: unnormalised, which
torch does not check), not as the class indices 1 and 2 (index 2 would not
even exist with two classes). ``nn.CrossEntropyLoss`` here reads it the same
way; integer targets are class indices.

``--plot PATH`` writes the minibatch and test loss curves to a PNG (needs matplotlib).
"""

import numpy as np

from _plotting import ArgumentParser, plot_curves     # examples/_plotting.py
from numbaopt import nn, optim

args = ArgumentParser(__doc__).parse_args()
rng = np.random.default_rng(0)

in_dim, out_dim = 5, 2
inputs = rng.standard_normal(in_dim, dtype=np.float32)
target = np.array([1, 2], dtype=np.float32)
model = nn.Linear(in_dim, out_dim, bias=True, rng=rng)
out = model(inputs)
optimizer = optim.SGD(model.parameters(), lr=1e-3, weight_decay=0.5)

loss = nn.CrossEntropyLoss()
computed_loss = loss(out, target)
optimizer.zero_grad()  # Zeroes out gradients between minibatches
model.backward(loss.backward())  # torch: computed_loss.backward()
weight, grad = model.weight.data.copy(), model.weight.grad.copy()
optimizer.step()  # Updates parameters via SGD

print(f'logits {np.round(out, 4)}, target {target} (class probabilities), '
      f'loss {computed_loss.item():.4f}')
# SGD with weight decay: p <- p - lr * (grad + weight_decay * p)
expected = weight - 1e-3 * (grad + 0.5 * weight)
print(f'weight after step() == weight - lr * (grad + weight_decay * weight): '
      f'{np.allclose(model.weight.data, expected, rtol=1e-6, atol=1e-7)}')
print(f'loss after the step: {loss(model(inputs), target).item():.4f}')

# The loop the tutorial describes: one SGD step at the end of each minibatch, here
# on two Gaussian classes with integer class-index targets, evaluated on a fixed set.
centers = 2 * rng.standard_normal((out_dim, in_dim)).astype(np.float32)


def sample(n):
    labels = rng.integers(0, out_dim, size=n)
    return centers[labels] + rng.standard_normal((n, in_dim), dtype=np.float32), labels


x_test, y_test = sample(1000)
train_losses, test_losses = [], ([], [])
for epoch in range(1, 6):
    for batch in range(100):
        x, labels = sample(32)
        optimizer.zero_grad()
        computed_loss = loss(model(x), labels)
        model.backward(loss.backward())
        optimizer.step()
        train_losses.append(computed_loss.item())
    logits = model(x_test)
    accuracy = np.mean(logits.argmax(axis=1) == y_test)
    test_losses[0].append(len(train_losses))
    test_losses[1].append(loss(logits, y_test).item())
    print(f'epoch {epoch}: test loss {loss(logits, y_test).item():.4f}, accuracy {accuracy:.3f}')

if args.plot:
    plot_curves(args.plot, "Linear(5, 2), SGD(lr=1e-3, weight_decay=0.5), two Gaussian classes",
                {"cross-entropy loss": {"minibatch": train_losses, "test set": test_losses}})
