"""Speed of every implementation of every operation, plus the memory and start-up targets.

Parametrised from the registry `fastdrop.bench.implementations` and careful_numpy.py
(the cases are made in conftest.py's ``pytest_generate_tests``), grouped by (operation,
n, p, dtype).
Time is never asserted; memory is, because it does not depend on the machine's load.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import targets

import fastdrop
from fastdrop.bench import runner

COMPILED_BACKENDS = [name for name in fastdrop.available_backends() if name != "numpy"]
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastdrop.__file__)))


def test_speed(benchmark, dropout_case, threads, timings, restore_threads):
    (operation, n, p, dtype), implementation = dropout_case
    name = implementation.name
    reason = implementation.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    benchmark.group = f"{operation} n={runner.size_label(n)} p={p:g} {dtype} threads={threads}"
    benchmark.extra_info.update(operation=operation, n=n, p=p, dtype=dtype, threads=threads,
                                implementation=name)
    with np.errstate(all="ignore"):  # repeated in-place scaling overflows to inf: harmless
        call = implementation.setup(operation, n, p, dtype, threads)
        call()  # warm-up: Numba compiles or loads its cache, pages are touched
        benchmark(call)
    timings.add_row((operation, n, p, dtype), name, benchmark)


# ------------------------------------------------------------------------------ memory

@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_mask_memory_is_one_bit_per_element(benchmark, backend):
    n = (1 << 20) + 3
    benchmark.group = "mask memory: bernoulli_mask n=2^20+3"
    words = benchmark(fastdrop.bernoulli_mask, n, 0.5, seed=1, backend=backend)
    assert words.nbytes == math.ceil(n / 64) * 8 == targets.mask_bytes(n)
    record = targets.mask_memory(backend)  # dropout's mask and bernoulli_mask, awkward sizes
    assert record["met"], record


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_fused_inplace_extra_memory_does_not_grow_with_n(benchmark, backend, threads, timings,
                                                         restore_threads):
    n = 1 << 22
    benchmark.group = f"fused in place, n=2^22 float32 p=0.5 threads={threads}"
    fastdrop.set_num_threads(threads)
    x = np.full(n, 1.5, np.float32)
    with np.errstate(all="ignore"):
        benchmark(lambda: fastdrop.dropout(x, 0.5, seed=1, inplace=True, backend=backend))
    small, large = (targets.peak_extra_memory(backend, size, threads)
                    for size in targets.PEAK_MEMORY_SIZES)
    # O(threads), not O(n): 16x more elements, (almost) no more memory beyond the mask
    assert large["traced_extra_bytes"] <= small["traced_extra_bytes"] + 64 * 1024, (small, large)
    assert large["traced_extra_bytes"] <= large["array_bytes"] // 64, large
    if large["rss_rise_bytes"] is not None:  # native allocations too, far below one copy of x
        assert large["rss_rise_bytes"] <= large["mask_bytes"] + large["array_bytes"] // 8, large
    timings.records.append(targets.peak_memory_target(backend, threads))


# ------------------------------------------------------------------- small arrays, start-up

SMALL_CALLS = ["np.multiply"] + COMPILED_BACKENDS


@pytest.mark.parametrize("what", SMALL_CALLS)
def test_small_array_call(benchmark, what, timings, restore_threads):
    """n = 1024 in place: fastdrop's call against the cheapest NumPy in-place scale."""
    benchmark.group = f"n={targets.SMALL_N} float32 in place (target: <= 3x np.multiply)"
    x, scale = np.full(targets.SMALL_N, 1.5, np.float32), np.float32(2.0)
    if what == "np.multiply":
        call = lambda: np.multiply(x, scale, out=x)  # noqa: E731
    else:
        call = lambda: fastdrop.dropout(x, 0.5, seed=1, inplace=True, backend=what)  # noqa: E731
    with np.errstate(all="ignore"):
        call()
        benchmark(call)
    timings.add_single(f"n=1024 {what}", benchmark)


COLD_START_CODE = {
    "import numpy": "import numpy",
    **{backend: "import numpy as np, fastdrop; fastdrop.dropout(np.ones(1000, np.float32), 0.5, "
                f"seed=1, backend={backend!r})" for backend in COMPILED_BACKENDS},
}


@pytest.mark.parametrize("what", list(COLD_START_CODE))
def test_cold_start(benchmark, what, timings):
    """A fresh interpreter: import fastdrop and drop 1000 elements, against ``import numpy``."""
    benchmark.group = "cold start: python -c ... (target: <= 3x import numpy)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [PACKAGE_ROOT] + [part for part in [os.environ.get("PYTHONPATH")] if part]))
    command = [sys.executable, "-c", COLD_START_CODE[what]]
    # the warm-up round fills the file cache and, for Numba, its on-disk cache
    benchmark.pedantic(subprocess.run, args=(command,), kwargs=dict(env=env, check=True),
                       rounds=5, iterations=1, warmup_rounds=1)
    timings.add_single(f"cold start {what}", benchmark)
