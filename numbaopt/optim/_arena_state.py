"""The state of an ArenaOptimizer in torch's terms, over the arena's buffers.

``ArenaStateMixin`` gives ``opt.state[p]`` (live views of the arena, plus any key the
user adds), the entries of ``state_dict()`` and the checks and staging of
``load_state_dict``, generic over an optimizer's ``_state_keys`` and ``_scalar_state``.
It is kept apart from ``arena_optimizer``, which holds the stepping.
"""

import math
from collections.abc import MutableMapping

import numpy as np

from .optimizer import _copy_value

__all__ = ["ArenaStateMixin"]


class ArenaStateMixin:
    """torch's per-parameter state over the arena (mixed into ``ArenaOptimizer``)."""

    def _param_state(self, i, group, copy, steps, scalars, buffers=None):
        """Parameter ``i``'s state dict (live views, or host copies), or None if it has none.

        ``steps`` and ``scalars`` are the host arrays of step counts and scalar state;
        ``buffers``, when given, host copies of the state buffers to slice the copies from.
        """
        arena = self.arena
        if steps[i] == 0 and not self._state_from_start:
            return None
        out = {}
        if self._step_in_state:
            out["step"] = np.array(steps[i], dtype=np.float32) if copy else arena.step_view(i)
        for k, key in enumerate(self._scalar_state):
            # torch keeps these as float32 tensors (its default scalar dtype)
            out[key] = np.array(scalars[i, k], dtype=np.float32)
        for key in self._state_keys:
            if key in self._group_state_keys(group):
                if buffers is not None:
                    out[key] = arena.view(buffers[key], i)
                else:
                    buf = arena.state[key]
                    out[key] = arena.param_to_host(buf, i) if copy else arena.view(buf, i)
        return out or None

    def _param_entry(self, p):
        return _ParamState(self, p)

    def _has_entry(self, p):
        return bool(self._live_entry(p._index)) or bool(self._user_state.get(p))

    def _params_with_state(self):
        arena = self.arena
        steps, scalars = arena.step_counts(), arena.scalar_values()   # one copy for all
        return [p for i, p in enumerate(arena.params)
                if self._param_state(i, self.param_groups[arena.param_group[i]], False, steps,
                                     scalars) or self._user_state.get(p)]

    def _live_entry(self, i):
        arena = self.arena
        return self._param_state(i, self.param_groups[arena.param_group[i]], False,
                                 arena.step_counts(), arena.scalar_values()) or {}

    def _arena_keys(self):
        return set(self._state_keys) | set(self._scalar_state) | (
            {"step"} if self._step_in_state else set())

    def _set_param_entry(self, p, value):
        # opt.state[p] = {...}: the user's keys are replaced, the arena's written through
        live = self._live_entry(p._index)
        dropped = [k for k in live if k not in value]
        if dropped:
            raise ValueError(
                f"cannot drop {sorted(dropped)} from the state of a {type(self).__name__} "
                "parameter: it lives in the arena. Set entries (opt.state[p][key] = value) or "
                "load a state_dict")
        arena_values = {k: v for k, v in value.items() if k in live}
        for key, v in arena_values.items():
            self._check_entry(p._index, key, v, live[key])
        for key, v in arena_values.items():
            self._write_entry(p._index, key, v, live[key])
        self._user_state[p] = {k: v for k, v in value.items() if k not in live}

    def _check_entry(self, i, key, value, view):
        shape = () if key == "step" or key in self._scalar_state else view.shape
        array = np.asarray(value)
        kinds = "iufc" if shape and self.arena.is_complex[i] else "iuf"
        if array.shape != shape or array.dtype.kind not in kinds or \
                not np.isfinite(array).all() or (key == "step" and float(array) < 0):
            raise ValueError(f"state '{key}' of parameter {i} must be a finite "
                             f"{'complex' if 'c' in kinds else 'real'} "
                             f"{'number' if shape == () else 'array of shape ' + str(shape)}, "
                             f"got {value!r}")

    def _write_entry(self, i, key, value, view):
        arena = self.arena
        if key == "step":
            steps = arena.step_counts().copy()
            steps[i] = float(np.asarray(value))
            self._write_steps(steps)
        elif key in self._scalar_state:
            k = self._scalar_state.index(key)
            if isinstance(arena.scalars, np.ndarray):
                arena.scalars[i, k] = float(np.asarray(value))
            else:
                scalars = np.array(arena.scalar_values(), dtype=np.float64)
                scalars[i, k] = float(np.asarray(value))
                arena.scalars = arena._adopt_scalars(scalars)
                self._dirty[0] = True     # the kernel arguments hold the scalar table
        elif isinstance(view, np.ndarray):
            np.copyto(view, np.asarray(value), casting="unsafe")
        else:
            arena._copy_into(view, np.asarray(value, dtype=view.dtype))

    def _write_steps(self, steps):
        arena = self.arena
        if isinstance(arena.step, np.ndarray):
            arena.step[:] = steps
        else:
            arena.step.copy_to_device(steps)

    def _saved_entries(self):
        with self._step_lock:               # not between the halves of a parallel step
            return self._saved_entries_unlocked()

    def _saved_entries_unlocked(self):
        arena = self.arena
        if isinstance(arena.data, np.ndarray):
            # step counts, scalar state and buffers copied in one compiled call, which a
            # serial step (it holds the GIL too) cannot interleave with
            from .._checkpoint_snapshot import _arena_copies
            _, steps, scalars, buffers = _arena_copies(self, data=False)
        else:
            steps, scalars, buffers = arena.step_counts(), arena.scalar_values(), None
        out = []
        for i, p in enumerate(arena.params):
            entry = self._param_state(i, self.param_groups[arena.param_group[i]], True, steps,
                                      scalars, buffers) or {}
            entry.update(_copied(self._user_state.get(p, {})))
            out.append(entry)
        return out

    def _load_state_dict(self, state_dict):
        self._staged_load(state_dict)()

    def _staged_load(self, state_dict):
        """Check ``state_dict`` and stage it; returns the function that commits it (which
        cannot fail), so that several lanes (``_mixed``) commit only when all are valid."""
        new_groups, index_of = self._loaded_groups(state_dict)
        arena = self.arena
        # Build the new state in fresh buffers; commit only when all of it is valid.
        step = np.zeros(len(arena), dtype=np.float64)
        scalars = np.zeros((len(arena), len(self._scalar_state)), dtype=np.float64)
        needed = set()
        for new in new_groups:
            needed.update(self._group_state_keys(new))
        buffers = {k: np.zeros(arena.size, arena.dtype) for k in self._state_keys if k in needed}
        self._fresh_state(buffers, new_groups)
        entries, others = self._loaded_entries(state_dict, index_of)
        user = dict(others)
        for i, key, entry in entries:
            extra = self._load_param_state(i, entry, new_groups[arena.param_group[i]], step,
                                           scalars, buffers, key)
            if extra:
                user[arena.params[i]] = extra

        def commit():
            arena.load(step, buffers, scalars)
            self._user_state.clear()
            self._user_state.update(user)
            self._set_groups(new_groups)
            self._sync()
        return commit

    def _fresh_state(self, buffers, groups):
        """Fill ``buffers`` with the state of parameters that have none saved (zeros by default)."""

    def _load_param_state(self, i, entry, group, step, scalars, buffers, key):
        """Check parameter ``i``'s saved entry and stage it; returns its other keys (copied).

        Keys the optimizer does not keep in the arena are kept as they are (torch
        keeps any key). An entry with none of the arena's keys is a parameter that
        has not stepped yet.
        """
        expected = set(self._state_keys) & set(self._group_state_keys(group))
        allowed = expected | set(self._scalar_state) | ({"step"} if self._step_in_state else set())
        unknown = (set(entry) & set(self._state_keys)) - expected
        if unknown:
            raise ValueError(
                f"loaded state of parameter {key!r} has unexpected keys {sorted(unknown)} for "
                f"{type(self).__name__} with these options (expected {sorted(allowed)})")
        extra = {k: _copy_value(v) for k, v in entry.items() if k not in allowed}
        if not (allowed & set(entry)) and not self._state_from_start:
            return extra
        missing = allowed - set(entry)
        if missing:
            raise ValueError(f"loaded state of parameter {key!r} lacks {sorted(missing)}")
        arena = self.arena
        shape = arena.params[i].shape
        if self._step_in_state:
            step[i] = _scalar(entry["step"], key, "step", non_negative=True)
        else:
            step[i] = 1.0   # a saved momentum buffer exists
        for k, name in enumerate(self._scalar_state):
            scalars[i, k] = _scalar(entry[name], key, name)
        kinds = "iufc" if arena.is_complex[i] else "iuf"
        for k in expected:
            value = np.asarray(entry[k])
            if value.shape != shape:
                raise ValueError(f"loaded '{k}' of parameter {key!r} has shape {value.shape}, "
                                 f"the parameter has shape {shape}")
            if value.dtype.kind not in kinds:
                raise ValueError(f"loaded '{k}' of parameter {key!r} has non-real dtype {value.dtype}")
            arena.view(buffers[k], i)[...] = value
        return extra


def _scalar(value, key, name, non_negative=False):
    s = np.asarray(value)
    if s.shape != () or s.dtype.kind not in "iuf" or not math.isfinite(float(s)) \
            or (non_negative and float(s) < 0):
        kind = "a non-negative" if non_negative else "a finite"
        raise ValueError(f"loaded '{name}' of parameter {key!r} must be {kind} number or "
                         f"0-d array, got {value!r}")
    return float(s)


def _copied(entry):
    return {k: _copy_value(v) for k, v in entry.items()}


class _ParamState(MutableMapping):
    """``opt.state[p]``: the arena's entries (live views; ``step`` as torch's float32) and
    any key the user added, which is kept and saved. Writing an arena entry copies into it."""

    def __init__(self, optimizer, p):
        self._opt = optimizer
        self._p = p

    def _user(self, create=False):
        store = self._opt._user_state
        return store.setdefault(self._p, {}) if create else store.get(self._p, {})

    def __getitem__(self, key):
        live = self._opt._live_entry(self._p._index)
        if key in live:
            value = live[key]
            return np.array(value, dtype=np.float32) if key == "step" else value
        return self._user()[key]

    def __setitem__(self, key, value):
        opt = self._opt
        i = self._p._index
        live = opt._live_entry(i)
        if key in live:
            opt._check_entry(i, key, value, live[key])
            opt._write_entry(i, key, value, live[key])
        elif key in opt._arena_keys():
            raise ValueError(f"parameter {i} has no {type(opt).__name__} state yet (it is "
                             f"created at its first step), so '{key}' cannot be set")
        else:
            self._user(create=True)[key] = value

    def __delitem__(self, key):
        if key in self._opt._live_entry(self._p._index):
            raise ValueError(f"cannot delete '{key}': it is {type(self._opt).__name__} state "
                             "kept in the arena")
        del self._user()[key]

    def __iter__(self):
        live = self._opt._live_entry(self._p._index)
        yield from live
        yield from (k for k in list(self._user()) if k not in live)

    def __len__(self):
        return sum(1 for _ in self)

    def __repr__(self):
        return repr(dict(self.items()))
