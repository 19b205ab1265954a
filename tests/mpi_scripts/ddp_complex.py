"""Complex parameters under data parallelism; tests/test_complex.py checks what it saves.

Usage: mpiexec -n N python tests/mpi_scripts/ddp_complex.py OUTDIR
       python tests/mpi_scripts/ddp_complex.py OUTDIR --reference   (one process)

A complex least-squares model (W complex128 (4, 3), b complex128 (3,), v float64 (5,)),
Adam with amsgrad, clip_grad_norm_ (order 2) before each step. Every rank trains on its
part of each batch, plain and sharded; the single-process run trains on the whole batch.
Rank 0 (or the single process) saves the final parameters and state_dict, and the
sharded run writes a checkpoint that the test loads into one process.
"""

import os
import pickle
import sys

import numpy as np

import numbaopt
from numbaopt import optim, utils

PER_RANK = 4
STEPS = 6


def make():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 3)) + 1j * rng.standard_normal((4, 3))
    b = rng.standard_normal(3) + 1j * rng.standard_normal(3)
    params = [numbaopt.Parameter(W), numbaopt.Parameter(b),
              numbaopt.Parameter(rng.standard_normal(5))]
    return optim.Adam(params, lr=0.05, amsgrad=True), params


def batch(step, n):
    rng = np.random.default_rng(100 + step)
    x = rng.standard_normal((n, 4)) + 1j * rng.standard_normal((n, 4))
    y = rng.standard_normal((n, 3)) + 1j * rng.standard_normal((n, 3))
    return x, y, rng.standard_normal((n, 5))


def gradients(params, x, y, z):
    """torch's gradient (dL/dRe + i dL/dIm) of mean(0.5 |x W + b - y|^2 + 0.5 |v - z|^2)."""
    W, b, v = (p.numpy() for p in params)
    r = x @ W + b - y
    n = x.shape[0]
    return [x.conj().T @ r / n, r.sum(0) / n, v - z.mean(0)]


def train(opt, params, part):
    for step in range(STEPS):
        opt.zero_grad()
        opt.set_grads(gradients(params, *part(batch(step, SIZE * PER_RANK))))
        utils.clip_grad_norm_(opt, 1.0)
        opt.step()


if __name__ == "__main__":
    outdir = sys.argv[1]
    if "--reference" in sys.argv:
        SIZE = int(sys.argv[sys.argv.index("--reference") + 1])
        opt, params = make()
        train(opt, params, lambda data: data)
        with open(os.path.join(outdir, "reference.pkl"), "wb") as f:
            pickle.dump({"data": [p.data.copy() for p in params], "sd": opt.state_dict()}, f)
        sys.exit(0)
    from mpi4py import MPI
    from numbaopt.distributed import DistributedOptimizer
    comm = MPI.COMM_WORLD
    RANK, SIZE = comm.Get_rank(), comm.Get_size()
    out = {}
    for shard in (False, True):
        opt, params = make()
        dopt = DistributedOptimizer(opt, comm, shard=shard)
        train(dopt, params,
              lambda data: tuple(a[RANK * PER_RANK:(RANK + 1) * PER_RANK] for a in data))
        out[shard] = {"data": [p.data.copy() for p in params], "sd": dopt.state_dict()}
        if shard:
            numbaopt.save(os.path.join(outdir, "sharded.safetensors"), dopt)
            try:
                utils.clip_grad_norm_(dopt, 1.0, norm_type=1)
            except NotImplementedError as error:
                out["order1"] = str(error)
    if RANK == 0:
        with open(os.path.join(outdir, "ranks.pkl"), "wb") as f:
            pickle.dump(out, f)
