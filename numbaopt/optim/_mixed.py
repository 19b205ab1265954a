"""One optimizer over parameters of several dtypes: one lane per real dtype.

torch lets one optimizer hold float32 and float64 parameters. The arena holds one dtype,
so an elementwise optimizer over several keeps one *lane* per real dtype: an optimizer
of its own class over that dtype's parameters, with one arena and one kernel call per
step. The optimizer the user holds is the façade: its ``param_groups`` are the groups as
given (edits reach the lanes before the next step), its ``state``, ``state_dict()`` and
hooks are torch's over all parameters, numbered as torch numbers them, and a step is one
kernel call per lane. With one dtype there are no lanes and nothing here runs.

``opt.arenas`` maps each real dtype to its arena (the zero-copy gradient path works per
arena); ``opt.arena`` exists only when there is one.
"""

import threading
from collections.abc import Iterator, Mapping

import numpy as np

from ..parameter import Parameter
from ._groups import DirtyFlag, ParamGroups
from ._optimizer_groups import real_dtype

__all__ = ["MixedDtypesMixin", "SeveralArenas"]


class SeveralArenas:
    """``opt.arena`` of an optimizer over several dtypes: reading it says to use ``opt.arenas``."""

    #: each lane checks its own arena when it steps, syncs or loads (a step reads this)
    stale = None

    def __init__(self, owner, lanes):
        self._owner = owner
        self._lanes = lanes

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        dtypes = ", ".join(str(lane.arena.dtype) for lane in self._lanes)
        raise AttributeError(
            f"this {self._owner} holds parameters of several dtypes ({dtypes}), each kept in "
            f"the arena of its dtype: use opt.arenas[dtype] (a dict by numpy dtype); "
            f"opt.arena exists when there is one (arena.{name} was asked for)")


class MixedDtypesMixin:
    """The lanes of an ``ArenaOptimizer`` over several real dtypes (see the module docstring)."""

    #: whether the class takes parameters of several dtypes (the elementwise optimizers)
    _mixed_dtypes = False
    #: the lanes (one optimizer per real dtype), or None with one dtype
    _lanes = None

    @property
    def arenas(self):
        """``{real dtype: arena}``: one arena per dtype of the parameters (usually one)."""
        if self._lanes is None:
            return {self.arena.dtype: self.arena}
        return {lane.arena.dtype: lane.arena for lane in self._lanes}

    # -- construction ------------------------------------------------------------------
    def _build_lanes(self, groups, dtypes, device):
        """One lane per dtype, in order of first appearance, over that dtype's parameters."""
        lanes = []
        for dtype in dtypes:
            lane = object.__new__(type(self))
            # the parent groups with parameters of this dtype, in order
            lane._lane_groups = [g for g, group in enumerate(groups)
                                 if any(real_dtype(p.dtype) == dtype for p in group["params"])]
            lane_groups = [_lane_group(groups[g], dtype) for g in lane._lane_groups]
            type(self)._lane_init(lane, lane_groups, self.defaults, device)
            lanes.append(lane)
        self._lanes = lanes
        self._packed_params = [tuple(group["params"]) for group in groups]
        self._lane_by_arena = {id(lane.arena): lane for lane in lanes}
        self.arena = SeveralArenas(type(self).__name__, lanes)

    def _lane(self, p):
        lane = self._lane_by_arena.get(id(p._arena))
        if lane is None or lane.arena is not p._arena:
            raise KeyError(f"{p!r} is not a parameter of this {type(self).__name__}")
        return lane

    def _owns(self, p):
        if self._lanes is None:
            return super()._owns(p)
        return id(p._arena) in self._lane_by_arena

    def _ordered_params(self):
        if self._lanes is None:
            return super()._ordered_params()
        return [p for group in self._param_groups for p in group["params"]]

    # -- stepping ----------------------------------------------------------------------
    def _sync_lanes(self):
        """Validate the groups (torch's messages, this optimizer's group numbers), copy
        their options into the lanes, and point the step at the lanes."""
        from ..compiled import LR_WRITTEN
        if self._flags[LR_WRITTEN]:    # lrs set from compiled code first (numbaopt.compiled)
            self._pull_compiled_lr()
        live = self._push_lane_options()
        for lane in self._lanes:
            lane._skip_nonfinite = False
            if lane._dirty[0] or lane.arena.stale is not None:
                lane._sync()
        self._kernel, self._args, self._finite = self._step_lanes, (), self._lanes_finite
        self._locked_steps = True       # a state_dict() between two lanes would mix steps
        self._dirty[0] = live

    def _push_lane_options(self, doing="step"):
        """Validate the groups and copy their options into the lanes' groups (which raise
        the lanes' own change flags); returns whether an option is an ndarray. (A sharded
        DistributedOptimizer steps the lanes' slices: it passes ``doing=None``.)"""
        self._reconcile(doing)
        rows, needed, live = self._checked_rows(self._param_groups)
        for lane in self._lanes:
            for k, g in enumerate(lane._lane_groups):
                group, mine = self._param_groups[g], lane._param_groups[k]
                for key, value in group.items():
                    if key not in ("params", "param_names") and not _same(mine.get(key), value):
                        mine[key] = value
        return live

    def _pull_lane_lrs(self):
        """The lrs compiled code set in the lanes (``numbaopt.compiled.set_lr`` of a handle
        over several dtypes sets every lane's) into this optimizer's groups, unflagged (the
        lanes' pulls say which groups)."""
        from ..compiled import LR_WRITTEN
        for lane in self._lanes:
            if not lane._flags[LR_WRITTEN]:
                continue
            for k in lane._pull_compiled_lr():   # the lane's groups compiled code set
                value = lane._param_groups[k]["lr"]
                group = self._param_groups[lane._lane_groups[k]]
                current = group.get("lr")
                if isinstance(current, np.ndarray):
                    if current is not value:
                        current[...] = value
                elif current != value:
                    group._data["lr"] = value

    def _step_lanes(self):
        for lane in self._lanes:
            if lane._dirty[0] or lane.arena.stale is not None:
                lane._sync()
            lane._kernel(*lane._args)

    def _lanes_finite(self):
        for lane in self._lanes:
            if lane._dirty[0] or lane.arena.stale is not None:
                lane._sync()
            if not lane._finite():
                return False
        return True

    def set_grads(self, grads):
        if self._lanes is None:
            return super().set_grads(grads)
        if self._dirty[0]:
            self._reconcile(None)        # groups appended to param_groups are packed first
        if isinstance(grads, np.ndarray):
            grads = self._split_vector(grads)
        params = self._ordered_params()
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(f"set_grads got {len(grads)} gradients for {len(params)} parameters")
        by_lane = {id(lane): [] for lane in self._lanes}
        for p, g in zip(params, grads):
            by_lane[id(self._lane(p))].append(g)
        from .optimizer import check_grads
        check_grads(params, grads)                            # every check before any write
        for lane in self._lanes:
            lane.set_grads(by_lane[id(lane)])

    def zero_grad(self, set_to_none=True):
        if self._lanes is None:
            return super().zero_grad(set_to_none)
        if self._dirty[0]:
            self._reconcile(None)
        for lane in self._lanes:
            lane.zero_grad(set_to_none)

    # -- groups ------------------------------------------------------------------------
    def _packed_groups_params(self):
        if self._lanes is None:
            return super()._packed_groups_params()
        return self._packed_params

    def _stale(self):
        if self._lanes is None:
            return super()._stale()
        return next((lane.arena.stale for lane in self._lanes
                     if lane.arena.stale is not None), None)

    def _check_adopted_dtypes(self, params):
        if self._mixed_dtypes:
            self._arena_dtypes(params)          # any dtype: a new one gets an arena
        else:
            super()._check_adopted_dtypes(params)

    def _adopt(self, new_groups, append):
        if self._lanes is None:
            if not self._mixed_dtypes:
                return super()._adopt(new_groups, append)
            # (a generator of parameters is listed once, so that its dtypes can be read)
            new_groups = [dict(g, params=list(g["params"])) if isinstance(g, Mapping)
                          and isinstance(g.get("params"), Iterator) else g for g in new_groups]
            if not any(_dtypes_of(g) - {self.arena.dtype} for g in new_groups):
                return super()._adopt(new_groups, append)
            checked = self._checked_adoption(new_groups)
            self._become_mixed()             # a new dtype: this arena becomes the first lane
        else:
            checked = self._checked_adoption(new_groups)
        device = self.device
        for group in checked:
            k = len(self._packed_params)
            dtypes = [d for d in dict.fromkeys(real_dtype(p.dtype) for p in group["params"])]
            for lane in self._lanes:
                if lane.arena.dtype in dtypes:
                    lane._lane_groups.append(k)
                    lane.add_param_group(_lane_group(group, lane.arena.dtype))
            for dtype in dtypes:
                if dtype not in [lane.arena.dtype for lane in self._lanes]:
                    lane = object.__new__(type(self))
                    lane._lane_groups = [k]
                    type(self)._lane_init(lane, [_lane_group(group, dtype)], self.defaults, device)
                    self._lanes.append(lane)
            if append:
                self._param_groups.append(group)
            else:
                self._param_groups[k] = group
            self._packed_params.append(tuple(group["params"]))
        self._lane_by_arena = {id(lane.arena): lane for lane in self._lanes}
        self._sync_lanes()
        self._dirty[0] = True       # a compiled handle's next step re-syncs: it is stale

    def _become_mixed(self):
        """Move this optimizer's arena, state and kernel into a first lane (its groups as
        copies), and take the lanes' role: a group of a new dtype is being added."""
        from ..compiled import LR_WRITTEN
        if self._flags[LR_WRITTEN]:        # lrs compiled code set: into the groups first
            self._pull_compiled_lr()
        lane = object.__new__(type(self))
        state = dict(self.__dict__)
        for key in [k for k in state if k.startswith("_optimizer_")]:
            del state[key]                    # hooks stay with this optimizer
        lane.__dict__.update(state)
        lane._step_lock = threading.RLock()
        lane._flags = np.zeros_like(self._flags)
        lane._dirty = DirtyFlag(lane._flags)
        lane._skip_nonfinite = False
        lane._param_groups = ParamGroups([_lane_group(g, self.arena.dtype)
                                          for g in self._param_groups], lane._dirty)
        lane._lane_groups = list(range(len(lane._param_groups)))
        lane._init_hooks()                    # (a lane: its flags never ask for hooks)
        lane._user_state = {k: v for k, v in self._user_state.items() if isinstance(k, Parameter)}
        self._user_state = {k: v for k, v in self._user_state.items()
                            if not isinstance(k, Parameter)}
        self._lanes = [lane]
        self._packed_params = [tuple(g["params"]) for g in self._param_groups]
        self._lane_by_arena = {id(lane.arena): lane}
        self.arena = SeveralArenas(type(self).__name__, self._lanes)
        # compiled handles of the one arena hold this flags table: leave it flagged (their
        # next step asks for a new handle) and keep the flags in a fresh one
        stale, self._flags = self._flags, self._flags.copy()
        stale[0] = 1
        self._dirty.flags = self._flags
        self._handle_args = None
        lane._dirty[0] = True

    # -- state -------------------------------------------------------------------------
    def _param_entry(self, p):
        if self._lanes is None:
            return super()._param_entry(p)
        return self._lane(p)._param_entry(p)

    def _set_param_entry(self, p, value):
        if self._lanes is None:
            return super()._set_param_entry(p, value)
        return self._lane(p)._set_param_entry(p, value)

    def _has_entry(self, p):
        if self._lanes is None:
            return super()._has_entry(p)
        return self._lane(p)._has_entry(p)

    def _params_with_state(self):
        if self._lanes is None:
            return super()._params_with_state()
        return [p for p in self._ordered_params() if self._has_entry(p)]

    def _saved_entries(self):
        if self._lanes is None:
            return super()._saved_entries()
        with self._step_lock:             # never between the lanes of one step
            entries = {}
            for lane in self._lanes:
                for p, entry in zip(lane.arena.params, lane._saved_entries()):
                    entries[id(p)] = entry
        return [entries[id(p)] for p in self._ordered_params()]

    def _load_state_dict(self, state_dict):
        if self._lanes is None:
            return super()._load_state_dict(state_dict)
        new_groups, index_of = self._loaded_groups(state_dict)
        entries, others = self._loaded_entries(state_dict, index_of)
        ordered = self._ordered_params()
        saved = {id(ordered[i]): entry for i, _, entry in entries}
        commits = []
        for lane in self._lanes:          # every lane checks and stages before any commits
            params = lane.arena.params
            local = {k: saved[id(p)] for k, p in enumerate(params) if id(p) in saved}
            groups = []
            first = 0
            for k, g in enumerate(lane._lane_groups):
                n = len(lane._param_groups[k]["params"])
                group = {key: v for key, v in new_groups[g].items()
                         if key not in ("params", "param_names")}
                group["params"] = list(range(first, first + n))
                first += n
                groups.append(group)
            commits.append(lane._staged_load({"state": local, "param_groups": groups}))
        for commit in commits:
            commit()
        self._user_state.clear()
        self._user_state.update(others)
        self._set_groups(new_groups)
        self._sync_lanes()
        self._dirty[0] = True       # (as in _adopt: a compiled handle checks its buffers)


def _lane_group(group, dtype):
    """The part of ``group`` (a checked group dict) with parameters of ``dtype``."""
    out = {k: v for k, v in group.items() if k not in ("params", "param_names")}
    out["params"] = [p for p in group["params"] if real_dtype(p.dtype) == dtype]
    return out


def _dtypes_of(group):
    """The real dtypes of a raw group's parameters (those that are Parameters)."""
    params = group.get("params", ()) if isinstance(group, Mapping) else ()
    if isinstance(params, Parameter):
        params = [params]
    if not isinstance(params, (list, tuple)):
        return set()
    params = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in params]
    return {real_dtype(p.dtype) for p in params if isinstance(p, Parameter)}


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b
    return type(a) is type(b) and a == b
