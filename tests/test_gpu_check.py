"""scripts/gpu_check.sh: its no-GPU exit, its smoke run under numba's simulator, its degrading.

The real run needs a CUDA GPU; here the smoke mode (tiny sizes, the simulator)
checks that every part runs and writes its rows into the one markdown file, so
the script cannot rot between the rare sessions that have a GPU.
"""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tolerance import assert_close

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT))
from benchmarks import gpu_report  # noqa: E402

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "OUT")}
    env.update(PYTHON=sys.executable, **extra)
    return env


def _run(args, env, timeout=60):
    return subprocess.run(["bash", str(SCRIPT)] + args, env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _tables(text):
    """``{section title: [row cells]}`` of a markdown file's tables."""
    out, title = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
            out.setdefault(title, [])
        elif line.startswith("| ") and title is not None:
            out[title].append([c.strip() for c in line.strip().strip("|").split("|")])
    return {t: rows[1:] for t, rows in out.items()}   # without the header rows


def _section(tables, start):
    titles = [t for t in tables if t.startswith(start)]
    assert titles, f"no section {start!r} in {list(tables)}"
    return tables[titles[0]]


@needs_bash
def test_without_a_gpu_it_exits_non_zero_at_once(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi is here: this machine may have a GPU")
    start = time.perf_counter()
    result = _run([], _env(OUT=str(tmp_path)))
    elapsed = time.perf_counter() - start
    assert result.returncode == 3, result.stderr
    assert "no GPU here" in result.stderr and "--smoke" in result.stderr
    assert elapsed < 2.0
    assert not list(tmp_path.iterdir())          # nothing written


@needs_bash
def test_the_simulator_without_smoke_and_bad_arguments_are_refused(tmp_path):
    result = _run([], _env(NUMBA_ENABLE_CUDASIM="1", OUT=str(tmp_path)))
    assert result.returncode == 2 and "--smoke" in result.stderr
    result = _run(["--fast"], _env())
    assert result.returncode == 2 and "unknown argument" in result.stderr
    result = _run(["--budget", "soon"], _env())
    assert result.returncode == 2 and "--budget" in result.stderr
    assert not list(tmp_path.iterdir())


@needs_bash
def test_smoke_under_the_simulator_writes_every_row(tmp_path):
    if importlib.util.find_spec("numba.cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install -e '.[test]')")
    result = _run(["--smoke"], _env(NUMBA_ENABLE_CUDASIM="1", OUT=str(tmp_path)), timeout=300)
    report = (tmp_path / "gpu_check.md").read_text()
    assert result.returncode == 0, report + result.stderr[-3000:]
    assert (tmp_path / "gpu_check.log").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.log", "gpu_check.md"]
    assert "NUMBA_ENABLE_CUDASIM=1" in report and "\n- CPU: " in report
    assert "Result: all parts passed." in report
    tables = _tables(report)

    summary = {row[0]: row[1] for row in _section(tables, "Summary")}
    assert summary == {"tests": "ok", "parity": "ok", "bench": "ok", "cpu": "ok"}

    tests = {row[0]: row for row in _section(tables, "CUDA tests")}
    assert set(tests) == {"`cuda_gpu` tests", "CUDA suite, 2 tests (simulator)",
                          "benchmarks/test_step_cuda.py"}
    assert tests["CUDA suite, 2 tests (simulator)"][1:3] == ["2", "0"]   # passed, failed
    assert all(row[-1].startswith("ok") for row in tests.values())

    parity = _section(tables, "GPU against CPU")
    checked = {(row[0], row[2]) for row in parity if row[8] == "ok"}
    expected = {(e[0], "float64") for e in gpu_report.PARITY}
    expected |= {(name, "float32") for name in gpu_report.SMOKE_FLOAT32}
    assert checked == expected
    assert len(parity) == len(expected)

    bench = _section(tables, "Step time on the GPU")
    timed = {(row[0], row[1], row[2]) for row in bench if row[4].endswith("s")}
    sizes = [(n, t, "float32") for n, t in gpu_report.SMOKE_SIZES] + \
        [(n, t, "float64") for n, t in gpu_report.SMOKE_FLOAT64_SIZES]
    assert timed == {(name.replace("_", " "), dtype, gpu_report.fmt_size(n, t))
                     for name in gpu_report.GPU_OPTIMIZERS for n, t, dtype in sizes}
    assert all(row[7] == "–" for row in bench)          # no torch on a simulated GPU
    assert "torch" in report.split("## Step time on the GPU")[1].split("|")[0]

    cpu = _section(tables, "CPU")
    assert [row[:3] for row in cpu] == [["Adam", "float32", "1k/10"]]


def test_without_torch_the_parts_say_so_and_leave_its_columns_out(tmp_path):
    if importlib.util.find_spec("numba.cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install -e '.[test]')")
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "torch.py").write_text("raise ImportError('torch hidden by test_gpu_check')\n")
    env = _env(NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(hidden)]))
    for part in ("bench", "cpu"):
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.gpu_report", part, "--smoke", "--optimizers",
             "Adam", "--out", str(tmp_path / f"{part}.md")], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    bench = (tmp_path / "bench.md").read_text()
    assert "torch is not installed" in bench
    assert len(_section(_tables(bench), "Step time")) == 3     # 2 float32 sizes, 1 float64
    cpu = (tmp_path / "cpu.md").read_text()
    assert "torch not installed" in cpu
    header = next(line for line in cpu.splitlines() if line.startswith("| optimizer"))
    assert "torch" not in header and "roofline" in header


@needs_bash
def test_a_part_out_of_time_or_failing_is_reported_and_fails_the_run(tmp_path):
    # a budget too small for any part: every part is recorded as not run, the file is
    # still written, and the exit status says the check failed
    result = _run(["--smoke", "--budget", "1"], _env(NUMBA_ENABLE_CUDASIM="1",
                                                     OUT=str(tmp_path)))
    assert result.returncode == 1, result.stderr
    report = (tmp_path / "gpu_check.md").read_text()
    summary = {row[0]: row[1] for row in _section(_tables(report), "Summary")}
    assert set(summary.values()) == {"not run: no time left"}, summary
    assert "failed or did not run" in report


def test_assemble_keeps_every_part_whatever_happened_to_it(tmp_path):
    (tmp_path / "status.tsv").write_text("machine\t0\t1\t20\ntests\t1\t30\t150\n"
                                         "parity\t124\t70\t70\nbench\t139\t3\t150\n")
    for name in ("machine", "tests", "parity"):
        frag = gpu_report.Fragment(tmp_path / f"{name}.md", f"{name} section", ["a", "b"])
        frag.add(["x", "1"])
        frag.close(f"{name} summary")
    out = tmp_path / "gpu_check.md"
    assert gpu_report.assemble(tmp_path, out, smoke=False) == 1
    text = out.read_text()
    summary = {row[0]: row for row in _section(_tables(text), "Summary")}
    assert summary["tests"][1:] == ["FAILED", "30 s", "tests summary"]
    assert summary["parity"][1].startswith("FAILED: killed at its 70 s cap")
    assert summary["bench"][1].startswith("FAILED: crashed (exit 139)")
    assert summary["cpu"][1] == "not run"
    assert "## machine section" in text and "## parity section" in text


def test_pytest_summary_lines_are_counted():
    out = "....\nFAILED tests/x.py::t - boom\n2 failed, 5 passed, 3 skipped, 1 error in 2.0s\n"
    assert gpu_report.pytest_counts(out) == {"failed": 2, "passed": 5, "skipped": 3,
                                             "errors": 1}
    assert gpu_report.pytest_counts("killed") == {}
    assert gpu_report.pytest_counts("24 skipped, 346 deselected in 2.66s") == \
        {"skipped": 24, "deselected": 346}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_close_error_is_the_measure_of_assert_close(dtype):
    rng = np.random.default_rng(0)
    rtol = gpu_report.FLOAT_RTOL[dtype]
    expected = rng.standard_normal(1000)
    expected[:3] = [0.0, 1e-30, -1e-12]      # near zero: judged on the array's scale
    for factor in (0.3, 0.9, 1.1, 3.0):
        actual = expected + factor * rtol * (np.abs(expected) + np.max(np.abs(expected))) \
            * rng.choice([-1.0, 1.0], expected.size)
        error = gpu_report.close_error(actual, expected)
        assert error == pytest.approx(factor * rtol, rel=1e-6)
        if factor < 1:
            assert_close(actual, expected, dtype)
        else:
            with pytest.raises(AssertionError):
                assert_close(actual, expected, dtype)
    nan = expected.copy()
    nan[5] = np.nan
    assert gpu_report.close_error(nan, expected) == np.inf
    assert gpu_report.close_error(nan, nan) == 0.0
    assert gpu_report.close_error(expected[:3], expected) == np.inf
