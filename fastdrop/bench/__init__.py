"""``fastdrop bench``: fastdrop's backends against the memory floor, NumPy and PyTorch.

- `implementations` -- the one registry of operations and implementations; it feeds
  ``fastdrop bench`` and the repository's ``benchmarks/`` (pytest-benchmark, the
  performance targets, the PyTorch and Dask benchmarks, docs/development/benchmark-runs.md).
- `runner` -- timing (warm-up call, then best and median of repeats) and the run plan.
- `report` -- the table ``fastdrop bench`` prints, and the JSON.

Example
-------
>>> from fastdrop import bench                                   # doctest: +SKIP
>>> run = bench.run_benchmarks(sizes=[1 << 16], operations=["forward_inplace"])
>>> print(bench.format_table(run))
"""
from .implementations import IMPLEMENTATIONS, OPERATIONS, available_implementations
from .report import format_table, save_json
from .runner import run_benchmarks, time_callables

__all__ = [
    "IMPLEMENTATIONS",
    "OPERATIONS",
    "available_implementations",
    "format_table",
    "run_benchmarks",
    "save_json",
    "time_callables",
]
