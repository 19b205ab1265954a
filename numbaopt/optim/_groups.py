"""The containers behind ``optimizer.param_groups``: every edit reaches the next step.

torch re-reads its plain dicts on every step. numbaopt's step is one compiled
call over a hyperparameter table, rebuilt only when something changed, so each
container here raises the optimizer's shared ``dirty`` flag on every mutation:

- ``ParamGroup``: one group. A ``MutableMapping`` rather than a ``dict``
  subclass, because ``dict``'s C methods (``dict.__setitem__(group, ...)``,
  ``dict.update(group, ...)``) would bypass any subclass; on a ParamGroup they
  raise ``TypeError`` at once. Lists given as option values (``betas=[0.9,
  0.99]``) are stored as tuples, as torch's defaults are, so nothing can be
  edited in place behind the flag.
- ``ParamList``: a group's ``"params"``; ``append``/``extend``/... raise the flag.
- ``ParamGroups``: ``param_groups`` itself; assigning, appending or extending
  wraps plain dicts into ParamGroups.

What the optimizer does with a change (re-read the options, grow the arena, or
refuse with a message) is decided at the next ``step()``, as in torch.
"""

import copy
from collections.abc import Mapping, MutableMapping

__all__ = ["ParamGroup", "ParamList", "ParamGroups", "DirtyFlag"]


class DirtyFlag(list):
    """The optimizer's one-element "groups changed" flag, mirrored into ``flags[0]``.

    Python reads ``flag[0]`` at list speed; compiled code (``numbaopt.compiled``)
    reads the int64 table ``flags``, which every write here keeps in step.
    """

    __slots__ = ("flags", "lr_only")

    def __init__(self, flags, value=True):
        super().__init__([bool(value)])
        self.flags = flags
        self.lr_only = False      # every change since the last sync set a group's "lr"
        flags[0] = bool(value)

    def __setitem__(self, index, value):
        list.__setitem__(self, index, bool(value))
        self.flags[0] = bool(value)
        self.lr_only = False

    def mark_lr(self):
        """A group's lr was set: a scheduler's step, which the optimizer re-reads cheaply."""
        if not self[0]:
            list.__setitem__(self, 0, True)
            self.flags[0] = True
            self.lr_only = True

    def __reduce__(self):
        return (DirtyFlag, (self.flags, self[0]))


def _stored(key, value, dirty):
    if key == "params":
        if isinstance(value, ParamList) and value._dirty is dirty:
            return value
        return ParamList(value, dirty)
    if isinstance(value, list) and key != "param_names":
        return tuple(value)
    return value


class ParamGroup(MutableMapping):
    """A parameter group: a mapping that tells its optimizer when it changes.

    Reads like torch's group dict (``group["lr"]``, ``group.items()``,
    ``group | {...}``, ``dict(group)``); any edit (``group["lr"] = 0.1``,
    ``group |= {...}``, ``update``, ``setdefault``, ``del``, ``pop``,
    ``group["params"].append(p)``) takes effect at the optimizer's next ``step()``.
    """

    __slots__ = ("_data", "_dirty")

    def __init__(self, items, dirty):
        self._dirty = dirty
        self._data = {key: _stored(key, value, dirty) for key, value in dict(items).items()}

    def __getitem__(self, key):
        return self._data[key]

    def __setitem__(self, key, value):
        self._data[key] = _stored(key, value, self._dirty)
        if key == "lr" and isinstance(self._dirty, DirtyFlag):
            self._dirty.mark_lr()
        else:
            self._dirty[0] = True

    def __delitem__(self, key):
        del self._data[key]
        self._dirty[0] = True

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __contains__(self, key):
        return key in self._data

    def get(self, key, default=None):
        return self._data.get(key, default)

    def keys(self):
        return self._data.keys()

    def values(self):
        return self._data.values()

    def items(self):
        return self._data.items()

    def clear(self):
        self._data.clear()
        self._dirty[0] = True

    def copy(self):
        """A plain dict with the same entries (the ``params`` list is shared, as ``dict.copy``)."""
        return dict(self._data)

    def __or__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        return {**self._data, **other}

    def __ror__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        return {**other, **self._data}

    def __ior__(self, other):
        self.update(other)
        return self

    def __eq__(self, other):
        if isinstance(other, ParamGroup):
            other = other._data
        return self._data == other if isinstance(other, Mapping) else NotImplemented

    __hash__ = None

    def __repr__(self):
        return repr(self._data)

    def __reduce__(self):
        return (ParamGroup, (self._data, self._dirty))

    def __deepcopy__(self, memo):
        return ParamGroup(copy.deepcopy(self._data, memo), copy.deepcopy(self._dirty, memo))


class ParamList(list):
    """A group's ``"params"`` list: adding or removing parameters raises the flag."""

    __slots__ = ("_dirty",)

    def __init__(self, items=(), dirty=None):
        super().__init__(items)
        self._dirty = [True] if dirty is None else dirty

    def __reduce__(self):
        return (ParamList, (list(self), self._dirty))


class ParamGroups(list):
    """``optimizer.param_groups``: a list whose edits raise the flag; dicts become ParamGroups."""

    __slots__ = ("_dirty",)

    def __init__(self, groups=(), dirty=None):
        self._dirty = [True] if dirty is None else dirty
        super().__init__(self._wrap(g) for g in groups)

    def _wrap(self, group):
        if isinstance(group, ParamGroup) and group._dirty is self._dirty:
            return group
        if not isinstance(group, Mapping):
            raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
        return ParamGroup(group.items(), self._dirty)

    def __setitem__(self, index, value):
        if isinstance(index, slice):
            value = [self._wrap(g) for g in value]
        else:
            value = self._wrap(value)
        super().__setitem__(index, value)
        self._dirty[0] = True

    def append(self, group):
        super().append(self._wrap(group))
        self._dirty[0] = True

    def insert(self, index, group):
        super().insert(index, self._wrap(group))
        self._dirty[0] = True

    def extend(self, groups):
        super().extend([self._wrap(g) for g in groups])
        self._dirty[0] = True

    def __iadd__(self, groups):
        self.extend(groups)
        return self

    def __reduce__(self):
        return (ParamGroups, (list(self), self._dirty))


def _flagging(name):
    def method(self, *args, **kwargs):
        out = getattr(list, name)(self, *args, **kwargs)
        self._dirty[0] = True
        return out
    method.__name__ = name
    return method


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend",
              "insert", "pop", "remove", "clear", "sort", "reverse"):
    setattr(ParamList, _name, _flagging(_name))
for _name in ("__delitem__", "__imul__", "pop", "remove", "clear", "sort", "reverse"):
    setattr(ParamGroups, _name, _flagging(_name))
