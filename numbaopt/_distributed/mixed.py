"""Data parallelism of an optimizer over several dtypes: one DistributedOptimizer per arena.

An optimizer over float32 and float64 parameters keeps one lane (an optimizer of its
class over one dtype, ``numbaopt.optim._mixed``) per arena. ``DistributedOptimizer`` of
it wraps each lane in a DistributedOptimizer of its own, plain or sharded, so each
arena's gradients are averaged with one Allreduce (or reduce-scattered, sharded), and
this façade does what spans the lanes: the options (the user's groups, pushed to the
lanes before every collective call), ``skip_nonfinite`` (a NaN in any arena skips the
step on every rank), the total norm for clipping (the norm of the lanes' norms, as
torch's norm of all parameters' norms), and state_dicts and checkpoints over all
parameters in torch's numbering.
"""

import weakref

import numpy as np
from mpi4py import MPI

from .. import utils
from .._checkpoint_snapshot import set_values, snapshot
from .clip import _scale_slice, global_norm
from .control import STATE_DICT, STEP, STEP_SYNCED, SYNC
from ..parameter import Parameter
from .files import _verdict
from .shard import set_options

_ALL_OR_NOTHING = (ValueError, TypeError, KeyError, RuntimeError, IndexError)


class MixedParts:
    """The DistributedOptimizer methods for a wrapped optimizer with lanes (``_parts``)."""

    def _init_parts(self, optimizer, comm, shard, cuda_aware):
        from ..distributed import DistributedOptimizer
        self.optimizer = optimizer
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        self.shard = bool(shard)
        self._synchronized = False
        self._comm = self.comm.Dup()
        optimizer._push_lane_options(None)
        mine = (type(optimizer).__name__, bool(optimizer.skip_nonfinite), self.shard,
                [str(dtype) for dtype in optimizer.arenas])
        everyone = self._comm.allgather(mine)
        if any(e != mine for e in everyone):
            listing = "; ".join(f"rank {r}: {e}" for r, e in enumerate(everyone))
            raise ValueError("every rank must build the same optimizer (class, skip_nonfinite, "
                             f"shard, dtypes): {listing}")
        self._parts = [DistributedOptimizer(lane, self.comm, shard, cuda_aware=cuda_aware)
                       for lane in optimizer._lanes]
        self._arena = optimizer.arena
        for arena in optimizer.arenas.values():
            utils._DISTRIBUTED[arena] = weakref.ref(self)

    # -- stepping ----------------------------------------------------------------------
    def _mixed_average(self, op):
        self.optimizer._push_lane_options(None)   # the lanes' options, before their digests
        for part in self._parts:
            part._average(op)

    def _mixed_step(self):
        """Average every arena's gradients, then step every lane; False when skipped."""
        opt = self.optimizer
        if self._synchronized:
            self._synchronized = False
            opt._push_lane_options(None)
            for part in self._parts:
                if self.shard or part._options_changed():
                    part._round(STEP_SYNCED, check_options=True)
        else:
            self._mixed_average(STEP)
        if not self.shard:
            opt.step()                         # every lane; a NaN in any skips them all
            return not opt.found_nonfinite
        if opt.skip_nonfinite:                 # over every part's slice, on every rank
            finite = np.array([all(bool(part._local._finite()) for part in self._parts)])
            self._comm.Allreduce(MPI.IN_PLACE, finite, op=MPI.LAND)
            opt.found_nonfinite = not bool(finite[0])
            if opt.found_nonfinite:
                opt.skipped_steps += 1
                return False
        for part in self._parts:
            part._step_slice()
        return True

    def _mixed_synchronize(self):
        if not self._synchronized:
            self._mixed_average(SYNC)
            self._synchronized = True

    # -- state -------------------------------------------------------------------------
    def _mixed_state_dict(self, root):
        if not self.shard:
            return self.optimizer.state_dict() if root in (None, self.rank) else None
        for part in self._parts:
            part._round(STATE_DICT)
            part._gather_full_state(part._arena, root)
        try:
            return self.optimizer.state_dict() if root in (None, self.rank) else None
        finally:
            for part in self._parts:
                part._release_full_state()

    def _mixed_load_state_dict(self, state_dict, root):
        """Every rank loads the whole dict (``root=r``: rank r's, broadcast first), all or
        nothing on every rank; sharded, each part then keeps its slice."""
        if root is not None:
            state_dict = self._comm.bcast(state_dict if self.rank == root else None, root=root)
        if self.shard:
            for part in self._parts:
                part._arena.stale = None
        error = None
        try:
            self.optimizer.load_state_dict(state_dict)
        except _ALL_OR_NOTHING as exc:
            error = exc
        refused = self._comm.allgather(None if error is None else
                                       f"{type(error).__name__}: {error}")
        if any(r is not None for r in refused):
            if self.shard:
                for part in self._parts:
                    part._release_full_state()
            if error is not None:
                raise error
            rank = next(r for r, verdict in enumerate(refused) if verdict is not None)
            raise ValueError(f"rank {rank} refused the state_dict: {refused[rank]}")
        if self.shard:
            for part in self._parts:
                part._build_local()
                part._copy_state_from_full()
                part._release_full_state()

    # -- clipping ----------------------------------------------------------------------
    def _mixed_clip_grad_norm(self, max_norm, norm_type, error_if_nonfinite):
        norm_type, max_norm = float(norm_type), float(max_norm)
        self.synchronize()
        if not self.shard:
            return utils.clip_grad_norm_(self.optimizer, max_norm, norm_type, error_if_nonfinite)
        norms = [global_norm(part, norm_type) for part in self._parts]
        total = np.asarray(utils._total_norm_numpy(norms, norm_type))
        utils._check_finite(total, norm_type, error_if_nonfinite)
        for part in self._parts:
            _scale_slice(part, max_norm, total)
        return total


class MixedCheckpoint:
    """``numbaopt.save``/``load`` of a DistributedOptimizer over several dtypes: the
    file a single-process optimizer of the same parameters writes, rank 0 writing."""

    root = 0

    def __init__(self, dist):
        self.dist = dist
        self.writer = dist.rank == self.root
        self._parts = [part._checkpoint_collective() for part in dist._parts]

    @property
    def optimizer(self):
        if not self.writer:
            return None
        for ctx in self._parts:
            ctx.optimizer                     # (sharded: the lane holds its whole state)
        return self.dist.optimizer

    def snapshot(self):
        for ctx in self._parts:
            ctx.gather()                      # each lane holds its whole state on the writer
        if not self.writer:
            return None
        return snapshot(self.dist.optimizer)

    def agree(self, error):
        raised = None
        for ctx in self._parts:               # every part releases what it holds
            try:
                ctx.agree(error)
            except BaseException as exc:      # (the same on every rank)
                raised = raised or exc
        if raised is not None:
            raise raised

    def load(self, loaded):
        error = None
        lanes = [None] * len(self._parts)
        if self.writer:
            params, state_dict = loaded
            opt = self.dist.optimizer
            try:
                opt.load_state_dict(state_dict)
                set_values(opt, params)
                lanes = [(np.array(lane.arena.to_host(lane.arena.data)), lane.state_dict())
                         for lane in opt._lanes]
            except Exception as exc:   # noqa: BLE001 - raised below, on every rank
                error = exc
        try:
            _verdict(self.dist, self.root, error, "refused the checkpoint")
        except BaseException:
            for ctx in self._parts:
                ctx._release()
            raise
        for k, ctx in enumerate(self._parts):
            ctx.load(lanes[k])
        # the parts loaded the lanes on every rank; the groups as given, and the state not
        # kept per parameter, are this optimizer's own
        opt = self.dist.optimizer
        groups, others = self.bcast(
            ([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
             {k: v for k, v in opt._user_state.items() if not isinstance(k, Parameter)})
            if self.writer else None)
        if not self.writer:
            for group, options in zip(opt.param_groups, groups):
                set_options(group, options)
            opt._user_state.update(others)

    def bcast(self, value):
        return self.dist._comm.bcast(value if self.writer else None, root=self.root)
