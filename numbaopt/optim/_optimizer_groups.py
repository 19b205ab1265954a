"""The ``Optimizer`` base's groups: parsing ``params``, ``add_param_group``, and packing edits.

``GroupsMixin`` turns torch's ``params`` into group dicts and keeps the arena in step with
``param_groups`` (the containers themselves are in ``_groups``); ``Optimizer`` inherits it.
"""

import warnings
from collections.abc import Mapping

import numpy as np

from ..arena import check_no_overlap, make_arena
from ..parameter import Parameter
from ._groups import ParamGroups


class GroupsMixin:
    """``param_groups`` and how they reach the arena (part of ``Optimizer``)."""

    @property
    def param_groups(self):
        """The parameter groups, torch's list of dicts; every edit takes effect at the next step.

        Options change through any route (``group["lr"] = x``, ``group |= {...}``,
        ``opt.param_groups[i] = {...}``); groups appended to the list are packed
        into the arena at the next step, as ``add_param_group`` would.
        """
        return self._param_groups

    @param_groups.setter
    def param_groups(self, groups):
        if isinstance(groups, Mapping) or not hasattr(groups, "__iter__"):
            raise TypeError("param_groups must be a list of dicts, got "
                            f"{type(groups).__name__}")
        self._param_groups = ParamGroups(groups, self._dirty)
        self._dirty[0] = True

    def add_param_group(self, param_group):
        """Add a group of parameters (e.g. layers unfrozen while fine-tuning).

        The arena grows to hold them; existing values, gradients and state are kept.
        Nothing changes unless the group and every pending edit of the others are valid.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        self._reconcile(None)
        self._adopt([param_group], append=True)

    def _adopt(self, new_groups, append):
        """Validate ``new_groups`` (dicts) against the others, then grow the arena with them.

        With ``append`` they are added to ``param_groups``; otherwise they are its last
        entries already (appended by the user) and are replaced by their completed form.
        """
        checked = self._checked_adoption(new_groups)
        for group in checked:
            first = len(self.arena)
            groups = [g["params"] for g in self._param_groups][:len(self.arena.group_offsets) - 1]
            self.arena = make_arena(groups + [group["params"]], self.arena.dtype, self.device,
                                    previous=self.arena)
            self.arena.owner = type(self).__name__
            k = len(self.arena.group_offsets) - 2
            if append:
                self._param_groups.append(group)
            else:
                self._param_groups[k] = group
            self._after_add_group(first)

    def _checked_adoption(self, new_groups):
        """``new_groups`` completed and checked against the packed groups, before anything
        changes: torch's checks of add_param_group, and (``_before_add_group``) every
        pending edit of the others."""
        n = len(self._packed_groups_params())
        existing = list(self._param_groups)[:n]
        checked = []
        for g, raw in enumerate(new_groups):
            group = self._checked_new_group(raw, existing + checked)
            self._check_adopted_dtypes(group["params"])
            check_no_overlap([p for x in existing + checked for p in x["params"]]
                             + group["params"])
            self._check_group(group, index=n + g)
            checked.append(group)
        self._before_add_group(existing + checked)
        return checked

    def _check_adopted_dtypes(self, params):
        """Refuse parameters a group added to this optimizer cannot have (another dtype)."""
        self._arena_dtype(params, expected=self.arena.dtype)

    def _packed_groups_params(self):
        """The parameters of every packed group, as packed (the arena's order)."""
        arena = self.arena
        offsets = arena.group_offsets
        return [arena.params[offsets[g]:offsets[g + 1]] for g in range(len(offsets) - 1)]

    def _stale(self):
        """Why the optimizer can no longer step (another took a parameter over), or None."""
        return self.arena.stale

    def _reconcile(self, doing="step"):
        """Make the arena match ``param_groups`` after edits of the list, or raise why not.

        Groups appended to the list are packed (``_adopt``). Parameters added to or
        removed from a packed group, and removed or reordered groups, are refused:
        the arena holds each group's parameters contiguously in order.
        """
        stale = self._stale()
        if doing is not None and stale is not None:
            raise RuntimeError(f"{type(self).__name__} can no longer {doing}: {stale}")
        groups = self._param_groups
        packed = self._packed_groups_params()
        n = len(packed)
        for g, group in enumerate(list(groups)[:n]):
            if "params" not in group:
                raise ValueError(f"param group {g} has no 'params' entry")
            params = group["params"]
            expected = packed[g]
            if len(params) != len(expected) or any(a is not b for a, b in zip(params, expected)):
                raise RuntimeError(
                    f"the parameters of param group {g} changed after the optimizer packed "
                    f"them ({len(expected)} packed, {len(params)} in the group now): numbaopt "
                    "keeps every group's parameters contiguously in its arena. Add parameters "
                    "with optimizer.add_param_group({'params': [...]}); for other changes build "
                    "a new optimizer and carry the state over with state_dict()")
        if len(groups) < n:
            raise RuntimeError(
                f"param_groups holds {len(groups)} groups, the optimizer packed {n}: removing a "
                "group is not supported (its parameters stay in the arena). Build a new "
                "optimizer over the parameters to train and carry state over with state_dict()")
        if len(groups) > n:
            self._adopt(list(groups)[n:], append=False)

    def _before_add_group(self, groups):
        """Called with every group (packed and new) once the new ones are valid, before
        anything changes: raise here to refuse."""

    def _after_add_group(self, first):
        """Called by ``add_param_group`` after the arena grew; ``first`` is the new group's first index."""

    def _checked_new_group(self, group, others):
        """``_new_group(group)``, checked against the groups ``others`` as torch's add_param_group."""
        group = self._new_group(group)
        for other in others:
            if ("param_names" in group) != ("param_names" in other):
                kind = "with names" if "param_names" in group else "without names"
                raise ValueError("all optimizer param groups should be with/without names. "
                                 f"cannot add param group {kind} to the optimizer")
        seen = {id(p) for other in others for p in other["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        return group

    def _new_group(self, group):
        """A plain-dict copy of ``group`` with its params listed and defaults filled in."""
        if not isinstance(group, Mapping):
            raise TypeError(f"param_group must be a dict, but got {type(group).__name__}")
        group = dict(group)
        if "params" not in group:
            raise ValueError("a parameter group needs a 'params' entry")
        params = group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of parameters in sets will change between runs. "
                "Please use a list instead.")
        elif isinstance(params, np.ndarray):
            raise TypeError("a group's 'params' must be a list of numbaopt.Parameter, "
                            "got a numpy.ndarray (wrap it: numbaopt.Parameter(array))")
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        params = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(params):
                raise ValueError("all optimizer params should be with/without names. "
                                 "Some param names are missing")
        elif "param_names" in group:
            names = list(group["param_names"])
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError("optimizer can only optimize numbaopt.Parameter objects, "
                                f"but one of the params is {type(p).__module__}.{type(p).__qualname__}")
        if len({id(p) for p in params}) != len(params):
            # torch warns and keeps the duplicate (and steps it twice); the arena holds it once
            warnings.warn("optimizer contains a parameter group with duplicate parameters; "
                          "in future, this will cause an error; see "
                          "github.com/pytorch/pytorch/issues/40967 for more information "
                          "(numbaopt keeps each parameter once)", UserWarning, stacklevel=4)
            first = {}
            for k, p in enumerate(params):
                first.setdefault(id(p), k)
            keep = sorted(first.values())
            params = [params[k] for k in keep]
            names = [names[k] for k in keep] if names else names
        if names:
            group["param_names"] = names
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        return group

    #: ``(error type, message)`` for an optimizer that refuses complex parameters, as
    #: torch's Adafactor, Muon and SparseAdam do; None for the ones that step them
    _complex_refusal = None

    #: whether the optimizer takes several real dtypes at once (one arena each: ``_mixed``)
    _mixed_dtypes = False

    def _arena_dtypes(self, params):
        """The real dtypes of ``params``, in order of first appearance: one unless the
        optimizer takes several (``_mixed_dtypes``); refused otherwise, as ``_arena_dtype``."""
        if not self._mixed_dtypes:
            return [self._arena_dtype(params)]
        self._arena_dtype([])                      # (the complex refusal and such checks)
        dtypes = []
        for p in params:
            dtype = real_dtype(p.dtype)
            if dtype not in dtypes:
                dtypes.append(dtype)
        return dtypes or [np.dtype(np.float32)]

    def _arena_dtype(self, params, expected=None):
        # Called by the constructor and add_param_group before anything is packed.
        if self._complex_refusal is not None:
            complex_params = [i for i, p in enumerate(params) if p.dtype.kind == "c"]
            if complex_params:
                error, message = self._complex_refusal
                raise error(message.format(indices=complex_params))
        why = (f"{type(self).__name__} steps one dtype (the elementwise optimizers take "
               "several): use one optimizer per dtype")
        return _common_dtype(params, expected, why)


def _split_groups(params):
    """Normalise ``params`` to a list of group dicts (torch's rules)."""
    if isinstance(params, (Parameter, np.ndarray)):
        raise TypeError("params argument given to the optimizer should be an iterable of "
                        "Parameters or dicts, but got " + type(params).__qualname__)
    if isinstance(params, (set, frozenset)):
        raise TypeError("optimizer parameters need to be organized in ordered collections, but "
                        "the ordering of parameters in sets will change between runs. "
                        "Please use a list instead.")
    if isinstance(params, Mapping):
        raise TypeError("params argument given to the optimizer should be an iterable of "
                        "Parameters or dicts, but got a single dict (wrap it in a list)")
    groups = list(params)
    if len(groups) == 0:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(groups[0], Mapping):
        return [{"params": groups}]
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping):
            raise TypeError(f"params mixes dicts and other objects (entry {i} is "
                            f"{type(g).__qualname__})")
    return groups


def real_dtype(dtype):
    """The arena dtype of a parameter dtype: complex64 is stored as float32 pairs."""
    dtype = np.dtype(dtype)
    return np.dtype(f"f{dtype.itemsize // 2}") if dtype.kind == "c" else dtype


def _common_dtype(params, expected=None, why="use one optimizer per dtype"):
    """The one real dtype of ``params`` (complex ones count as their real pairs)."""
    dtype = expected
    first = None
    for i, p in enumerate(params):
        real = real_dtype(p.dtype)
        if dtype is None:
            dtype, first = real, i
        elif real != dtype:
            where = f"parameter {first} is {params[first].dtype}" if first is not None else \
                f"the optimizer's arena is {dtype}"
            raise TypeError(
                f"all parameters of one optimizer must share a dtype: {where}, parameter {i} is "
                f"{p.dtype}. {why[0].upper()}{why[1:]}; numbaopt never casts silently.")
    return np.dtype(np.float32 if dtype is None else dtype)
