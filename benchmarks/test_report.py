"""The report script runs (tiny settings: a smoke test, not a measurement)."""

from . import report


def test_report_runs(capsys):
    report.main(["--quick", "--sections", "table", "overhead", "--optimizers", "Adam",
                 "--dtypes", "float32", "--sizes", "1k/10", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "| Adam | float32 | 1k/10 |" in out
    assert "opt.step()" in out


def test_report_runs_the_optimizers_that_are_not_elementwise(capsys):
    report.main(["--quick", "--sections", "beyond", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "LBFGS, SparseAdam, Adafactor and Muon" in out
    assert "| LBFGS iteration" in out or "torch is not installed" in out
