"""Gradient averaging on CUDA arenas, under numba's CUDA simulator and mpiexec.

Usage: NUMBA_ENABLE_CUDASIM=1 mpiexec -n N python tests/mpi_scripts/ddp_cuda_sim.py OUTDIR STEPS

Trains optimizers built with device="cuda" through DistributedOptimizer, with
host staging and with the CUDA-aware path (device kernels around the
Allreduce; under the simulator "device" memory is host memory, so MPI can read
it), for STEPS steps (the simulator runs a Python thread per GPU thread: keep
it small), and saves the final parameters to OUTDIR/rank<r>.pkl.
"""

import inspect
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mpi4py import MPI                 # noqa: E402

import ddp_cases as C                  # noqa: E402
from numbaopt import optim             # noqa: E402
from numbaopt.distributed import DistributedOptimizer, broadcast_parameters   # noqa: E402

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
steps = int(sys.argv[2])
out = {"size": size, "steps": steps, "train": {}, "supported": "device" in inspect.signature(optim.SGD).parameters}

if out["supported"]:
    for cuda_aware in (False, True):
        for case in ("sgd_momentum", "adam"):
            for partial in (True,):         # some gradients None: the zeroing kernel runs
                opt, params = C.make_optimizer(case, C.initial_values(rank), device="cuda")
                dopt = DistributedOptimizer(opt, comm, cuda_aware=cuda_aware)
                broadcast_parameters(dopt, root=0)
                for step in range(steps):
                    C.change_lr(dopt, step)
                    dopt.zero_grad()
                    C.set_gradients(params, step, rank, size, partial)
                    dopt.step()
                out["train"][cuda_aware, case, partial] = C.host(dopt.arena.data)
    opt, params = C.make_optimizer("adam", C.initial_values(), device="cuda")
    try:
        DistributedOptimizer(opt, comm, shard=True)
        out["shard"] = "accepted"
    except NotImplementedError as exc:
        out["shard"] = str(exc)

with open(os.path.join(sys.argv[1], f"rank{rank}.pkl"), "wb") as f:
    pickle.dump(out, f)
