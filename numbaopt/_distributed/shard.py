"""ZeRO stage 1: each rank keeps the optimizer state of one contiguous slice of the arena.

``ShardedState`` is the part of DistributedOptimizer that cuts the arena into
slices, builds the private optimizer over this rank's slice and moves state
between the shards and a full arena (to build, to gather a state_dict, to load
one, to re-shard after add_param_group). State moves through host memory on GPU
arenas too (these are rare calls); only the per-step transfers
(``transport.py``) may hand device buffers to MPI.
"""

import inspect
from collections.abc import Mapping

import numpy as np
from mpi4py import MPI

from ..parameter import Parameter
from .transport import to_host

SHARDED = ("its optimizer state is sharded across ranks by numbaopt.distributed."
           "DistributedOptimizer: step, save and load through the DistributedOptimizer")


def pieces(offsets, bounds, rank):
    """The parts of parameters that lie in ``bounds[rank]:bounds[rank + 1]``.

    Returns ``(param, lo, hi)`` arrays in arena order. A zero-size parameter
    goes to the rank whose slice contains its offset (the last rank for
    offsets at the very end), so it has exactly one owner and one step count.
    """
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    starts, stops = offsets[:-1], offsets[1:]
    sizes = stops - starts
    nranks = bounds.size - 1
    owner_of_empty = np.minimum(np.searchsorted(bounds[1:], starts, side="right"), nranks - 1)
    take = np.where(sizes > 0, (starts < hi) & (stops > lo), owner_of_empty == rank)
    param = np.flatnonzero(take).astype(np.int64)
    return param, np.maximum(starts[param], lo), np.where(sizes[param] > 0,
                                                          np.minimum(stops[param], hi),
                                                          starts[param])


class ShardedState:
    """Sharding for DistributedOptimizer (uses its ``optimizer``, ``_arena``, ``_comm``, ``rank``)."""

    def _build_local(self):
        """Cut the arena into N equal contiguous slices and build this rank's optimizer.

        The local optimizer has the wrapped one's class, defaults, groups (all of them,
        some maybe empty) and device, over proxy Parameters, one per piece of a
        parameter that lies in the slice, so its arena is exactly the slice.
        """
        opt, arena = self.optimizer, self._arena
        n, size = arena.size, self.world_size
        self._bounds = np.arange(size + 1, dtype=np.int64) * n // size
        self._counts = np.diff(self._bounds)
        self._displs = self._bounds[:-1].copy()
        lo, hi = int(self._bounds[self.rank]), int(self._bounds[self.rank + 1])
        self._lo, self._hi = lo, hi
        piece_param, piece_lo, piece_hi = pieces(arena.offsets, self._bounds, self.rank)
        self._piece_param = piece_param
        # The piece holding a parameter's first element speaks for its step count.
        self._primary = piece_lo == arena.offsets[piece_param]
        data = to_host(arena.data[lo:hi])
        self._proxies = [Parameter(data[a - lo:b - lo].copy()) for a, b in zip(piece_lo, piece_hi)]
        self._proxy_of = {id(arena.params[i]): k for k, i in enumerate(piece_param)}
        groups = []
        for g, group in enumerate(opt.param_groups):
            options = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            members = [self._proxies[k] for k in np.flatnonzero(arena.param_group[piece_param] == g)]
            groups.append(dict(options, params=members))
        cls = type(opt)
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in opt.defaults.items() if k in accepted}
        if "skip_nonfinite" in accepted:
            kwargs["skip_nonfinite"] = False   # decided for all ranks together in _step_slice
        if "device" in accepted:
            kwargs["device"] = self.device
        local = cls(groups, **kwargs)
        local.defaults = dict(opt.defaults)
        local.parallel_threshold = opt.parallel_threshold
        if local.arena.size != hi - lo:
            raise AssertionError("the local optimizer's arena is not this rank's slice")
        self._local = local
        self._digest = None

    def _copy_state_from_full(self):
        """Fill the local optimizer's state from the full state held by the wrapped arena."""
        arena, la = self._arena, self._local.arena
        # Per-parameter scalar state (NAdam's mu_product, ASGD's eta and mu): every piece of
        # a parameter holds the parameter's values, as the step count.
        steps = arena.step_counts()[self._piece_param]
        scalars = arena.scalar_values()[self._piece_param]
        buffers = {}
        for key, buf in la.state.items():
            source = arena.state[key][self._lo:self._hi] if key in arena.state else buf
            buffers[key] = np.array(to_host(source), dtype=la.dtype, copy=True)
        self._load_local(steps, buffers, scalars)

    def _load_local(self, steps, buffers, scalars):
        local = self._local
        local.arena.load(np.asarray(steps, dtype=np.float64), buffers,
                         np.asarray(scalars, dtype=np.float64))
        local._dirty[0] = True      # the kernel arguments may hold the replaced scalar table

    def _gather_full_state(self, target, root):
        """Assemble the shards' state into ``target``'s buffers (every rank, or ``root``).

        ``target`` is the wrapped arena, or a grown one whose prefix is the layout
        the shards were cut from.
        """
        comm, la = self._comm, self._local.arena
        here = root is None or root == self.rank
        keys = sorted(la.state)
        if len(set(map(tuple, comm.allgather(keys)))) != 1:
            raise RuntimeError("the ranks' local optimizers hold different state buffers")
        nparams = len(self._arena)
        n = int(self._bounds[-1])
        primary = self._piece_param[self._primary]
        step = np.zeros(nparams, dtype=np.float64)
        step[primary] = la.step_counts()[self._primary]
        local_scalars = la.scalar_values()
        scalars = np.zeros((nparams, local_scalars.shape[1]), dtype=np.float64)
        scalars[primary] = local_scalars[self._primary]
        for table in (step, scalars) if scalars.size else (step,):
            if root is None:
                comm.Allreduce(MPI.IN_PLACE, table, op=MPI.SUM)
            else:
                comm.Reduce(MPI.IN_PLACE if here else table, table if here else None,
                            op=MPI.SUM, root=root)
        buffers = {}
        for key in keys:
            mine = self._recv(to_host(la.state[key]))
            full = np.zeros(target.size, dtype=target.dtype) if here else None
            spec = [full[:n], (self._counts, self._displs)] if here else None
            if root is None:
                comm.Allgatherv(mine, spec)
            else:
                comm.Gatherv(mine, spec, root=root)
            if here:
                old = target.state.get(key)
                if old is not None and old.size > n:
                    full[n:] = to_host(old)[n:]   # state of parameters added since (Adagrad's "sum")
                buffers[key] = full
        if not here:
            return
        for key, old in target.state.items():
            buffers.setdefault(key, np.array(to_host(old), copy=True))
        full_step = np.array(target.step_counts(), dtype=np.float64)
        full_step[:nparams] = step
        full_scalars = np.array(target.scalar_values(), dtype=np.float64)
        full_scalars[:nparams] = scalars
        target.load(full_step, buffers, full_scalars)

    def _scatter_full_state(self, root):
        """Rank ``root``'s wrapped optimizer holds the full state (just loaded): give every
        rank its slice of it (groups broadcast, slices scattered), then cut anew."""
        comm, opt, arena = self._comm, self.optimizer, self._arena
        here = root == self.rank
        groups = comm.bcast([{k: v for k, v in g.items() if k != "params"}
                             for g in opt.param_groups] if here else None, root=root)
        if not here:
            for group, options in zip(opt.param_groups, groups):
                set_options(group, options)
        keys = comm.bcast(sorted(arena.state) if here else None, root=root)
        self._build_local()
        step = np.array(arena.step_counts(), dtype=np.float64) if here else \
            np.zeros(len(arena), dtype=np.float64)
        comm.Bcast(step, root=root)
        scalars = np.array(arena.scalar_values(), dtype=np.float64) if here else \
            np.zeros((len(arena), self._local.arena.scalar_values().shape[1]), dtype=np.float64)
        if scalars.size:
            comm.Bcast(scalars, root=root)
        la = self._local.arena
        buffers = {}
        for key in sorted(la.state):
            if key in keys:
                mine = np.zeros(la.size, dtype=arena.dtype)
                full = [to_host(arena.state[key]), (self._counts, self._displs)] if here else None
                comm.Scatterv(full, mine, root=root)
                buffers[key] = mine
            else:
                buffers[key] = np.array(to_host(la.state[key]), copy=True)
        self._load_local(step[self._piece_param], buffers, scalars[self._piece_param])

    def _release_full_state(self):
        """Drop the wrapped optimizer's full-size state buffers; it refuses to step from now on."""
        opt = self.optimizer
        opt.arena.state.clear()
        opt.arena.stale = SHARDED
        # The cached kernel arguments still reference the buffers; the stale arena
        # makes step() raise before they could be used.
        opt._args = None

    def _recv(self, buf):
        # An empty slice's optimizer has no parameters and defaults to float32.
        if buf.size == 0 and np.dtype(buf.dtype) != self._arena.dtype:
            return np.empty(0, self._arena.dtype)
        return buf


def set_options(group, options):
    """Make ``group``'s options (all keys but "params") equal ``options``, in place."""
    for key in [k for k in group if k != "params" and k not in options]:
        del group[key]
    group.update(options)


class LocalStateView(Mapping):
    """A sharded optimizer's ``state``: parameter -> its local slice's state (live, flat)."""

    def __init__(self, dist):
        self._dist = dist

    def __getitem__(self, p):
        k = self._dist._proxy_of.get(id(p))
        if k is None or self._dist._arena.params[self._dist._piece_param[k]] is not p:
            raise KeyError(p)
        return self._dist._local.state[self._dist._proxies[k]]

    def __iter__(self):
        dist = self._dist
        for k, i in enumerate(dist._piece_param):
            if dist._local.state[dist._proxies[k]]:
                yield dist._arena.params[i]

    def __len__(self):
        return sum(1 for _ in self)
