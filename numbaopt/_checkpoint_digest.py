"""Checksums of checkpoint files: what catches accidents, and (with a key) tampering.

The ``numbaopt.checksum`` metadata entry is a JSON object with:

- ``algorithm``: ``"sha256"``, or ``"hmac-sha256"`` for files saved with ``key=``;
- ``members``: per tensor, the SHA-256 of its name, dtype, shape and bytes (big
  tensors hashed in 16 MiB blocks, in threads: hashlib releases the GIL);
- ``header``: a digest (an HMAC under the key for ``hmac-sha256``) of the JSON
  description, of every member's name, dtype and shape and of the member digests.

The header is checked before any tensor is read, each member after it is read,
and a refusal names the member at fault. SHA-256 catches accidents (truncation,
bit flips, a tool that rewrote a member): anyone who edits a file can recompute
it, so only the HMAC, whose key a forger lacks, stands against tampering.
"""

import concurrent.futures
import hashlib
import hmac
import json
import os

import numpy as np

from ._checkpoint_format import CODE_OF

__all__ = ["CHECKSUM_KEY", "check_key", "checksum", "verify_header", "read_verified"]

CHECKSUM_KEY = "numbaopt.checksum"
_BLOCK = 16 << 20                     # bytes per hashed block
_PARALLEL_HASH = 64 << 20             # hash in threads from this many bytes on
_DIGEST_PREFIX = b"numbaopt.checkpoint/v2\0"


def _blocks(array):
    flat = memoryview(np.ascontiguousarray(array.reshape(-1)).view(np.uint8))
    return [flat[i:i + _BLOCK] for i in range(0, len(flat), _BLOCK)] or [flat]


def member_digests(tensors):
    """``{name: hex}``: SHA-256 of each tensor's name, dtype, shape and 16 MiB blocks.

    hashlib releases the GIL on big updates, so the blocks of a large checkpoint
    are hashed in threads.
    """
    jobs = [(name, block) for name, array in tensors.items() for block in _blocks(array)]
    total = sum(len(block) for _, block in jobs)
    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1)
    if total >= _PARALLEL_HASH and workers > 1 and len(jobs) > 1:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(lambda job: hashlib.sha256(job[1]).digest(), jobs))
    else:
        digests = [hashlib.sha256(block).digest() for _, block in jobs]
    out = {}
    k = 0
    for name, array in tensors.items():
        h = hashlib.sha256(_spec_bytes(name, array.dtype, array.shape))
        for _ in _blocks(array):
            h.update(digests[k])
            k += 1
        out[name] = h.hexdigest()
    return out


def _spec_bytes(name, dtype, shape):
    return json.dumps([name, CODE_OF[np.dtype(dtype)], [int(n) for n in shape]]).encode()


def header_digest(description, specs, members, key):
    """The digest of the JSON ``description``, every member's spec and its digest."""
    h = hmac.new(key, digestmod=hashlib.sha256) if key is not None else hashlib.sha256()
    h.update(_DIGEST_PREFIX)
    blob = description.encode("utf-8")
    h.update(len(blob).to_bytes(8, "little"))
    h.update(blob)
    for name in sorted(specs):
        dtype, shape = specs[name]
        spec = _spec_bytes(name, dtype, shape) + members[name].encode()
        h.update(len(spec).to_bytes(8, "little"))
        h.update(spec)
    return h.hexdigest()


def check_key(key):
    """``key`` as bytes (str is UTF-8 encoded); None stays None."""
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes or str, got {type(key).__name__}")
    key = bytes(key)
    if not key:
        raise ValueError("key must not be empty")
    return key


def checksum(description, tensors, key):
    """The ``numbaopt.checksum`` metadata entry for a file of ``tensors``."""
    members = member_digests(tensors)
    specs = {name: (a.dtype, a.shape) for name, a in tensors.items()}
    return json.dumps({"algorithm": "sha256" if key is None else "hmac-sha256",
                       "header": header_digest(description, specs, members, key),
                       "members": members}, sort_keys=True)


def verify_header(container, description_key, key, required=True):
    """The JSON description, after checking the header's checksum (or HMAC with ``key``)."""
    md = dict(container.metadata)
    description = md.pop(description_key, None)
    entry = md.pop(CHECKSUM_KEY, None)
    if description is None:
        if required:
            raise container.bad(f"its metadata has no {description_key!r} entry (a safetensors "
                                "file, but not one numbaopt wrote for this)")
        if key is not None:
            raise container.bad("it carries no HMAC, and key= was given")
        return None
    if md:
        raise container.bad(f"unexpected metadata entries {sorted(md)}")
    try:
        info = json.loads(entry)
        algorithm, header, members = info["algorithm"], info["header"], info["members"]
        if not isinstance(members, dict) or not all(
                isinstance(v, str) and v.isascii() for v in (header, *members.values())):
            raise TypeError
    except (TypeError, ValueError, KeyError, RecursionError):
        raise container.bad(f"its {CHECKSUM_KEY!r} metadata entry is missing or "
                            "malformed") from None
    if algorithm == "hmac-sha256" and key is None:
        raise container.bad("it is signed with an HMAC (saved with key=): pass the same key=")
    if algorithm == "sha256" and key is not None:
        raise container.bad("it carries no HMAC (it was saved without key=, or the HMAC was "
                            "stripped): refused because key= was given")
    if algorithm not in ("sha256", "hmac-sha256"):
        raise container.bad(f"unknown checksum algorithm {algorithm!r}")
    added, removed = set(container.specs) - set(members), set(members) - set(container.specs)
    if added or removed:
        raise container.bad(f"checksum mismatch: members {sorted(added)} were added and "
                            f"{sorted(removed)} removed after the file was written")
    expected = header_digest(description, container.specs, members, key)
    if not hmac.compare_digest(expected, str(header)):
        if key is not None:
            raise container.bad("HMAC-SHA256 mismatch: a wrong key, or the file was modified "
                                "after it was written")
        raise container.bad("SHA-256 checksum mismatch in the header: the metadata, or a "
                            "member's name, dtype or shape, changed after the file was written")
    container.member_digests = members
    return description


def read_verified(container, names):
    """The members ``names``, each checked against its checksum."""
    arrays = container.read(names)
    digests = member_digests(arrays)
    for name in names:
        if not hmac.compare_digest(digests[name], container.member_digests[name]):
            raise container.bad(f"SHA-256 checksum mismatch in member {name!r}: its data "
                                "changed after the file was written")
    return arrays
