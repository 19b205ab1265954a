"""LBFGS's state as torch shows and saves it, apart from the iteration (``numbaopt.optim.lbfgs``).

The read-only ``opt.state`` view, the ``state_dict`` entry, ``load_state_dict``'s checks, and
the history ring rebuilt from host vectors (after a load, or a new ``history_size``).
"""

from types import MappingProxyType

import numpy as np


class LBFGSStateMixin:
    """torch's LBFGS state over the ring buffers of ``LBFGS._reset_state`` (part of ``LBFGS``)."""

    # torch's view of ``state``: the optimizer's state is that of its first parameter, read-only
    # copies here (the history lives in the ring buffers). Other keys work as in torch.
    def _param_entry(self, p):
        return MappingProxyType(self._state_entry() if p is self._params[0] else {})

    def _has_entry(self, p):
        return p is self._params[0] and bool(self._state_entry())

    def _set_param_entry(self, p, value):
        raise TypeError("LBFGS keeps its state in its own history buffers: opt.state[p] is "
                        "read-only; load a state_dict to change it")

    def _state_entry(self):
        if self._func_evals is None:
            return {}
        out = {"func_evals": self._func_evals, "n_iter": self._n_iter}
        if not self._started:
            return out
        T = self._T
        host = self._passes.to_host
        out["d"] = host(self._d)
        out["t"] = self._t
        out["old_dirs"] = [host(self._y(r)) for r in self._order]
        out["old_stps"] = [host(self._s(r)) for r in self._order]
        out["ro"] = [np.array(self._rho[r], dtype=T) for r in self._order]
        out["H_diag"] = self._H_diag if isinstance(self._H_diag, int) else np.array(self._H_diag, T)
        out["prev_flat_grad"] = host(self._prev)
        out["prev_loss"] = self._prev_loss
        if self._al is not None:
            out["al"] = [None if a is None else np.array(a, dtype=T) for a in self._al]
        return out

    def _saved_entries(self):
        # torch's format: the whole state under the first parameter (copies)
        return [self._state_entry()] + [{} for _ in self._params[1:]]

    def _load_state_dict(self, state_dict):
        # Validated completely before anything changes; arrays are copied in. The
        # Gram table of the stored pairs is recomputed from them.
        new_groups, index_of = self._loaded_groups(state_dict)
        entry = {}
        entries, others = self._loaded_entries(state_dict, index_of)
        for i, key, value in entries:
            if value and i != 0:
                raise ValueError(f"LBFGS keeps its state under its first parameter; the loaded "
                                 f"state is under parameter {key!r}")
            entry = value
        loaded = self._parse_state(entry, new_groups[0])
        self._set_groups(new_groups)
        self._user_state.clear()
        self._user_state.update(others)
        self._reset_state()
        self.__dict__.update(loaded.pop("attrs"))
        S, Y = loaded["S"], loaded["Y"]
        m = len(S)
        self._set_history(S, Y, loaded["rho"])
        if loaded["d"] is not None:
            self._passes.copy(self._d, loaded["d"])
            self._passes.copy(self._prev, loaded["prev"])

    def _parse_state(self, entry, group):
        """The loaded state as host arrays and scalars, after checking every value."""
        n, T = self.arena.size, self._T
        known = {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
                 "prev_flat_grad", "prev_loss", "al"}
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"loaded LBFGS state has unexpected keys {sorted(unknown)}")

        def count(name):
            v = np.asarray(entry[name])
            if v.shape != () or v.dtype.kind not in "iuf" or not float(v) >= 0 \
                    or float(v) != int(v):
                raise ValueError(f"loaded LBFGS '{name}' must be a non-negative integer, "
                                 f"got {entry[name]!r}")
            return int(v)

        def vector(name, value):
            v = np.asarray(value)
            if v.dtype.kind not in "iuf" or v.size != n or v.ndim != 1:
                raise ValueError(f"loaded LBFGS '{name}' must be a real vector of {n} "
                                 f"elements (the parameters' size), got shape {v.shape} "
                                 f"dtype {v.dtype}")
            return v.astype(self.arena.dtype)

        def scalar(name, value):
            v = np.asarray(value)
            if v.shape != () or v.dtype.kind not in "iuf":
                raise ValueError(f"loaded LBFGS '{name}' must be a number, got {value!r}")
            return float(v)

        attrs = {}
        if not entry:
            return {"attrs": attrs, "S": [], "Y": [], "d": None, "prev": None, "rho": []}
        for name in ("func_evals", "n_iter"):
            if name not in entry:
                raise ValueError(f"loaded LBFGS state lacks '{name}'")
        attrs["_func_evals"], attrs["_n_iter"] = count("func_evals"), count("n_iter")
        tensors = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad",
                   "prev_loss")
        present = [k for k in tensors if k in entry]
        if not present:
            return {"attrs": attrs, "S": [], "Y": [], "d": None, "prev": None, "rho": []}
        missing = [k for k in tensors if k not in entry]
        if missing:
            raise ValueError(f"loaded LBFGS state lacks {missing}")
        dirs, stps, ro = entry["old_dirs"], entry["old_stps"], entry["ro"]
        for name, v in (("old_dirs", dirs), ("old_stps", stps), ("ro", ro)):
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"loaded LBFGS '{name}' must be a list, got {type(v).__name__}")
        if not len(dirs) == len(stps) == len(ro):
            raise ValueError("loaded LBFGS 'old_dirs', 'old_stps' and 'ro' differ in length "
                             f"({len(dirs)}, {len(stps)}, {len(ro)})")
        if len(dirs) > group["history_size"]:
            raise ValueError(f"loaded LBFGS history holds {len(dirs)} pairs, more than "
                             f"history_size={group['history_size']}")
        Y = [vector("old_dirs", v) for v in dirs]
        S = [vector("old_stps", v) for v in stps]
        rho = [float(T(scalar("ro", v))) for v in ro]
        H_diag = entry["H_diag"]
        if isinstance(H_diag, (int, np.integer)) and not isinstance(H_diag, bool):
            H_diag = int(H_diag)
        else:
            H_diag = float(T(scalar("H_diag", H_diag)))
        al = entry.get("al")
        if al is not None:
            if not isinstance(al, (list, tuple)) or len(al) != group["history_size"]:
                raise ValueError("loaded LBFGS 'al' must be a list of history_size entries")
            al = [None if a is None else float(T(scalar("al", a))) for a in al]
        t = entry["t"]
        t = scalar("t", t) if not isinstance(t, float) else t
        prev_loss = entry["prev_loss"]
        prev_loss = scalar("prev_loss", prev_loss) if not isinstance(prev_loss, float) else prev_loss
        attrs.update(_started=True, _t=t, _H_diag=H_diag, _prev_loss=prev_loss, _al=al)
        return {"attrs": attrs, "S": S, "Y": Y, "rho": rho,
                "d": vector("d", entry["d"]), "prev": vector("prev_flat_grad", entry["prev_flat_grad"])}

    def _set_history(self, S, Y, rho):
        """Stored pairs from host vectors (oldest first), and their Gram table by BLAS."""
        m = len(S)
        for r in range(m):
            self._passes.copy(self._s(r), S[r])
            self._passes.copy(self._y(r), Y[r])
        self._order = list(range(m))
        self._rho[:m] = rho
        self._SY[:] = 0
        self._YY[:] = 0
        if m:
            S, Y = np.array(S, dtype=np.float64), np.array(Y, dtype=np.float64)
            self._SY[:m, :m] = S @ Y.T
            self._YY[:m, :m] = Y @ Y.T

    def _resize_history(self, H):
        """A new ``history_size``: keep the newest pairs that fit.

        torch has nothing to match: its ``al`` list keeps the old length, and the next
        recursion over a longer history raises IndexError.
        """
        keep = self._order[-H:]
        state = {k: getattr(self, k) for k in ("_func_evals", "_n_iter", "_started", "_t",
                                               "_H_diag", "_prev_loss", "_al")}
        host = self._passes.to_host
        S, Y = [host(self._s(r)) for r in keep], [host(self._y(r)) for r in keep]
        rho = self._rho[keep].copy()
        d, prev = host(self._d), host(self._prev)
        self._reset_state(H)
        self.__dict__.update(state)
        if self._al is not None:
            self._al = (self._al + [None] * H)[:H]
        self._set_history(S, Y, rho)
        self._passes.copy(self._d, d)
        self._passes.copy(self._prev, prev)
