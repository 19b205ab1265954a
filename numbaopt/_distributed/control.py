"""The control round that starts every collective call, and what ends a failing job.

**The control round.** Every collective method of a DistributedOptimizer starts
with ONE small ``Allreduce`` (MAX over bytes) on its private communicator. Its
header says which method this rank is in, a digest of the options (``agree.py``),
whether this rank failed to get ready (an invalid option, say), and whether its
arena grew; a step appends the per-parameter has-grad flags (MAX of 0/1 bytes is
their OR), so this round is the flags' Allreduce a step needs anyway. A value
``x`` travels as ``x`` and ``255 - x``: the MAX of both gives the largest and the
smallest, so every rank sees at once whether all ranks agree. If not, every rank
takes the same path (one ``allgather`` of the details) and raises.

**A rank that ends early.** At exit (its script returns, ``sys.exit``) a rank
joins one more control round on every DistributedOptimizer's communicator, with
the op "leaving", all at once (nonblocking), and waits for them as
``MPI_Finalize`` would wait for the other ranks anyway. A rank still calling
``step()`` meets that round in place of its step's: it raises (and the abort
hook ends the job) instead of waiting forever. Ranks that all end meet in their
"leaving" rounds and exit normally.

**The abort hook.** Once a DistributedOptimizer exists in a job of several ranks,
an uncaught exception prints its traceback and calls ``MPI_Abort`` on
``COMM_WORLD``, as ``python -m mpi4py`` does, so that one failing rank ends the job
instead of leaving the others blocked in a collective.
"""

import atexit
import os
import sys
import time

import numpy as np
from mpi4py import MPI

HEADER = 21                  # bytes: op (2), digest (16), error (1), grew (2)

LEAVING = 99                 # the largest op, so that the MAX of the ops shows it
OPS = {1: "step()", 2: "synchronize()", 3: "step() after synchronize()",
       4: "state_dict()", 5: "load_state_dict()", 6: "add_param_group()",
       7: "broadcast_parameters()", 8: "clip_grad_norm_()",
       9: "numbaopt.save()", 10: "numbaopt.load()", LEAVING: "the end of its script"}
STEP, SYNC, STEP_SYNCED, STATE_DICT, LOAD, ADD_GROUP, BROADCAST, CLIP, SAVE, LOAD_FILE = range(1, 11)

_links = []                  # every optimizer's private communicator, for the leaving rounds


class Link:
    """What the leaving round on one optimizer's communicator needs; outlives the optimizer."""

    __slots__ = ("comm", "size", "rounds", "length", "broken")

    def __init__(self, comm):
        self.comm = comm
        self.size = comm.Get_size()
        self.rounds = 0      # control rounds completed
        self.length = HEADER  # bytes of a control round now (the header and one per parameter)
        self.broken = None   # why no more rounds can be made here


class Verdict:
    """The reduced header of one round, as every rank sees it."""

    __slots__ = ("agreed", "same_op", "same_options", "failed", "grew", "all_grew", "leaving")

    def __init__(self, header, expected):
        # Every rank sent its own header; if the MAX of every byte is this rank's own
        # (and this rank neither failed nor grew), all ranks sent the same one.
        self.agreed = header == expected
        if self.agreed:
            self.same_op = self.same_options = True
            self.failed = self.grew = self.all_grew = self.leaving = False
            return
        self.leaving = header[0] == LEAVING
        self.same_op = header[0] == 255 - header[1]
        self.same_options = all(header[2 + i] == 255 - header[10 + i] for i in range(8))
        self.failed = bool(header[18])
        self.grew = bool(header[19])
        self.all_grew = header[20] == 0


class Control:
    """The control rounds of one DistributedOptimizer, on its private communicator."""

    def __init__(self, comm, nparams):
        self.comm = comm
        self.link = Link(comm)
        _links.append(self.link)
        self._headers = {}
        self.resize(nparams)
        _install_leaving_round()

    def resize(self, nparams):
        self.buffer = np.zeros(HEADER + nparams, dtype=np.uint8)
        self.flags = self.buffer[HEADER:].view(np.bool_)
        self.link.length = self.buffer.size

    def _header(self, op, digest, failed, grew):
        key = (op, digest, failed, grew)
        header = self._headers.get(key)
        if header is None:
            if len(self._headers) > 64:      # options that change at every step (array lr)
                self._headers.clear()
            header = _header(op, digest, failed, grew)
            self._headers[key] = header
        return header

    def round(self, op, digest, failed, grew, flags):
        """One control Allreduce. ``flags`` (this rank's has-grad, or None) become their OR."""
        link = self.link
        if link.broken is not None:
            raise RuntimeError(link.broken)
        header = self._header(op, digest, failed, grew)
        b = self.buffer
        b[:HEADER] = np.frombuffer(header, dtype=np.uint8)
        if flags is None:
            b[HEADER:] = 0
        else:
            self.flags[:] = flags
        # Nonblocking, then waited for: the leaving round is nonblocking, and MPI never
        # matches a nonblocking collective with a blocking one. (It costs no more.)
        self.comm.Iallreduce(MPI.IN_PLACE, b, op=MPI.MAX).Wait()
        link.rounds += 1
        verdict = Verdict(b[:HEADER].tobytes(), header if not (failed or grew) else None)
        if verdict.leaving:
            link.broken = (
                f"another rank has ended (its script returned or called sys.exit) while this "
                f"rank is in {OPS.get(op, op)}, call {link.rounds} of this DistributedOptimizer: "
                "every rank must call step() (and the other collective methods) equally "
                "often, e.g. give every rank the same number of batches")
            raise RuntimeError(link.broken)
        return verdict

    def gather(self, value):
        """Every rank's ``value`` (after a verdict every rank saw: all ranks call this)."""
        return self.comm.allgather(value)


def _header(op, digest, failed, grew):
    inverse = bytes(255 - x for x in digest)
    return bytes((op, 255 - op)) + digest + inverse + bytes(
        (1 if failed else 0,) + ((1, 0) if grew else (0, 1)))


# -- ending the job -----------------------------------------------------------------------
_leaving_installed = False


def _install_leaving_round():
    global _leaving_installed
    if not _leaving_installed:
        # Registered after mpi4py's own finalizer, so it runs before MPI is finalized.
        atexit.register(leaving_round)
        _leaving_installed = True


def leaving_round():
    """At exit: one "leaving" control round on every optimizer's communicator, all at once.

    A rank still calling a collective method meets it and raises; ranks that end too
    meet in theirs. Waits for the others, as ``MPI_Finalize`` (next) would anyway.
    """
    if not MPI.Is_initialized() or MPI.Is_finalized():
        return
    header = np.frombuffer(_header(LEAVING, bytes(8), False, False), dtype=np.uint8)
    requests, buffers = [], []
    for link in _links:
        if link.size == 1 or link.broken is not None:
            continue
        buffer = np.zeros(link.length, dtype=np.uint8)
        buffer[:HEADER] = header
        buffers.append(buffer)
        requests.append(link.comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.MAX))
    if requests:
        MPI.Request.Waitall(requests)


def install_abort_hook():
    """Make an uncaught exception abort the whole MPI job (once; not in interactive sessions).

    The previous ``sys.excepthook`` still runs first (it prints the traceback); then
    ``MPI_Abort(COMM_WORLD, 1)`` (130 after Ctrl-C) ends every rank. Undo with
    ``sys.excepthook = sys.__excepthook__``.
    """
    if MPI.COMM_WORLD.Get_size() == 1 or hasattr(sys, "ps1") or sys.flags.interactive:
        return
    if getattr(sys.excepthook, "_numbaopt_abort", False):
        return
    previous = sys.excepthook

    def abort_on_uncaught_exception(exc_type, exc, tb):
        try:
            previous(exc_type, exc, tb)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:   # noqa: BLE001, S110 - a closed stream must not stop the abort
                    pass
            # Give the launcher a moment to forward the traceback: MPICH's mpiexec may drop
            # what is still in flight when it tears the job down.
            time.sleep(0.25)
            code = 130 if issubclass(exc_type, KeyboardInterrupt) else 1
            if MPI.Is_initialized() and not MPI.Is_finalized():
                # MPICH's MPI_Abort may return while the launcher kills the job: exit at
                # once, or the exit handlers would tell the other ranks this one "left".
                MPI.COMM_WORLD.Abort(code)
            os._exit(code)

    abort_on_uncaught_exception._numbaopt_abort = True
    sys.excepthook = abort_on_uncaught_exception
