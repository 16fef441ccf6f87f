"""Benchmarks: fastdrop against the memory floor, NumPy and PyTorch.

- `implementations` -- the one registry of operations and implementations; it feeds
  ``fastdrop bench``, the pytest-benchmark suite in ``benchmarks/`` and docs/benchmarks.md.
- `runner` -- timing (warm-up call, then best and median of repeats) and the run plan.
- `targets` -- the issue's targets: ratios to the floor, memory, small arrays, cold start.
- `report` -- the text and Markdown tables, JSON and the plot.

Example
-------
>>> from fastdrop import bench                                   # doctest: +SKIP
>>> run = bench.run_benchmarks(sizes=[1 << 16], operations=["forward_inplace"])
>>> print(bench.format_table(run))
"""
from .implementations import IMPLEMENTATIONS, OPERATIONS, available_implementations
from .report import (
    format_markdown,
    format_table,
    format_targets,
    format_targets_markdown,
    plot,
    save_json,
)
from .runner import run_benchmarks, time_callable, time_callables

__all__ = [
    "IMPLEMENTATIONS",
    "OPERATIONS",
    "available_implementations",
    "format_markdown",
    "format_table",
    "format_targets",
    "format_targets_markdown",
    "plot",
    "run_benchmarks",
    "save_json",
    "time_callable",
    "time_callables",
]
