"""numbaopt.distributed: 2- and 3-rank runs under mpiexec equal single-process training.

Each MPI run is one ``mpiexec -n N python tests/mpi_scripts/<script>.py`` spawned
from here; what the ranks saved is compared with single-process training on the
whole batch (tests/mpi_scripts/ddp_cases.py), float64 within rtol 1e-10:
``ddp_check.py`` (training, clipping, synchronize, state_dicts, the ranks'
agreement), ``ddp_reshard.py`` (checkpoints of N ranks loaded by M),
``ddp_cuda_sim.py`` (CUDA arenas under the simulator) and ``ddp_fail.py`` (a
failing rank ends the job, within a bounded time). Skipped, with the reason, when
mpi4py or mpiexec is missing (``pip install -e ".[distributed]"`` installs both).
"""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "mpi_scripts"
sys.path.insert(0, str(SCRIPTS))

import ddp_cases as C  # noqa: E402

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install -e '.[distributed]')")


def assert_close(actual, expected, err_msg=""):
    """float64, rtol 1e-10 with an absolute floor at 1e-10 times the array's largest value."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    assert actual.shape == expected.shape, err_msg
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-10 * scale, err_msg=err_msg)


def _mpiexec():
    # The mpich wheel puts mpiexec beside the venv's python; prefer it to another MPI's.
    here = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    return here or shutil.which("mpiexec")


MPIEXEC = _mpiexec()
if MPIEXEC is None:
    pytest.skip("no mpiexec found (pip install -e '.[distributed]' installs MPICH's)",
                allow_module_level=True)
# Not imported here: loading MPI would initialise it in this process. A subprocess tells.
_LOADS = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True,
                        text=True, timeout=60, stdin=subprocess.DEVNULL)
if _LOADS.returncode != 0:
    pytest.skip("mpi4py cannot load an MPI library (pip install -e '.[distributed]' installs "
                f"MPICH): {_LOADS.stderr.strip().splitlines()[-1:]}", allow_module_level=True)


def mpirun(nranks, *args, timeout=240, env=None):
    """Run ``mpiexec -n nranks python *args`` from the repository root; fail with its output."""
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
    command = [MPIEXEC, "-n", str(nranks), sys.executable, *map(str, args)]
    # Its own session, so a hung run's ranks are killed with mpiexec, not left behind.
    with subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{' '.join(command)} timed out after {timeout} s\n{stdout}\n{stderr}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {proc.returncode}\n{stdout}\n{stderr}")
    return stdout


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def ranks(request, tmp_path_factory):
    """What every rank of one ddp_check.py run saved: a list indexed by rank."""
    n = request.param
    outdir = tmp_path_factory.mktemp(f"ddp{n}")
    mpirun(n, SCRIPTS / "ddp_check.py", outdir)
    saved = []
    for r in range(n):
        with open(outdir / f"rank{r}.pkl", "rb") as f:
            saved.append(pickle.load(f))
    assert all(s["size"] == n for s in saved)
    return saved


def _reference(case, nranks, partial=False):
    opt, _ = C.reference_run(case, nranks, partial)
    return opt


def _same_on_every_rank(ranks, *key):
    first = ranks[0]["train"][key]
    for r, saved in enumerate(ranks[1:], 1):
        np.testing.assert_array_equal(saved["train"][key], first, err_msg=f"rank {r} differs")
    return first


def assert_state_dicts_close(actual, expected):
    assert actual["param_groups"] == expected["param_groups"]
    assert sorted(actual["state"]) == sorted(expected["state"])
    for i, entry in expected["state"].items():
        assert sorted(actual["state"][i]) == sorted(entry), f"parameter {i}"
        for key, value in entry.items():
            got = actual["state"][i][key]
            if key == "step":
                assert float(got) == float(value) and np.asarray(got).dtype == np.asarray(value).dtype
            else:
                assert_close(got, value, err_msg=f"parameter {i} {key}")


# -- training equals single-process training on the whole batch ---------------------------
@pytest.mark.parametrize("partial", [False, True], ids=["all_grads", "some_none"])
@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
@pytest.mark.parametrize("case", list(C.CASES))
def test_training_equals_single_process(ranks, case, shard, partial):
    """Plain and sharded; with gradients missing on some ranks, torch DDP's rule."""
    got = _same_on_every_rank(ranks, case, shard, partial)
    assert_close(got, _reference(case, len(ranks), partial).arena.data)


def test_whole_batch_is_what_the_ranks_average(ranks):
    # The reference's premise: the ranks' mean gradient is the whole batch's.
    params = C.make_optimizer("adam", C.initial_values())[1]
    values = [p.data for p in params]
    whole = C.batch(0, len(ranks))
    parts = [C.gradients(values, C.part(whole, r, len(ranks))) for r in range(len(ranks))]
    for i, g in enumerate(C.gradients(values, whole)):
        assert_close(sum(p[i] for p in parts) / len(ranks), g)


# -- sharded state ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(C.CASES))
def test_sharded_state_is_one_slice_per_rank(ranks, case):
    n = len(ranks)
    slices = [saved["facts"][case, "memory"] for saved in ranks]
    assert sum(s["slice"] for s in slices) == slices[0]["arena"] == 21
    for s in slices:
        assert s["slice"] <= -(-s["arena"] // n)           # the arena / N, rounded up
        assert s["local_size"] == s["slice"]
        assert s["local_keys"]
        assert s["local_elements"] == len(s["local_keys"]) * s["slice"]
        assert s["wrapped_keys"] == []                       # the full-size buffers are gone
    for saved in ranks:
        assert "sharded" in saved["facts"][case, "wrapped_step"]


@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
@pytest.mark.parametrize("case", list(C.CASES))
def test_state_dict_is_the_single_process_one(ranks, case, shard):
    n = len(ranks)
    expected = C.reference_run(case, n, False, steps=5)[0].state_dict()
    for r, saved in enumerate(ranks):
        facts = saved["facts"][case, shard, "state_dict"]
        assert_state_dicts_close(facts["all"], expected)
        if r == 0:
            assert_state_dicts_close(facts["root"], expected)
        else:
            assert facts["root"] is None

    # A single-process optimizer loads it and goes on as if it had trained alone.
    facts = ranks[-1]["facts"][case, shard, "state_dict"]
    opt, params = C.make_optimizer(case, C.initial_values(seed=7))
    opt.arena.data[:] = facts["values"]
    opt.load_state_dict(facts["all"])
    C.reference_run(case, n, False, first=5, optimizer=opt, params=params)
    assert_close(opt.arena.data, _reference(case, n).arena.data)


@pytest.mark.parametrize("root", [None, 0], ids=["every_rank", "from_root"])
@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
@pytest.mark.parametrize("case", list(C.CASES))
def test_load_state_dict_then_train(ranks, case, shard, root):
    got = _same_on_every_rank(ranks, case, shard, "loaded", root)
    assert_close(got, _reference(case, len(ranks)).arena.data)


@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
def test_add_param_group_keeps_and_reshards_state(ranks, shard):
    n = len(ranks)
    opt, params = C.reference_run("adam", n, False, steps=5)
    extra = C.numbaopt.Parameter(np.arange(6.0).reshape(2, 3))
    opt.add_param_group({"params": [extra], "lr": 0.03})
    for step in range(5, C.STEPS):
        opt.zero_grad()
        C.reference_gradients(params, step, n, False)
        extra.grad = extra.data - step
        opt.step()
    assert_close(_same_on_every_rank(ranks, "adam", shard, "added"), opt.arena.data)
    for saved in ranks:
        assert_state_dicts_close(saved["facts"]["adam", shard, "added_state_dict"], opt.state_dict())


@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
def test_a_refused_state_dict_changes_nothing_on_any_rank(ranks, shard):
    """Rank 0 passes a bad dict (every rank passing its own), then only rank 0 (root=0)."""
    for r, saved in enumerate(ranks):
        facts = saved["facts"]["adam", shard, "refused"]
        every_rank, from_root = facts["refusals"]
        if r == 0:
            assert every_rank.startswith("Invalid learning rate")
        elif shard:                 # collective: the others refuse too, naming rank 0
            assert every_rank.startswith("rank 0 refused the state_dict: ValueError: Invalid")
        else:                       # plain: each rank loads its own dict, here a good one
            assert every_rank == "accepted"
        if r == 0 or not shard:     # plain: the others load the broadcast dict and refuse it
            assert from_root.startswith("Invalid learning rate")
        else:
            assert from_root.startswith("rank 0 refused the state_dict: ValueError: Invalid")
        assert_state_dicts_close(facts["after"], facts["good"])


def test_lr_scheduler_drives_a_sharded_optimizer(ranks):
    from numbaopt.optim.lr_scheduler import StepLR
    opt, params = C.make_optimizer("sgd_momentum", C.initial_values())
    scheduler = StepLR(opt, step_size=2, gamma=0.5)
    for step in range(C.STEPS):
        opt.zero_grad()
        C.reference_gradients(params, step, len(ranks), False)
        opt.step()
        scheduler.step()
    assert_close(_same_on_every_rank(ranks, "sgd_momentum", True, "steplr"), opt.arena.data)
    for saved in ranks:
        assert saved["facts"]["steplr_warnings"] == []


@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
def test_a_nan_on_one_rank_skips_the_step_everywhere(ranks, shard):
    for saved in ranks:
        facts = saved["facts"]["adam", shard, "skip_nonfinite"]
        assert facts["result"] is None and facts["found"] and facts["count"] == 1
        assert facts["unchanged"]
        assert facts["next_result"] == 2.5 and not facts["next_found"] and facts["moved"]


def test_empty_slices_and_zero_size_parameters(ranks):
    n = len(ranks)
    tiny = [C.numbaopt.Parameter(np.array(0.5)), C.numbaopt.Parameter(np.zeros(0))]
    opt = C.optim.Adam(tiny, lr=0.1)
    for _ in range(3):
        tiny[0].grad = tiny[0].data - (n + 1) / 2
        tiny[1].grad = np.zeros(0)
        opt.step()
    expected = opt.state_dict()
    assert sorted(expected["state"]) == [0, 1]      # the zero-size parameter has a step count
    slices = [saved["facts"]["tiny"]["slice"] for saved in ranks]
    assert slices == [0] * (n - 1) + [1]             # one element: every rank but the last is empty
    assert ranks[0]["facts"]["tiny"]["local_params"] == 0
    assert ranks[-1]["facts"]["tiny"]["local_params"] == 2
    for saved in ranks:
        assert_close(saved["train"]["tiny"], opt.arena.data)
        assert_state_dicts_close(saved["facts"]["tiny"]["state_dict"], expected)


def test_ranks_with_different_parameters_are_refused_on_every_rank(ranks):
    for saved in ranks:
        assert "every rank must build its optimizer over the same parameters" \
            in saved["facts"]["mismatch"]


# -- clipping sees the averaged gradient (synchronize, then step without averaging again) -----
@pytest.mark.parametrize("clip", list(C.CLIPS))
@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
def test_clipping_sees_the_averaged_gradient(ranks, shard, clip):
    """N ranks with clipping equal one process clipping the whole batch's gradient; sharded,
    the total norm is over every rank's slice. Some gradients are None (torch DDP's rule)."""
    norms = []
    expected = C.reference_run("adam", len(ranks), True, clip=clip, norms=norms)[0]
    assert_close(_same_on_every_rank(ranks, "adam", shard, "clip", clip), expected.arena.data)
    for saved in ranks:
        got = saved["facts"]["adam", shard, "clip", clip]
        if clip == "value":
            assert got == [None] * C.STEPS
        else:
            assert_close(got, norms)            # the total norm every rank returns
            assert min(norms) > 0.5             # every step clipped


@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
def test_synchronize_averages_now_and_step_does_not_again(ranks, shard):
    n = len(ranks)
    expected, params = C.make_optimizer("sgd_momentum", C.initial_values())
    averaged = []
    for step in range(C.STEPS):
        C.change_lr(expected, step)
        expected.zero_grad()
        C.reference_gradients(params, step, n, True)
        averaged.append([None if p.grad is None else p.grad.copy() for p in params])
        expected.step()
    assert_close(_same_on_every_rank(ranks, "sgd_momentum", shard, "synchronize"),
                 expected.arena.data)
    if not shard:            # plain: every p.grad is the average after synchronize()
        for saved in ranks:
            for got_step, want_step in zip(saved["facts"]["sgd_momentum", False, "averaged"],
                                           averaged):
                for got, want in zip(got_step, want_step):
                    assert (got is None) == (want is None)
                    if want is not None:
                        assert_close(got, want)


def test_clipping_parameters_of_a_distributed_optimizer(ranks):
    """Parameters (not the optimizer) of a DistributedOptimizer: averaged first when plain;
    sharded, refused (the average lives in slices), never this rank's own gradient."""
    norms = []
    expected = C.reference_run("adam", len(ranks), True, clip="norm", norms=norms)[0]
    assert_close(_same_on_every_rank(ranks, "adam", False, "clip_params"), expected.arena.data)
    for saved in ranks:
        assert_close(saved["facts"]["adam", False, "clip_params"], norms)
        assert saved["facts"]["adam", True, "clip_params"].startswith(
            "NotImplementedError: these parameters belong to a sharded DistributedOptimizer")


# -- every rank must agree: class, options, skip_nonfinite, shard ------------------------------
def test_ranks_that_build_different_optimizers_are_refused_on_every_rank(ranks):
    last = len(ranks) - 1
    for saved in ranks:
        facts = saved["facts"]["construction_mismatch"]
        assert facts["class"] == (
            "ValueError: every rank must use the same optimizer, options and skip_nonfinite, "
            f"but the optimizer is Adagrad on rank 0, Adam on rank {last}: the replicas would "
            "drift apart (set options on every rank, e.g. from one scheduler per rank, or "
            "broadcast them)")
        assert "param group 0 has 'lr' = 0.1 on rank 0 and 0.2 on rank 1" in facts["lr"]
        assert facts["shard"].startswith("ValueError: every rank must pass the same shard= "
                                         "(rank 0: shard=True, rank 1: shard=False")
        assert f"skip_nonfinite is False on rank 0, True on rank {last}" \
            in facts["skip_nonfinite"]


@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
def test_options_that_drift_apart_are_refused_on_every_rank(ranks, shard):
    """Checked whenever the options change (the digest rides in the step's control
    Allreduce); nothing steps, and training goes on once they agree again."""
    last = len(ranks) - 1
    for r, saved in enumerate(ranks):
        facts = saved["facts"]["adam", shard, "runtime_mismatch"]
        assert facts["lr"].startswith("ValueError: every rank must use the same optimizer")
        assert f"param group 1 has 'lr' = 0.01 on rank 0 and 0.5 on rank {last}" in facts["lr"]
        assert "skip_nonfinite is True on rank 0, False on rank 1" in facts["skip_nonfinite"]
        if r == 0:      # the rank with the invalid option raises torch's error ...
            assert facts["invalid"] == "ValueError: Invalid learning rate: -1.0 (param group 0, 'lr')"
        else:           # ... and the others say which rank could not step, and why
            assert facts["invalid"] == ("ValueError: rank 0 could not step: ValueError: Invalid "
                                        "learning rate: -1.0 (param group 0, 'lr')")
        listing = ", ".join([f"rank 0 in broadcast_parameters()"]
                            + [f"rank {k} in step()" for k in range(1, len(ranks))])
        assert facts["order"] == ("RuntimeError: the ranks are in different collective calls of "
                                  f"the DistributedOptimizer ({listing}): every rank must make "
                                  "the same calls in the same order")
        assert facts["unchanged"] and facts["state_unchanged"]
    assert_close(_same_on_every_rank(ranks, "adam", shard, "after_refusals"),
                 _reference("adam", len(ranks)).arena.data)


# -- a failing rank ends the job ------------------------------------------------------------------
FAILURES = {
    # mode: what the other rank reports (stderr), on the way to MPI_Abort
    "raise": "ValueError: rank 1 fails on purpose",
    "exit": "RuntimeError: another rank has ended (its script returned or called sys.exit) "
            "while this rank is in step(), call 4 of this DistributedOptimizer",
    "extra": "RuntimeError: another rank has ended (its script returned or called sys.exit) "
             "while this rank is in step(), call 7 of this DistributedOptimizer",
    "middle": "RuntimeError: another rank has ended (its script returned or called sys.exit) "
              "while this rank is in step(), call 7 of this DistributedOptimizer",
}


@pytest.mark.parametrize("shard", [False, True], ids=["plain", "sharded"])
@pytest.mark.parametrize("mode", list(FAILURES))
def test_a_failing_rank_ends_the_job_within_seconds(mode, shard):
    """Under the README's launch line: an uncaught exception (the abort hook calls
    MPI_Abort), sys.exit, or a rank that steps more often than the others (the ranks that
    ended meet it in a last control round, and it raises) ends the job, it does not hang."""
    if shard and mode in ("raise", "middle"):
        pytest.skip("the same path as plain")    # keeps the suite short; "exit"/"extra" cover it
    args = [MPIEXEC, "-n", "2", sys.executable, str(SCRIPTS / "ddp_fail.py"), mode]
    if shard:
        args.append("shard")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.monotonic()
    with subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{mode}: the job hung (killed after 90 s)\n{stdout}\n{stderr}")
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, stdout + stderr
    assert FAILURES[mode] in stderr, stderr      # (MPICH's own "MPI_Abort" line may be lost)
    # seconds: startup and numba's cache loads are most of it (about 3 s on 2 idle cores)
    assert elapsed < 45, f"{mode} took {elapsed:.1f} s"


# -- resharding: N ranks write, M ranks (or one process) load and train on ---------------------
@pytest.fixture(scope="module")
def resharded(tmp_path_factory):
    """3 ranks write; 2 load them (3 -> 2) and write; 3 load those (2 -> 3); one process
    with a DistributedOptimizer loads them too (2 -> 1). Returns {(N, M): rank 0's saved}."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("w3", "w2", "r3", "r1")}
    script = SCRIPTS / "ddp_reshard.py"
    mpirun(3, script, dirs["w3"])
    mpirun(2, script, dirs["w2"], dirs["w3"])
    mpirun(3, script, dirs["r3"], dirs["w2"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    alone = subprocess.run([sys.executable, str(script), str(dirs["r1"]), str(dirs["w2"])],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
                           stdin=subprocess.DEVNULL)
    assert alone.returncode == 0, alone.stderr
    runs = {}
    for (n, m), name in {(3, 2): "w2", (2, 3): "r3", (2, 1): "r1"}.items():
        saved = []
        for r in range(m):
            with open(dirs[name] / f"rank{r}.pkl", "rb") as f:
                saved.append(pickle.load(f))
        assert [s["size"] for s in saved] == [m] * m and saved[0]["source_size"] == n
        runs[n, m] = saved
    runs["files"] = dirs["w2"]
    return runs


def _resharded_reference(case, n, m):
    """One process: K steps on N ranks' batches, then on M ranks' batches."""
    opt, params = C.reference_run(case, n, False, steps=3)
    C.reference_run(case, m, False, first=3, optimizer=opt, params=params)
    return opt.arena.data


@pytest.mark.parametrize("form", ["state_dict", "file"])
@pytest.mark.parametrize("read_sharded", [False, True], ids=["read_plain", "read_sharded"])
@pytest.mark.parametrize("written_sharded", [False, True], ids=["written_plain", "written_sharded"])
@pytest.mark.parametrize("case", ["adam", "asgd"])
@pytest.mark.parametrize("n,m", [(3, 2), (2, 3), (2, 1)], ids=["3to2", "2to3", "2to1"])
def test_a_checkpoint_of_n_ranks_trains_on_with_m_ranks(resharded, n, m, case, written_sharded,
                                                       read_sharded, form):
    """Written by N ranks (state_dict(root=0) with the parameters, or numbaopt.save with
    rank 0 writing), loaded by M ranks, sharded or not: training goes on exactly."""
    expected = _resharded_reference(case, n, m)
    for r, saved in enumerate(resharded[n, m]):
        got = saved["train"][case, written_sharded, read_sharded, form]
        assert_close(got, expected, err_msg=f"rank {r}")


@pytest.mark.parametrize("written_sharded", [False, True], ids=["written_plain", "written_sharded"])
@pytest.mark.parametrize("case", ["adam", "asgd"])
def test_a_checkpoint_of_two_ranks_loads_into_one_plain_process(resharded, case, written_sharded):
    """No MPI here: numbaopt.load of the file 2 ranks wrote, and load_state_dict of their
    gathered state_dict, into an ordinary optimizer."""
    name = f"{case}_{'sharded' if written_sharded else 'plain'}"
    expected = _resharded_reference(case, 2, 1)
    opt, params = C.make_optimizer(case, C.initial_values(seed=5))
    C.numbaopt.load(resharded["files"] / f"{name}.ckpt", opt)
    C.reference_run(case, 1, False, first=3, optimizer=opt, params=params)
    assert_close(opt.arena.data, expected)
    with open(resharded["files"] / f"{name}.pkl", "rb") as f:
        saved = pickle.load(f)
    opt, params = C.make_optimizer(case, C.initial_values(seed=5))
    opt.arena.data[:] = saved["values"]
    opt.load_state_dict(saved["state_dict"])
    C.reference_run(case, 1, False, first=3, optimizer=opt, params=params)
    assert_close(opt.arena.data, expected)


# -- the example ------------------------------------------------------------------------------
def test_example_under_mpiexec_and_alone():
    example = ROOT / "examples" / "distributed_data_parallel.py"
    two = mpirun(2, example)
    assert "2 ranks" in two and "final loss" in two
    assert two.count("final loss") == 1                 # rank 0 prints, the others do not
    alone = subprocess.run([sys.executable, str(example)], cwd=ROOT, capture_output=True,
                           text=True, timeout=240, stdin=subprocess.DEVNULL,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert alone.returncode == 0, alone.stderr
    assert "1 rank" in alone.stdout
    # Same data, same model: the same result whether on one rank or two.
    assert two.splitlines()[-1] == alone.stdout.splitlines()[-1]


# -- CUDA arenas, under numba's CUDA simulator -----------------------------------------------
@pytest.fixture(scope="module")
def cuda_ranks(tmp_path_factory):
    """One 2-rank run of ddp_cuda_sim.py (3 steps: the simulator is slow) for both paths."""
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    outdir = tmp_path_factory.mktemp("ddp_cuda_sim")
    mpirun(2, SCRIPTS / "ddp_cuda_sim.py", outdir, 3,
           env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    saved = []
    for r in range(2):
        with open(outdir / f"rank{r}.pkl", "rb") as f:
            saved.append(pickle.load(f))
    if not saved[0]["supported"]:
        pytest.skip("this numbaopt has no device='cuda' optimizers")
    return saved


@pytest.mark.parametrize("cuda_aware", [False, True], ids=["host_staging", "cuda_aware"])
def test_cuda_arenas_average_like_host_ones(cuda_ranks, cuda_aware):
    """device="cuda" optimizers: staged through the host, and the CUDA-aware path (its
    device kernels around the Allreduce) on the simulator's host-backed "device" memory."""
    steps = cuda_ranks[0]["steps"]
    for case in ("sgd_momentum", "adam"):
        expected = C.reference_run(case, 2, True, steps=steps)[0].arena.data
        for saved in cuda_ranks:
            assert_close(saved["train"][cuda_aware, case, True], expected)


@pytest.mark.parametrize("cuda_aware", [False, True], ids=["host_staging", "cuda_aware"])
def test_cuda_arenas_shard_like_host_ones(cuda_ranks, cuda_aware):
    """shard=True on device="cuda": the reduce-scatter, the local step and the all-gather
    on device buffers, staged or CUDA-aware; the gathered state_dict and one loaded from
    rank 0 (scattered) are the single-process ones."""
    steps = cuda_ranks[0]["steps"]
    for case in ("sgd_momentum", "adam"):
        reference = C.reference_run(case, 2, True, steps=steps)[0]
        for r, saved in enumerate(cuda_ranks):
            assert_close(saved["train"][cuda_aware, case, "sharded"], reference.arena.data)
            assert_state_dicts_close(saved["state_dict"][cuda_aware, case],
                                     reference.state_dict())
        assert sum(s["local_size"][cuda_aware, case] for s in cuda_ranks) == 21
    reference = C.reference_run("adam", 2, True, steps=steps)[0]
    for saved in cuda_ranks:
        assert_close(saved["train"][cuda_aware, "adam", "loaded"], reference.arena.data)
