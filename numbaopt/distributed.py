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
ONE in-place ``Allreduce`` over ``arena.grad``, plus one small control
``Allreduce`` (the has-grad flags, one byte per parameter, and a header that
checks every rank is in the same call with the same options), not one
collective per tensor. ``synchronize()`` averages now, for code that must see
the averaged gradient before the step (``numbaopt.utils.clip_grad_norm_(opt,
...)`` calls it), as in Horovod.

Gradients that are None on some ranks follow torch's DistributedDataParallel:
the sum over ranks, counting zero where a rank has none, divided by the number
of ranks; the parameter is stepped if any rank gave it a gradient.

``shard=True`` is ZeRO stage 1: each rank keeps optimizer state only for its
contiguous slice of the arena (1/N of the elements), reduce-scatters the
gradients, updates its slice and all-gathers the parameters, on host or GPU
arenas. The numbers equal the unsharded run.

A failing rank ends the job: once a DistributedOptimizer exists, an uncaught
exception calls ``MPI_Abort`` (as ``python -m mpi4py`` does), and a rank that
ends (its script returns, ``sys.exit``) while another still calls ``step()``
makes that one raise, which aborts too (see ``numbaopt._distributed.control``).
"""

import weakref

try:
    from mpi4py import MPI
except (ImportError, RuntimeError) as exc:   # RuntimeError: mpi4py found no MPI library
    raise ImportError(
        "numbaopt.distributed needs mpi4py and an MPI library: "
        f"pip install 'numbaopt[distributed]' (installs mpi4py and MPICH from PyPI); {exc}") from exc

import numpy as np

from . import utils
from ._distributed import control, transport
from ._distributed.agree import check_group_dtype
from ._distributed.agree import check_root as _check_root
from ._distributed.agree import check_supported as _check_supported
from ._distributed.clip import ClippingCalls
from ._distributed.control import (ADD_GROUP, BROADCAST, LOAD, STATE_DICT, STEP, STEP_SYNCED,
                                   SYNC)
from ._distributed.files import CheckpointContext
from ._distributed.mixed import MixedCheckpoint, MixedParts
from ._distributed.rounds import CollectiveCalls
from ._distributed.shard import LocalStateView, ShardedState, set_options
from .optim import optimizer as _optimizer
from .optim.optimizer import Optimizer

__all__ = ["DistributedOptimizer", "broadcast_parameters"]

class DistributedOptimizer(MixedParts, ClippingCalls, CollectiveCalls, ShardedState,
                           Optimizer):
    """Average gradients across MPI ranks, then step; optionally shard the state (ZeRO-1).

    ``step()`` on every rank, with ``N`` ranks and ``g_r`` rank r's gradient
    (zero where rank r's is None)::

        has_grad = OR over ranks of has_grad     the control Allreduce (one byte each)
        g = (g_0 + g_1 + ... + g_{N-1}) / N     one in-place Allreduce over arena.grad
        optimizer.step()                         the wrapped optimizer, unchanged

    With ``shard=True`` the arena is cut into N contiguous slices of equal size
    (a slice may end inside a parameter); rank r keeps the optimizer state of
    slice r only, in a private optimizer of the same class and options::

        Reduce_scatter(arena.grad) / N -> rank r's slice of the averaged gradient
        the private optimizer steps slice r (state: 1/N of the arena)
        Allgatherv(slices) -> arena.data     every rank holds all parameters again

    ``synchronize()`` does the averaging now and the next ``step()`` does not do it
    again (Horovod's shape): clip or inspect the averaged gradient in between.
    ``numbaopt.utils.clip_grad_norm_(opt, ...)``, ``clip_grad_value_`` and
    ``clip_grads_with_norm_`` given a DistributedOptimizer synchronize first, so
    they clip the averaged gradient as torch's DDP does (sharded: the total norm
    over all slices). Plain, ``p.grad`` is then the average; sharded, each rank holds
    the average of its slice only (``local_optimizer.arena.grad``).

    Every rank must build the same optimizer: the same parameters (layout, dtype,
    groups), class, options, ``skip_nonfinite`` and ``shard``. That is checked
    here, and the options again at every step after they changed (a scheduler, an
    edit of ``param_groups``: a digest in the control Allreduce, no extra
    collective); a difference raises ValueError on every rank. Every collective
    call (``step``, ``synchronize``, sharded ``state_dict``, ``load_state_dict``,
    ``add_param_group``, ``broadcast_parameters``) must be made by every rank in
    the same order; calls that do not match raise RuntimeError on every rank.

    Parameters
    ----------
    optimizer : numbaopt.optim.Optimizer
        The optimizer to wrap, built alike on every rank. Once wrapped, step, save
        and load through the DistributedOptimizer only; with ``shard=True`` the
        wrapped optimizer's state buffers are released and it refuses to step.
    comm : mpi4py.MPI.Comm, default MPI.COMM_WORLD
        Its ranks take part (the optimizer talks on a duplicate of it, so its own
        messages never mix with yours).
    shard : bool, default False
        Keep each rank's optimizer state for its slice of the arena only.
    cuda_aware : bool or None, default None
        For CUDA arenas only: pass device buffers straight to MPI (True) or stage
        them through host memory (False). None asks the MPI library
        (``MPIX_Query_cuda_support``); the environment variable
        ``NUMBAOPT_MPI_CUDA_AWARE=0/1`` overrides the answer.

    ``param_groups``, ``defaults``, ``arena`` and ``zero_grad`` are the wrapped
    optimizer's, so learning-rate schedulers work on the DistributedOptimizer.
    ``state_dict()`` is an ordinary single-process state_dict (gathered from the
    shards when sharded) and ``load_state_dict`` takes one; both are collective
    when sharded. ``numbaopt.save(path, opt)`` / ``numbaopt.load(path, opt)`` are
    collective: rank 0 writes (or reads) the file a single-process optimizer of the
    wrapped class would, so one process loads it, and so does any number of ranks,
    sharded or not.

    Building one installs the abort hook: in a job of several ranks an uncaught
    exception prints its traceback and calls ``MPI_Abort`` on ``COMM_WORLD``, so
    one failing rank ends the job (``sys.excepthook = sys.__excepthook__`` undoes it).
    A rank that ends (its script returns, ``sys.exit``) while the others wait in a
    collective call of this optimizer makes them raise RuntimeError, which aborts.

    Examples
    --------
    >>> opt = DistributedOptimizer(optim.SGD(params, lr=0.1, momentum=0.9), shard=True)
    >>> broadcast_parameters(opt)
    >>> opt.zero_grad(); set_my_gradients()
    >>> numbaopt.utils.clip_grad_norm_(opt, 1.0)     # the averaged gradient's norm
    >>> opt.step()
    """

    # Not calling Optimizer.__init__ is deliberate: everything is delegated to
    # the wrapped optimizer; the subclassing is what lets learning-rate
    # schedulers (which check isinstance(optimizer, Optimizer)) drive it.
    _dirty = (False,)    # edits of param_groups reach the wrapped optimizer's own step
    _parts = None        # an optimizer over several dtypes: one DistributedOptimizer per arena

    def __init__(self, optimizer, comm=None, shard=False, *, cuda_aware=None):
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("the optimizer is already a DistributedOptimizer")
        if not isinstance(optimizer, Optimizer):
            raise TypeError("DistributedOptimizer wraps a numbaopt.optim.Optimizer, got "
                            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}")
        if not isinstance(shard, (bool, np.bool_)):
            raise ValueError(f"'shard' must be True or False, got {shard!r}")
        if getattr(optimizer, "_lanes", None) is not None:
            # several dtypes: one DistributedOptimizer per arena (numbaopt._distributed.mixed)
            control.install_abort_hook()
            self._init_hooks()
            self._init_parts(optimizer, comm, shard, cuda_aware)
            _optimizer.mark_wrapped(optimizer, self)        # (its compiled() refuses)
            return
        if optimizer.arena.stale is not None:
            raise RuntimeError(f"cannot wrap this {type(optimizer).__name__}: it can no longer "
                               f"step ({optimizer.arena.stale})")
        _check_supported(optimizer, shard)
        control.install_abort_hook()
        self._init_hooks()      # step hooks run around the collective step
        self.optimizer = optimizer
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.world_size = self.comm.Get_size()
        self.shard = bool(shard)
        self._cuda_aware = cuda_aware
        self._staging = transport.Staging()
        self._mode = (None, None)
        self._local = None
        self._arena = optimizer.arena
        self._synchronized = False
        self._digest = None
        self._seen_args = self._seen_skip = None
        self._own_flags = np.zeros(len(self._arena), dtype=np.bool_)
        self._comm = self.comm.Dup()     # collective, as building the optimizer is
        self._control = control.Control(self._comm, len(self._arena))
        utils._DISTRIBUTED[self._arena] = weakref.ref(self)
        try:
            self._check_agreement()
        except ValueError as exc:    # refused on every rank: no leaving round here at exit
            self._control.link.broken = str(exc)
            raise
        if self.shard:
            self._build_local()
            self._copy_state_from_full()
            self._release_full_state()
        _optimizer.mark_wrapped(optimizer, self)       # (its compiled() refuses)

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
        if self._parts is not None:
            raise AttributeError("an optimizer over several dtypes is sharded arena by arena: "
                                 "each of opt.parts has its local_optimizer")
        return self._local

    @property
    def parts(self):
        """For an optimizer over several dtypes, the DistributedOptimizer of each arena."""
        return self._parts

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
        if self._parts is not None:
            raise AttributeError("sharded over several dtypes, each of opt.parts has the state "
                                 "of its slice; state_dict() gives the whole state")
        return LocalStateView(self)

    def set_grads(self, grads):
        """The wrapped optimizer's ``set_grads`` (local; no communication)."""
        self.optimizer.set_grads(grads)

    def zero_grad(self, set_to_none=True):
        """The wrapped optimizer's ``zero_grad`` (local; no communication)."""
        self._synchronized = False
        self.optimizer.zero_grad(set_to_none)

    # -- stepping --------------------------------------------------------------------
    def step(self, closure=None):
        """Average the gradients across ranks and take one optimization step (collective).

        ``closure`` (optional) computes this rank's gradients and returns its loss;
        it is called once, before the averaging, and its value is returned. After
        ``synchronize()`` the gradients are not averaged again (whatever the closure
        does to them).
        """
        loss = None
        if closure is not None:
            loss = closure()
        if self._parts is not None:
            return loss if self._mixed_step() else None
        if self._synchronized:
            self._synchronized = False
            if self.shard or self._options_changed():
                self._round(STEP_SYNCED, check_options=True)
        else:
            self._average(STEP)
        if not self.shard:
            self.optimizer.step()
        elif not self._step_slice():
            return None
        if getattr(self.optimizer, "found_nonfinite", False):
            return None
        return loss

    def synchronize(self):
        """Average the gradients across ranks now (collective); the next ``step()`` will not.

        Plain, ``arena.grad`` (every ``p.grad``) then holds the average on every rank;
        sharded, this rank's slice of the average is in ``local_optimizer.arena.grad``.
        A second call before ``step()`` or ``zero_grad()`` does nothing.
        """
        if self._parts is not None:
            return self._mixed_synchronize()
        if not self._synchronized:
            self._average(SYNC)
            self._synchronized = True

    def _average(self, op):
        self._round(op, flags=True, check_options=True)
        arena, mode = self._arena, self._device_mode()
        if self.shard:
            la = self._local.arena
            transport.reduce_scatter(self._comm, arena.grad, self._own_flags, arena.offsets,
                                     self._recv(la.grad), self._counts, mode)
            np.take(arena.has_grad, self._piece_param, out=la.has_grad)
        else:
            transport.average(self._comm, arena.grad, self._own_flags, arena.offsets, mode)

    def _step_slice(self):
        """Step this rank's slice and all-gather the parameters. False when skipped (non-finite)."""
        arena, local = self._arena, self._local
        la = local.arena
        mode = self._device_mode()
        # The full arena is the parameters' storage (users and broadcast_parameters
        # write there): refresh this rank's slice before stepping it.
        if mode is None:
            la.data[:] = arena.data[self._lo:self._hi]
        elif la.size:
            la.data.copy_to_device(arena.data[self._lo:self._hi])
        opt = self.optimizer
        if getattr(opt, "skip_nonfinite", False):
            finite = np.array([bool(local._finite())], dtype=np.bool_)
            self._comm.Allreduce(MPI.IN_PLACE, finite, op=MPI.LAND)
            opt.found_nonfinite = not bool(finite[0])
            if opt.found_nonfinite:
                opt.skipped_steps += 1
                return False
        # Always step, even an empty slice: its option checks must raise on every rank.
        local.step()
        transport.allgather(self._comm, self._recv(la.data), arena.data, self._counts,
                            self._displs, mode)
        return True

    # -- groups ----------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a group on every rank (collective); sharded state is kept and re-sharded."""
        if self._parts is not None:
            raise NotImplementedError(
                "add_param_group of a DistributedOptimizer over several dtypes is not "
                "supported: build the optimizer with every group")
        if self._synchronized:
            raise RuntimeError("add_param_group between synchronize() and step(): add groups "
                               "before synchronize() or after step()")
        error = None
        try:
            param_group = check_group_dtype(param_group, self._arena.dtype)
            # Sharded, the wrapped optimizer's arena is stale; the grown one is not,
            # and it starts with full-size state buffers until _adopt_new_arena.
            self.optimizer.add_param_group(param_group)
        except Exception as exc:   # noqa: BLE001 - reported in the round, raised on every rank
            error = exc
        self._round(ADD_GROUP, error=error)

    # -- state_dict ------------------------------------------------------------------
    def state_dict(self, root=None):
        """The full optimizer state in torch's format, loadable by a single-process optimizer.

        Sharded, this is collective: the shards are gathered to every rank
        (``root=None``) or to rank ``root`` only (the others get None).
        """
        if root is not None:
            _check_root(self.comm, root)
        if self._parts is not None:
            return self._mixed_state_dict(root)
        if not self.shard:
            return self.optimizer.state_dict() if root in (None, self.rank) else None
        self._round(STATE_DICT)
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
        nothing changes. The number of ranks and ``shard`` of the run that wrote
        the dict do not matter: it is a whole, single-process state_dict.
        """
        comm = self._comm
        if root is not None:
            _check_root(comm, root)
        if self._parts is not None:
            return self._mixed_load_state_dict(state_dict, root)
        if not self.shard:
            if root is not None:
                self._round(LOAD)
                state_dict = comm.bcast(state_dict if self.rank == root else None, root=root)
            self.optimizer.load_state_dict(state_dict)
            return
        self._round(LOAD)
        opt, arena = self.optimizer, self._arena
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
                    set_options(group, options)
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
        self._scatter_full_state(root)
        self._release_full_state()

    def _checkpoint_collective(self):
        """How ``numbaopt.save`` and ``numbaopt.load`` handle this optimizer: collectively,
        rank 0 writing or reading the file of the wrapped optimizer's whole state."""
        return CheckpointContext(self) if self._parts is None else MixedCheckpoint(self)

    # -- misc ------------------------------------------------------------------------
    def _device_mode(self):
        """How the arena's buffers meet MPI: None (host), "cuda-aware" or the staging buffers."""
        if self._mode[0] is not self._arena:
            mode = None
            if transport.on_device(self._arena.grad):
                if self._cuda_aware is None:
                    self._cuda_aware = transport.query_cuda_aware()
                mode = "cuda-aware" if self._cuda_aware else self._staging
            self._mode = (self._arena, mode)
        return self._mode[1]

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
    if isinstance(optimizer, DistributedOptimizer) and optimizer._parts is not None \
            and comm in (None, optimizer.comm):
        for part in optimizer._parts:
            broadcast_parameters(part, root, cuda_aware=cuda_aware)
        return
    if isinstance(optimizer, DistributedOptimizer) and comm in (None, optimizer.comm):
        _check_root(optimizer.comm, root)
        optimizer._round(BROADCAST)
        transport.broadcast(optimizer._comm, optimizer._arena.data, root,
                            optimizer._cuda_aware if cuda_aware is None else cuda_aware)
        return
    if not isinstance(optimizer, Optimizer):
        raise TypeError("broadcast_parameters takes a numbaopt optimizer, got "
                        f"{type(optimizer).__module__}.{type(optimizer).__qualname__}")
    comm = MPI.COMM_WORLD if comm is None else comm
    _check_root(comm, root)
    transport.broadcast(comm, optimizer.arena.data, root, cuda_aware)
