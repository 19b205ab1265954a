"""One rank goes wrong; tests/test_distributed.py checks that the job ends, and how.

Usage: mpiexec -n 2 python tests/mpi_scripts/ddp_fail.py MODE [shard]

Both ranks train a small SGD for STEPS steps, except:
  raise   the last rank raises an uncaught exception before step 3
  exit    the last rank calls sys.exit(3) before step 3
  extra   rank 0 calls step() once more than the others, at the end
  middle  rank 0 calls step() twice at step 3 (its steps pair up with the others' in order)
  none    nothing goes wrong
Every rank prints "rank R done" when its loop ends.
"""

import sys

import numpy as np
from mpi4py import MPI

import numbaopt
from numbaopt import optim
from numbaopt.distributed import DistributedOptimizer

STEPS = 6
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
mode = sys.argv[1]
last = rank == size - 1

p = numbaopt.Parameter(np.zeros(5))
opt = DistributedOptimizer(optim.SGD([p], lr=0.1, momentum=0.9), comm, shard="shard" in sys.argv)
steps = STEPS + (1 if mode == "extra" and rank == 0 else 0)
for step in range(steps):
    if step == 3 and last and mode == "raise":
        raise ValueError(f"rank {rank} fails on purpose")
    if step == 3 and last and mode == "exit":
        sys.exit(3)
    p.grad = np.full(5, float(rank + 1))
    opt.step()
    if step == 3 and rank == 0 and mode == "middle":
        opt.step()
print(f"rank {rank} done after {steps} steps", flush=True)
