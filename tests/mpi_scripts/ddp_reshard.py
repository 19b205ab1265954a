"""Checkpoints written by N ranks, loaded by M ranks; tests/test_distributed.py checks them.

Usage: mpiexec -n M python tests/mpi_scripts/ddp_reshard.py OUTDIR [SRCDIR]
       python tests/mpi_scripts/ddp_reshard.py OUTDIR SRCDIR        (M = 1)

With SRCDIR (written by a run of N ranks): for each case, each ``shard`` of the
writer and each ``shard`` here, load its checkpoint, in both forms (a state_dict
with the parameters, and a numbaopt.save file), into optimizers that start
elsewhere, and train on from step K with this run's M ranks. Then (always) train
K steps from the start, plain and sharded, and write both forms into OUTDIR:
``state_dict(root=0)`` pickled with the parameters by rank 0, and
``numbaopt.save`` (collective, rank 0 writes). Each rank saves what it trained to
OUTDIR/rank<r>.pkl.
"""

import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mpi4py import MPI                 # noqa: E402

import ddp_cases as C                  # noqa: E402
import numbaopt                        # noqa: E402
from numbaopt.distributed import DistributedOptimizer, broadcast_parameters   # noqa: E402

CASES = ("adam", "asgd")               # asgd: per-parameter scalar state (eta, mu)
K = 3                                  # steps before the checkpoint

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
outdir = sys.argv[1]
srcdir = sys.argv[2] if len(sys.argv) > 2 else None
out = {"size": size, "train": {}}


def distributed(case, shard, seed):
    opt, params = C.make_optimizer(case, C.initial_values(seed))
    return DistributedOptimizer(opt, comm, shard=shard), params


def train(dopt, params, first, last):
    for step in range(first, last):
        C.change_lr(dopt, step)
        dopt.zero_grad()
        C.set_gradients(params, step, rank, size, False)
        dopt.step()


if srcdir is not None:
    with open(os.path.join(srcdir, "meta.pkl"), "rb") as f:
        out["source_size"] = pickle.load(f)["size"]
    for case in CASES:
        for written_sharded in (False, True):
            name = f"{case}_{'sharded' if written_sharded else 'plain'}"
            for shard in (False, True):
                # The state_dict form: rank 0 reads it; parameters and state go out from there.
                dopt, params = distributed(case, shard, seed=99 + rank)
                saved = None
                if rank == 0:
                    with open(os.path.join(srcdir, name + ".pkl"), "rb") as f:
                        saved = pickle.load(f)
                    dopt.arena.data[:] = saved["values"]
                broadcast_parameters(dopt, root=0)
                dopt.load_state_dict(saved["state_dict"] if rank == 0 else None, root=0)
                train(dopt, params, K, C.STEPS)
                out["train"][case, written_sharded, shard, "state_dict"] = dopt.arena.data.copy()
                # The file form: numbaopt.load on every rank, rank 0 reads.
                dopt, params = distributed(case, shard, seed=99 + rank)
                numbaopt.load(os.path.join(srcdir, name + ".ckpt"), dopt)
                train(dopt, params, K, C.STEPS)
                out["train"][case, written_sharded, shard, "file"] = dopt.arena.data.copy()

for case in CASES:
    for shard in (False, True):
        name = f"{case}_{'sharded' if shard else 'plain'}"
        dopt, params = distributed(case, shard, seed=rank)
        broadcast_parameters(dopt, root=0)
        train(dopt, params, 0, K)
        sd = dopt.state_dict(root=0)
        if rank == 0:
            with open(os.path.join(outdir, name + ".pkl"), "wb") as f:
                pickle.dump({"values": dopt.arena.data.copy(), "state_dict": sd}, f)
        numbaopt.save(os.path.join(outdir, name + ".ckpt"), dopt)
if rank == 0:
    with open(os.path.join(outdir, "meta.pkl"), "wb") as f:
        pickle.dump({"size": size, "K": K}, f)
with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
    pickle.dump(out, f)
