"""StepLR: the learning rate drops tenfold every 4 scheduler steps.

Prints the tutorial's 24 documented lines, ``Epoch 1, lr 100.0000`` to
``Epoch 24, lr 0.0001``. After ``k`` calls of ``scheduler.step()`` the lr is
``100 * 0.1 ** (k // 4)``; the loop prints after stepping, so epoch 4 already
shows 10.

The tutorial calls only ``lr_scheduler.step()`` in the loop, and torch warns
about it; its text says to call the scheduler after ``optimizer.step()``, so
this translation does (the parameter has no gradient, so the optimizer step
leaves it alone and only the schedule shows).

``--plot PATH`` writes the lr curve to a PNG (needs matplotlib); nothing is
trained, so there is no loss curve.
"""

import numpy as np

import numbaopt
from _plotting import ArgumentParser, plot_curves     # examples/_plotting.py
from numbaopt import optim
from numbaopt.optim import lr_scheduler

args = ArgumentParser(__doc__).parse_args()
rng = np.random.default_rng()
optimizer = optim.SGD([numbaopt.Parameter(rng.standard_normal(1, dtype=np.float32))], lr=100)
scheduler = lr_scheduler.StepLR(optimizer, step_size=4, gamma=.10)
lrs = []
for epoch in range(1, 25):
    optimizer.step()
    scheduler.step()
    print('Epoch {}, lr {:0.4f}'.format(epoch, optimizer.param_groups[0]['lr']))
    lrs.append(optimizer.param_groups[0]['lr'])

if args.plot:
    plot_curves(args.plot, "StepLR(step_size=4, gamma=0.1) from lr=100",
                {"lr": {"after scheduler.step()": lrs}}, xlabel="epoch", log=("lr",))
