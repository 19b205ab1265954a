"""Gradient averaging and sharding on CUDA arenas, under numba's CUDA simulator and mpiexec.

Usage: NUMBA_ENABLE_CUDASIM=1 mpiexec -n N python tests/mpi_scripts/ddp_cuda_sim.py OUTDIR STEPS

Trains optimizers built with device="cuda" through DistributedOptimizer, plain
and sharded, with host staging and with the CUDA-aware path (device kernels
around the collectives; under the simulator "device" memory is host memory, so
MPI can read it), for STEPS steps (the simulator runs a Python thread per GPU
thread: keep it small), and saves the final parameters and state_dicts to
OUTDIR/rank<r>.pkl.
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

SUPPORTED = "device" in inspect.signature(optim.SGD).parameters
if SUPPORTED:
    from numbaopt.kernels import cuda as kernels
    # The simulator runs a Python thread per GPU thread: tiny blocks, many of them.
    kernels.THREADS_PER_BLOCK = 4
    kernels.CHUNK = 5

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
steps = int(sys.argv[2])
out = {"size": size, "steps": steps, "train": {}, "state_dict": {}, "local_size": {},
       "supported": SUPPORTED}

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
    # shard=True: reduce-scatter, the local optimizer's step on the device, all-gather;
    # staged, and CUDA-aware. state_dict() gathers the device shards; a state_dict loaded
    # from rank 0 (Scatterv) trains on.
    for cuda_aware in (False, True):
        for case in ("sgd_momentum", "adam"):
            opt, params = C.make_optimizer(case, C.initial_values(rank), device="cuda")
            dopt = DistributedOptimizer(opt, comm, shard=True, cuda_aware=cuda_aware)
            broadcast_parameters(dopt, root=0)
            for step in range(steps):
                C.change_lr(dopt, step)
                dopt.zero_grad()
                C.set_gradients(params, step, rank, size, True)
                dopt.step()
            out["train"][cuda_aware, case, "sharded"] = C.host(dopt.arena.data)
            out["state_dict"][cuda_aware, case] = dopt.state_dict()
            out["local_size"][cuda_aware, case] = dopt.local_optimizer.arena.size
        ref, ref_params = C.reference_run("adam", size, True, steps=steps - 1)
        opt, params = C.make_optimizer("adam", C.initial_values(99), device="cuda")
        dopt = DistributedOptimizer(opt, comm, shard=True, cuda_aware=cuda_aware)
        for p, q in zip(params, ref_params):
            p.data = q.data
        dopt.load_state_dict(ref.state_dict() if rank == 0 else None, root=0)
        for step in range(steps - 1, steps):
            C.change_lr(dopt, step)
            dopt.zero_grad()
            C.set_gradients(params, step, rank, size, True)
            dopt.step()
        out["train"][cuda_aware, "adam", "loaded"] = C.host(dopt.arena.data)

with open(os.path.join(sys.argv[1], f"rank{rank}.pkl"), "wb") as f:
    pickle.dump(out, f)
