"""Data-parallel logistic regression with MPI: every rank trains on its part of the data.

    mpiexec -n 2 python examples/distributed_data_parallel.py
    mpiexec -n 2 python examples/distributed_data_parallel.py --shard   # ZeRO-1 state
    python examples/distributed_data_parallel.py                        # one rank

Each rank computes the gradient of its own rows; ``DistributedOptimizer``
averages the gradients across ranks (one Allreduce over the flat gradient
arena) and steps, so every rank holds the same weights, and they are the
weights one process training on all the data gets. Rank 0 prints, and with
``--plot PATH`` writes the loss curve to a PNG (needs matplotlib).
"""

import numpy as np
from mpi4py import MPI

import numbaopt
from _plotting import ArgumentParser, plot_curves     # examples/_plotting.py
from numbaopt import optim
from numbaopt.distributed import DistributedOptimizer, broadcast_parameters

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
parser = ArgumentParser(__doc__)
parser.add_argument("--shard", action="store_true",
                    help="shard the optimizer state across the ranks (ZeRO-1)")
args = parser.parse_args()
shard = args.shard

# The same synthetic data set on every rank (same seed); each rank keeps its own rows.
n_samples, n_features = 4096, 20
rng = np.random.default_rng(0)
X = rng.standard_normal((n_samples, n_features))
w_true = rng.standard_normal(n_features)
y = (X @ w_true + 0.5 * rng.standard_normal(n_samples) > 0).astype(np.float64)
mine = slice(rank * n_samples // size, (rank + 1) * n_samples // size)
X_mine, y_mine = X[mine], y[mine]

# The model: weights and a bias. Every rank starts from rank 0's (random) values.
w = numbaopt.Parameter(np.random.default_rng(100 + rank).standard_normal(n_features) * 0.1)
b = numbaopt.Parameter(np.zeros(()))
opt = DistributedOptimizer(optim.Adam([w, b], lr=0.05), comm, shard=shard)
broadcast_parameters(opt, root=0)


def loss_and_gradients():
    """This rank's part of the mean log-loss over ALL samples, and its gradients.

    Dividing by n_samples / size (not by this rank's row count) makes the
    average over ranks the whole data set's mean gradient, also when the
    parts differ in size.
    """
    z = X_mine @ w.data + b.data
    p = 1.0 / (1.0 + np.exp(-z))
    scale = size / n_samples
    loss = np.sum(np.logaddexp(0.0, z) - y_mine * z) * scale
    residual = (p - y_mine) * scale
    return loss, X_mine.T @ residual, residual.sum()


if rank == 0:
    print(f"{n_samples} samples on {size} rank{'s' if size > 1 else ''}, "
          f"sharded optimizer state: {shard}")
losses = []
for step in range(1, 201):
    opt.zero_grad()
    loss, w.grad, b.grad = loss_and_gradients()
    opt.step()
    loss = comm.allreduce(loss) / size          # the whole data set's mean loss
    losses.append(loss)
    if rank == 0 and step % 50 == 0:
        print(f"step {step:3d}: loss {loss:.6f}")

loss = comm.allreduce(loss_and_gradients()[0]) / size
correct = comm.allreduce(int(np.sum(((X_mine @ w.data + b.data) > 0) == (y_mine > 0.5))))
if rank == 0:
    print(f"final loss {loss:.6f}, training accuracy {correct / n_samples:.4f}")
    if args.plot:
        plot_curves(args.plot, f"Data-parallel logistic regression, Adam(lr=0.05), "
                    f"{size} rank{'s' if size > 1 else ''}",
                    {"log-loss (all data)": {"train": losses}}, log=("log-loss (all data)",))
