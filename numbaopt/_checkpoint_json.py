"""JSON for checkpoint metadata: the values torch's state_dicts hold that plain JSON
cannot hold faithfully (tuples, non-string keys, inf and nan, small arrays, Counters)
travel as tagged objects; anything else (a function, an object) is a TypeError
naming where it was found. Nothing is ever pickled.
"""

import math
from collections import Counter

import numpy as np

__all__ = ["encode", "decode"]

# JSON tags for what plain JSON cannot hold faithfully (tuples, non-string keys, inf/nan).
_TAGS = ("__tuple__", "__dict__", "__counter__", "__float__", "__ndarray__")


# ---------------------------------------------------------------------------- JSON values
def encode(value, where):
    """``value`` as JSON-ready data; TypeError naming ``where`` for anything JSON can't hold."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, list):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size <= 64:
        # a tensor hyperparameter (lr=np.asarray(1e-3)) or a small user state value
        return {"__ndarray__": [value.dtype.str, list(value.shape),
                                [encode(v, where) for v in value.reshape(-1).tolist()]]}
    if isinstance(value, Counter):
        return {"__counter__": [[encode(k, f"{where} key"), encode(v, f"{where}[{k!r}]")]
                                for k, v in value.items()]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not (len(value) == 1 and
                                                           next(iter(value)) in _TAGS):
            return {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"__dict__": [[encode(k, f"{where} key"), encode(v, f"{where}[{k!r}]")]
                             for k, v in value.items()]}
    what = "a callable" if callable(value) else f"a {type(value).__module__}." \
                                                f"{type(value).__qualname__}"
    raise TypeError(
        f"cannot save {where}: it is {what}. A numbaopt checkpoint holds no pickles, only "
        "None, bools, ints, floats, strings, small arrays and lists, tuples and dicts of "
        "them (a scheduler's lr_lambda functions cannot be saved: recreate them in code)")


def decode(value):
    """The value ``encode`` made ``value`` from (TypeError/ValueError on a malformed one)."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "__tuple__":
                return tuple(decode(v) for v in inner)
            if tag == "__dict__":
                return {_decode_key(k): decode(v) for k, v in inner}
            if tag == "__counter__":
                return Counter({_decode_key(k): decode(v) for k, v in inner})
            if tag == "__float__":
                return float(inner)
            if tag == "__ndarray__":
                dtype, shape, data = inner
                return np.array([decode(v) for v in data], dtype=np.dtype(dtype)).reshape(shape)
        return {k: decode(v) for k, v in value.items()}
    return value


def _decode_key(key):
    key = decode(key)
    return tuple(key) if isinstance(key, list) else key   # dict keys must be hashable
