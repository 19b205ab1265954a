"""The collective calls' common part: the control round, and every rank's agreement.

``CollectiveCalls`` is the part of DistributedOptimizer that starts each
collective call with the control Allreduce (``control.py``), checks at
construction that every rank built the same optimizer, and takes a grown arena
in (after ``add_param_group``) on every rank together.
"""

import builtins
import weakref

import numpy as np

from .. import utils
from ..optim.optimizer import has_array_value
from . import agree
from .control import ADD_GROUP, LOAD, OPS, STEP, STEP_SYNCED, SYNC

_FAILURE = {STEP: "could not step", SYNC: "could not synchronize",
            STEP_SYNCED: "could not step", LOAD: "refused the state_dict",
            ADD_GROUP: "could not add the param group"}


class CollectiveCalls:
    """For DistributedOptimizer (uses its ``optimizer``, ``_arena``, ``_comm``, ``_control``)."""

    def _check_agreement(self):
        """Raise on every rank unless every rank built the same optimizer (one allgather)."""
        opt = self.optimizer
        mine = (agree.layout(self._arena), self.shard,
                agree.describe(opt, getattr(opt, "skip_nonfinite", False)))
        everyone = self._comm.allgather(mine)
        error = agree.layout_error([e[0] for e in everyone])
        if error is None and any(e[1] != self.shard for e in everyone):
            shards = ", ".join(f"rank {r}: shard={e[1]}" for r, e in enumerate(everyone))
            error = ValueError(f"every rank must pass the same shard= ({shards})")
        error = error or agree.options_error([e[2] for e in everyone])
        if error is not None:
            raise error

    def _round(self, op, flags=False, check_options=False, error=None):
        """Start collective call ``op`` on every rank together (one small Allreduce).

        With ``check_options`` the optimizer that steps is first brought up to date
        with ``param_groups`` (its hyperparameter table rebuilt if they changed) and
        the options' digest is compared across ranks. With ``flags`` the has-grad
        flags are OR-ed (this rank's own are kept in ``_own_flags``). ``error`` is a
        local failure to report. Every rank raises if any failed, if the ranks are
        in different calls or have different options, or if some arena grew alone.
        """
        changed = False
        if error is None and check_options:
            error, changed = self._get_ready()
        digest = self._options_digest(changed) if check_options and error is None else bytes(8)
        grew = self.optimizer.arena is not self._arena
        own = None
        if flags and not grew:
            own = self._arena.has_grad
            np.copyto(self._own_flags, own)
        ctl = self._control
        verdict = ctl.round(op, digest, error is not None, grew, own)
        if verdict.agreed:
            if flags:
                np.copyto(self._arena.has_grad, ctl.flags)
            return
        if not verdict.same_op:
            ops = ctl.gather(op)
            listing = ", ".join(f"rank {r} in {OPS.get(o, o)}" for r, o in enumerate(ops))
            raise RuntimeError(f"the ranks are in different collective calls of the "
                               f"DistributedOptimizer ({listing}): every rank must make the "
                               "same calls in the same order")
        if verdict.failed:
            _raise_everywhere(ctl.gather(None if error is None else
                                         (type(error).__name__, str(error))),
                              error, _FAILURE.get(op, f"failed in {OPS.get(op, op)}"))
        if verdict.grew:
            if not verdict.all_grew:
                grown = ctl.gather(grew)
                raise RuntimeError(
                    "the optimizer's arena grew (add_param_group, or param_groups.append) on "
                    f"rank(s) {[r for r, g in enumerate(grown) if g]} and not on the others: add "
                    "param groups on every rank, with DistributedOptimizer.add_param_group")
            self._adopt_new_arena()
            if flags or check_options:
                self._round(op, flags, check_options)
            return
        if check_options and not verdict.same_options:
            skip = bool(getattr(self.optimizer, "skip_nonfinite", False))
            everyone = ctl.gather(agree.describe(self._target(), skip))
            raise agree.options_error(everyone) or RuntimeError("the ranks' options differ")
        if flags:
            np.copyto(self._arena.has_grad, ctl.flags)

    def _target(self):
        """The optimizer whose kernel steps: the local one when sharded."""
        return self._local if self.shard else self.optimizer

    def _get_ready(self):
        """Rebuild the stepping optimizer's table if ``param_groups`` changed.

        Returns ``(error or None, whether the options may have changed)``.
        """
        try:
            if self.shard:
                self._sync_groups()
            target = self._target()
            changed = bool(target._dirty[0])
            if hasattr(target, "_sync") and (changed or target.arena.stale is not None):
                target._sync()      # what its step() would do first; raises if it cannot step
        except Exception as exc:   # noqa: BLE001 - reported in the round, raised on every rank
            return exc, True
        return None, changed

    def _options_digest(self, changed):
        """The options' digest, hashed again only when they may have changed: an edit of
        param_groups (which raises the optimizer's dirty flag), new kernel arguments (a
        state_dict loaded), or skip_nonfinite set."""
        target = self._target()
        skip = bool(getattr(self.optimizer, "skip_nonfinite", False))
        args = getattr(target, "_args", None)
        if changed or self._digest is None or args is not self._seen_args \
                or skip != self._seen_skip:
            self._digest = agree.digest(agree.describe(target, skip))
            self._seen_args, self._seen_skip = args, skip
        return self._digest

    def _options_changed(self):
        """Whether the options may have changed since the last round (plain only)."""
        target = self.optimizer
        return bool(target._dirty[0]) or getattr(target, "_args", None) is not self._seen_args \
            or bool(getattr(target, "skip_nonfinite", False)) != self._seen_skip

    def _sync_groups(self):
        """Copy every option of the wrapped groups (lr set by a scheduler, ...) into the local optimizer."""
        opt = self.optimizer
        if not opt._dirty[0]:
            return          # no edit since the last copy (the wrapped optimizer never steps)
        outer, inner = opt.param_groups, self._local.param_groups
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
        # An ndarray option may change in place (torch's tensor lr): copy it at every step.
        opt._dirty[0] = any(has_array_value(g) for g in outer)

    def _adopt_new_arena(self):
        """The wrapped optimizer grew its arena (on every rank): check the layouts, re-shard."""
        new = self.optimizer.arena
        error = agree.layout_error(self._comm.allgather(agree.layout(new)))
        if error is not None:
            raise error
        if self.shard:
            # The old arena's layout is a prefix of the new one; gather the old
            # shards' state into it, then cut the whole arena anew.
            self._gather_full_state(new, root=None)
            self._arena = new
            self._build_local()
            self._copy_state_from_full()
            self._release_full_state()
        self._arena = new
        utils._DISTRIBUTED[new] = weakref.ref(self)
        self._own_flags = np.zeros(len(new), dtype=np.bool_)
        self._control.resize(len(new))
        self._digest = None


def _raise_everywhere(reports, error, what):
    """After a round in which some rank failed: its own error there, the same type elsewhere."""
    if error is not None:
        raise error
    r = next(i for i, report in enumerate(reports) if report is not None)
    name, message = reports[r]
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, (ValueError, TypeError, RuntimeError,
                                                       KeyError, IndexError))):
        cls = RuntimeError
    raise cls(f"rank {r} {what}: {name}: {message}")


def _same(a, b):
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return False
