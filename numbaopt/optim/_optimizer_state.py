"""The ``Optimizer`` base's state: ``opt.state``, ``state_dict()`` and ``load_state_dict()``.

``StateMixin`` holds torch's packing of groups and per-parameter state into a state_dict and
the checked load back; ``Optimizer`` inherits it, and the arena optimizers override its hooks.
"""

import copy
from collections.abc import Mapping, MutableMapping

import numpy as np

from ..parameter import Parameter
from ._optimizer_checks import check_group_flags


class StateMixin:
    """Per-parameter state and torch's state_dict (part of ``Optimizer``)."""

    # options a loaded group gets when its dict lacks them (torch's __setstate__ defaults)
    _load_defaults = {}

    @property
    def state(self):
        """Per-parameter state: ``opt.state[p]`` is a dict, created empty on first access.

        Other keys (``opt.state["x"] = 1``) are kept too, and go into ``state_dict()``.
        """
        return _State(self)

    def _param_entry(self, p):
        """``state[p]`` for a parameter of this optimizer (a dict here; arena views in subclasses)."""
        return self._user_state.setdefault(p, {})

    def _set_param_entry(self, p, value):
        self._user_state[p] = dict(value)

    def _has_entry(self, p):
        return bool(self._user_state.get(p))

    def _params_with_state(self):
        return [p for p in self._ordered_params() if self._has_entry(p)]

    def _owns(self, p):
        """Whether ``p`` is a parameter of this optimizer."""
        return p._arena is self.arena

    def _ordered_params(self):
        """Every parameter once, in the order of the entries of ``_saved_entries``: group by
        group, as given (the arena's order)."""
        return self.arena.params

    def state_dict(self):
        """The optimizer's state in torch's format; every array is a copy.

        ``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``.
        State-dict hooks run before and after, as in torch.
        """
        for hook in tuple(self._optimizer_state_dict_pre_hooks.values()):
            hook(self)
        groups, index = self._packed_groups()
        state = self._packed_state(self._saved_entries(), index, "state_dict()")
        state_dict = {"state": state, "param_groups": groups}
        for hook in tuple(self._optimizer_state_dict_post_hooks.values()):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _packed_state(self, entries, index, what):
        """torch's ``state``: ``entries`` (one per parameter, arena order) under the indices
        ``index`` (from ``_packed_groups``), then the non-parameter keys (copies)."""
        state = {}
        for p, entry in zip(self._ordered_params(), entries):
            if entry:
                if id(p) not in index:
                    raise ValueError(
                        f"parameter {p._index} has optimizer state but is in no param group (was a "
                        f"group removed from param_groups?); {what} would lose it")
                state[index[id(p)]] = entry
        state = dict(sorted(state.items()))
        for key, value in self._user_state.items():
            if not isinstance(key, Parameter):
                state[key] = copy.deepcopy(value)
        return state

    def _saved_entries(self):
        """Each parameter's state as state_dict() stores it (copies; empty dicts for none)."""
        return [{k: _copy_value(v) for k, v in self._user_state.get(p, {}).items()}
                for p in self._ordered_params()]

    def _packed_groups(self):
        """torch's packed groups and the ``id(p) -> index`` numbering they use.

        Parameters are numbered in order of first appearance, group by group, as in torch.
        """
        index = {}
        start = 0
        groups = []
        for group in self.param_groups:      # (the property: lrs set from compiled code too)
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            params = group.get("params", ())
            for i, p in enumerate(params, start):
                index.setdefault(id(p), i)
            packed["params"] = [index[id(p)] for p in params]
            start += len(params)
            groups.append(packed)
        return groups, index

    def load_state_dict(self, state_dict):
        """Load a state_dict from ``state_dict()`` or from torch.optim (tensors as ``.numpy()``).

        Everything is validated before anything changes; on error the optimizer
        is untouched. Arrays are copied in. Load hooks run as in torch: the
        pre-hooks get a shallow copy and may return a replacement.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        state_dict = dict(state_dict)
        for hook in tuple(self._optimizer_load_state_dict_pre_hooks.values()):
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._reconcile("load state")
        self._load_state_dict(state_dict)
        for hook in tuple(self._optimizer_load_state_dict_post_hooks.values()):
            hook(self)

    def _load_state_dict(self, state_dict):
        new_groups, index_of = self._loaded_groups(state_dict)
        entries, others = self._loaded_entries(state_dict, index_of)
        state = {}
        for i, key, entry in entries:
            state[self._ordered_params()[i]] = {k: _copy_value(v) for k, v in entry.items()}
        self._user_state.clear()
        self._user_state.update(state)
        self._user_state.update(others)
        self._set_groups(new_groups)

    def _set_groups(self, groups):
        self._param_groups[:] = groups
        self._dirty[0] = True

    def _loaded_groups(self, state_dict):
        """Validate a state_dict's groups: ``(new group dicts, saved parameter key -> index)``."""
        if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict \
                or "state" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' entries")
        arena = self.arena
        if arena.stale is not None:
            raise RuntimeError(f"{type(self).__name__} can no longer load state: {arena.stale}")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)}, optimizer has {len(self.param_groups)})")
        new_groups = []
        index_of = {}
        first = 0                       # the group's first parameter, in _ordered_params
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(f"loaded param group {g} is not a dict with a 'params' entry")
            saved_params = list(saved["params"])
            if len(saved_params) != len(group["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size "
                    f"of optimizer's group (group {g}: {len(saved_params)} saved, "
                    f"{len(group['params'])} in the optimizer)")
            for k, key in enumerate(saved_params):
                if key in index_of:
                    raise ValueError(f"loaded state dict lists parameter {key!r} twice")
                index_of[key] = first + k
            first += len(saved_params)
            new = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            for k, v in self._load_defaults.items():
                new.setdefault(k, v)
            for k, v in self._implementation_flags.items():
                new.setdefault(k, v)
            missing = [k for k in self.defaults if k not in new]
            if missing:
                raise ValueError(
                    f"loaded param group {g} has no {', '.join(map(repr, missing))}: "
                    f"was it saved from another optimizer than {type(self).__name__}?")
            check_group_flags(new, type(self).__name__, g, "loaded param group")
            self._check_group(new, index=g, where="loaded param group")
            new["params"] = list(group["params"])
            if "param_names" in group and "param_names" not in new:
                new["param_names"] = group["param_names"]
            new_groups.append(new)
        return new_groups, index_of

    @staticmethod
    def _loaded_entries(state_dict, index_of):
        """The state a state_dict holds, checked: ``([(index, saved key, entry)], others)``.

        ``index_of`` (from ``_loaded_groups``) maps saved parameter keys to indices;
        entries under other keys (torch keeps any key in ``state``) come back in ``others``.
        """
        saved = state_dict["state"]
        if not isinstance(saved, Mapping):
            raise ValueError("state_dict['state'] must be a dict")
        out = []
        others = {}
        for key, entry in saved.items():
            if key not in index_of:
                others[key] = copy.deepcopy(entry)
                continue
            if not isinstance(entry, Mapping):
                raise ValueError(f"loaded state of parameter {key!r} is not a dict")
            out.append((index_of[key], key, entry))
        return out, others


class _State(MutableMapping):
    """``opt.state``: ``state[p]`` for each parameter (created on access), and any other key."""

    def __init__(self, optimizer):
        self._opt = optimizer

    def _param(self, key):
        if isinstance(key, Parameter):
            if not self._opt._owns(key):
                raise KeyError(f"{key!r} is not a parameter of this {type(self._opt).__name__}")
            return True
        return False

    def __getitem__(self, key):
        if self._param(key):
            return self._opt._param_entry(key)
        return self._opt._user_state.setdefault(key, {})

    def __setitem__(self, key, value):
        if self._param(key):
            if not isinstance(value, Mapping):
                raise TypeError(f"the state of a parameter must be a dict, got {type(value).__name__}")
            self._opt._set_param_entry(key, value)
        else:
            self._opt._user_state[key] = value

    def __delitem__(self, key):
        if self._param(key):
            self._opt._set_param_entry(key, {})
        else:
            del self._opt._user_state[key]

    def __contains__(self, key):
        try:
            return self._opt._has_entry(key) if self._param(key) else key in self._opt._user_state
        except KeyError:
            return False

    def __iter__(self):
        opt = self._opt
        yield from opt._params_with_state()
        for key in list(opt._user_state):
            if not isinstance(key, Parameter):
                yield key

    def __len__(self):
        return sum(1 for _ in self)


def _copy_value(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)
