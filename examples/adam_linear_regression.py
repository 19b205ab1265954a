"""Adam on a one-neuron linear regression: the torch.optim tutorial, line by line.

Prints exactly the tutorial's documented log::

    Epoch 10, Loss: 9.0166
    Epoch 20, Loss: 7.0211
    Epoch 30, Loss: 5.3501
    Epoch 40, Loss: 3.9961
    Epoch 50, Loss: 2.9324
    The predicted value for input 5: 6.4472

The starting weight and bias
----------------------------
The tutorial's ``nn.Linear(1, 1)`` drew them at random (uniform in [-1, 1])
and never printed them, but its log pins them down: the six printed numbers
are six functions of the two unknowns (w0, b0), each known to +-0.00005.
We solved that inverse problem by brute force, running the 50 Adam steps
from every start of a grid and keeping the starts that print all six lines:

- the whole square [-1, 1]^2 every 2e-4 (10^8 starts): the only starts whose
  six numbers all come within 0.02 of the log lie in [0.658, 0.683] x
  [0.305, 0.388]. No solution hides between grid points: the worst of the
  six errors changes by at most 0.01 from one grid point to the next, so a
  start that prints the log has a grid neighbour within 0.007 of it;
- [0.65, 0.69] x [0.28, 0.41] every 1e-5, then the solutions' neighbourhood
  every 2e-7: the starts that print the six lines form one thin sliver,
  w0 in [0.67035, 0.67041] and b0 in [0.34634, 0.34654], about 5e-10 in area;
- we take the start deepest inside it, where every printed number is at
  least 1.8e-5 from a rounding boundary (float32 arithmetic moves them by
  about 1e-6), and checked it with torch 2.13 in float32 and with numbaopt
  (tests/test_examples.py does both, and checks that stepping 1e-4 out of
  the sliver changes the log).

So the tutorial's torch run started from w0 = 0.67038 +- 0.00003,
b0 = 0.3464 +- 0.0001.

``--plot PATH`` writes the loss curve to a PNG (needs matplotlib).
"""

import numpy as np

from _plotting import ArgumentParser, plot_curves     # examples/_plotting.py
from numbaopt import nn, optim

args = ArgumentParser(__doc__).parse_args()

# Input and target data (simple linear relationship y = 2x)
x = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
y = np.array([[2.0], [4.0], [6.0], [8.0]], dtype=np.float32)

# Simple model: 1 linear layer, started where the tutorial's run started (see above)
model = nn.Linear(1, 1)
model.weight.data[...] = 0.670365
model.bias.data[...] = 0.3464914

# Adam Optimizer and Mean Squared Error (MSE) Loss
optimizer = optim.Adam(model.parameters(), lr=0.01)
criterion = nn.MSELoss()

# Training loop
losses = []
for epoch in range(50):
    predictions = model(x)
    loss = criterion(predictions, y)
    optimizer.zero_grad()
    model.backward(criterion.backward())    # torch: loss.backward()
    optimizer.step()
    losses.append(loss.item())

    if (epoch + 1) % 10 == 0:  # Print loss every 10 epochs
        print(f'Epoch {epoch+1}, Loss: {loss.item():.4f}')

# Test the model by making a prediction for x = 5 (no gradient bookkeeping to switch off)
test_input = np.array([[5.0]], dtype=np.float32)
test_output = model(test_input)
print(f'The predicted value for input 5: {test_output.item():.4f}')

if args.plot:
    plot_curves(args.plot, "Adam(lr=0.01), one neuron fitting y = 2x",
                {"MSE loss": {"train": losses}}, xlabel="epoch")
