"""Benchmark sizes: the issue's sizes when timing, small stand-ins with ``--benchmark-disable``.

``--benchmark-disable`` runs every benchmark body once, which only checks that it
works (what ``.ci/run`` does); the 16M cases would then cost seconds each for
nothing, so they are replaced by ``cases.SMALL_SIZES``. Choose explicitly with
``--bench-sizes=full|small`` or ``NUMBAOPT_BENCH_SIZES=full|small``.
"""

import os

from .cases import SIZES, SMALL_SIZES


def pytest_addoption(parser):
    parser.addoption("--bench-sizes", choices=("full", "small"), default=None,
                     help="benchmark sizes: full (the issue's, up to 16M parameters) or small; "
                          "default: small with --benchmark-disable, else full "
                          "(env NUMBAOPT_BENCH_SIZES)")


def bench_sizes(config):
    choice = config.getoption("--bench-sizes", default=None) \
        or os.environ.get("NUMBAOPT_BENCH_SIZES")
    if choice is None:
        choice = "small" if config.getoption("benchmark_disable", default=False) else "full"
    if choice not in ("full", "small"):
        raise ValueError(f"NUMBAOPT_BENCH_SIZES must be 'full' or 'small', got {choice!r}")
    return SIZES if choice == "full" else SMALL_SIZES


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        sizes = bench_sizes(metafunc.config)
        metafunc.parametrize("size", sizes, ids=[s.name for s in sizes])
