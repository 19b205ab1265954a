"""The checkpoint container: a safetensors file, written atomically, read with every
size checked before any tensor data is touched.

A checkpoint is a plain safetensors file (``safetensors.numpy.load_file`` opens it
without numbaopt); numbaopt's JSON description and checksum live in its header's
``__metadata__`` (a str -> str map; see ``numbaopt._checkpoint_digest``).

Writes to a path are atomic: a temporary file in the target's directory, written
here in safetensors' layout (see ``write``), fsync'ed, renamed over the target, the
directory fsync'ed.
Temporary files are named ``.<target>.<16 hex>.numbaopt-tmp`` and held under an
exclusive ``flock`` while written, so the next save to the same target removes
those whose writer died (a lock dies with its process, SIGKILL included) and never
one that a live writer holds. (On a file system without ``flock`` temporary files
are written unlocked and never removed by others.)

Paths are read by safetensors (``safe_open``, with ``pread``): it checks the header's
size and every member's offsets against the file's size when it opens it, before any
tensor is read. File objects are read here, by the same rules, in pieces, so a
stream that declares more than it holds costs no more memory than it holds; exactly
the checkpoint's bytes are read from the object's position.
"""

import contextlib
import errno
import json
import math
import os
import re
import secrets
import stat

import numpy as np

try:
    import fcntl
except ImportError:   # pragma: no cover - Windows: open files cannot be deleted there anyway
    fcntl = None

__all__ = ["write", "read", "Container", "MAX_HEADER", "DTYPES", "CODE_OF"]

#: safetensors' own limit on the JSON header (bytes).
MAX_HEADER = 100_000_000
_TMP_SUFFIX = ".numbaopt-tmp"

# safetensors' dtype codes for the dtypes numbaopt keeps (no bfloat16 in NumPy; safetensors
# has complex64 but no complex128, so numbaopt's own files store complex arrays as real pairs)
_CODES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
          "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_, "C64": np.complex64}
DTYPES = {code: np.dtype(t) for code, t in _CODES.items()}
CODE_OF = {dtype: code for code, dtype in DTYPES.items()}


# ---------------------------------------------------------------------------------- write
def write(target, tensors, metadata):
    """Write a safetensors file of ``tensors`` with ``metadata`` to a path (atomically)
    or to a writable binary file object.

    The bytes are safetensors' layout as its own serializer makes it (8-byte length,
    JSON header padded with spaces to 8 bytes, tensors ordered by item size then name
    so each is aligned), streamed from the arrays: safetensors' ``save`` builds the
    whole file in memory, and its ``save_file`` (0.8) writes a temporary file of its
    own and renames it, outside the lock, fsync and permissions kept here.
    """
    if "__metadata__" in tensors:
        raise ValueError("'__metadata__' cannot name a tensor in a safetensors file")
    order = sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))
    header, end = {}, 0
    for name in order:
        a = tensors[name]
        header[name] = {"dtype": CODE_OF[a.dtype.newbyteorder("=")],
                        "shape": [int(n) for n in a.shape], "data_offsets": [end, end + a.nbytes]}
        end += a.nbytes
    if metadata:
        header = {"__metadata__": dict(metadata), **header}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)          # the data starts 8-byte aligned
    pieces = [len(raw).to_bytes(8, "little") + raw]
    for name in order:
        a = tensors[name]
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)     # little-endian on disk
        if a.nbytes:
            pieces.append(memoryview(np.ascontiguousarray(a.reshape(-1))).cast("B"))
    if hasattr(target, "write"):
        name = _name(target)
        try:
            for piece in pieces:
                target.write(piece)
            flush = getattr(target, "flush", None)
            if flush is not None:
                flush()
        except OSError as exc:
            raise OSError(exc.errno, f"writing the checkpoint failed ({exc.strerror or exc})",
                          name) from None
        return
    _write_atomic(target, pieces)


def _name(target):
    name = getattr(target, "name", None)
    return repr(name) if isinstance(name, (str, bytes)) else repr(target)


def _write_atomic(path, pieces):
    path = os.fspath(path)
    real = os.path.realpath(path)          # a symlink's target is replaced, not the link
    directory, base = os.path.split(real)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "cannot save a checkpoint over a directory; "
                                "give a file name such as <dir>/ckpt.safetensors", path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: exists and is not a regular file ({_kind(st.st_mode)}); "
                         "a checkpoint replaces regular files only")
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "the directory to save the checkpoint in does "
                                "not exist", directory)
    remove_stale_temporaries(real)
    fd, tmp = _create_temporary(directory, base)
    try:
        if st is not None:
            os.fchmod(fd, stat.S_IMODE(st.st_mode))   # re-saving keeps the permissions
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view.nbytes:                    # os.write may write less than asked
                    view = view[os.write(fd, view):]
        except OSError as exc:   # ENOSPC, EFBIG (RLIMIT_FSIZE), EIO
            raise OSError(exc.errno, f"writing the checkpoint failed ({exc.strerror or exc}); "
                          "the previous file, if any, is intact", path) from None
        os.fsync(fd)
        os.replace(tmp, real)               # still under the lock: no cleaner races the rename
        tmp = None
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    _fsync_directory(directory)


def _create_temporary(directory, base):
    """``(fd, path)`` of a new temporary file for ``base``, locked against cleaners."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}{_TMP_SUFFIX}")
        try:
            fd = os.open(tmp, flags, 0o666)   # 0o666 & ~umask, like a plain open()
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:         # a cleaner holds it, and removes it
            os.close(fd)
            continue
        except OSError:                 # no flock on this file system: write it unlocked
            return fd, tmp
        try:   # a cleaner may have locked and removed it between our open and our lock
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        os.close(fd)
    raise FileExistsError(errno.EEXIST, "could not create a temporary file for the checkpoint",
                          os.path.join(directory, base))


def remove_stale_temporaries(real):
    """Remove the temporary files of saves to ``real`` whose writer died mid-write."""
    directory, base = os.path.split(real)
    pattern = re.compile(r"\." + re.escape(base) + r"\.[0-9a-f]{16}" + re.escape(_TMP_SUFFIX))
    try:
        names = [e.name for e in os.scandir(directory) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if fcntl is None:   # pragma: no cover - Windows refuses to delete an open file
            with contextlib.suppress(OSError):
                os.unlink(path)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK |
                         getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # fails while its writer lives
            if stat.S_ISREG(os.fstat(fd).st_mode) and \
                    os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _fsync_directory(directory):
    # Makes the rename itself durable. Not possible on Windows (directories can't be opened).
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kind(mode):
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


# ----------------------------------------------------------------------------------- read
class Container:
    """An opened safetensors file: ``metadata`` and ``specs`` (name -> (dtype, shape)) are
    known and checked against the file's size before ``read`` touches any tensor data."""

    def __init__(self, name, metadata, specs, reader, closer=None):
        self.name, self.metadata, self.specs = name, metadata, specs
        self._reader, self._closer = reader, closer

    def read(self, names):
        """``{name: ndarray}`` for ``names`` (fresh, writable arrays)."""
        out = {}
        for name in names:
            dtype, shape = self.specs[name]
            array = self._reader(name)
            if array.dtype != dtype or array.shape != shape:   # the header said otherwise
                raise self.bad(f"member {name!r} reads as {array.dtype}{list(array.shape)}, "
                               f"its header says {dtype}{list(shape)}")
            out[name] = array
        return out

    def bad(self, what):
        return ValueError(f"{self.name}: not a valid checkpoint: {what}")

    def close(self):
        if self._closer is not None:
            self._closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read(source):
    """The ``Container`` of a path or a readable binary file object (ValueError if none)."""
    if hasattr(source, "read"):
        return _read_stream(source)
    return _read_path(os.fspath(source))


def _read_path(path):
    # A concurrent save may rename a new file over ``path`` at any moment: the checks
    # here and safetensors' handle must see the same file (inode), else start again.
    for _ in range(10):
        handle = _open_checked(path)
        if handle is not None:
            break
    else:
        raise OSError(errno.EAGAIN, "the file kept being replaced while it was opened", path)
    return _container(path, handle)


def _open_checked(path):
    """safetensors' handle of ``path`` after numbaopt's own checks of that file, or None
    when the file was replaced in between."""
    from safetensors import safe_open

    def bad(what):
        return ValueError(f"{path}: not a valid checkpoint: {what}")

    st = os.stat(path)          # FileNotFoundError and PermissionError name the path already
    if not stat.S_ISREG(st.st_mode):          # refused before open(): a FIFO would block it
        raise bad(f"it is {_kind(st.st_mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise bad(f"it is {_kind(st.st_mode)}, not a regular file")
        if st.st_size < 8:
            raise bad("the file is empty" if st.st_size == 0 else
                      f"it is {st.st_size} bytes long, shorter than a safetensors header")
        head = os.pread(fd, 9, 0)   # refuse what is not safetensors before the parser sees it
        n = int.from_bytes(head[:8], "little")
        if n > MAX_HEADER or n + 8 > st.st_size:
            raise bad(f"its header declares {n} bytes, but the file holds {st.st_size - 8} "
                      "after the length" + _npz_hint(head))
        if head[8:9] != b"{":
            raise bad("its header is not a safetensors JSON header" + _npz_hint(head))
        try:
            try:   # pread: a file truncated under us is an error, not a SIGBUS
                handle = safe_open(path, framework="np", backend="pread")
            except TypeError:   # pragma: no cover - safetensors < 0.8 has mmap only
                handle = safe_open(path, framework="np")
        except Exception as exc:   # SafetensorError: the header failed safetensors' checks
            if isinstance(exc, OSError):
                raise
            raise bad(f"{_first_line(exc)}") from None
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return None     # safetensors may have opened the newer file; start again
        handle.__enter__()
        return handle
    finally:
        os.close(fd)


def _container(path, handle):
    def bad(what):
        return ValueError(f"{path}: not a valid checkpoint: {what}")

    try:
        metadata = handle.metadata() or {}
        specs = {}
        for name in handle.keys():
            sl = handle.get_slice(name)
            specs[name] = (_dtype(bad, name, sl.get_dtype()),
                           tuple(int(n) for n in sl.get_shape()))
    except Exception as exc:
        handle.__exit__(None, None, None)
        if isinstance(exc, ValueError):
            raise
        raise bad(_first_line(exc)) from None

    def reader(name):
        try:
            return handle.get_tensor(name)     # a fresh, writable array (read with pread)
        except Exception as exc:   # a file truncated or replaced in place while we read
            raise bad(f"member {name!r} could not be read ({_first_line(exc)})") from None

    return Container(path, metadata, specs, reader, lambda: handle.__exit__(None, None, None))


def _npz_hint(head):
    return " (it is a zip/.npz file: the format of numbaopt before safetensors)" \
        if head.startswith(b"PK\x03\x04") else ""


def _first_line(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _dtype(bad, name, code):
    dtype = DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise bad(f"member {name!r} has dtype {code}, which numbaopt does not read (NumPy has "
                  "no such dtype, or it is not a real number)")
    return dtype


def _read_stream(f):
    """A safetensors file read from a file object: the header parsed and checked here
    (the same rules as safetensors'), then exactly the bytes it declares."""
    name = _name(f)

    def bad(what):
        return ValueError(f"{name}: not a valid checkpoint: {what}")

    head = _read_exactly(f, 8)
    if len(head) < 8:
        raise bad("the stream is empty" if not head else "it ends inside the header length")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER:
        raise bad(f"its header declares {n} bytes, more than safetensors' limit of "
                  f"{MAX_HEADER}" + _npz_hint(head))
    header = _read_exactly(f, n)
    if len(header) < n:
        raise bad(f"its header declares {n} bytes, the stream ends after {len(header)}")
    if not header.startswith(b"{"):
        raise bad("its header is not a safetensors JSON header")
    try:
        table = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"its header is not JSON ({type(exc).__name__})") from None
    if not isinstance(table, dict):
        raise bad("its header is not a JSON object")
    metadata = table.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("its __metadata__ is not a map of strings to strings")
    specs, spans, offsets, end = {}, [], {}, 0
    for key, info in table.items():
        try:
            dtype = _dtype(bad, key, info["dtype"])
            shape = tuple(info["shape"])
            lo, hi = info["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in (*shape, lo, hi)):
                raise TypeError
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(name):
                raise
            raise bad(f"member {key!r} has a malformed header entry") from None
        if hi - lo != math.prod(shape) * dtype.itemsize:
            raise bad(f"member {key!r}: shape {list(shape)} of {dtype} needs "
                      f"{math.prod(shape) * dtype.itemsize} bytes, its offsets span {hi - lo}")
        specs[key] = (dtype, shape)
        spans.append((lo, hi, key))
        offsets[key] = lo
    for lo, hi, key in sorted(spans):
        if lo != end:
            raise bad(f"member {key!r} starts at byte {lo} of the data, expected {end} "
                      "(members must be contiguous)")
        end = hi
    payload = {}

    def reader(key):
        if not payload:
            data = _read_exactly(f, end)
            if len(data) < end:
                raise bad(f"it ends inside the tensor data ({len(data)} of {end} bytes)")
            payload["data"] = data
        dtype, shape = specs[key]
        array = np.frombuffer(payload["data"], dtype=dtype.newbyteorder("<"),
                              count=math.prod(shape), offset=offsets[key]).reshape(shape)
        return array if array.dtype == dtype else array.astype(dtype)   # big-endian hosts

    return Container(name, metadata, specs, reader)


def _read_exactly(f, n):
    """Up to ``n`` bytes of ``f``, read in pieces (a short stream never costs ``n`` bytes)."""
    out = bytearray()
    while len(out) < n:
        piece = f.read(min(n - len(out), 1 << 24))
        if not piece:
            break
        out += piece
    return out
