"""Arrays in blocks: the block kernels against one contiguous range, and fastdrop.dask.

    pytest benchmarks/test_bench_dask.py --benchmark-only

- A block cut at column 37 of a 1000-column array, 2^22 float32 elements, against as
  many elements in one contiguous range (fastdrop's thread setting; target <= 1.3x).
- Dropout of a float32 dask array of 2^26 elements (``FASTDROP_BENCH_FULL=1``: 2^26
  and 2^28) in chunks of 2^18 .. 2^24 elements, stored into a preallocated NumPy array,
  under dask's threaded scheduler with 2 workers and fastdrop on 1 thread per task,
  against in-memory fastdrop on 2 threads and the formula with dask's random numbers
  (bench_dask.py describes every implementation; targets: at least 0.5x
  in-memory and 5x dask's formula for chunks of 2^22 and more).

Each group is one row: pytest-benchmark's table shows the implementations side by side.
Times are never asserted; the targets are printed after the run (conftest.py).
"""
import os

import bench_dask as dask_arrays
import numpy as np
import pytest
import targets

import fastdrop
from fastdrop.bench.runner import size_label

FULL = os.environ.get("FASTDROP_BENCH_FULL", "") not in ("", "0")
SIZES = dask_arrays.SIZES if FULL else dask_arrays.SIZES[:1]
BACKENDS = [name for name in targets.FASTDROP_BACKENDS if name in fastdrop.available_backends()]


@pytest.mark.parametrize("what", ["block", "contiguous"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_block_kernel(benchmark, backend, what, threads, timings):
    """The block's runs against one range of as many elements (same p, threads, backend)."""
    benchmark.group = (f"{targets.BLOCK_TITLE}, n={size_label(targets.BLOCK_N)} float32 "
                       f"{backend} threads={threads}")
    call = targets.block_calls(backend)[what]
    call()
    benchmark(call)
    timings.add_single(f"block {what} {backend}", benchmark)


@pytest.fixture(scope="module")
def arrays():
    """{n: (values, target)}, made once per size: a 2^28 array is a GiB."""
    made = {}

    def of(n):
        if n not in made:
            made.clear()  # one size at a time in memory
            values = np.random.default_rng(0).standard_normal(dask_arrays.shape_of(n),
                                                              dtype=np.float32)
            made[n] = values, np.zeros_like(values)
        return made[n]
    return of


@pytest.mark.parametrize("implementation", dask_arrays.IMPLEMENTATIONS)
@pytest.mark.parametrize("chunk", dask_arrays.CHUNKS, ids=size_label)
@pytest.mark.parametrize("n", SIZES, ids=size_label)
def test_dask_store(benchmark, n, chunk, implementation, arrays, timings):
    dask = pytest.importorskip("dask", reason="needs the dask extra")
    pytest.importorskip("fastdrop.dask", reason="needs the dask extra")
    benchmark.group = (f"dask: dropout n={size_label(n)} chunks of {size_label(chunk)} float32 "
                       f"stored, {dask_arrays.WORKERS} workers")
    values, target = arrays(n)
    call = dask_arrays.setups(values, target, chunk, dask_arrays.P)[implementation]
    with dask.config.set(scheduler="threads", num_workers=dask_arrays.WORKERS), \
            fastdrop.num_threads(dask_arrays.WORKERS), np.errstate(all="ignore"):
        benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=1)
    seconds = getattr(benchmark, "stats", None)
    if seconds is not None:
        timings.dask.setdefault(n, {}).setdefault(chunk, {})[implementation] = \
            seconds.stats.min
