"""Data-parallel training across processes and machines with MPI, on the flat arena.

Run one process per core, GPU or node (``mpiexec -n 4 python train.py``), give
each a different part of the batch, and wrap the optimizer::

    from mpi4py import MPI
    from numbaopt.distributed import DistributedOptimizer, broadcast_parameters

    opt = DistributedOptimizer(optim.Adam(params, lr=1e-3), MPI.COMM_WORLD)
    broadcast_parameters(opt, root=0)        # every rank starts from rank 0's values
    for x, y in my_part_of_the_data:
        opt.zero_grad()
        set_gradients(x, y)                  # each rank: the gradient of its own batch
        opt.step()                           # average across ranks, then step

Because every gradient of an optimizer lives in one flat arena, averaging is
ONE in-place ``Allreduce`` over ``arena.grad`` (plus one over the per-parameter
``has_grad`` flags, one byte per parameter), not one collective per tensor.

Gradients that are None on some ranks follow torch's DistributedDataParallel:
a parameter's averaged gradient is the sum over ranks of each rank's gradient,
counting zero where a rank has none, divided by the number of ranks; the
parameter has a gradient (and is stepped) if any rank gave it one, and is
skipped everywhere if no rank did.

``shard=True`` is ZeRO stage 1: each rank keeps optimizer state only for its
contiguous slice of the arena (1/N of the elements), reduce-scatters the
gradients, updates its slice and all-gathers the parameters. The numbers equal
the unsharded run. See docs/distributed.md for when to shard and for CUDA arenas.
"""

import ctypes
import inspect
import os
import zlib
from collections.abc import Mapping

import numpy as np

try:
    from mpi4py import MPI
except (ImportError, RuntimeError) as exc:   # RuntimeError: mpi4py found no MPI library
    raise ImportError(
        "numbaopt.distributed needs mpi4py and an MPI library: "
        f"pip install 'numbaopt[distributed]' (installs mpi4py and MPICH from PyPI); {exc}") from exc

from .kernels.cpu import _zero_missing_grads
from .kernels.finite import grads_finite, grads_finite_parallel
from .optim.optimizer import Optimizer
from .parameter import Parameter

__all__ = ["DistributedOptimizer", "broadcast_parameters"]

_SHARDED = ("its optimizer state is sharded across ranks by numbaopt.distributed."
            "DistributedOptimizer: step, save and load through the DistributedOptimizer")


class DistributedOptimizer(Optimizer):
    """Average gradients across MPI ranks, then step; optionally shard the state (ZeRO-1).

    ``step()`` on every rank, with ``N`` ranks and ``g_r`` rank r's gradient
    (zero where rank r's is None)::

        g = (g_0 + g_1 + ... + g_{N-1}) / N     one in-place Allreduce over arena.grad
        has_grad = OR over ranks of has_grad     one Allreduce over the flags
        optimizer.step()                         the wrapped optimizer, unchanged

    With ``shard=True`` the arena is cut into N contiguous slices of equal size
    (a slice may end inside a parameter); rank r keeps the optimizer state of
    slice r only, in a private optimizer of the same class and options::

        Reduce_scatter(arena.grad) / N -> rank r's slice of the averaged gradient
        the private optimizer steps slice r (state: 1/N of the arena)
        Allgatherv(slices) -> arena.data     every rank holds all parameters again

    Parameters
    ----------
    optimizer : numbaopt.optim.Optimizer
        The optimizer to wrap, built over the same parameters (same shapes, dtype
        and groups, in the same order) on every rank. Once wrapped, step, save
        and load through the DistributedOptimizer only; with ``shard=True`` the
        wrapped optimizer's state buffers are released and it refuses to step.
    comm : mpi4py.MPI.Comm, default MPI.COMM_WORLD
    shard : bool, default False
        Keep each rank's optimizer state for its slice of the arena only.
    cuda_aware : bool or None, default None
        For CUDA arenas only: pass device buffers straight to MPI (True) or stage
        them through host memory (False). None asks the MPI library
        (``MPIX_Query_cuda_support``); the environment variable
        ``NUMBAOPT_MPI_CUDA_AWARE=0/1`` overrides the answer.

    ``param_groups``, ``defaults``, ``arena`` and ``zero_grad`` are the wrapped
    optimizer's, so learning-rate schedulers work on the DistributedOptimizer.
    ``state_dict()`` is an ordinary single-process state_dict (gathered from
    the shards when sharded) and ``load_state_dict`` takes one; both are
    collective when sharded (every rank must call them).

    Examples
    --------
    >>> opt = DistributedOptimizer(optim.SGD(params, lr=0.1, momentum=0.9), shard=True)
    >>> broadcast_parameters(opt)
    >>> opt.zero_grad(); set_my_gradients(); opt.step()
    >>> sd = opt.state_dict()     # on every rank; loadable by optim.SGD(params)
    """

    # Not calling Optimizer.__init__ is deliberate: everything is delegated to
    # the wrapped optimizer; the subclassing is what lets learning-rate
    # schedulers (which check isinstance(optimizer, Optimizer)) drive it.
    _dirty = (False,)    # edits of param_groups reach the wrapped optimizer's own step

    def __init__(self, optimizer, comm=None, shard=False, *, cuda_aware=None):
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("the optimizer is already a DistributedOptimizer")
        if not isinstance(optimizer, Optimizer):
            raise TypeError("DistributedOptimizer wraps a numbaopt.optim.Optimizer, got "
                            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}")
        if not isinstance(shard, (bool, np.bool_)):
            raise ValueError(f"'shard' must be True or False, got {shard!r}")
        if optimizer.arena.stale is not None:
            raise RuntimeError(f"cannot wrap this {type(optimizer).__name__}: it can no longer "
                               f"step ({optimizer.arena.stale})")
        _check_supported(optimizer, shard)
        self._init_hooks()      # step hooks run around the collective step
        self.optimizer = optimizer
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        self.shard = bool(shard)
        self._cuda_aware = cuda_aware
        self._staging = None
        self._local = None
        self._arena = optimizer.arena
        _check_same_layout(self.comm, self._arena)
        if self.shard:
            if self.device != "cpu" or _on_device(self._arena.grad):
                raise NotImplementedError(
                    "shard=True on a CUDA arena is not supported yet; use shard=False "
                    "(gradient averaging works on CUDA arenas)")
            self._build_local()
            self._copy_state_from_full()
            self._release_full_state()

    # -- delegation ------------------------------------------------------------------
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def defaults(self):
        return self.optimizer.defaults

    @property
    def arena(self):
        """The wrapped optimizer's arena: write gradients into ``arena.grad`` as usual."""
        return self.optimizer.arena

    @property
    def device(self):
        return getattr(self.optimizer, "device", "cpu")

    @property
    def skip_nonfinite(self):
        return self.optimizer.skip_nonfinite

    @property
    def found_nonfinite(self):
        return self.optimizer.found_nonfinite

    @property
    def skipped_steps(self):
        return self.optimizer.skipped_steps

    @property
    def local_optimizer(self):
        """With ``shard=True``, the private optimizer over this rank's slice (else None)."""
        return self._local

    @property
    def shard_bounds(self):
        """Rank r owns elements ``shard_bounds[r]:shard_bounds[r + 1]`` of the arena (sharded only)."""
        return self._bounds if self.shard else None

    @property
    def state(self):
        """Per-parameter state. Sharded: only this rank's slice of each parameter it
        holds part of, as flat live views; ``state_dict()`` gives the whole state."""
        if not self.shard:
            return self.optimizer.state
        return _LocalStateView(self)

    def zero_grad(self, set_to_none=True):
        """The wrapped optimizer's ``zero_grad`` (local; no communication)."""
        self.optimizer.zero_grad(set_to_none)

    # -- stepping --------------------------------------------------------------------
    def step(self, closure=None):
        """Average the gradients across ranks and take one optimization step (collective).

        ``closure`` (optional) computes this rank's gradients and returns its loss;
        it is called once, before the averaging, and its value is returned.
        """
        loss = None
        if closure is not None:
            loss = closure()
        if self.optimizer.arena is not self._arena:
            self._adopt_new_arena()    # add_param_group was called on the wrapped optimizer
        if not self.shard:
            _average_gradients(self.comm, self._arena, self._device_mode())
            self.optimizer.step()
        elif not self._step_sharded():
            return None
        if getattr(self.optimizer, "found_nonfinite", False):
            return None
        return loss

    def _step_sharded(self):
        """One ZeRO-1 step. Returns False when skipped for non-finite gradients."""
        comm, arena, local = self.comm, self._arena, self._local
        la = local.arena
        self._sync_groups()
        _zero_missing_grads(arena.grad, arena.has_grad, arena.offsets)
        comm.Allreduce(MPI.IN_PLACE, arena.has_grad, op=MPI.LOR)
        comm.Reduce_scatter(arena.grad, self._recv(la.grad), recvcounts=self._counts, op=MPI.SUM)
        if self.world_size > 1:
            np.divide(la.grad, self.world_size, out=la.grad)
        np.take(arena.has_grad, self._piece_param, out=la.has_grad)
        # The full arena is the parameters' storage (users and broadcast_parameters
        # write there): refresh this rank's slice before stepping it.
        la.data[:] = arena.data[self._lo:self._hi]
        opt = self.optimizer
        if getattr(opt, "skip_nonfinite", False):
            finite = _grads_finite(la, local.parallel_threshold)
            finite = np.array([finite], dtype=np.bool_)
            comm.Allreduce(MPI.IN_PLACE, finite, op=MPI.LAND)
            opt.found_nonfinite = not bool(finite[0])
            if opt.found_nonfinite:
                opt.skipped_steps += 1
                return False
        # Always step, even an empty slice: its option checks must raise on every rank.
        local.step()
        comm.Allgatherv(self._recv(la.data), [arena.data, (self._counts, self._displs)])
        return True

    def _sync_groups(self):
        """Copy every option of the wrapped groups (lr set by a scheduler, ...) into the local optimizer."""
        outer, inner = self.optimizer.param_groups, self._local.param_groups
        if len(outer) != len(inner):
            raise RuntimeError(
                "param_groups was changed in place; use add_param_group to add parameters")
        for go, gi in zip(outer, inner):
            for key, value in go.items():
                if key in ("params", "param_names"):
                    continue
                if key not in gi or not _same(gi[key], value):
                    gi[key] = value
            for key in [k for k in gi if k != "params" and k not in go]:
                del gi[key]

    # -- groups ----------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a group on every rank (collective); sharded state is kept and re-sharded."""
        # Sharded, the wrapped optimizer's arena is stale; the grown one is not,
        # and it starts with full-size state buffers until _adopt_new_arena.
        self.optimizer.add_param_group(param_group)
        self._adopt_new_arena()

    def _adopt_new_arena(self):
        """The wrapped optimizer grew its arena: check it matches across ranks, re-shard."""
        new = self.optimizer.arena
        _check_same_layout(self.comm, new)
        if self.shard:
            # The old arena's layout is a prefix of the new one; gather the old
            # shards' state into it, then cut the whole arena anew.
            self._gather_full_state(new, root=None)
            self._arena = new
            self._build_local()
            self._copy_state_from_full()
            self._release_full_state()
        self._arena = new

    # -- state_dict ------------------------------------------------------------------
    def state_dict(self, root=None):
        """The full optimizer state in torch's format, loadable by a single-process optimizer.

        Sharded, this is collective: the shards are gathered to every rank
        (``root=None``) or to rank ``root`` only (the others get None).
        """
        if root is not None:
            _check_root(self.comm, root)
        if not self.shard:
            return self.optimizer.state_dict() if root in (None, self.rank) else None
        here = root is None or root == self.rank
        self._gather_full_state(self._arena, root)
        try:
            return self.optimizer.state_dict() if here else None
        finally:
            self._release_full_state()

    def load_state_dict(self, state_dict, root=None):
        """Load a full state_dict (from ``state_dict()``, a single-process optimizer or torch).

        With ``root=None`` every rank passes the same dict; with ``root=r`` only rank
        r's is read (the others may pass None). Plain, each rank loads it into the
        wrapped optimizer (``root=r`` broadcasts it first). Sharded, this is
        collective: the dict is validated by the wrapped optimizer and each rank
        keeps its slice of the state; with ``root=r`` it is validated on rank r
        only, its groups are broadcast and each rank receives only its slice
        (Scatterv). A dict refused on any rank is refused on every rank, and
        nothing changes.
        """
        comm = self.comm
        if root is not None:
            _check_root(comm, root)
        if not self.shard:
            if root is not None:
                state_dict = comm.bcast(state_dict if self.rank == root else None, root=root)
            self.optimizer.load_state_dict(state_dict)
            return
        if self.optimizer.arena is not self._arena:
            self._adopt_new_arena()
        opt = self.optimizer
        arena = self._arena
        loads_here = root is None or root == self.rank
        before = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        error = None
        if loads_here:
            arena.stale = None          # the wrapped optimizer validates and loads the full dict
            try:
                opt.load_state_dict(state_dict)
            except Exception as exc:    # noqa: BLE001 - re-raised below, on every rank
                error = exc
        if root is None:
            # The ranks should have passed the same dict; if one refused it, all refuse,
            # and those that took it put their groups back (their state is still the shards').
            refused = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
            if any(r is not None for r in refused):
                for group, options in zip(opt.param_groups, before):
                    _set_options(group, options)
                self._release_full_state()
                if error is not None:
                    raise error
                rank = next(r for r, verdict in enumerate(refused) if verdict is not None)
                raise ValueError(f"rank {rank} refused the state_dict: {refused[rank]}")
            self._build_local()
            self._copy_state_from_full()
            self._release_full_state()
            return
        verdict = comm.bcast(None if error is None else f"{type(error).__name__}: {error}",
                             root=root)
        if verdict is not None:
            if loads_here:
                self._release_full_state()
                raise error
            raise ValueError(f"rank {root} refused the state_dict: {verdict}")
        groups = comm.bcast([{k: v for k, v in g.items() if k != "params"}
                             for g in opt.param_groups] if loads_here else None, root=root)
        if not loads_here:
            for group, options in zip(opt.param_groups, groups):
                _set_options(group, options)
        keys = comm.bcast(sorted(arena.state) if loads_here else None, root=root)
        self._build_local()
        comm.Bcast(arena.step, root=root)
        if arena.scalars.size:
            comm.Bcast(arena.scalars, root=root)
        la = self._local.arena
        np.take(arena.step, self._piece_param, out=la.step)
        la.scalars[:] = arena.scalars[self._piece_param]
        for key in sorted(la.state):
            if key in keys:
                full = [arena.state[key], (self._counts, self._displs)] if loads_here else None
                comm.Scatterv(full, self._recv(la.state[key]), root=root)
        self._release_full_state()

    # -- sharding internals ----------------------------------------------------------
    def _build_local(self):
        """Cut the arena into N equal contiguous slices and build this rank's optimizer.

        The local optimizer has the wrapped one's class, defaults and groups (all
        of them, some maybe empty) over proxy Parameters, one per piece of a
        parameter that lies in the slice, so its arena is exactly the slice.
        """
        opt, arena = self.optimizer, self._arena
        n, size = arena.size, self.world_size
        self._bounds = np.arange(size + 1, dtype=np.int64) * n // size
        self._counts = np.diff(self._bounds)
        self._displs = self._bounds[:-1].copy()
        lo, hi = int(self._bounds[self.rank]), int(self._bounds[self.rank + 1])
        self._lo, self._hi = lo, hi
        piece_param, piece_lo, piece_hi = _pieces(arena.offsets, self._bounds, self.rank)
        self._piece_param = piece_param
        # The piece holding a parameter's first element speaks for its step count.
        self._primary = piece_lo == arena.offsets[piece_param]
        self._proxies = [Parameter(arena.data[a:b].copy()) for a, b in zip(piece_lo, piece_hi)]
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
            kwargs["skip_nonfinite"] = False   # decided for all ranks together in _step_sharded
        local = cls(groups, **kwargs)
        local.defaults = dict(opt.defaults)
        local.parallel_threshold = opt.parallel_threshold
        if local.arena.size != hi - lo:
            raise AssertionError("the local optimizer's arena is not this rank's slice")
        self._local = local

    def _copy_state_from_full(self):
        """Fill the local optimizer's state from the full state held by the wrapped arena."""
        arena, la = self._arena, self._local.arena
        np.take(arena.step, self._piece_param, out=la.step)
        # Per-parameter scalar state (NAdam's mu_product, ASGD's eta and mu): every piece of
        # a parameter holds the parameter's values, as the step count.
        la.scalars[:] = arena.scalars[self._piece_param]
        for key, buf in la.state.items():
            if key in arena.state:
                buf[:] = arena.state[key][self._lo:self._hi]

    def _gather_full_state(self, target, root):
        """Assemble the shards' state into ``target``'s buffers (every rank, or ``root``).

        ``target`` is the wrapped arena, or a grown one whose prefix is the layout
        the shards were cut from. Returns the state names gathered.
        """
        comm, la = self.comm, self._local.arena
        here = root is None or root == self.rank
        keys = sorted(la.state)
        if len(set(map(tuple, comm.allgather(keys)))) != 1:
            raise RuntimeError("the ranks' local optimizers hold different state buffers")
        nparams = len(self._arena)
        n = int(self._bounds[-1])
        step = np.zeros(nparams, dtype=np.float64)
        step[self._piece_param[self._primary]] = la.step[self._primary]
        if root is None:
            comm.Allreduce(MPI.IN_PLACE, step, op=MPI.SUM)
        else:
            comm.Reduce(MPI.IN_PLACE if here else step, step if here else None,
                        op=MPI.SUM, root=root)
        if here:
            target.step[:nparams] = step
        scalars = np.zeros((nparams, la.scalars.shape[1]), dtype=np.float64)
        scalars[self._piece_param[self._primary]] = la.scalars[self._primary]
        if scalars.size:
            if root is None:
                comm.Allreduce(MPI.IN_PLACE, scalars, op=MPI.SUM)
            else:
                comm.Reduce(MPI.IN_PLACE if here else scalars, scalars if here else None,
                            op=MPI.SUM, root=root)
        if here:
            full_scalars = target.scalar_values().copy()
            full_scalars[:nparams] = scalars
            target.scalars = full_scalars
        for key in keys:
            full = np.zeros(target.size, dtype=target.dtype) if here else None
            spec = [full[:n], (self._counts, self._displs)] if here else None
            if root is None:
                comm.Allgatherv(self._recv(la.state[key]), spec)
            else:
                comm.Gatherv(self._recv(la.state[key]), spec, root=root)
            if here:
                old = target.state.get(key)
                if old is not None and old.size > n:
                    full[n:] = old[n:]   # state of parameters added since (Adagrad's "sum")
                target.state[key] = full
        return keys

    def _release_full_state(self):
        """Drop the wrapped optimizer's full-size state buffers; it refuses to step from now on."""
        opt = self.optimizer
        opt.arena.state.clear()
        opt.arena.stale = _SHARDED
        # The cached kernel arguments still reference the buffers; the stale arena
        # makes step() raise before they could be used (see the report's core hook).
        opt._args = None

    def _recv(self, buf):
        # An empty slice's optimizer has no parameters and defaults to float32.
        return buf if buf.dtype == self._arena.dtype else np.empty(0, self._arena.dtype)

    def _device_mode(self):
        if not _on_device(self._arena.grad):
            return None
        if self._cuda_aware is None:
            self._cuda_aware = _query_cuda_aware()
        if self._cuda_aware:
            return "cuda-aware"
        if self._staging is None or self._staging.size != self._arena.size:
            self._staging = _host_buffer(self._arena.size, self._arena.dtype)
        return self._staging

    # -- misc ------------------------------------------------------------------------
    def __reduce_ex__(self, protocol):
        raise TypeError("a DistributedOptimizer cannot be pickled or copied: save its "
                        "state_dict() (a full, ordinary one) instead")

    def __repr__(self):
        mode = "sharded" if self.shard else "replicated"
        return (f"DistributedOptimizer(rank {self.rank} of {self.world_size}, {mode} state,\n"
                f"{self.optimizer!r})")


def broadcast_parameters(optimizer, root=0, comm=None, *, cuda_aware=None):
    """Copy rank ``root``'s parameter values to every rank (one ``Bcast`` of ``arena.data``).

    Call it once after building the model and the optimizer, so every rank starts
    from the same values. ``optimizer`` is a DistributedOptimizer (its
    communicator is used) or a plain numbaopt optimizer (``comm`` or
    MPI.COMM_WORLD). ``cuda_aware`` as in DistributedOptimizer. Collective.
    """
    if isinstance(optimizer, DistributedOptimizer):
        comm = optimizer.comm if comm is None else comm
        cuda_aware = optimizer._cuda_aware if cuda_aware is None else cuda_aware
    elif not isinstance(optimizer, Optimizer):
        raise TypeError("broadcast_parameters takes a numbaopt optimizer, got "
                        f"{type(optimizer).__module__}.{type(optimizer).__qualname__}")
    comm = MPI.COMM_WORLD if comm is None else comm
    _check_root(comm, root)
    data = optimizer.arena.data
    if not _on_device(data):
        comm.Bcast(data, root=root)
        return
    device = _device_array(data)
    if _query_cuda_aware() if cuda_aware is None else cuda_aware:
        _cuda().synchronize()
        comm.Bcast(_mpi_buffer(device), root=root)
    else:
        host = device.copy_to_host()
        comm.Bcast(host, root=root)
        device.copy_to_device(host)


# -- collectives on an arena ------------------------------------------------------------
def _check_supported(optimizer, shard):
    """Refuse what averaging the dense gradients once per step would get wrong."""
    from .optim.elementwise import ElementwiseOptimizer
    from .optim.lbfgs import LBFGS

    name = type(optimizer).__name__
    if isinstance(optimizer, LBFGS):
        raise NotImplementedError(
            "DistributedOptimizer does not wrap LBFGS: its step evaluates the closure several "
            "times, and each evaluation's gradient must be averaged (Allreduce opt.arena.grad "
            "inside the closure, then step LBFGS itself)")
    if getattr(optimizer.arena, "sparse_grads", None) is not None:
        raise NotImplementedError(
            f"DistributedOptimizer does not wrap {name}: its row-sparse gradients are not "
            "averaged across ranks")
    if shard and not isinstance(optimizer, ElementwiseOptimizer):
        raise NotImplementedError(
            f"shard=True needs an elementwise optimizer: each rank steps a slice of the arena, "
            f"and {name}'s update reads whole parameters; use shard=False")


def _average_gradients(comm, arena, device_mode):
    """Replace ``arena.grad`` by the mean over ranks (zeros where a rank had no gradient)
    and ``arena.has_grad`` by the OR over ranks.

    ``device_mode`` is None for host arenas, "cuda-aware" to hand device buffers
    to MPI, or a host staging buffer of the arena's size.
    """
    size = comm.Get_size()
    grad, has_grad, offsets = arena.grad, arena.has_grad, arena.offsets
    if device_mode is None:
        _zero_missing_grads(grad, has_grad, offsets)
        comm.Allreduce(MPI.IN_PLACE, has_grad, op=MPI.LOR)
        comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        if size > 1:
            np.divide(grad, size, out=grad)
        return
    cuda = _cuda()
    device = _device_array(grad)
    flags = has_grad if isinstance(has_grad, np.ndarray) else _device_array(has_grad).copy_to_host()
    if isinstance(device_mode, str):
        # CUDA-aware MPI reads and writes device memory; the kernels run before and after.
        zero_missing, scale = _cuda_kernels()
        threads = 256 if device.size >= 256 else 32
        blocks = max(1, (device.size + threads - 1) // threads)
        zero_missing[blocks, threads](device, cuda.to_device(flags),
                                      cuda.to_device(np.ascontiguousarray(offsets)))
        cuda.synchronize()
        comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.LOR)
        comm.Allreduce(MPI.IN_PLACE, _mpi_buffer(device), op=MPI.SUM)
        if size > 1:
            scale[blocks, threads](device, device.dtype.type(size))
        cuda.synchronize()
    else:
        host = device_mode
        device.copy_to_host(host)
        _zero_missing_grads(host, flags, offsets)
        comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.LOR)
        comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        if size > 1:
            np.divide(host, size, out=host)
        device.copy_to_device(host)
    if flags is not has_grad:
        _device_array(has_grad).copy_to_device(flags)


def _grads_finite(arena, parallel_threshold):
    check = grads_finite_parallel if arena.size >= parallel_threshold else grads_finite
    return bool(check(arena.grad, arena.has_grad, arena.chunks))


def _pieces(offsets, bounds, rank):
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


def _check_same_layout(comm, arena):
    """Raise on every rank unless every rank's arena has the same layout and dtype."""
    mine = (arena.dtype.str, arena.size, len(arena),
            zlib.crc32(np.ascontiguousarray(arena.offsets, dtype=np.int64).tobytes()),
            zlib.crc32(np.ascontiguousarray(arena.param_group, dtype=np.int64).tobytes()))
    everyone = comm.allgather(mine)
    if any(other != everyone[0] for other in everyone):
        lines = "; ".join(f"rank {r}: {o[0]}, {o[2]} parameters, {o[1]} elements"
                          for r, o in enumerate(everyone))
        raise ValueError("every rank must build its optimizer over the same parameters (shapes, "
                         f"dtype and groups, in the same order), but the arenas differ: {lines}")


def _check_root(comm, root):
    if not isinstance(root, (int, np.integer)) or isinstance(root, bool) \
            or not 0 <= root < comm.Get_size():
        raise ValueError(f"root must be a rank in [0, {comm.Get_size()}), got {root!r}")


def _set_options(group, options):
    """Make ``group``'s options (all keys but "params") equal ``options``, in place."""
    for key in [k for k in group if k != "params" and k not in options]:
        del group[key]
    group.update(options)


def _same(a, b):
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return False


class _LocalStateView(Mapping):
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


# -- CUDA arenas ------------------------------------------------------------------------
def _on_device(array):
    # numba device arrays (and the simulator's, which lack __cuda_array_interface__), CuPy, torch
    return not isinstance(array, np.ndarray) and (
        hasattr(array, "__cuda_array_interface__") or hasattr(array, "copy_to_host"))


def _device_array(array):
    """A numba device array for a GPU array (any ``__cuda_array_interface__``), without a copy."""
    return array if hasattr(array, "copy_to_host") else _cuda().as_cuda_array(array)


def _mpi_buffer(device):
    """What CUDA-aware MPI is handed: the device array itself. numba's CUDA simulator keeps
    "device" arrays in host memory without a ``__cuda_array_interface__``; ``np.asarray``
    is then a view of that memory, so the CUDA-aware code path runs under the simulator too."""
    if hasattr(device, "__cuda_array_interface__"):
        return device
    return np.asarray(device)


def _cuda():
    from numba import cuda
    return cuda


def _host_buffer(n, dtype):
    """A host staging buffer, page-locked when a GPU is there (faster copies)."""
    try:
        return _cuda().pinned_array(n, dtype=dtype)
    except Exception:   # noqa: BLE001 - the simulator or no driver: pageable memory works too
        return np.empty(n, dtype=dtype)


_CUDA_AWARE = None


def _query_cuda_aware():
    """Whether the MPI library reads and writes CUDA device memory.

    ``NUMBAOPT_MPI_CUDA_AWARE=1`` or ``0`` decides; otherwise Open MPI's and
    MPICH's (4.0+) ``MPIX_Query_cuda_support()`` is asked at run time, which
    also tells whether CUDA support is enabled (MPICH: ``MPIR_CVAR_ENABLE_GPU``).
    Libraries without that call are taken as not CUDA-aware: host staging is
    always correct, only slower.
    """
    global _CUDA_AWARE
    if _CUDA_AWARE is None:
        env = os.environ.get("NUMBAOPT_MPI_CUDA_AWARE", "").strip().lower()
        if env in ("1", "true", "yes", "on"):
            _CUDA_AWARE = True
        elif env in ("0", "false", "no", "off"):
            _CUDA_AWARE = False
        else:
            _CUDA_AWARE = _mpix_query_cuda_support()
    return _CUDA_AWARE


def _mpix_query_cuda_support():
    try:
        with open("/proc/self/maps") as maps:
            libraries = sorted({line.split()[-1] for line in maps
                                if "libmpi" in line and ".so" in line})
    except OSError:
        return False
    for path in libraries:
        try:
            query = ctypes.CDLL(path).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        return bool(query())
    return False


def _cuda_kernels():
    """``(zero_missing, scale)``: device twins of the host steps around the Allreduce."""
    from .kernels import cuda as kernels
    return kernels._zero_missing_grads_cuda, kernels._scale_cuda
