"""The report script runs (tiny settings: a smoke test, not a measurement)."""

from . import report


def test_report_runs(capsys):
    report.main(["--quick", "--sections", "table", "overhead", "--optimizers", "Adam",
                 "--dtypes", "float32", "--sizes", "1k/10", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "| Adam | float32 | 1k/10 |" in out
    assert "opt.step()" in out
