"""Data-parallel training under mpiexec; tests/test_distributed.py checks what it saves.

Usage: mpiexec -n N python tests/mpi_scripts/ddp_check.py OUTDIR

Every rank trains each case of ddp_cases.CASES on its part of each batch, plain
and sharded, with all gradients and with some missing, and saves its final
parameters, state_dicts and a few facts to OUTDIR/rank<r>.pkl. The test
compares them with single-process training on the whole batch.
"""

import os
import pickle
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np                     # noqa: E402
from mpi4py import MPI                 # noqa: E402

import ddp_cases as C                  # noqa: E402
import numbaopt                        # noqa: E402
from numbaopt.distributed import DistributedOptimizer, broadcast_parameters   # noqa: E402

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
out = {"size": size, "train": {}, "facts": {}}
K = 5                                  # steps before a state_dict is taken or loaded


def distributed(case, shard, seed=None):
    # Each rank starts elsewhere; broadcast_parameters makes them all start from rank 0's.
    opt, params = C.make_optimizer(case, C.initial_values(rank if seed is None else seed))
    dopt = DistributedOptimizer(opt, comm, shard=shard)
    broadcast_parameters(dopt, root=0)
    return dopt, opt, params


def train(dopt, params, first, last, partial=False):
    for step in range(first, last):
        C.change_lr(dopt, step)
        dopt.zero_grad()
        C.set_gradients(params, step, rank, size, partial)
        dopt.step()


for case in C.CASES:
    for shard in (False, True):
        for partial in (False, True):
            dopt, opt, params = distributed(case, shard)
            train(dopt, params, 0, C.STEPS, partial)
            out["train"][case, shard, partial] = dopt.arena.data.copy()

    # Sharded state: 1/N of the arena per rank, none left in the wrapped optimizer.
    dopt, opt, params = distributed(case, True)
    train(dopt, params, 0, 2)
    local = dopt.local_optimizer.arena
    out["facts"][case, "memory"] = dict(
        slice=int(dopt.shard_bounds[rank + 1] - dopt.shard_bounds[rank]),
        arena=dopt.arena.size, local_size=local.size, local_keys=sorted(local.state),
        local_elements=sum(b.size for b in local.state.values()),
        wrapped_keys=sorted(opt.arena.state))
    try:
        opt.step()
        out["facts"][case, "wrapped_step"] = "stepped"
    except RuntimeError as exc:
        out["facts"][case, "wrapped_step"] = str(exc)

    # state_dict of a sharded optimizer: gathered to every rank, or to rank 0 only.
    for shard in (False, True):
        dopt, opt, params = distributed(case, shard)
        train(dopt, params, 0, K)
        sd_all = dopt.state_dict()
        sd_root = dopt.state_dict(root=0)
        out["facts"][case, shard, "state_dict"] = dict(
            values=dopt.arena.data.copy(), all=sd_all, root=sd_root)

    # load_state_dict of a single-process state_dict: every rank passes it, or rank 0 only.
    ref, ref_params = C.reference_run(case, size, False, steps=K)
    sd = ref.state_dict()
    for shard in (False, True):
        for root in (None, 0):
            dopt, opt, params = distributed(case, shard, seed=99)
            for p, q in zip(params, ref_params):
                p.data = q.data
            dopt.load_state_dict(sd if root is None or rank == root else None, root=root)
            train(dopt, params, K, C.STEPS)
            out["train"][case, shard, "loaded", root] = dopt.arena.data.copy()

# add_param_group on a sharded optimizer after K steps: the state is kept and re-sharded.
for shard in (False, True):
    dopt, opt, params = distributed("adam", shard)
    train(dopt, params, 0, K)
    extra = numbaopt.Parameter(np.arange(6.0).reshape(2, 3))
    dopt.add_param_group({"params": [extra], "lr": 0.03})
    for step in range(K, C.STEPS):
        dopt.zero_grad()
        C.set_gradients(params, step, rank, size, False)
        extra.grad = extra.data - step          # the same on every rank
        dopt.step()
    out["train"]["adam", shard, "added"] = dopt.arena.data.copy()
    out["facts"]["adam", shard, "added_state_dict"] = dopt.state_dict()

# A learning-rate scheduler drives a sharded optimizer (the lr reaches every shard).
from numbaopt.optim.lr_scheduler import StepLR                          # noqa: E402
dopt, opt, params = distributed("sgd_momentum", True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    scheduler = StepLR(dopt, step_size=2, gamma=0.5)
    for step in range(C.STEPS):
        dopt.zero_grad()
        C.set_gradients(params, step, rank, size, False)
        dopt.step()
        scheduler.step()
out["train"]["sgd_momentum", True, "steplr"] = dopt.arena.data.copy()
out["facts"]["steplr_warnings"] = [str(w.message) for w in caught]

# skip_nonfinite: a NaN on one rank skips the step on every rank, sharded or not.
for shard in (False, True):
    opt, params = C.make_optimizer("adam", C.initial_values())
    opt.skip_nonfinite = True
    dopt = DistributedOptimizer(opt, comm, shard=shard)
    before = dopt.arena.data.copy()
    C.set_gradients(params, 0, rank, size, False)
    if rank == size - 1:
        params[0].grad = np.full((4, 3), np.nan)   # W: its first elements are rank 0's slice
    result = dopt.step(lambda: 1.5)
    skipped = dict(result=result, found=dopt.found_nonfinite, count=dopt.skipped_steps,
                   unchanged=bool(np.array_equal(before, dopt.arena.data)))
    C.set_gradients(params, 1, rank, size, False)
    result = dopt.step(lambda: 2.5)
    skipped.update(next_result=result, next_found=dopt.found_nonfinite,
                   moved=not np.array_equal(before, dopt.arena.data))
    out["facts"]["adam", shard, "skip_nonfinite"] = skipped

# A refused state_dict: every rank raises, and nothing changes, sharded or not.
for shard in (False, True):
    dopt, opt, params = distributed("adam", shard)
    train(dopt, params, 0, 2)
    good = dopt.state_dict()
    bad = dopt.state_dict()
    bad["param_groups"][0]["lr"] = -1.0
    refusals = []
    for root, mine in ((None, bad if rank == 0 else good), (0, bad if rank == 0 else None)):
        try:
            dopt.load_state_dict(mine, root=root)
            refusals.append("accepted")
        except ValueError as exc:
            refusals.append(str(exc))
    unchanged = dopt.state_dict()
    out["facts"]["adam", shard, "refused"] = dict(refusals=refusals, good=good, after=unchanged)

# A slice can be empty (fewer elements than ranks); a zero-size parameter has one owner.
tiny = [numbaopt.Parameter(np.array(0.5)), numbaopt.Parameter(np.zeros(0))]
dopt = DistributedOptimizer(numbaopt.optim.Adam(tiny, lr=0.1), comm, shard=True)
for step in range(3):
    tiny[0].grad = tiny[0].data - (rank + 1)        # the mean over ranks: p - (size + 1) / 2
    tiny[1].grad = np.zeros(0)
    dopt.step()
out["train"]["tiny"] = dopt.arena.data.copy()
out["facts"]["tiny"] = dict(state_dict=dopt.state_dict(), slice=dopt.local_optimizer.arena.size,
                            local_params=len(dopt.local_optimizer.arena))

# Ranks whose optimizers differ are told so, on every rank (no hang).
try:
    DistributedOptimizer(numbaopt.optim.SGD([numbaopt.Parameter(np.zeros(rank + 1))]), comm)
    out["facts"]["mismatch"] = "accepted"
except ValueError as exc:
    out["facts"]["mismatch"] = str(exc)

def refusal(call):
    """What ``call`` raised (type and message), or "accepted"."""
    try:
        call()
        return "accepted"
    except (ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"


# Clipping sees the averaged gradient: utils synchronizes first, step() does not average again.
for shard in (False, True):
    for clip in C.CLIPS:
        dopt, opt, params = distributed("adam", shard)
        norms = []
        for step in range(C.STEPS):
            C.change_lr(dopt, step)
            dopt.zero_grad()
            C.set_gradients(params, step, rank, size, True)
            total = C.CLIPS[clip](dopt, params)
            norms.append(None if total is None else float(total))
            dopt.step()
        out["train"]["adam", shard, "clip", clip] = dopt.arena.data.copy()
        out["facts"]["adam", shard, "clip", clip] = norms

    # Clipping the parameters rather than the optimizer: averaged first (plain) or refused.
    dopt, opt, params = distributed("adam", shard)
    if shard:
        C.set_gradients(params, 0, rank, size, True)
        out["facts"]["adam", True, "clip_params"] = refusal(
            lambda: numbaopt.utils.clip_grad_norm_(params, 0.5))
    else:
        norms = []
        for step in range(C.STEPS):
            C.change_lr(dopt, step)
            dopt.zero_grad()
            C.set_gradients(params, step, rank, size, True)
            norms.append(float(numbaopt.utils.clip_grad_norm_(params, 0.5)))
            dopt.step()
        out["train"]["adam", False, "clip_params"] = dopt.arena.data.copy()
        out["facts"]["adam", False, "clip_params"] = norms

    # synchronize() by hand: p.grad is the average (plain), a second call does nothing.
    dopt, opt, params = distributed("sgd_momentum", shard)
    averaged = []
    for step in range(C.STEPS):
        C.change_lr(dopt, step)
        dopt.zero_grad()
        C.set_gradients(params, step, rank, size, True)
        dopt.synchronize()
        dopt.synchronize()
        if not shard:
            averaged.append([None if p.grad is None else p.grad.copy() for p in params])
        dopt.step()
    out["train"]["sgd_momentum", shard, "synchronize"] = dopt.arena.data.copy()
    out["facts"]["sgd_momentum", shard, "averaged"] = averaged


# Every rank must agree: class, options, skip_nonfinite, shard (at construction) ...
values = C.initial_values()
mismatch = {}
mismatch["class"] = refusal(lambda: DistributedOptimizer(
    C.make_optimizer("adam" if rank == size - 1 else "adagrad", values)[0], comm))
mismatch["lr"] = refusal(lambda: DistributedOptimizer(numbaopt.optim.SGD(
    C.make_optimizer("sgd_momentum", values)[1], lr=0.1 if rank == 0 else 0.2), comm))
mismatch["shard"] = refusal(lambda: DistributedOptimizer(
    C.make_optimizer("adam", values)[0], comm, shard=rank == 0))
skipping = C.make_optimizer("adam", values)[0]
skipping.skip_nonfinite = rank == size - 1
mismatch["skip_nonfinite"] = refusal(lambda: DistributedOptimizer(skipping, comm))
out["facts"]["construction_mismatch"] = mismatch

# ... and again whenever the options change, with an error on every rank, nothing stepped.
for shard in (False, True):
    dopt, opt, params = distributed("adam", shard)
    train(dopt, params, 0, 2)
    runtime = {}
    before = dopt.state_dict()
    values_before = dopt.arena.data.copy()

    def one_step(step=2):
        dopt.zero_grad()
        C.set_gradients(params, step, rank, size, False)
        dopt.step()

    if rank == size - 1:
        dopt.param_groups[1]["lr"] = 0.5           # one rank's scheduler went its own way
    runtime["lr"] = refusal(one_step)
    dopt.param_groups[1]["lr"] = opt.defaults["lr"]
    dopt.optimizer.skip_nonfinite = rank == 0
    runtime["skip_nonfinite"] = refusal(one_step)
    dopt.optimizer.skip_nonfinite = False
    if rank == 0:
        dopt.param_groups[0]["lr"] = -1.0          # invalid on rank 0 only
    runtime["invalid"] = refusal(one_step)
    dopt.param_groups[0]["lr"] = opt.defaults["lr"]
    # Collective calls out of order: rank 0 broadcasts the parameters while the others step.
    runtime["order"] = refusal(lambda: broadcast_parameters(dopt) if rank == 0 else one_step())
    runtime["unchanged"] = bool(np.array_equal(values_before, dopt.arena.data))
    runtime["state_unchanged"] = dopt.state_dict()["state"][0]["step"] == before["state"][0]["step"]
    train(dopt, params, 2, C.STEPS)                # and it trains on as if nothing happened
    out["train"]["adam", shard, "after_refusals"] = dopt.arena.data.copy()
    out["facts"]["adam", shard, "runtime_mismatch"] = runtime

outdir = sys.argv[1]
with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
    pickle.dump(out, f)
