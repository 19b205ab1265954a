"""Checkpoints without pickle: parameters, optimizer state and scheduler state in one
safetensors file, and parameter files by name that torch and JAX users open too.

``save(path, optimizer, scheduler=None, *, extra=None, key=None)`` writes:

- ``params``: the optimizer's arena (every parameter's value, group by group; for several
  dtypes, every parameter in float64);
- ``state/<i>/<key>``: the arrays of ``optimizer.state_dict()["state"]``, with the
  step counts as exact float64 0-d tensors (``state_dict()`` keeps torch's float32);
- in the header's metadata, ``numbaopt.checkpoint``: JSON with the format version,
  the optimizer's class, dtype, shapes, group sizes, the param_groups, the non-array
  state, ``scheduler.state_dict()`` and ``extra``; and ``numbaopt.checksum``.

The file is written from a snapshot (``numbaopt._checkpoint_snapshot``), atomically
(``numbaopt._checkpoint_format``). ``load`` checks the header (its checksum, then
every name, dtype and shape against the optimizer) before it reads any tensor, then
each tensor's checksum, and validates everything before anything changes.
"""

import json
from collections import namedtuple

import numpy as np

from . import _checkpoint_digest as digest
from . import _checkpoint_format as fmt
from ._checkpoint_json import decode, encode
from ._checkpoint_params import IncompatibleKeys, load_parameters, save_parameters
from ._checkpoint_snapshot import host_values, set_values, snapshot, values_dtype, values_size

__all__ = ["save", "load", "save_parameters", "load_parameters", "IncompatibleKeys"]

FORMAT = "numbaopt.checkpoint"
FORMAT_VERSION = 2


# ---------------------------------------------------------------------------------- save
def save(path, optimizer, scheduler=None, *, extra=None, key=None):
    """Write the optimizer's parameters and state (and the scheduler's) to ``path``.

    A path is written atomically: to a temporary file beside it, fsync'ed and renamed
    over it, so a crash (even SIGKILL) or an error mid-write leaves any previous file
    intact; the next save to the path removes a dead writer's temporary file. A
    re-saved file keeps its permissions. The file is written exactly at ``path`` (no
    suffix added) and is a plain safetensors file. What is written is a snapshot of
    the optimizer, copied in one go; the README's thread rules say when ``save`` may
    run while another thread steps.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        A file object (``io.BytesIO``, an open file) is written from its position,
        without the atomic rename.
    optimizer : numbaopt.optim.Optimizer
        ``device="cpu"`` or ``"cuda"`` (its state is copied to the host).
    scheduler : lr_scheduler, optional
        Its ``state_dict()`` must hold only JSON-able values (TypeError otherwise).
    extra : dict, optional
        JSON-able values of yours (epoch, best loss, ...), returned by :func:`load`.
    key : bytes or str, optional
        Sign the file with an HMAC-SHA256 under ``key``; :func:`load` then needs the key.
        Without it the file carries a SHA-256, which catches accidents (truncation,
        bit flips) but not tampering: anyone can recompute it. Use a key for files that
        cross a trust boundary.

    Examples
    --------
    >>> numbaopt.save("run/ckpt.safetensors", opt, sched, extra={"epoch": 3})
    >>> numbaopt.load("run/ckpt.safetensors", opt, sched)["epoch"]   # fresh process
    3
    """
    key = digest.check_key(key)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of JSON-able values, got {type(extra).__name__}")
    collective = getattr(optimizer, "_checkpoint_collective", None)
    if collective is not None:
        return _save_collective(optimizer, collective(), path, scheduler, extra, key)
    _check_optimizer(optimizer)
    _check_scheduler(optimizer, scheduler)
    params, sd = snapshot(optimizer)
    _write(path, optimizer, params, sd, scheduler, extra, key)


def _write(path, optimizer, params, sd, scheduler, extra, key):
    try:
        tensors, description = _describe(optimizer, params, sd, scheduler, extra)
    except RecursionError:
        raise TypeError("cannot save the optimizer's, the scheduler's or extra's values: "
                        "they nest too deeply (or contain themselves)") from None
    fmt.write(path, tensors, {FORMAT: description,
                              digest.CHECKSUM_KEY: digest.checksum(description, tensors, key)})


def _describe(optimizer, params, sd, scheduler, extra):
    """``(tensors, JSON description)`` of a snapshot."""
    import numbaopt

    tensors = {"params": params}
    state = []
    other_state = {}
    for i, entry in sd["state"].items():
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            other_state[i] = entry          # torch keeps any key in state (opt.state["x"] = 1)
            continue
        listing = []
        for k, value in entry.items():
            where = f"state[{i}][{k!r}]"
            member = _member_name(tensors, f"state/{int(i)}/{_quote(k)}")
            if isinstance(value, (list, tuple)) and value and all(
                    v is None or isinstance(v, np.ndarray) for v in value):
                # LBFGS's history: a list of arrays (and Nones), one member per array
                names = []
                for j, v in enumerate(value):
                    names.append(None if v is None else _member_name(tensors, f"{member}/{j}"))
                    if v is not None:
                        tensors[names[-1]] = _state_array(v, f"{where}[{j}]")
                kind = ["list", names]
            elif isinstance(value, np.ndarray) and value.dtype.kind == "c":
                # as torch's view_as_real: safetensors has no complex128
                tensors[member] = _state_array(_real_pairs(value), where)
                kind = ["complex", member]
            elif isinstance(value, np.ndarray):
                tensors[member] = _state_array(value, where)
                kind = ["array", member]
            else:
                kind = ["value", encode(value, where)]
            listing.append([encode(k, f"{where} key"), kind])
        state.append([int(i), listing])
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "numbaopt_version": getattr(numbaopt, "__version__", "unknown"),
        "optimizer": type(optimizer).__name__,
        "dtype": _dtype_name(optimizer),
        "shapes": [list(p.shape) for p in optimizer._ordered_params()],
        "group_sizes": [len(g["params"]) for g in optimizer._param_groups],
        "param_groups": [encode(g, f"param_groups[{n}]")
                         for n, g in enumerate(sd["param_groups"])],
        "state": state,
        "other_state": encode(other_state, "state"),
        "scheduler": None if scheduler is None else {
            "class": type(scheduler).__name__,
            "state": encode(scheduler.state_dict(), "scheduler.state_dict()"),
        },
        "extra": None if extra is None else encode(extra, "extra"),
    }
    return tensors, json.dumps(meta, allow_nan=False)


def _quote(key):
    return str(key).replace("%", "%25").replace("/", "%2F")


def _member_name(tensors, name):
    # a str key and an int key may quote alike ("1" and 1): the later one gets a suffix
    if name not in tensors:
        return name
    n = 2
    while f"{name}~{n}" in tensors:
        n += 1
    return f"{name}~{n}"


def _real_pairs(value):
    """A complex array as its real and imaginary parts on a last axis of 2 (view_as_real)."""
    value = np.ascontiguousarray(value)
    return value.view(value.real.dtype).reshape(value.shape + (2,))


def _state_array(value, where):
    value = np.asarray(value)
    if value.dtype.newbyteorder("=") not in fmt.CODE_OF or value.dtype.kind == "c":
        raise TypeError(f"cannot save {where} of dtype {value.dtype}: a checkpoint holds "
                        "real and complex numbers (complex ones as a top-level state entry, "
                        "not inside a list) and bools only")
    return value.astype(value.dtype.newbyteorder("="), copy=False)


def _dtype_name(optimizer):
    """The file's ``dtype``: the arena's, or every parameter's for several dtypes."""
    if getattr(optimizer, "_lanes", None) is None:
        return optimizer.arena.dtype.name
    return "mixed:" + ",".join(p.dtype.name for p in optimizer._ordered_params())


def _check_optimizer(optimizer):
    if getattr(optimizer, "_lanes", None) is not None:
        for lane in optimizer._lanes:
            _check_optimizer(lane)
        optimizer._reconcile("be saved")
        return
    data = optimizer.arena.data
    if not isinstance(data, np.ndarray) and not hasattr(data, "copy_to_host"):
        raise NotImplementedError(
            "checkpoints support optimizers with device='cpu' or device='cuda' arenas; this "
            f"arena's data is a {type(data).__name__}")
    stale = optimizer.arena.stale
    if stale is not None:
        raise RuntimeError(f"{type(optimizer).__name__} can no longer step: {stale}")
    reconcile = getattr(optimizer, "_reconcile", None)
    if reconcile is not None:
        reconcile("be saved")      # groups appended to param_groups are packed, as at step()


def _check_scheduler(optimizer, scheduler):
    if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("the scheduler schedules another optimizer than the one given")


# ---------------------------------------------------------------------------------- load
def load(path, optimizer, scheduler=None, *, key=None):
    """Restore parameters, optimizer state (and scheduler state) saved by :func:`save`.

    The header is checked (checksum, then every member's name, dtype and shape
    against ``optimizer``) before any tensor is read, so a file of another model, or
    one that declares more data than it holds, is refused without reading it; then
    each member's checksum. A refused file raises ``ValueError`` naming the file and
    the member at fault, and leaves the optimizer, its parameters and the scheduler
    as they were. Nothing in the file is ever unpickled. Not to be called while
    another thread steps the optimizer.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        A regular file (a directory, FIFO or device is refused at once).
    optimizer : numbaopt.optim.Optimizer
        Built over the same parameter shapes and groups as the saved one, on any device.
    scheduler : lr_scheduler, optional
        Pass it to restore the saved schedule (the file must hold the state of a
        scheduler of the same class); without it, saved scheduler state is ignored.
    key : bytes or str, optional
        The key the file was signed with (``save(..., key=)``). A signed file needs
        it, and with a key an unsigned file is refused.

    Returns
    -------
    dict
        The ``extra`` given to :func:`save` (empty if none).

    Examples
    --------
    >>> opt = numbaopt.optim.Adam(params, lr=1e-3); sched = StepLR(opt, 10)
    >>> extra = numbaopt.load("run/ckpt.safetensors", opt, sched)
    """
    key = digest.check_key(key)
    collective = getattr(optimizer, "_checkpoint_collective", None)
    if collective is not None:
        return _load_collective(optimizer, collective(), path, scheduler, key)
    _check_optimizer(optimizer)
    _check_scheduler(optimizer, scheduler)
    params, sd, sched_state, extra, name = _read_checked(path, optimizer, scheduler, key)
    _commit(name, optimizer, params, sd, scheduler, sched_state)
    return extra


def _read_checked(path, optimizer, scheduler, key):
    """``(params, state_dict, scheduler_state, extra, name)`` from a checked file."""
    with fmt.read(path) as container:
        description = digest.verify_header(container, FORMAT, key)
        try:
            meta = json.loads(description)
        except (ValueError, RecursionError) as exc:
            raise container.bad(f"its metadata is not JSON ({type(exc).__name__})") from None
        try:
            plan = _plan(container, meta, optimizer, scheduler)
        except (TypeError, AttributeError, KeyError, IndexError, ValueError,
                RecursionError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(str(container.name)):
                raise
            # only a hand-made file with a valid checksum gets here
            raise ValueError(f"{container.name}: malformed checkpoint metadata "
                             f"({type(exc).__name__}: {exc})") from None
        arrays = digest.read_verified(container, plan.members)
    sd = {"state": _fill(plan.state, arrays), "param_groups": plan.groups}
    return arrays["params"], sd, plan.scheduler, plan.extra, container.name


_Plan = namedtuple("_Plan", "members state groups scheduler extra")


def _plan(container, meta, optimizer, scheduler):
    """Check the description and the members' specs against the objects, before any read."""
    def bad(what):
        return ValueError(f"{container.name}: {what}")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise container.bad("its metadata does not name the numbaopt checkpoint format")
    if meta.get("format_version") != FORMAT_VERSION:
        raise container.bad(f"format version {meta.get('format_version')!r}; this numbaopt "
                            f"reads version {FORMAT_VERSION}")
    name = type(optimizer).__name__
    if meta["optimizer"] != name:
        raise bad(f"the checkpoint holds the state of an optimizer of class "
                  f"{meta['optimizer']}, not {name}")
    if meta["dtype"] != _dtype_name(optimizer):
        raise bad(f"the checkpoint's parameters are {meta['dtype']}, the optimizer's are "
                  f"{_dtype_name(optimizer)}")
    ordered = optimizer._ordered_params()
    sizes = [len(g["params"]) for g in optimizer._param_groups]
    if meta["group_sizes"] != sizes:
        raise bad(f"the checkpoint has parameter groups of sizes {meta['group_sizes']}, "
                  f"the optimizer {sizes}")
    shapes = [list(p.shape) for p in ordered]
    saved_shapes = meta["shapes"]
    if saved_shapes != shapes:
        if not isinstance(saved_shapes, list) or len(saved_shapes) != len(shapes):
            raise bad(f"the checkpoint's parameter shapes {saved_shapes} do not match the "
                      f"optimizer's {shapes}")
        i = next(i for i, (a, b) in enumerate(zip(saved_shapes, shapes)) if a != b)
        raise bad(f"parameter {i} has shape {tuple(saved_shapes[i])} in the checkpoint and "
                  f"{tuple(shapes[i])} in the optimizer")

    specs = container.specs
    used = set()

    def member(name, where, shape=None, dtype=None):
        if not isinstance(name, str) or name not in specs:
            raise bad(f"{where} is stored in member {name!r}, which the file lacks")
        if name in used:
            raise bad(f"member {name!r} is listed twice")
        have_dtype, have_shape = specs[name]
        if dtype is not None and have_dtype != dtype:
            raise bad(f"member {name!r} ({where}) is {have_dtype}, expected {dtype}")
        if shape is not None and have_shape != tuple(shape):
            raise bad(f"member {name!r} ({where}) has shape {have_shape}, expected "
                      f"{tuple(shape)}")
        used.add(name)
        return _Member(name)

    member("params", "the parameters", (values_size(optimizer),), values_dtype(optimizer))
    scalar_keys = {"step"} | set(getattr(optimizer, "_scalar_state", ()))
    shaped_keys = set(getattr(optimizer, "_state_keys", ()))   # others are the user's own
    # Optimizers whose load_state_dict checks every shape (LBFGS, Adafactor: their state
    # is not shaped like the parameters) are trusted with it.
    check_shapes = not getattr(optimizer, "_validates_state_shapes", False)
    state = {}
    for entry in meta["state"]:
        i, listing = entry
        if not isinstance(i, int) or not 0 <= i < len(ordered):
            raise bad(f"state of parameter {i!r}, but the optimizer has {len(ordered)} parameters")
        if i in state:
            raise bad(f"the state of parameter {i} is listed twice")
        state[i] = {}
        for k, kind in listing:
            k = decode(k)
            where = f"state[{i}][{k!r}]"
            if kind[0] in ("array", "complex") and len(kind) == 2:
                want = None
                if check_shapes and k in scalar_keys:
                    want = ()                        # step and NAdam's mu_product are 0-d
                elif check_shapes and k in shaped_keys:
                    want = shapes[i]
                if kind[0] == "array":
                    state[i][k] = member(kind[1], where, want)
                    continue
                # real pairs on a last axis of 2, read back as complex
                name_ = member(kind[1], where, None if want is None else list(want) + [2])
                have_dtype, have_shape = specs[name_]
                if have_dtype.kind != "f" or have_dtype.itemsize < 4 or have_shape[-1:] != (2,):
                    raise bad(f"member {name_!r} ({where}) is {have_dtype}{list(have_shape)}, "
                              "expected float32 or float64 real pairs (a last axis of 2)")
                state[i][k] = _ComplexMember(name_)
            elif kind[0] == "list" and len(kind) == 2 and isinstance(kind[1], list):
                # (as long as the JSON list: bounded by the header, as all of the metadata)
                state[i][k] = [None if m is None else member(m, f"{where}[{j}]")
                               for j, m in enumerate(kind[1])]
            elif kind[0] == "value" and len(kind) == 2:
                state[i][k] = decode(kind[1])
            else:
                raise bad(f"malformed state listing of parameter {i}: {kind!r}")
    unexpected = sorted(set(specs) - used)
    if unexpected:
        raise bad(f"unexpected members {unexpected}")
    groups = [decode(g) for g in meta["param_groups"]]
    if len(groups) != len(sizes) or not all(isinstance(g, dict) for g in groups):
        raise bad("its param_groups do not match its group sizes")
    other = decode(meta["other_state"])
    if not isinstance(other, dict) or any(isinstance(k, int) for k in other):
        raise bad("malformed other_state")
    state.update(other)
    extra = decode(meta["extra"]) if meta["extra"] is not None else {}
    if not isinstance(extra, dict):
        raise bad("malformed extra")
    return _Plan(sorted(used), state, groups, _scheduler_state(bad, meta, scheduler), extra)


class _Member(str):
    """A placeholder in the planned state for the array of a member, filled after reading."""


class _ComplexMember(_Member):
    """A member holding a complex array as real pairs (see ``_real_pairs``)."""


def _fill(state, arrays):
    def fill(value):
        if isinstance(value, _ComplexMember):
            pairs = np.ascontiguousarray(arrays[value])
            return pairs.view(np.result_type(pairs.dtype, np.complex64)).reshape(pairs.shape[:-1])
        if isinstance(value, _Member):
            return arrays[value]
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value
    return {i: {k: fill(v) for k, v in entry.items()} if isinstance(i, int) else entry
            for i, entry in state.items()}


def _scheduler_state(bad, meta, scheduler):
    saved = meta["scheduler"]
    if scheduler is None:
        return None
    name = type(scheduler).__name__
    if saved is None:
        raise bad(f"the checkpoint holds no scheduler state to load into the {name}")
    if saved["class"] != name:
        raise bad(f"the checkpoint holds the state of a scheduler of class {saved['class']}, "
                  f"not {name}")
    state = decode(saved["state"])
    current = scheduler.state_dict()
    if not isinstance(state, dict) or set(state) != set(current):
        got = sorted(state) if isinstance(state, dict) else state
        raise bad(f"the saved {name} state has keys {got}, the scheduler {sorted(current)}")
    return state


def _commit(name, optimizer, params, sd, scheduler, sched_state):
    """Load a validated file's contents. load_state_dict validates everything itself
    before it changes anything; the steps after it cannot fail on a validated file,
    but are rolled back if one does."""
    backup_sd = optimizer.state_dict()
    backup_sched = scheduler.state_dict() if scheduler is not None else None
    backup_data = host_values(optimizer)
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, TypeError, KeyError) as exc:    # refused before any change
        raise ValueError(f"{name}: {exc}") from None
    try:
        set_values(optimizer, params)
        if scheduler is not None:
            scheduler.load_state_dict(sched_state)
    except BaseException:
        set_values(optimizer, backup_data)
        optimizer.load_state_dict(backup_sd)
        if scheduler is not None:
            scheduler.load_state_dict(backup_sched)
        raise


# ------------------------------------------------------------------ distributed writers
def _save_collective(optimizer, ctx, path, scheduler, extra, key):
    """save() through ``optimizer._checkpoint_collective()``: every rank calls it, one
    writes; an error on the writer is raised on every rank (``ctx.agree``)."""
    _check_scheduler(optimizer, scheduler)
    error = None
    try:
        snap = ctx.snapshot()              # collective; the writer's copy, None elsewhere
        if ctx.writer:
            _check_optimizer(ctx.optimizer)
            _write(path, ctx.optimizer, *snap, scheduler, extra, key)
    except Exception as exc:
        error = exc
    ctx.agree(error)
    if error is not None:                  # a rank other than the writer failed alone
        raise error


def _load_collective(optimizer, ctx, path, scheduler, key):
    """load() through ``optimizer._checkpoint_collective()``: one rank reads and checks
    the file, ``ctx.load`` hands every rank its state, or every rank raises."""
    _check_scheduler(optimizer, scheduler)
    error, loaded, sched_state, extra = None, None, None, None
    if ctx.writer:
        try:
            _check_optimizer(ctx.optimizer)
            params, sd, sched_state, extra, _ = _read_checked(path, ctx.optimizer, scheduler,
                                                              key)
            loaded = (params, sd)
        except Exception as exc:
            error = exc
    ctx.agree(error)
    ctx.load(loaded)
    sched_state, extra = ctx.bcast((sched_state, extra))
    if scheduler is not None:
        scheduler.load_state_dict(sched_state)
    return extra
