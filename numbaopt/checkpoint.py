"""Checkpoints without pickle: parameters, optimizer state and scheduler state in one .npz.

The file is a plain ``np.savez`` archive (read back with ``allow_pickle=False``):

- ``params``: the optimizer's arena (every parameter's value, group by group);
- ``state/<i>/<key>``: the arrays of ``optimizer.state_dict()["state"]``;
- ``meta``: UTF-8 JSON (as uint8) with the format version, the optimizer's class
  name, dtype, parameter shapes, group sizes, the param_groups without their
  parameters, the numbaopt version and ``scheduler.state_dict()``;
- ``sha256``: a SHA-256 digest of all of the above (names, dtypes, shapes, bytes).

A file is written to a temporary name in the target's directory, flushed and
fsync'ed, then renamed over the target (and the directory fsync'ed), so a crash
mid-write leaves the previous checkpoint whole. Loading checks the digest and
validates the whole file against the optimizer before anything changes.
"""

import contextlib
import hashlib
import hmac
import io
import json
import math
import os
import secrets
from collections import Counter

import numpy as np

__all__ = ["save", "load"]

FORMAT = "numbaopt.checkpoint"
FORMAT_VERSION = 1
_DIGEST_PREFIX = b"numbaopt.checkpoint/sha256/v1\0"

# JSON tags for what plain JSON cannot hold faithfully (tuples, non-string keys, inf/nan).
_TAGS = ("__tuple__", "__dict__", "__counter__", "__float__")


# ---------------------------------------------------------------------------- JSON values
def _encode(value, where):
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
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size <= 64:
        # a tensor hyperparameter (lr=np.asarray(1e-3)) or a small user state value
        return {"__ndarray__": [value.dtype.str, list(value.shape),
                                [_encode(v, where) for v in value.reshape(-1).tolist()]]}
    if isinstance(value, Counter):
        return {"__counter__": [[_encode(k, f"{where} key"), _encode(v, f"{where}[{k!r}]")]
                                for k, v in value.items()]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not (len(value) == 1 and
                                                           next(iter(value)) in _TAGS):
            return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"__dict__": [[_encode(k, f"{where} key"), _encode(v, f"{where}[{k!r}]")]
                             for k, v in value.items()]}
    what = "a callable" if callable(value) else f"a {type(value).__module__}." \
                                                f"{type(value).__qualname__}"
    raise TypeError(
        f"cannot save {where}: it is {what}. A numbaopt checkpoint holds no pickles, only "
        "None, bools, ints, floats, strings and lists, tuples and dicts of them (a "
        "scheduler's lr_lambda functions cannot be saved: recreate them in code)")


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == "__tuple__":
                return tuple(_decode(v) for v in inner)
            if tag == "__dict__":
                return {_decode_key(k): _decode(v) for k, v in inner}
            if tag == "__counter__":
                return Counter({_decode_key(k): _decode(v) for k, v in inner})
            if tag == "__float__":
                return float(inner)
            if tag == "__ndarray__":
                dtype, shape, data = inner
                return np.array([_decode(v) for v in data], dtype=np.dtype(dtype)).reshape(shape)
        return {k: _decode(v) for k, v in value.items()}
    return value


def _decode_key(key):
    key = _decode(key)
    return tuple(key) if isinstance(key, list) else key   # dict keys must be hashable


# -------------------------------------------------------------------------------- digest
def _digest(meta, arrays):
    """SHA-256 over the meta bytes and every array's name, dtype, shape and bytes."""
    h = hashlib.sha256(_DIGEST_PREFIX)
    h.update(len(meta).to_bytes(8, "little"))
    h.update(meta)
    for name in sorted(arrays):
        a = arrays[name]
        header = json.dumps([name, a.dtype.str, list(a.shape)]).encode()
        h.update(len(header).to_bytes(8, "little"))
        h.update(header)
        if a.size:
            h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.digest()


# ---------------------------------------------------------------------------------- save
def _check_optimizer(optimizer):
    if not isinstance(optimizer.arena.data, np.ndarray):
        raise NotImplementedError(
            "checkpoints support optimizers with device='cpu' (host arenas) only; this "
            f"arena's data is a {type(optimizer.arena.data).__name__}")
    stale = optimizer.arena.stale
    if stale is not None:
        raise RuntimeError(f"{type(optimizer).__name__} can no longer step: {stale}")
    reconcile = getattr(optimizer, "_reconcile", None)
    if reconcile is not None:
        reconcile("be saved")      # groups appended to param_groups are packed, as at step()


def save(path, optimizer, scheduler=None):
    """Write the optimizer's parameters and state (and the scheduler's) to ``path``, atomically.

    The file is written exactly at ``path`` (no suffix is added). A crash or an error
    while writing leaves any previous file at ``path`` intact.

    Parameters
    ----------
    path : str or os.PathLike
    optimizer : numbaopt.optim.Optimizer
    scheduler : lr_scheduler, optional
        Its ``state_dict()`` must hold only JSON-able values (TypeError otherwise).

    Examples
    --------
    >>> numbaopt.save("run/ckpt.npz", opt, sched)
    >>> numbaopt.load("run/ckpt.npz", opt, sched)    # in a fresh process, same model code
    """
    import numbaopt

    _check_optimizer(optimizer)
    _check_scheduler(optimizer, scheduler)
    arena = optimizer.arena
    sd = optimizer.state_dict()
    arrays = {"params": arena.data}
    state_keys = []
    other_state = {}
    for i, entry in sd["state"].items():
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            other_state[i] = entry          # torch keeps any key in state (opt.state["x"] = 1)
            continue
        keys, kinds = [], {}
        for key, value in entry.items():
            member = f"state/{int(i)}/{key}"
            if isinstance(value, (list, tuple)) and value and all(
                    v is None or isinstance(v, np.ndarray) for v in value):
                # LBFGS's history: a list of arrays (and Nones), one member per array
                kinds[key] = ["list", len(value), [j for j, v in enumerate(value) if v is None]]
                for j, v in enumerate(value):
                    if v is not None:
                        arrays[f"{member}/{j}"] = _state_array(v, f"state[{i}][{key!r}][{j}]")
            elif isinstance(value, np.ndarray):
                arrays[member] = _state_array(value, f"state[{i}][{key!r}]")
            else:
                kinds[key] = ["value", _encode(value, f"state[{i}][{key!r}]")]
            keys.append(key)
        state_keys.append([int(i), keys, kinds])
    groups = []
    for g, group in enumerate(sd["param_groups"]):
        groups.append(_encode(group, f"param_groups[{g}]"))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "numbaopt_version": getattr(numbaopt, "__version__", "unknown"),
        "optimizer": type(optimizer).__name__,
        "dtype": arena.dtype.name,
        "shapes": [list(p.shape) for p in arena.params],
        "group_sizes": [int(n) for n in np.diff(arena.group_offsets)],
        "param_groups": groups,
        "state": state_keys,
        "other_state": _encode(other_state, "state"),
        "scheduler": None if scheduler is None else {
            "class": type(scheduler).__name__,
            "state": _encode(scheduler.state_dict(), "scheduler.state_dict()"),
        },
    }
    meta_bytes = json.dumps(meta, allow_nan=False).encode("utf-8")
    arrays["meta"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    payload = {k: v for k, v in arrays.items() if k != "meta"}
    arrays["sha256"] = np.frombuffer(_digest(meta_bytes, payload), dtype=np.uint8)
    _write_atomic(path, arrays)


def _state_array(value, where):
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        raise TypeError(f"cannot save {where} of dtype {value.dtype}")
    return value


def _check_scheduler(optimizer, scheduler):
    if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("the scheduler schedules another optimizer than the one given")


def _write_atomic(path, arrays):
    path = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)   # 0o666 & ~umask, like a plain open()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file next to {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    # Makes the rename itself durable. Not possible on Windows (directories can't be opened).
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- load
def _read(path):
    """The checked ``(meta, arrays)`` of the file at ``path``; ValueError if it is not one."""
    def bad(what):
        return ValueError(f"{path}: not a valid numbaopt checkpoint: {what}")

    with open(path, "rb") as f:
        blob = f.read()
    if not blob.startswith(b"PK\x03\x04"):
        raise bad("not an .npz (zip) archive" + (" (the file is empty)" if not blob else ""))
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise bad(f"it holds a pickled object array, which is never loaded ({exc})") from None
        raise bad(f"truncated or corrupted ({exc})") from None
    except Exception as exc:   # zipfile, zlib, EOF, npy-header errors: all mean a broken file
        raise bad(f"truncated or corrupted ({type(exc).__name__}: {exc})") from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):   # np.load hands out non-.npy members as bytes
            raise bad(f"its entry {name!r} is not a NumPy array")
    for name in ("meta", "sha256", "params"):
        if name not in arrays:
            raise bad(f"it has no '{name}' entry")
    meta_arr, digest = arrays.pop("meta"), arrays.pop("sha256")
    if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1 or digest.dtype != np.uint8 \
            or digest.shape != (32,):
        raise bad("its 'meta' or 'sha256' entry has the wrong type")
    meta_bytes = meta_arr.tobytes()
    if not hmac.compare_digest(_digest(meta_bytes, arrays), digest.tobytes()):
        raise bad("SHA-256 checksum mismatch: the file was modified or corrupted after it "
                  "was written")
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"its metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad("its metadata does not name the numbaopt checkpoint format")
    if meta.get("format_version") != FORMAT_VERSION:
        raise bad(f"format version {meta.get('format_version')!r}; this numbaopt reads "
                  f"version {FORMAT_VERSION}")
    return meta, arrays


def load(path, optimizer, scheduler=None):
    """Restore parameters, optimizer state (and scheduler state) saved by :func:`save`.

    The file is checked (SHA-256) and validated against ``optimizer`` (class, dtype,
    groups, shapes) and ``scheduler`` before anything changes; a refused file raises
    ``ValueError`` naming ``path`` and leaves the optimizer, its parameters and the
    scheduler as they were. Nothing in the file is ever unpickled.

    Parameters
    ----------
    path : str or os.PathLike
    optimizer : numbaopt.optim.Optimizer
        Built over the same parameter shapes and groups as the saved one.
    scheduler : lr_scheduler, optional
        Pass it to restore the saved schedule (the file must hold the state of a
        scheduler of the same class); without it, saved scheduler state is ignored.

    Examples
    --------
    >>> opt = numbaopt.optim.Adam(params, lr=1e-3); sched = StepLR(opt, 10)
    >>> numbaopt.load("run/ckpt.npz", opt, sched)
    """
    path = os.fspath(path)
    _check_optimizer(optimizer)
    _check_scheduler(optimizer, scheduler)
    meta, arrays = _read(path)
    try:
        sd, sched_state = _validate(path, meta, arrays, optimizer, scheduler)
    except (TypeError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        # only a hand-made file with a valid digest gets here
        raise ValueError(f"{path}: malformed checkpoint metadata "
                         f"({type(exc).__name__}: {exc})") from None

    # Commit. load_state_dict validates everything itself before it changes anything;
    # the steps after it cannot fail on a validated file, but roll back if one does.
    arena = optimizer.arena
    backup_sd = optimizer.state_dict()
    backup_sched = scheduler.state_dict() if scheduler is not None else None
    backup_data = arena.data.copy()
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, TypeError, KeyError) as exc:    # refused before any change
        raise ValueError(f"{path}: {exc}") from None
    try:
        arena.data[:] = arrays["params"]
        if scheduler is not None:
            scheduler.load_state_dict(sched_state)
    except BaseException:
        arena.data[:] = backup_data
        optimizer.load_state_dict(backup_sd)
        if scheduler is not None:
            scheduler.load_state_dict(backup_sched)
        raise


def _validate(path, meta, arrays, optimizer, scheduler):
    """``(state_dict, scheduler_state)`` from a checked file, after matching it to the objects."""
    def bad(what):
        return ValueError(f"{path}: {what}")

    arena = optimizer.arena
    name = type(optimizer).__name__
    if meta.get("optimizer") != name:
        raise bad(f"the checkpoint holds the state of an optimizer of class "
                  f"{meta.get('optimizer')}, not {name}")
    if meta.get("dtype") != arena.dtype.name:
        raise bad(f"the checkpoint's parameters are {meta.get('dtype')}, the optimizer's are "
                  f"{arena.dtype.name}")
    sizes = [int(n) for n in np.diff(arena.group_offsets)]
    if meta.get("group_sizes") != sizes:
        raise bad(f"the checkpoint has parameter groups of sizes {meta.get('group_sizes')}, "
                  f"the optimizer {sizes}")
    shapes = [list(p.shape) for p in arena.params]
    saved_shapes = meta.get("shapes")
    if saved_shapes != shapes:
        if not isinstance(saved_shapes, list) or len(saved_shapes) != len(shapes):
            raise bad(f"the checkpoint's parameter shapes {saved_shapes} do not match the "
                      f"optimizer's {shapes}")
        i = next(i for i, (a, b) in enumerate(zip(saved_shapes, shapes)) if a != b)
        raise bad(f"parameter {i} has shape {tuple(saved_shapes[i])} in the checkpoint and "
                  f"{tuple(shapes[i])} in the optimizer")
    params = arrays["params"]
    if params.dtype != arena.dtype or params.shape != (arena.size,):
        raise bad(f"its 'params' entry is {params.dtype}{list(params.shape)}, expected "
                  f"{arena.dtype}[{arena.size}]")

    state = {}
    expected_names = {"params"}
    scalar_keys = {"step"} | set(getattr(optimizer, "_scalar_state", ()))
    shaped_keys = set(getattr(optimizer, "_state_keys", ()))   # others are the user's own
    # Optimizers whose load_state_dict checks every shape (the built-in ones; Adafactor's
    # and LBFGS's state is not shaped like the parameters) are trusted with it.
    check_shapes = not getattr(optimizer, "_validates_state_shapes", False)

    def member_array(member, where, want):
        if member not in arrays:
            raise bad(f"it lacks the array {member!r}")
        value = arrays[member]
        if want is not None and value.shape != want:
            raise bad(f"{where} has shape {value.shape}, expected {want}")
        if value.dtype.kind not in "biuf":
            raise bad(f"{where} has dtype {value.dtype}")
        expected_names.add(member)
        return value

    for entry in meta.get("state", []):
        try:
            i, keys = int(entry[0]), list(entry[1])
            kinds = dict(entry[2]) if len(entry) > 2 else {}
        except (TypeError, ValueError, IndexError):
            raise bad(f"malformed state listing {entry!r}") from None
        if not 0 <= i < len(arena):
            raise bad(f"state of parameter {i}, but the optimizer has {len(arena)} parameters")
        state[i] = {}
        for key in keys:
            member = f"state/{i}/{key}"
            where = f"state[{i}][{key!r}]"
            kind = kinds.get(key, ["array"])
            if not isinstance(kind, list) or not kind:
                raise bad(f"malformed state listing {entry!r}")
            if kind[0] == "value" and len(kind) == 2:
                state[i][key] = _decode(kind[1])
            elif kind[0] == "list" and len(kind) == 3 and isinstance(kind[1], int):
                nones = set(kind[2]) if isinstance(kind[2], list) else None
                if nones is None or kind[1] < 0:
                    raise bad(f"malformed state listing {entry!r}")
                state[i][key] = [None if j in nones else
                                 member_array(f"{member}/{j}", f"{where}[{j}]", None)
                                 for j in range(kind[1])]
            elif kind == ["array"]:
                # per-parameter scalars (step, NAdam's mu_product, ASGD's eta and mu) are 0-d
                want = () if key in scalar_keys else tuple(shapes[i])
                check = check_shapes and (key in scalar_keys or key in shaped_keys)
                state[i][key] = member_array(member, where, want if check else None)
            else:
                raise bad(f"malformed state listing {entry!r}")
    extra = sorted(set(arrays) - expected_names)
    if extra:
        raise bad(f"unexpected entries {extra}")
    groups = [_decode(g) for g in meta.get("param_groups", [])]
    if len(groups) != len(sizes) or not all(isinstance(g, dict) for g in groups):
        raise bad("its param_groups do not match its group sizes")
    other = _decode(meta.get("other_state", {}))
    if not isinstance(other, dict) or any(isinstance(k, int) for k in other):
        raise bad("malformed other_state")
    state.update(other)
    sd = {"state": state, "param_groups": groups}

    saved_sched = meta.get("scheduler")
    sched_state = None
    if scheduler is not None:
        sched_name = type(scheduler).__name__
        if saved_sched is None:
            raise bad(f"the checkpoint holds no scheduler state to load into the {sched_name}")
        if saved_sched.get("class") != sched_name:
            raise bad(f"the checkpoint holds the state of a scheduler of class "
                      f"{saved_sched.get('class')}, not {sched_name}")
        sched_state = _decode(saved_sched.get("state"))
        current = scheduler.state_dict()
        if not isinstance(sched_state, dict) or set(sched_state) != set(current):
            got = sorted(sched_state) if isinstance(sched_state, dict) else sched_state
            raise bad(f"the saved {sched_name} state has keys {got}, the scheduler "
                      f"{sorted(current)}")
    return sd, sched_state
