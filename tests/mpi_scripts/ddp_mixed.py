"""Several dtypes in one optimizer under data parallelism; tests/test_mixed_dtypes.py checks it.

Usage: mpiexec -n N python tests/mpi_scripts/ddp_mixed.py OUTDIR
       python tests/mpi_scripts/ddp_mixed.py OUTDIR --reference N   (one process)

The model of ddp_complex.py with W float32, b complex128 and v float64, in two groups:
Adam with amsgrad and skip_nonfinite, clip_grad_norm_ before each step, a NaN on one rank
at step 2 (the step is skipped everywhere), StepLR. Plain and sharded; the sharded run
writes a checkpoint, and a state_dict is loaded back into a fresh sharded optimizer and
trained on. Rank 0 (or the single process) saves what the test compares.
"""

import os
import pickle
import sys

import numpy as np

import numbaopt
from numbaopt import optim, utils
from numbaopt.optim.lr_scheduler import StepLR

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ddp_complex import batch                         # noqa: E402
from ddp_complex import gradients as complex_gradients  # noqa: E402

PER_RANK = 4
STEPS = int(os.environ.get("DDP_STEPS", 6))   # (the simulator runs take 3)
NAN_AT = 2
#: DDP_DEVICE=cuda (with NUMBA_ENABLE_CUDASIM=1 here): the same run on device="cuda" arenas
DEVICE = os.environ.get("DDP_DEVICE", "cpu")
if DEVICE == "cuda":
    from numbaopt.kernels import cuda as kernels
    kernels.THREADS_PER_BLOCK = 4          # the simulator runs a Python thread per GPU thread
    kernels.CHUNK = 5


def make():
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((4, 3)) + 1j * rng.standard_normal((4, 3))).real.astype(np.float32)
    b = rng.standard_normal(3) + 1j * rng.standard_normal(3)
    params = [numbaopt.Parameter(W), numbaopt.Parameter(b),
              numbaopt.Parameter(rng.standard_normal(5))]
    opt = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.05,
                     amsgrad=True, skip_nonfinite=True, device=DEVICE)
    return opt, params


def gradients(params, x, y, z):
    """ddp_complex's gradients, W's as its float32 real part."""
    gW, gb, gv = complex_gradients(params, x, y, z)
    return [gW.real.astype(np.float32), gb, gv]


def train(opt, params, part, first=0, last=STEPS, nan_rank=None):
    sched = StepLR(opt, step_size=2, gamma=0.5)
    for step in range(first, last):
        opt.zero_grad()
        grads = gradients(params, *part(batch(step, SIZE * PER_RANK)))
        if step == NAN_AT and nan_rank is not None:
            grads[2][0] = np.nan
        opt.set_grads(grads)
        utils.clip_grad_norm_(opt, 1.0)
        opt.step()
        sched.step()


if __name__ == "__main__":
    outdir = sys.argv[1]
    if "--reference" in sys.argv:
        SIZE = int(sys.argv[sys.argv.index("--reference") + 1])
        opt, params = make()
        train(opt, params, lambda data: data, nan_rank=0)
        with open(os.path.join(outdir, "reference.pkl"), "wb") as f:
            pickle.dump({"data": [p.data.copy() for p in params], "sd": opt.state_dict(),
                         "skipped": opt.skipped_steps}, f)
        sys.exit(0)
    from mpi4py import MPI
    from numbaopt.distributed import DistributedOptimizer
    comm = MPI.COMM_WORLD
    RANK, SIZE = comm.Get_rank(), comm.Get_size()
    out = {}
    mine = lambda data: tuple(a[RANK * PER_RANK:(RANK + 1) * PER_RANK] for a in data)  # noqa
    for shard in (False, True):
        opt, params = make()
        dopt = DistributedOptimizer(opt, comm, shard=shard)
        train(dopt, params, mine, nan_rank=1 if RANK == 1 else None)
        out[shard] = {"data": [p.numpy().copy() for p in params], "sd": dopt.state_dict(),
                      "skipped": dopt.skipped_steps}
        if shard:
            numbaopt.save(os.path.join(outdir, "sharded.safetensors"), dopt)
            # a state_dict in, and a checkpoint in, then one more step each: as one process
            opt2, params2 = make()
            d2 = DistributedOptimizer(opt2, comm, shard=True)
            d2.load_state_dict(out[True]["sd"])
            for p, v in zip(params2, out[True]["data"]):
                p.data = v
            opt3, params3 = make()
            d3 = DistributedOptimizer(opt3, comm, shard=True)
            numbaopt.load(os.path.join(outdir, "sharded.safetensors"), d3)
            for d, ps in ((d2, params2), (d3, params3)):
                d.zero_grad()
                d.set_grads(gradients(ps, *mine(batch(STEPS, SIZE * PER_RANK))))
                d.step()
            out["resumed"] = [[p.numpy().copy() for p in ps] for ps in (params2, params3)]
    if RANK == 0:
        with open(os.path.join(outdir, "ranks.pkl"), "wb") as f:
            pickle.dump(out, f)
