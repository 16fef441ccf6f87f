"""The pytest-benchmark suite's settings, and the targets report printed after it.

Run ``pytest benchmarks/ --benchmark-only``. Sizes 2^16, 2^20, 2^24 at p = 0.5,
float32 (and bfloat16 where ml_dtypes is installed) by default; ``FASTDROP_BENCH_FULL=1``
runs 2^10 .. 2^26, p in {0.1, 0.5}, float32, float64 and bfloat16. Threads: fastdrop's
setting (``FASTDROP_NUM_THREADS``, else all CPUs). Each group is one (operation, n, p,
dtype): pytest-benchmark's table shows every implementation in it next to the floor.
test_bench_dask.py times the block kernels and fastdrop.dask.

Times are never asserted. After the run, the targets (targets.py) are printed with the
ratios this run measured (memory properties are asserted: they do not depend on
the machine's load). The implementations are the registry's
(`fastdrop.bench.implementations`) and NumPy written for speed (careful_numpy.py).
"""
import importlib.util
import os

import bench_dask
import pytest
import targets
from careful_numpy import CAREFUL

import fastdrop
from fastdrop.bench import runner
from fastdrop.bench.implementations import IMPLEMENTATIONS, OPERATIONS

FULL = os.environ.get("FASTDROP_BENCH_FULL", "") not in ("", "0")
SIZES = tuple(1 << k for k in range(10, 27)) if FULL else (1 << 16, 1 << 20, 1 << 24)
PS = (0.1, 0.5) if FULL else (0.5,)
BFLOAT16 = ("bfloat16",) if importlib.util.find_spec("ml_dtypes") else ()
DTYPES = (("float32", "float64") if FULL else ("float32",)) + BFLOAT16
IMPLEMENTATIONS_TIMED = [*IMPLEMENTATIONS.values(), CAREFUL]
THREADS = fastdrop.get_num_threads()


class Timings:
    """What the tests measured, kept for the targets report at the end of the session."""

    def __init__(self):
        self.rows = {}  # (operation, n, p, dtype) -> {implementation: best seconds}
        self.single = {}  # label -> best seconds, for ratios measured in their own groups
        self.records = []  # target records the memory tests measured
        self.dask = {}  # n -> chunk -> {implementation: best seconds}, test_bench_dask.py

    def add_row(self, key, name, benchmark):
        seconds = best_seconds(benchmark)
        if seconds is not None:
            self.rows.setdefault(key, {})[name] = seconds

    def add_single(self, label, benchmark):
        seconds = best_seconds(benchmark)
        if seconds is not None:
            self.single[label] = seconds


TIMINGS = Timings()


def best_seconds(benchmark):
    """The fastest round pytest-benchmark measured, or None when benchmarks are disabled."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.min


@pytest.fixture(scope="session")
def timings():
    return TIMINGS


@pytest.fixture(scope="session")
def threads():
    return THREADS


@pytest.fixture
def restore_threads():
    before = fastdrop.get_num_threads()
    yield
    fastdrop.set_num_threads(before)


def pytest_generate_tests(metafunc):
    """Every (operation, n, p, dtype) row of the plan times every implementation of the registry."""
    if "dropout_case" in metafunc.fixturenames:
        cases = [(row[:4], implementation)
                 for row in runner.plan(list(OPERATIONS), SIZES, PS, DTYPES, [THREADS])
                 for implementation in IMPLEMENTATIONS_TIMED
                 if implementation.supports(row[0])]
        metafunc.parametrize("dropout_case", cases, ids=[
            f"{operation}-n{n}-p{p:g}-{dtype}-{implementation.name}"
            for (operation, n, p, dtype), implementation in cases])


def _run_from_row_times():
    """The timings in the shape targets.py reads (a run of `run_benchmarks`)."""
    rows = [{"operation": operation, "n": n, "p": p, "dtype": dtype, "threads": THREADS,
             "results": {name: {"best_s": seconds} for name, seconds in times.items()}}
            for (operation, n, p, dtype), times in TIMINGS.rows.items()]
    runner.derive_ratios(rows)
    return {"rows": rows, "settings": {"threads": [THREADS]}}


def _ratio_record(title, backend, numerator, denominator, limit, where):
    ratio = TIMINGS.single[numerator] / TIMINGS.single[denominator]
    return targets.target_record(title, backend, ratio, limit, ratio <= limit, where)


def pytest_terminal_summary(terminalreporter):
    run = _run_from_row_times()
    records = targets.floor_ratio_targets(run) + list(TIMINGS.records)
    for backend in targets.FASTDROP_BACKENDS:
        small, cold = f"n=1024 {backend}", f"cold start {backend}"
        if small in TIMINGS.single and "n=1024 np.multiply" in TIMINGS.single:
            records.append(_ratio_record(
                f"n={targets.SMALL_N}: call / np.multiply(x, s, out=x)", backend, small,
                "n=1024 np.multiply", targets.SMALL_LIMIT, "pytest-benchmark min"))
        if cold in TIMINGS.single and "cold start import numpy" in TIMINGS.single:
            records.append(_ratio_record(
                "cold start / python -c 'import numpy'", backend, cold,
                "cold start import numpy", targets.COLD_START_LIMIT, "pytest-benchmark min"))
    records += targets.backend_ratio(run)
    for backend in targets.FASTDROP_BACKENDS:
        block, contiguous = f"block block {backend}", f"block contiguous {backend}"
        if block in TIMINGS.single and contiguous in TIMINGS.single:
            records.append(_ratio_record(targets.BLOCK_TITLE, backend, block, contiguous,
                                         targets.BLOCK_LIMIT, "pytest-benchmark min"))
    for n, times in TIMINGS.dask.items():
        records += bench_dask.target_records(n, times)
    if records:
        terminalreporter.write_sep("=", "fastdrop targets")
        terminalreporter.write_line(f"threads={THREADS}; times from this run; largest size "
                                    f"{runner.size_label(max(SIZES))}")
        terminalreporter.write_line(targets.format_targets(records))
