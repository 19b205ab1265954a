"""numbaopt.save/load against the audit's probes: broken and hostile files, files that are
not files, writers that crash, are killed or run out of disk, and threads.

Each refusal must be a ValueError (or OSError for the disk) naming the file and, where
there is one, the member at fault, leave the optimizer as it was, and never allocate
more than the file holds.
"""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import numbaopt
from numbaopt import optim
from numbaopt.checkpoint import load, save

pytest.importorskip("safetensors")
from safetensors.numpy import save_file                 # noqa: E402

from test_checkpoint import (_unchanged, assert_same, make, members_of, rewrite,  # noqa: E402
                             snapshot, train)

P = numbaopt.Parameter
ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture
def ckpt(tmp_path):
    (tmp_path / "run").mkdir()
    return tmp_path / "run" / "model.ckpt"


def _saved(ckpt, case="adam_amsgrad", shapes=None):
    kwargs = {} if shapes is None else {"shapes": shapes}
    params, opt = make(case, **kwargs)
    train(params, opt, 3)
    save(ckpt, opt)
    params2, opt2 = make(case, seed=11, **kwargs)
    train(params2, opt2, 1)
    return params2, opt2


def _refused(source, opt, params, match="not a valid checkpoint"):
    unchanged = _unchanged(params, opt)
    with pytest.raises(ValueError, match=match) as info:
        load(source, opt)
    unchanged()
    return str(info.value)


def _both(blob, path):
    """The same bytes as a path and as a stream."""
    path.write_bytes(blob)
    return [path, io.BytesIO(blob)]


# -- broken files ----------------------------------------------------------------------------
def test_truncation_at_many_offsets_is_refused(ckpt):
    params2, opt2 = _saved(ckpt)
    blob = ckpt.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    cuts = sorted({0, 1, 7, 8, 9, 100, n, n + 7, n + 8, n + 9, len(blob) - 1, len(blob) - 8}
                  | set(np.linspace(0, len(blob) - 1, 40).astype(int).tolist()))
    for cut in cuts:
        for source in _both(blob[:cut], ckpt):
            message = _refused(source, opt2, params2)
            assert (str(ckpt) in message) if isinstance(source, pathlib.Path) else \
                "BytesIO" in message


def test_every_flipped_bit_is_refused(ckpt):
    # header (lengths, JSON, names, dtypes, offsets, metadata, checksums) and payload
    shapes = ((2, 3), (), (0,), (2,), (1, 2))
    params2, opt2 = _saved(ckpt, shapes=shapes)
    blob = bytearray(ckpt.read_bytes())
    n = int.from_bytes(blob[:8], "little")
    rng = np.random.default_rng(0)
    positions = list(range(8)) + rng.choice(np.arange(8, n + 8), 120, replace=False).tolist() \
        + rng.choice(np.arange(n + 8, len(blob)), 60, replace=False).tolist()
    before = snapshot(params2, opt2)
    for i in positions:
        bit = 1 << int(rng.integers(8))
        blob[i] ^= bit
        for source in _both(bytes(blob), ckpt):
            with pytest.raises(ValueError):
                load(source, opt2)
        blob[i] ^= bit
    assert_same(before, snapshot(params2, opt2))


def test_edits_without_the_checksum_are_refused_naming_the_part(ckpt):
    params2, opt2 = _saved(ckpt)
    good = ckpt.read_bytes()
    rewrite(ckpt, arrays=lambda t: t["state/3/exp_avg"].__setitem__(0, 123.0), recompute=False)
    _refused(ckpt, opt2, params2, r"checksum mismatch in member 'state/3/exp_avg'")
    ckpt.write_bytes(good)
    rewrite(ckpt, meta=lambda m: m["param_groups"][0].update(lr=5.0), recompute=False)
    _refused(ckpt, opt2, params2, "checksum mismatch in the header")
    ckpt.write_bytes(good)
    rewrite(ckpt, arrays=lambda t: t.__setitem__("params", t["params"].astype(np.float32)),
            recompute=False)
    _refused(ckpt, opt2, params2, "checksum mismatch in the header")
    ckpt.write_bytes(good)
    tensors, md = members_of(ckpt)
    save_file(tensors, ckpt, metadata=dict(md, note="hi"))
    _refused(ckpt, opt2, params2, r"unexpected metadata entries \['note'\]")
    save_file(tensors, ckpt, metadata={"numbaopt.checkpoint": md["numbaopt.checkpoint"]})
    _refused(ckpt, opt2, params2, "'numbaopt.checksum' metadata entry is missing")
    save_file(tensors, ckpt)
    _refused(ckpt, opt2, params2, "no 'numbaopt.checkpoint' entry")


@pytest.mark.parametrize("forge, match", [
    (dict(arrays=lambda t: t.__setitem__("extra", np.zeros(3))), r"unexpected members \['extra'\]"),
    (dict(arrays=lambda t: t.pop("state/0/exp_avg")),
     r"state\[0\]\['exp_avg'\] is stored in member 'state/0/exp_avg', which the file lacks"),
    (dict(arrays=lambda t: t.__setitem__("state/0/exp_avg", np.zeros(12))),
     r"member 'state/0/exp_avg' \(state\[0\]\['exp_avg'\]\) has shape \(12,\), expected \(3, 4\)"),
    (dict(arrays=lambda t: t.__setitem__("params", t["params"].astype(np.float32))),
     "member 'params' .* is float32, expected float64"),
    (dict(arrays=lambda t: t.__setitem__("state/0/step", np.zeros(2))),
     r"member 'state/0/step' .* has shape \(2,\), expected \(\)"),
    (dict(meta=lambda m: m["state"][0][1][0][1].__setitem__(1, "state/1/exp_avg")),
     "member 'state/1/exp_avg' is listed twice"),
    (dict(meta=lambda m: m["state"].append(m["state"][0])), "state of parameter 0 is listed twice"),
    (dict(meta=lambda m: m.update(format_version=3)), "format version 3"),
    (dict(meta=lambda m: m.update(format="other")), "does not name the numbaopt checkpoint"),
], ids=["extra", "missing", "shape", "dtype", "step-shape", "reused", "twice", "version",
        "format"])
def test_forged_members_with_a_recomputed_checksum_are_refused(forge, match, ckpt):
    params2, opt2 = _saved(ckpt)
    rewrite(ckpt, **forge)
    _refused(ckpt, opt2, params2, f"{ckpt}: .*{match}")


def test_malformed_metadata_with_a_valid_checksum_is_a_value_error(ckpt):
    params2, opt2 = _saved(ckpt)
    good = ckpt.read_bytes()
    for edit in (lambda m: m.update(state=5), lambda m: m.update(state=[["x", 1]]),
                 lambda m: m.update(param_groups=[1, 2]), lambda m: m.update(state=[[99, []]]),
                 lambda m: m.pop("shapes"), lambda m: m.update(extra=[1]),
                 lambda m: m["state"][0][1][0].__setitem__(1, ["array"]),
                 lambda m: m.update(other_state={"__ndarray__": ["<f8", [10 ** 12], [1.0]]})):
        ckpt.write_bytes(good)
        rewrite(ckpt, meta=edit)
        _refused(ckpt, opt2, params2, str(ckpt))


def test_what_is_not_safetensors_is_refused_and_never_executed(ckpt, tmp_path):
    import pickle
    params2, opt2 = _saved(ckpt)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    npz = io.BytesIO()
    np.savez(npz, meta=np.array([Exploit()], dtype=object))     # the format before safetensors
    for blob, match in ((pickle.dumps(Exploit()), "header declares"),
                        (npz.getvalue(), "zip/.npz file: the format of numbaopt before"),
                        (b"", "empty"), (b"\x93NUMPY garbage", "header declares"),
                        (b"\x04\x00\x00\x00\x00\x00\x00\x00abcd", "not a safetensors JSON"),
                        (b"\x04\x00\x00\x00\x00\x00\x00\x00[1] ", "not a safetensors JSON")):
        for source in _both(blob, ckpt):
            _refused(source, opt2, params2, match)
    assert not marker.exists()


def _handmade(path, header, data=b""):
    """A safetensors file with a header written by hand (what no writer would make)."""
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path.read_bytes()


def test_members_of_dtypes_numpy_lacks_are_refused_naming_them(ckpt, tmp_path):
    params2, opt2 = _saved(ckpt)
    blob = _handmade(ckpt, {"params": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}},
                     b"\0" * 4)
    for source in _both(blob, ckpt):
        _refused(source, opt2, params2, "member 'params' has dtype BF16")


# -- bombs: a small file must not cost more memory than it holds -----------------------------
def _bombs(ckpt):
    """``(name, bytes)``: files of at most ~2 MiB that declare far more."""
    params, opt = make("sgd_momentum")
    train(params, opt, 1)
    save(ckpt, opt)
    tensors, md = members_of(ckpt)
    out = [("huge header length", (2 ** 62).to_bytes(8, "little") + b"{" + b" " * 100)]
    out.append(("2 GiB tensor in 2 MiB", _handmade(
        ckpt, {"params": {"dtype": "F32", "shape": [2 ** 29], "data_offsets": [0, 2 ** 31]}},
        b"\0" * (2 << 20))))
    out.append(("2 GiB tensor, right size offsets, short data", _handmade(
        ckpt, {"params": {"dtype": "F32", "shape": [2 ** 29], "data_offsets": [0, 2 ** 31]},
               "__metadata__": md}, b"\0" * (2 << 20))))

    def forged(edit):
        description = json.loads(md["numbaopt.checkpoint"])
        edit(description)
        text = json.dumps(description)
        from numbaopt import _checkpoint_digest as digest
        entry = digest.checksum(text, tensors, None)
        buf = io.BytesIO()
        from safetensors.numpy import save
        buf.write(save(tensors, metadata={"numbaopt.checkpoint": text,
                                          "numbaopt.checksum": entry}))
        return buf.getvalue()
    out.append(("a list of 400000 members", forged(
        lambda m: m["state"][0][1][0].__setitem__(1, ["list", [None] * 400_000]))))
    out.append(("nested 100000 deep", forged(lambda m: m.update(extra=None)).replace(
        b'\\"extra\\": null', b'\\"extra\\": ' + b"[" * 100_000 + b"]" * 100_000)))
    out.append(("an array of 10**12 elements", forged(
        lambda m: m.update(extra={"x": {"__ndarray__": ["<f8", [10 ** 12], [1.0]]}}))))
    return out


def test_bomb_like_files_are_refused_in_bounded_memory(ckpt):
    params, opt = make("sgd_momentum")
    bombs = _bombs(ckpt)
    tracemalloc.start()
    try:
        for name, blob in bombs:
            assert len(blob) < 3 << 20, name
            for source in _both(blob, ckpt):
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                with pytest.raises(ValueError):
                    load(source, opt)
                peak = tracemalloc.get_traced_memory()[1] - base
                # the file's bytes, once or twice (read, then decoded), and no more
                assert peak < 6 * len(blob) + (1 << 20), (name, source, peak)
    finally:
        tracemalloc.stop()


def test_bomb_like_files_cost_no_memory_in_the_parser_either(ckpt, tmp_path):
    # tracemalloc does not see safetensors' own (Rust) allocations: measure the process
    paths = []
    for k, (name, blob) in enumerate(_bombs(ckpt)):
        paths.append(str(tmp_path / f"bomb{k}"))
        pathlib.Path(paths[-1]).write_bytes(blob)
    code = textwrap.dedent("""
        import resource, sys, numpy as np, numbaopt
        from numbaopt import optim
        from test_checkpoint import make
        params, opt = make("sgd_momentum")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in sys.argv[1:]:
            try:
                numbaopt.load(path, opt)
            except ValueError:
                pass
            else:
                raise SystemExit(f"{path} was accepted")
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = _python(code, *paths)
    assert int(out.split()[-1]) < 64, f"peak RSS grew by {out.split()[-1]} MiB"


# -- files that are not files ------------------------------------------------------------
def test_directories_fifos_and_devices_are_refused_at_once(ckpt, tmp_path):
    params2, opt2 = _saved(ckpt)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "a directory"), (fifo, "a FIFO"),
                       (pathlib.Path("/dev/zero"), "a character device")):
        done = []
        worker = threading.Thread(target=lambda: done.append(
            _refused(path, opt2, params2, f"{path}: not a valid checkpoint: it is {kind}")))
        worker.start()
        worker.join(10)              # a FIFO would block an open() forever: it is never opened
        assert done, f"load({path}) did not return"
    with pytest.raises(IsADirectoryError, match=f"cannot save a checkpoint over a directory.*"
                                                f"{tmp_path}"):
        save(tmp_path, opt2)
    with pytest.raises(ValueError, match=f"{fifo}: exists and is not a regular file"):
        save(fifo, opt2)
    with pytest.raises(FileNotFoundError, match="directory to save the checkpoint in does not "
                                                f"exist.*{tmp_path / 'nope'}"):
        save(tmp_path / "nope" / "ckpt", opt2)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        load(tmp_path / "missing", opt2)


# -- atomic writes ---------------------------------------------------------------------------
@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_crash_while_writing_keeps_the_previous_checkpoint(fail_at, ckpt, monkeypatch):
    params, opt = make("adagrad")
    train(params, opt, 2)
    save(ckpt, opt)
    previous = ckpt.read_bytes()
    train(params, opt, 2, first=2)

    def crash(*args, **kwargs):
        raise OSError(f"simulated crash in {fail_at}")
    target = {"write": (os, "write"), "fsync": (os, "fsync"), "replace": (os, "replace")}
    monkeypatch.setattr(*target[fail_at], crash)
    with pytest.raises(OSError, match="simulated crash"):
        save(ckpt, opt)
    monkeypatch.undo()
    assert ckpt.read_bytes() == previous
    assert sorted(os.listdir(ckpt.parent)) == ["model.ckpt"]          # no temp file left
    load(ckpt, make("adagrad", seed=8)[1])                            # and it still loads


def test_a_half_written_temp_file_never_replaces_the_target(ckpt, monkeypatch):
    params, opt = make("adamw")
    save(ckpt, opt)
    previous = ckpt.read_bytes()
    real_write = os.write

    def partial(fd, data):
        real_write(fd, bytes(data)[:100])
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "write", partial)
    with pytest.raises(KeyboardInterrupt):
        save(ckpt, opt)
    assert ckpt.read_bytes() == previous
    assert sorted(os.listdir(ckpt.parent)) == ["model.ckpt"]


def test_stale_temp_files_are_removed_and_live_ones_kept(ckpt):
    import fcntl
    params, opt = make("sgd_momentum")
    d = ckpt.parent
    dead = d / ".model.ckpt.0123456789abcdef.numbaopt-tmp"        # its writer died
    live = d / ".model.ckpt.fedcba9876543210.numbaopt-tmp"        # a writer holds its lock
    others = [d / ".model.ckpt.junk.numbaopt-tmp", d / ".other.ckpt.0123456789abcdef.numbaopt-tmp",
              d / "notes.txt"]
    for path in [dead, live] + others:
        path.write_bytes(b"partial")
    with open(live, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        save(ckpt, opt)
        assert not dead.exists() and live.exists() and all(p.exists() for p in others)
    save(ckpt, opt)                                      # its writer is gone now
    assert not live.exists()
    assert sorted(os.listdir(d)) == sorted(["model.ckpt"] + [p.name for p in others])


def test_resaving_keeps_permissions_and_a_new_file_gets_the_umask(ckpt):
    params, opt = make("sgd_momentum")
    save(ckpt, opt)
    umask = os.umask(0)
    os.umask(umask)
    assert ckpt.stat().st_mode & 0o7777 == 0o666 & ~umask
    os.chmod(ckpt, 0o640)
    train(params, opt, 1)
    save(ckpt, opt)
    assert ckpt.stat().st_mode & 0o7777 == 0o640


def test_saving_through_a_symlink_replaces_its_target(ckpt):
    params, opt = make("sgd_momentum")
    real = ckpt.parent / "real.ckpt"
    save(real, opt)
    os.symlink(real.name, ckpt)
    train(params, opt, 1)
    save(ckpt, opt)
    assert ckpt.is_symlink() and sorted(os.listdir(ckpt.parent)) == ["model.ckpt", "real.ckpt"]
    params2, opt2 = make("sgd_momentum", seed=3)
    load(real, opt2)
    np.testing.assert_array_equal(opt2.arena.data, opt.arena.data)


def _python(code, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


_BIG = """
import sys, numpy as np, numbaopt
from numbaopt import optim
def build(fill, n=1 << 23):
    p = numbaopt.Parameter(np.full(n, fill, np.float32))            # 32 MiB
    return p, optim.SGD([p], lr=0.5)
"""


def test_sigkill_during_a_save_leaves_the_old_file_and_the_next_save_cleans_up(ckpt):
    code = _BIG + textwrap.dedent("""
        p, opt = build(1.0)
        numbaopt.save(sys.argv[1], opt)
        print("saved", flush=True)
        p.grad = np.ones(p.shape, np.float32)
        while True:
            opt.step()
            numbaopt.save(sys.argv[1], opt)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for attempt in range(3):
        child = subprocess.Popen([sys.executable, "-c", code, str(ckpt)], env=env,
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "saved"
            deadline = time.monotonic() + 60
            while not any(n.endswith(".numbaopt-tmp") for n in os.listdir(ckpt.parent)):
                assert time.monotonic() < deadline and child.poll() is None
                time.sleep(0.001)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        if len(os.listdir(ckpt.parent)) == 2:     # killed mid-write: a stale temp file
            break
    names = sorted(os.listdir(ckpt.parent))
    assert len(names) == 2 and names[1] == "model.ckpt", names
    exec(_BIG, scope := {})
    p, opt = scope["build"](0.0)
    load(ckpt, opt)                                       # the previous save, whole
    k = (1.0 - float(p.data[0])) / 0.5
    assert k == int(k) and (p.data == p.data[0]).all()
    save(ckpt, opt)                                       # removes the dead writer's file
    assert os.listdir(ckpt.parent) == ["model.ckpt"]


def test_a_full_disk_is_an_os_error_and_keeps_the_previous_file(ckpt):
    # RLIMIT_FSIZE makes writes past 64 KiB fail with EFBIG, as a full disk fails them
    code = textwrap.dedent("""
        import errno, resource, sys, numpy as np, numbaopt
        from numbaopt import optim
        small = optim.SGD([numbaopt.Parameter(np.arange(100.0))], lr=0.1)
        numbaopt.save(sys.argv[1], small)
        big = optim.SGD([numbaopt.Parameter(np.ones(100)), numbaopt.Parameter(np.ones(10 ** 5))])
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
        try:
            numbaopt.save(sys.argv[1], big)
        except OSError as exc:
            print(exc.errno == errno.EFBIG, exc)
    """)
    out = _python(code, ckpt)
    assert out.startswith("True") and str(ckpt) in out and "previous file" in out, out
    assert os.listdir(ckpt.parent) == ["model.ckpt"]
    p = P(np.zeros(100))
    load(ckpt, optim.SGD([p], lr=0.1))
    np.testing.assert_array_equal(p.data, np.arange(100.0))


# -- threads ---------------------------------------------------------------------------------
def test_concurrent_writers_and_a_reader_always_see_one_whole_file(ckpt):
    writers = [make("adamw", seed=s) for s in range(3)]
    for k, (params, opt) in enumerate(writers):
        train(params, opt, k + 1)
    wanted = [opt.arena.data.copy() for _, opt in writers]
    errors, seen = [], set()

    def write(opt):
        try:
            for _ in range(15):
                save(ckpt, opt)
        except Exception as exc:      # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(opt,)) for _, opt in writers]
    save(ckpt, writers[0][1])
    for t in threads:
        t.start()
    params, opt = make("adamw", seed=9)
    while any(t.is_alive() for t in threads):
        load(ckpt, opt)
        match = [k for k, w in enumerate(wanted) if np.array_equal(opt.arena.data, w)]
        assert len(match) == 1
        seen.add(match[0])
    for t in threads:
        t.join()
    assert not errors, errors
    assert os.listdir(ckpt.parent) == ["model.ckpt"]


def _stepping(opt, params, steps_done, stop):
    for p in params:
        p.grad = np.cos(np.arange(p.size, dtype=p.dtype)).reshape(p.shape)
    while not stop.is_set():
        opt.step()
        steps_done.append((opt.arena.data.copy(), opt.arena.state["exp_avg"].copy()))


def _threaded_adam(sizes, cls=optim.Adam):
    params = [P(np.linspace(-1, 1, n, dtype=np.float32)) for n in sizes]
    return params, cls(params, lr=1e-3)


SERIAL = (8000, 4000, 5)                 # below PARALLEL_THRESHOLD: a serial kernel
PARALLEL = (1 << 18, 1 << 17, 5)         # a prange kernel, which releases the GIL


@pytest.mark.parametrize("sizes, cls", [(SERIAL, optim.Adam), (PARALLEL, optim.Adam)],
                         ids=["serial kernel", "parallel kernel (the step lock)"])
def test_save_while_another_thread_steps_writes_a_consistent_file(sizes, cls):
    params, opt = _threaded_adam(sizes, cls)
    steps_done, stop = [], threading.Event()
    worker = threading.Thread(target=_stepping, args=(opt, params, steps_done, stop))
    worker.start()
    blobs = []
    try:
        for _ in range(25):
            buf = io.BytesIO()
            save(buf, opt)
            blobs.append(buf.getvalue())
            time.sleep(0.001)
    finally:
        stop.set()
        worker.join()
    params2, opt2 = _threaded_adam(sizes, cls)
    counts = set()
    for blob in blobs:
        load(io.BytesIO(blob), opt2)                     # every file loads
        steps = opt2.arena.step_counts()
        k = int(steps[0])
        assert (steps == k).all(), steps                  # one step count for all parameters
        counts.add(k)
        if k:                                             # and the arena of exactly that step
            data, exp_avg = steps_done[k - 1]
            np.testing.assert_array_equal(opt2.arena.data, data)
            np.testing.assert_array_equal(opt2.arena.state["exp_avg"], exp_avg)
    assert len(counts) > 1, "the stepping thread never ran between saves"


@pytest.mark.parametrize("sizes", [SERIAL, PARALLEL],
                         ids=["serial kernel (one compiled copy)", "parallel kernel (the lock)"])
def test_state_dict_while_another_thread_steps_is_consistent(sizes):
    # a serial step holds the GIL, and state_dict() copies the state in one compiled call;
    # a prange step releases the GIL and holds the step lock, which state_dict() waits for
    params, opt = _threaded_adam(sizes)
    steps_done, stop = [], threading.Event()
    worker = threading.Thread(target=_stepping, args=(opt, params, steps_done, stop))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)        # threads switch between any two bytecodes
    worker.start()
    try:
        dicts = [opt.state_dict() for _ in range(40)]
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)
    for sd in dicts:
        steps = {float(e["step"]) for e in sd["state"].values()}
        assert len(steps) <= 1, steps
        if steps:
            data, exp_avg = steps_done[int(steps.pop()) - 1]
            np.testing.assert_array_equal(
                np.concatenate([e["exp_avg"].reshape(-1) for e in sd["state"].values()]),
                exp_avg)
