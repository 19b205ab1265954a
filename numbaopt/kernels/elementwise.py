"""What every elementwise rule shares: the step count, the chunk walk, the thread split.

A rule (see ``numbaopt.optim.elementwise``) is a few plain Python functions:

- ``coefficients(h, t, s, i, T)``: the chunk's scalars (a tuple), from the group's
  float64 hyperparameter row ``h``, the step count ``t``, the per-parameter
  scalar state ``s[i]`` and the element dtype ``T``. Called once per chunk.
- ``update(lo, hi, stride, k, param, grad, *buffers)``: the elements
  ``range(lo, hi, stride)`` of one chunk (``stride`` is 1 on the CPU, the block
  size on the GPU); ``k`` is the tuple from ``coefficients``, then one argument
  per state buffer, in ``_state_keys`` order.
- optional ``advance(h, t, s, i)``: writes row ``i`` of the scalar state after
  the step (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``).
- optional ``counts_step(hyper, g)``: whether a step of a parameter of group
  ``g`` counts (SGD counts only steps with momentum); default: always. It takes
  the whole table: it runs per parameter, where a row view would cost more than
  the test.

``Rule.cpu()`` binds them into the templates below and compiles two kernels
with one signature,

    kernel(param, grad, has_grad, step, group, hyper, chunks, scalars, *buffers)

serial (small arenas: no thread dispatch) and ``prange`` over chunks. The CUDA
kernel is built from the same functions in ``numbaopt.kernels.cuda``.

How a template becomes a rule's kernel, and why it caches: each template is
copied (``types.FunctionType``) with the rule's functions in its globals, and
the copy is compiled with ``@njit(cache=True)``. A copy's qualified name holds
the rule's name and a hash of the source files of its functions and of
``scalar.py``, so numba keeps one cache index per rule version: a second
process loads every kernel from disk and compiles nothing, and an edit to a
rule's module (which numba's own source stamp, taken from this file, would not
see) makes the next process compile the new math. Nothing passes a dispatcher
as an argument or captures one in a closure (numba issues #2065, #6264).

What keeps the loops fast (measured with benchmarks/): element loops run over
``range(uint64, uint64)`` (a signed index keeps LLVM from vectorizing), every
function is inlined at numba's IR level, so nothing per chunk passes an array
through a call (reference counting, ~40 ns a chunk), and the buffers are
separate arguments, never a tuple unpacked in a loop. The element loop is the
rule's own (``update`` takes a range, not an index): an inlined function with
array arguments called per element costs reference counting per element when
it branches, which also stops LLVM from vectorizing (measured: 3x).
"""

import functools
import hashlib
import inspect
import pathlib
import types

import numpy as np
from numba import njit, prange
from numba.core.dispatcher import Dispatcher

from . import scalar

__all__ = ["Rule"]

_OPTS = dict(cache=True, error_model="numpy")
_PARALLEL_OPTS = dict(cache=True, error_model="numpy", parallel=True)
_INLINE_OPTS = dict(error_model="numpy", inline="always")


# ------------------------------------------------------------------------- templates
# The state buffers are separate arguments: a tuple argument costs ~1 us in numba's
# dispatcher (it types tuples in Python), and unpacking one costs reference counting.
# The templates below are written for any number of buffers (``{args}``);
# ``templates(n)`` makes the n-buffer version, compiled in this file's name so numba's
# cache finds it. Global names that are not numba's or NumPy's (coefficients, update,
# count_steps, walk, advance_all, and counts_step and advance in the plain templates
# below) are bound per rule by Rule.cpu().

_TEMPLATES = """
def _walk(first, last, param, grad, has_grad, step, group, hyper, chunks, scalars{args}):
    # Reads grad; updates param and the state buffers in place over chunks first:last.
    T = param.dtype.type
    for c in range(first, last):
        i = chunks[c, 0]
        if not has_grad[i]:
            continue
        k = coefficients(hyper[group[i]], step[i], scalars, i, T)
        update(np.uint64(chunks[c, 1]), np.uint64(chunks[c, 2]), np.uint64(1), k, param,
               grad{args})


def _serial(param, grad, has_grad, step, group, hyper, chunks, scalars{args}):
    count_steps(has_grad, step, group, hyper)
    walk(0, chunks.shape[0], param, grad, has_grad, step, group, hyper, chunks, scalars{args})
    advance_all(has_grad, step, group, hyper, scalars)


def _parallel(param, grad, has_grad, step, group, hyper, chunks, scalars{args}):
    count_steps(has_grad, step, group, hyper)
    for c in prange(chunks.shape[0]):
        walk(c, c + 1, param, grad, has_grad, step, group, hyper, chunks, scalars{args})
    advance_all(has_grad, step, group, hyper, scalars)
"""


def _count_steps(has_grad, step, group, hyper):
    for i in range(has_grad.shape[0]):
        if has_grad[i] and counts_step(hyper, group[i]):  # noqa: F821
            step[i] += 1.0


def _count_all_steps(has_grad, step, group, hyper):
    for i in range(has_grad.shape[0]):
        if has_grad[i]:
            step[i] += 1.0


def _advance_all(has_grad, step, group, hyper, scalars):
    for i in range(has_grad.shape[0]):
        if has_grad[i]:
            advance(hyper[group[i]], step[i], scalars, i)  # noqa: F821


def _nothing_to_advance(has_grad, step, group, hyper, scalars):
    pass


_template_cache = {}


def templates(n, source=_TEMPLATES, env=None):
    """The templates in ``source`` for ``n`` state buffers, as plain functions (cached)."""
    key = (n, source)
    if key not in _template_cache:
        names = [f"s{k}" for k in range(n)]
        code = source.format(args="".join(", " + b for b in names))
        namespace = dict(globals() if env is None else env)
        exec(compile(code, __file__ if env is None else env["__file__"], "exec"), namespace)
        _template_cache[key] = namespace
    return _template_cache[key]


# ------------------------------------------------------------------------------ rules

def bind(template, namespace, qualname=None):
    """A copy of the function ``template`` whose global names ``namespace`` overrides."""
    env = dict(template.__globals__)
    env.update(namespace)
    copy = types.FunctionType(template.__code__, env, template.__name__,
                              template.__defaults__, template.__closure__)
    copy.__qualname__ = qualname or template.__qualname__
    copy.__doc__ = template.__doc__
    return copy


def twin(function, helpers=None, wrap=None):
    """``function`` with the ``@njit`` functions it calls by global name replaced, recursively.

    A scalar helper becomes its entry in ``helpers`` (``scalar.PYTHON_TWINS`` by
    default: NumPy twins, for numba's CUDA simulator), any other ``@njit``
    function the twin of its ``py_func``; ``wrap`` (e.g. a CUDA device-function
    decorator) is applied to every replacement.
    """
    helpers = scalar.PYTHON_TWINS if helpers is None else helpers
    wrap = wrap or (lambda f: f)
    env = {}
    for name in function.__code__.co_names:
        value = function.__globals__.get(name)
        if isinstance(value, Dispatcher):
            helper = helpers.get(value)
            env[name] = wrap(helper if helper is not None else
                             twin(value.py_func, helpers, wrap))
    return bind(function, env) if env else function


def python_twin(function):
    """``function`` runnable as Python on NumPy scalars (numba's CUDA simulator, references)."""
    return twin(function)


def _source_hash(functions):
    """A short hash of every source file compiled into a rule's kernels.

    That is the files of ``functions``, of the ``@njit`` functions they call by
    global name (recursively: a rule's helpers may live in another module), and
    of the scalar helpers.
    """
    digest = hashlib.sha256()
    files = {pathlib.Path(scalar.__file__)}
    seen = set()
    todo = list(functions)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        try:
            files.add(pathlib.Path(inspect.getsourcefile(f)))
        except (TypeError, OSError):   # e.g. an interactive session: hash the bytecode
            digest.update(f.__code__.co_code + repr(f.__code__.co_consts).encode())
        todo.extend(value.py_func for value in map(f.__globals__.get, f.__code__.co_names)
                    if isinstance(value, Dispatcher))
    for path in sorted(files):
        digest.update(_file_digest(path))
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _file_digest(path):
    # Every rule hashes scalar.py, and AdamW shares Adam's module: read each file once.
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return str(path).encode()


class Rule:
    """An elementwise algorithm: its plain-Python functions and its kernels on each backend.

    ``Rule(name, n_state, coefficients, update, advance=None, counts_step=None)``
    with ``n_state`` the number of state buffers;
    see the module docstring for what each function receives. ``cpu()`` gives the
    ``(serial, parallel)`` njit kernels, ``cuda()`` the CUDA launcher; both are
    built on first use and cached on disk by numba.
    """

    def __init__(self, name, n_state, coefficients, update, advance=None, counts_step=None):
        self.name = name
        self.n_state = int(n_state)
        self.coefficients = coefficients
        self.update = update
        self.advance = advance
        self.counts_step = counts_step
        given = [f for f in (coefficients, update, advance, counts_step) if f is not None]
        for f in given:
            if not isinstance(f, types.FunctionType):
                raise TypeError(f"rule {name!r}: {f!r} is not a plain Python function "
                                "(give the undecorated function; numbaopt compiles it)")
        self.tag = f"{_identifier(name)}_{_source_hash(given)}"
        self._cpu = None
        self._cuda = None

    def cpu(self):
        """``(serial, parallel)`` njit kernels of this rule."""
        if self._cpu is None:
            t = templates(self.n_state)
            inline = lambda f: njit(**_INLINE_OPTS)(f)   # noqa: E731
            env = {"coefficients": inline(self.coefficients), "update": inline(self.update)}
            if self.counts_step is None:
                env["count_steps"] = inline(_count_all_steps)
            else:
                env["counts_step"] = inline(self.counts_step)
                env["count_steps"] = inline(bind(_count_steps, env, f"_count_steps_{self.tag}"))
            env["walk"] = inline(bind(t["_walk"], env, f"_walk_{self.tag}"))
            if self.advance is None:
                env["advance_all"] = inline(_nothing_to_advance)
            else:
                env["advance"] = inline(self.advance)
                env["advance_all"] = inline(bind(_advance_all, env, f"_advance_all_{self.tag}"))
            self._cpu = (njit(**_OPTS)(bind(t["_serial"], env, f"_serial_{self.tag}")),
                         njit(**_PARALLEL_OPTS)(bind(t["_parallel"], env,
                                                     f"_parallel_{self.tag}")))
        return self._cpu

    def cuda(self):
        """The CUDA launcher of this rule (``numbaopt.kernels.cuda``; needs numba-cuda)."""
        if self._cuda is None:
            from . import cuda
            self._cuda = cuda.Launcher(self)
        return self._cuda

    def __repr__(self):
        return f"<numbaopt rule {self.name!r}>"


def _identifier(name):
    return "".join(ch if ch.isalnum() else "_" for ch in name)
