"""Parameter files: values alone, by name, in a plain safetensors file that torch and
JAX users open with ``safetensors.torch`` / ``safetensors.numpy`` (``{name: tensor}``).

Names come from ``Module.named_parameters()``, from an optimizer's ``param_names``
(groups built from named parameters, as torch's), or are ``"0"``, ``"1"``, ... in
order. The file carries numbaopt's checksum (or HMAC) in its metadata, which other
readers ignore; files without it (written by torch or JAX) load too.
"""

import json
from collections import namedtuple

import numpy as np

from . import _checkpoint_digest as digest
from . import _checkpoint_format as fmt
from ._checkpoint_snapshot import _gather

__all__ = ["save_parameters", "load_parameters", "IncompatibleKeys"]

PARAMETERS = "numbaopt.parameters"

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _named_parameters(target):
    """``[(name, Parameter)]`` of a Module, optimizer, mapping, Parameter or list."""
    from .parameter import Parameter

    if isinstance(target, Parameter):
        pairs = [("0", target)]
    elif hasattr(target, "named_parameters"):
        pairs = list(target.named_parameters())
    elif hasattr(target, "param_groups"):
        groups = target.param_groups
        params = [p for g in groups for p in g["params"]]
        if groups and all("param_names" in g for g in groups):
            names = [n for g in groups for n in g["param_names"]]
        else:
            names = [str(i) for i in range(len(params))]
        pairs = list(zip(names, params))
    elif isinstance(target, dict):
        pairs = list(target.items())
    else:
        items = list(target)
        pairs = [item if isinstance(item, tuple) else (str(i), item)
                 for i, item in enumerate(items)]
    seen = set()
    for name, p in pairs:
        if not isinstance(name, str) or not isinstance(p, Parameter):
            raise TypeError(f"expected Parameters named by strings, got {name!r}: "
                            f"{type(p).__name__}")
        if name in seen:
            raise ValueError(f"two parameters are named {name!r}")
        seen.add(name)
    return pairs


def save_parameters(path, params, *, key=None):
    """Write parameter values alone, by name, as a plain safetensors file.

    A torch or JAX user opens it with ``safetensors.torch.load_file`` /
    ``safetensors.numpy.load_file`` (``{name: tensor}``). Names come from
    ``Module.named_parameters()``, from the optimizer's ``param_names`` (groups built
    from named parameters), or are ``"0"``, ``"1"``, ... in order. Written
    atomically, with the same checksum (or HMAC with ``key=``) as :func:`save`.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
    params : Module, optimizer, dict of name to Parameter, Parameter or list of Parameters
    key : bytes or str, optional

    Examples
    --------
    >>> numbaopt.save_parameters("model.safetensors", model)
    >>> safetensors.torch.load_file("model.safetensors")["fc.weight"].shape
    """
    import numbaopt

    key = digest.check_key(key)
    pairs = _named_parameters(params)
    arena = getattr(params, "arena", None)
    if arena is not None and isinstance(arena.data, np.ndarray):
        # an optimizer: its values in one go (a step in another thread cannot tear them)
        data = np.empty(arena.data.nbytes, np.uint8)
        _gather((arena.data.view(np.uint8),), data, np.zeros(1, np.int64))
        data = data.view(arena.dtype)
        tensors = {n: arena.view(data, p._index) if p._arena is arena else np.array(p.numpy())
                   for n, p in pairs}
    else:
        tensors = {n: np.array(p.numpy()) for n, p in pairs}
    # safetensors has complex64 (torch opens it as a complex tensor) but no complex128:
    # those are stored as torch's view_as_real pairs and named in the description
    pairs128 = [n for n, a in tensors.items() if a.dtype == np.complex128]
    for n in pairs128:
        tensors[n] = np.ascontiguousarray(tensors[n]).view(np.float64).reshape(
            tensors[n].shape + (2,))
    description = json.dumps({"format": PARAMETERS, "format_version": 1,
                              "numbaopt_version": numbaopt.__version__,
                              "names": [n for n, _ in pairs], "complex128_as_pairs": pairs128})
    fmt.write(path, tensors, {PARAMETERS: description,
                              digest.CHECKSUM_KEY: digest.checksum(description, tensors, key)})


def load_parameters(path, params, *, strict=True, key=None):
    """Read parameter values by name from a safetensors file into ``params``.

    Any safetensors file of real arrays works (one torch or JAX wrote too); a file
    from :func:`save_parameters` has its checksum checked (its HMAC with ``key=``).
    Names, shapes and dtypes are checked before any tensor is read, and nothing
    changes unless everything fits. Values are cast to each parameter's dtype
    (within a kind, as torch's ``copy_``: float64 into float32 rounds).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
    params : Module, optimizer, dict of name to Parameter, Parameter or list of Parameters
    strict : bool, default True
        Refuse (ValueError) a file whose names differ from the parameters'. With
        False the common names are loaded and the others reported.
    key : bytes or str, optional

    Returns
    -------
    IncompatibleKeys
        ``(missing_keys, unexpected_keys)``, as torch's ``load_state_dict``.
    """
    key = digest.check_key(key)
    pairs = _named_parameters(params)
    with fmt.read(path) as container:
        digest.verify_header(container, PARAMETERS, key, required=False)
        have = set(container.specs)
        missing = [n for n, _ in pairs if n not in have]
        names = {n for n, _ in pairs}
        unexpected = sorted(have - names)
        if strict and (missing or unexpected):
            raise ValueError(f"{container.name}: the file's parameter names do not match: "
                             f"missing {missing}, unexpected {unexpected}")
        as_pairs = set(_complex128_pairs(container))
        for n, p in pairs:
            if n not in have:
                continue
            dtype, shape = container.specs[n]
            if n in as_pairs:
                if dtype != np.float64 or shape[-1:] != (2,):
                    raise ValueError(f"{container.name}: member {n!r} is {dtype}{list(shape)}, "
                                     "not the complex128 pairs its description says")
                dtype, shape = np.dtype(np.complex128), shape[:-1]
            if shape != tuple(p.shape):
                raise ValueError(f"{container.name}: member {n!r} has shape {shape}, the "
                                 f"parameter {tuple(p.shape)}")
            if not np.can_cast(dtype, p.dtype, "same_kind"):
                raise ValueError(f"{container.name}: member {n!r} is {dtype}, which does not "
                                 f"cast to the parameter's {p.dtype}")
        wanted = [n for n, _ in pairs if n in have]
        if hasattr(container, "member_digests"):
            arrays = digest.read_verified(container, wanted)
        else:
            arrays = container.read(wanted)
    for n in as_pairs & set(arrays):
        arrays[n] = np.ascontiguousarray(arrays[n]).view(np.complex128).reshape(
            arrays[n].shape[:-1])
    for n, p in pairs:
        if n in arrays:
            p.data = arrays[n].astype(p.dtype, copy=False)
    return IncompatibleKeys(missing, unexpected)


def _complex128_pairs(container):
    """The names a save_parameters file stores as complex128 real pairs (none in others')."""
    description = container.metadata.get(PARAMETERS) if container.metadata else None
    if description is None:
        return []
    try:
        names = json.loads(description).get("complex128_as_pairs", [])
    except (ValueError, AttributeError):
        raise ValueError(f"{container.name}: malformed numbaopt parameters description") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{container.name}: malformed numbaopt parameters description")
    return names
