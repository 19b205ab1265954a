"""What every rank must agree on, and the errors that say who differs.

Every rank must build the same optimizer: the same parameters (layout, dtype,
groups), class, options and ``skip_nonfinite``, and the same ``shard``. All of it
is compared when a DistributedOptimizer is built (one ``allgather``). Afterwards
the options can change (a scheduler sets ``lr``, the user edits a group): a
64-bit digest of them rides along in every step's control Allreduce
(``control.py``), recomputed only when the optimizer rebuilt its hyperparameter
table, so a step where nothing changed costs no hashing and no extra collective.
"""

import hashlib
import zlib

import numpy as np

_SKIP_KEYS = ("params", "param_names")


def layout(arena):
    """A small summary of an arena's layout, equal on every rank when the layouts are."""
    return (arena.dtype.str, arena.size, len(arena),
            zlib.crc32(np.ascontiguousarray(arena.offsets, dtype=np.int64).tobytes()),
            zlib.crc32(np.ascontiguousarray(arena.param_group, dtype=np.int64).tobytes()))


def layout_error(everyone):
    """The ValueError for differing layouts (``everyone``: each rank's ``layout``), or None."""
    if all(other == everyone[0] for other in everyone):
        return None
    lines = "; ".join(f"rank {r}: {o[0]}, {o[2]} parameters, {o[1]} elements"
                      for r, o in enumerate(everyone))
    return ValueError("every rank must build its optimizer over the same parameters (shapes, "
                      f"dtype and groups, in the same order), but the arenas differ: {lines}")


def _canonical(value):
    """A string equal for values that step alike (1 and 1.0, a float and a 1-element array)."""
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        return repr(float(value))
    if isinstance(value, np.ndarray):
        if value.size == 1 and value.dtype.kind in "biuf":
            return repr(float(value.reshape(-1)[0]))
        data = np.ascontiguousarray(value)
        return f"array({data.dtype.str}, {data.shape}, crc32 {zlib.crc32(data.tobytes()):08x})"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_canonical(v) for v in value) + ")"
    if value is None or isinstance(value, str):
        return repr(value)
    return f"{type(value).__qualname__} {value!r}"


def describe(optimizer, skip_nonfinite):
    """What the ranks must agree on about an optimizer's options, as plain strings."""
    cls = type(optimizer)
    groups = []
    for group in optimizer.param_groups:
        groups.append({k: _canonical(v) for k, v in sorted(group.items())
                       if k not in _SKIP_KEYS})
    return {"class": f"{cls.__module__}.{cls.__qualname__}",
            "skip_nonfinite": bool(skip_nonfinite), "groups": groups}


def digest(description):
    """A nonzero 64-bit digest of ``describe``'s result, as 8 bytes."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(description).encode("utf-8"))
    out = h.digest()
    return out if out != bytes(8) else b"\x00" * 7 + b"\x01"   # 0 means "not checked"


def options_error(everyone):
    """The ValueError naming the first difference between the ranks' descriptions, or None."""
    first = everyone[0]
    for r, other in enumerate(everyone[1:], 1):
        if other == first:
            continue
        if other["class"] != first["class"]:
            what = f"the optimizer is {_short(first['class'])} on rank 0, {_short(other['class'])} on rank {r}"
        elif other["skip_nonfinite"] != first["skip_nonfinite"]:
            what = (f"skip_nonfinite is {first['skip_nonfinite']} on rank 0, "
                    f"{other['skip_nonfinite']} on rank {r}")
        elif len(other["groups"]) != len(first["groups"]):
            what = (f"rank 0 has {len(first['groups'])} param groups, rank {r} "
                    f"{len(other['groups'])}")
        else:
            what = _group_difference(first["groups"], other["groups"], r)
        return ValueError(
            f"every rank must use the same optimizer, options and skip_nonfinite, but {what}: "
            "the replicas would drift apart (set options on every rank, e.g. from one "
            "scheduler per rank, or broadcast them)")
    return None


def _group_difference(mine, theirs, r):
    for g, (a, b) in enumerate(zip(mine, theirs)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return (f"param group {g} has {key!r} = {a.get(key, '(missing)')} on rank 0 and "
                        f"{b.get(key, '(missing)')} on rank {r}")
    return "their options differ"


def _short(qualified):
    return qualified.rsplit(".", 1)[-1]


# -- what DistributedOptimizer wraps, and roots ----------------------------------------------
def check_supported(optimizer, shard):
    """Refuse what averaging the dense gradients once per step would get wrong."""
    from ..optim.elementwise import ElementwiseOptimizer
    from ..optim.lbfgs import LBFGS

    name = type(optimizer).__name__
    if isinstance(optimizer, LBFGS):
        raise NotImplementedError(
            "DistributedOptimizer does not wrap LBFGS: its step evaluates the closure several "
            "times, and each evaluation's gradient must be averaged (Allreduce opt.arena.grad "
            "inside the closure, then step LBFGS itself)")
    if getattr(optimizer.arena, "sparse_grads", None) is not None:
        raise NotImplementedError(
            f"DistributedOptimizer does not wrap {name}: its row-sparse gradients are not "
            "averaged across ranks")
    if shard and not isinstance(optimizer, ElementwiseOptimizer):
        raise NotImplementedError(
            f"shard=True needs an elementwise optimizer: each rank steps a slice of the arena, "
            f"and {name}'s update reads whole parameters; use shard=False")


def check_root(comm, root):
    if not isinstance(root, (int, np.integer)) or isinstance(root, bool) \
            or not 0 <= root < comm.Get_size():
        raise ValueError(f"root must be a rank in [0, {comm.Get_size()}), got {root!r}")




def check_group_dtype(param_group, dtype):
    """``param_group`` (its parameters listed) if they are all of ``dtype``: a group of a new
    dtype would give the wrapped optimizer a second arena, which the ranks' shards and
    collectives cannot take in."""
    from collections.abc import Iterator

    from ..optim._mixed import _dtypes_of
    if isinstance(param_group, dict) and isinstance(param_group.get("params"), Iterator):
        param_group = dict(param_group, params=list(param_group["params"]))
    if _dtypes_of(param_group) - {dtype}:
        raise NotImplementedError(
            "add_param_group of parameters of another dtype than the wrapped optimizer's "
            f"({dtype}) on a DistributedOptimizer: build the optimizer over every dtype "
            "before wrapping it")
    return param_group
