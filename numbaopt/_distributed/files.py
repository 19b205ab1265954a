"""``numbaopt.save`` / ``numbaopt.load`` of a DistributedOptimizer: collective, one writer.

``numbaopt.save(path, dist_opt)`` and ``numbaopt.load(path, dist_opt)`` call
``dist_opt._checkpoint_collective()`` and drive the ``CheckpointContext`` it
returns (the contract of ``numbaopt.checkpoint``): rank 0 is the writer, and its
wrapped optimizer, holding the whole state (gathered from the shards when
sharded), stands in as the single-process optimizer the file is written from or
checked against. So the file is exactly the one ``numbaopt.save`` writes for a
single-process optimizer of the wrapped class: one process ``numbaopt.load``s it,
and so do any number of ranks, sharded or not (the writer reads and checks it,
then every rank gets the parameters and its state).

Every rank must call save or load together. The sequence, on every rank:
save: ``snapshot()``, (the writer writes), ``agree(error)``;
load: (the writer reads and checks), ``agree(error)``, ``load(loaded)``, ``bcast(...)``.
"""

import builtins

from .._checkpoint_snapshot import set_arena_values, snapshot
from .control import LOAD_FILE, SAVE
from .transport import broadcast

_MIRRORED = (ValueError, TypeError, RuntimeError, KeyError, IndexError, NotImplementedError,
             OSError)


class CheckpointContext:
    """One collective save or load of a DistributedOptimizer (see the module docstring).

    ``writer``: whether this rank reads or writes the file (rank 0).
    ``optimizer``: on the writer, the wrapped optimizer as a single-process one (its
    arena is not stale for the duration); None elsewhere.
    """

    root = 0

    def __init__(self, dist):
        self.dist = dist
        self.writer = dist.rank == self.root
        self._started = False
        self._holding = False        # the writer's wrapped optimizer holds the whole state

    @property
    def optimizer(self):
        if not self.writer:
            return None
        dist = self.dist
        if dist.shard:
            # Checked and described as a single-process optimizer until the call ends
            # (released by agree() or load()).
            dist._arena.stale = None
        return dist.optimizer

    def snapshot(self):
        """Collective: ``(params, state_dict)`` on the writer (host copies), None elsewhere."""
        self.gather()
        if not self.writer:
            return None
        return snapshot(self.dist.optimizer)     # (exact float64 step counts)

    def gather(self):
        """Collective, the first half of ``snapshot``: the writer's wrapped optimizer holds
        the whole state (gathered from the shards when sharded)."""
        dist = self.dist
        self._start(SAVE)
        if dist.shard:
            self._holding = True
            dist._gather_full_state(dist._arena, self.root)
            if self.writer:
                dist._arena.stale = None

    def agree(self, error):
        """Collective: raise on every rank if the writer failed (its own error there)."""
        self._start(LOAD_FILE)
        try:
            _verdict(self.dist, self.root, error, "could not save or load the checkpoint")
        except BaseException:
            self._release()
            raise
        if self._holding:            # a save: done
            self._release()

    def load(self, loaded):
        """Collective: the writer's ``(params, state_dict)`` reach every rank (a slice of the
        state each when sharded); refused on every rank if the writer's optimizer refuses it."""
        dist, comm = self.dist, self.dist._comm
        error = None
        if self.writer:
            params, state_dict = loaded
            try:
                dist.optimizer.load_state_dict(state_dict)
                set_arena_values(dist._arena, params)
            except Exception as exc:   # noqa: BLE001 - raised below, on every rank
                error = exc
        try:
            _verdict(dist, self.root, error, "refused the checkpoint")
            broadcast(comm, dist._arena.data, self.root, dist._cuda_aware)
            if dist.shard:
                dist._scatter_full_state(self.root)
            else:
                state_dict = comm.bcast(dist.optimizer.state_dict() if self.writer else None,
                                        root=self.root)
                if not self.writer:
                    dist.optimizer.load_state_dict(state_dict)
        finally:
            self._release()

    def bcast(self, value):
        """Collective: the writer's ``value`` on every rank."""
        return self.dist._comm.bcast(value if self.writer else None, root=self.root)

    def _start(self, op):
        if not self._started:
            self._started = True
            self.dist._round(op)

    def _release(self):
        dist = self.dist
        if dist.shard:
            dist._release_full_state()     # the wrapped optimizer refuses to step again
        self._holding = False


def _verdict(dist, root, error, what):
    """Raise on every rank if ``root`` failed: its own error there, the same type elsewhere."""
    report = dist._comm.bcast(None if error is None else (type(error).__name__, str(error)),
                              root=root)
    if report is None:
        return
    if error is not None:
        raise error
    name, message = report
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, _MIRRORED)):
        cls = RuntimeError
    raise cls(f"rank {root} {what}: {name}: {message}")
