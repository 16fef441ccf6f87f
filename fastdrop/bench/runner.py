"""Timing and the run plan: which rows are measured, and how each cell is timed.

A cell is one implementation on one row (operation, n, p, dtype, threads). It is
set up outside the timing, called once to warm up (Numba compiles or loads its
cache, pages are touched), then timed with ``time.perf_counter`` over ``repeat``
samples of ``number`` back-to-back calls each, ``number`` chosen so that a sample
lasts at least ``min_time`` seconds; garbage collection is off meanwhile. The
samples of a row's implementations are interleaved, one of each per round, so a
busy spell of a shared machine hits them alike (rows too large to hold every
implementation's arrays at once run one implementation after the other instead,
timing the floor again at the end). The best sample is the cell's time (the least
disturbed by other processes); the median is kept in the JSON. Every ratio divides
by the best floor time of the run for that (n, dtype, threads).
"""
import contextlib
import datetime
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from .._internal import bfloat16_dtype
from .implementations import (
    BASELINE,
    FLOOR,
    FLOOR_DESCRIPTIONS,
    FLOOR_SERIAL,
    IMPLEMENTATIONS,
    OPERATIONS,
    Implementation,
    bench_dtype,
    floor_kernel,
)

QUICK_SIZES = (1 << 16, 1 << 22)  # fastdrop bench's defaults: under a minute on two cores
QUICK_PS = (0.5,)
QUICK_DTYPES = ("float32",)
MAX_NUMBER = 1_000_000


@dataclass(frozen=True)
class Timing:
    """The timing of one callable, in seconds per call.

    Attributes
    ----------
    best : float
        Seconds per call of the best sample.
    median : float
        Seconds per call of the median sample.
    number : int
        Calls per sample.
    repeat : int
        Number of samples.
    """

    best: float  # seconds per call, best sample
    median: float  # seconds per call, median sample
    number: int  # calls per sample
    repeat: int  # samples


def _prepare(call, min_time):
    """Warm ``call`` up and choose its calls per sample; return (number, samples so far)."""
    call()  # warm-up: JIT compile or cache load, first touch of pages
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    number = 1 if first >= min_time else min(MAX_NUMBER, math.ceil(min_time / max(first, 1e-9)))
    return number, ([first] if number == 1 else [])


def _sample(call, number, settle=False):
    if number > 1 or settle:
        call()  # untimed: bring this implementation's arrays back into cache after the others
    start = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - start) / number


@contextlib.contextmanager
def _quiet_and_no_gc():
    """No garbage collection pauses, no overflow warnings (in-place scaling reaches inf)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        if collecting:
            gc.enable()


def time_callables(calls, repeat=5, min_time=0.05, settle=False):
    """Time several calls with their samples interleaved: {name: Timing} for {name: call}.

    A sample of several calls follows one untimed call of the same callable (its data
    back in cache after the others'); ``settle=True`` makes that call also where a
    sample is one call: training steps, each then timed after a step of its own, as a
    training loop runs them, rather than after another version's allocations.
    """
    with _quiet_and_no_gc():
        prepared = {name: (call, *_prepare(call, min_time)) for name, call in calls.items()}
        for _ in range(max(repeat, 1)):
            for call, number, samples in prepared.values():
                if len(samples) < max(repeat, 1):
                    samples.append(_sample(call, number, settle))
    return {name: Timing(min(samples), statistics.median(samples), number, len(samples))
            for name, (call, number, samples) in prepared.items()}


def size_label(n):
    """2^k for powers of two, else the number."""
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


def plan(operations, sizes, ps, dtypes, threads):
    """The rows to measure: (operation, n, p, dtype, threads) in table order.

    Operations that do not depend on the dtype (mask only) get one row per (n, p),
    with the first dtype's floor.
    """
    rows = []
    for thread_count in threads:
        for operation in operations:
            row_dtypes = dtypes[:1] if OPERATIONS[operation].dtype_independent else dtypes
            for dtype in row_dtypes:
                for p in ps:
                    for n in sizes:
                        rows.append((operation, int(n), float(p), bench_dtype(dtype).name,
                                     int(thread_count)))
    return rows


SIMD_PATHS = {0: "no SIMD", 1: "AVX2", 2: "AVX-512F", 3: "AVX-512 BF16"}


def simd_path():
    """The vector path fastdrop's kernels take here, e.g. "AVX2".

    Without the Cython extension: the best SIMD flag the CPU reports.
    """
    from .._internal import backend_available, cpu_model_and_features

    if backend_available("cython"):
        from ..kernels.cython import kernels as cython_kernels

        return SIMD_PATHS.get(cython_kernels.simd_enabled(), "no SIMD")
    features = cpu_model_and_features()[1]
    return features[-1].upper() if features else "no SIMD"


def header(threads):
    """Versions, machine and settings for the top of the table (and the JSON)."""
    from .._internal import system_info

    info = system_info()
    kernel = floor_kernel()
    try:
        load = list(os.getloadavg())  # other processes share the cores: say how busy they were
    except (AttributeError, OSError):
        load = None
    return {
        "date": datetime.date.today().isoformat(),
        "load average": load,
        "fastdrop": info["fastdrop"],
        "python": info["python"],
        "numpy": info["numpy"],
        "numba": info["numba"],
        "torch": info["torch"],
        "cpu": info["cpu"],
        "simd": info["simd"],
        "simd path": simd_path(),
        "cpus available": info["cpus available"],
        "openmp": info["openmp"],
        "threads": list(threads),
        "floor": f"{kernel}: {FLOOR_DESCRIPTIONS[kernel]}; {FLOOR_SERIAL}",
        "platform": info["platform"],
    }


def _cell(n, number, samples):
    best = min(samples)
    return {"best_s": best, "median_s": statistics.median(samples), "number": number,
            "repeat": len(samples), "gelem_per_s": n / best / 1e9}


def _error(error):
    return {"error": f"{type(error).__name__}: {error}"}


def time_row(implementations, row, repeat, min_time, interleave):
    """Time every implementation on one row; return {name: cell} in registry order.

    Interleaved: all are set up and warmed up, then each round takes one sample of
    each, so a busy spell of the machine hits them alike. Otherwise (when holding
    every implementation's arrays at once would take too much memory) one after the
    other, with the floor timed again at the end.
    """
    operation, n, p, dtype, threads = row
    repeat = max(repeat, 1)
    results = {}
    with _quiet_and_no_gc():
        if interleave:
            prepared = {}
            for implementation in implementations:
                try:
                    call = implementation.setup(operation, n, p, dtype, threads)
                    prepared[implementation.name] = (call, *_prepare(call, min_time))
                except Exception as error:  # a cell that fails says so; the run goes on
                    results[implementation.name] = _error(error)
            for _ in range(repeat):
                for name, (call, number, samples) in list(prepared.items()):
                    if len(samples) < repeat:
                        try:
                            samples.append(_sample(call, number))
                        except Exception as error:
                            results[name] = _error(error)
                            del prepared[name]
            for name, (_call, number, samples) in prepared.items():
                results[name] = _cell(n, number, samples)
            prepared = call = _call = None
        else:
            for implementation in implementations + [IMPLEMENTATIONS[FLOOR]]:
                try:
                    call = implementation.setup(operation, n, p, dtype, threads)
                    number, samples = _prepare(call, min_time)
                    while len(samples) < repeat:
                        samples.append(_sample(call, number))
                    cell = _cell(n, number, samples)
                except Exception as error:
                    cell = _error(error)
                call = None
                gc.collect()  # free this cell's arrays before the next one allocates
                earlier = results.get(implementation.name, {}).get("best_s", math.inf)
                if cell.get("best_s", math.inf) < earlier or implementation.name not in results:
                    results[implementation.name] = cell
    if n >= 1 << 20:
        gc.collect()
    return {implementation.name: results[implementation.name]
            for implementation in implementations if implementation.name in results}


def _available_memory():
    """Bytes of memory available to new allocations (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def interleaving_fits(n, dtype, implementations):
    """Whether every implementation's arrays for one row fit in half the available memory.

    About three arrays of n elements per implementation stay allocated (input,
    output or stored mask, scratch) and the textbook formula adds float64 temporaries.
    """
    available = _available_memory()
    needed = (3 * len(implementations) + 4) * n * max(bench_dtype(dtype).itemsize, 8)
    return available is None or needed <= available // 2


def _derive(results, floor=None):
    """Add the ratio to the floor and the speed-up over the textbook NumPy formula.

    ``floor`` is the floor's best time for the row's (n, dtype, threads); by default
    the row's own floor cell.
    """
    floor = floor or results.get(FLOOR, {}).get("best_s")
    baseline = results.get(BASELINE, {}).get("best_s")
    for _name, cell in results.items():
        if "best_s" not in cell:
            continue
        cell["ratio_to_floor"] = cell["best_s"] / floor if floor else None
        cell["speedup_over_numpy"] = baseline / cell["best_s"] if baseline else None


def _floor_key(row):
    return row["n"], row["dtype"], row["threads"]


def best_floors(rows):
    """The floor's best time for each (n, dtype, threads) over all rows of a run.

    The floor does the same work in every row with the same n, dtype and threads (p
    only changes the factor), so each ratio divides by the fastest of those
    measurements: a disturbed floor sample cannot flatter a ratio.
    """
    floors = {}
    for row in rows:
        best = row["results"].get(FLOOR, {}).get("best_s")
        if best is not None:
            key = _floor_key(row)
            floors[key] = min(best, floors.get(key, math.inf))
    return floors


def derive_ratios(rows):
    """Fill in every cell's ratio to the floor and speed-up over NumPy (see `best_floors`)."""
    floors = best_floors(rows)
    for row in rows:
        floor_cell = row["results"].get(FLOOR, {})
        if "best_s" in floor_cell:  # the floor's column shows the time the ratios divide by
            floor_cell.setdefault("row_best_s", floor_cell["best_s"])
            floor_cell["best_s"] = floors[_floor_key(row)]
            floor_cell["gelem_per_s"] = row["n"] / floor_cell["best_s"] / 1e9
        _derive(row["results"], floors.get(_floor_key(row)))


def _progress_line(row, name, cell):
    operation, n, p, dtype, threads = row
    what = f"{cell['best_s'] * 1e3:10.4f} ms" if "best_s" in cell else cell["error"]
    return (f"  {operation:<18} n={size_label(n):<6} p={p:<4} {dtype:<7} threads={threads:<3} "
            f"{name:<14} {what}")


def _resolve(implementations):
    """([the implementations that run here, floor first], {name: why not} for the others)."""
    entries = list(IMPLEMENTATIONS.values()) if implementations is None else [
        IMPLEMENTATIONS.get(entry, entry) if isinstance(entry, str) else entry
        for entry in implementations]
    for entry in entries:
        if not isinstance(entry, Implementation):
            raise ValueError(f"unknown implementation {entry!r}; "
                             f"choose from {list(IMPLEMENTATIONS)}")
    if all(entry.name != FLOOR for entry in entries):
        entries.insert(0, IMPLEMENTATIONS[FLOOR])
    return ([entry for entry in entries if entry.available()],
            {entry.name: entry.unavailable_reason() for entry in entries
             if not entry.available()})


def run_benchmarks(operations=None, sizes=QUICK_SIZES, ps=QUICK_PS, dtypes=QUICK_DTYPES,
                   threads=None, implementations=None, repeat=5, min_time=0.05, progress=None):
    """Measure every row of the plan with every available implementation; return the run.

    Parameters
    ----------
    operations : list of str, optional
        Names from `OPERATIONS` (default: all).
    sizes, ps, dtypes : sequences
        Element counts, drop probabilities in [0, 1), float32 and/or float64.
    threads : int or list of int, optional
        Thread counts (default: fastdrop's current setting); one set of rows for each.
    implementations : list of str or Implementation, optional
        Names from `IMPLEMENTATIONS`, or implementations of one's own (the repository's
        benchmarks add some), in column order (default: the registry's, all that run
        here); the floor is always timed, first.
    repeat, min_time
        Samples per cell and the least duration of one sample (seconds).
    progress : file, optional
        Where to write one line per measured cell (e.g. ``sys.stderr``).

    Returns
    -------
    dict
        ``{"header": ..., "settings": ..., "implementations": [...], "unavailable": {...},
        "rows": [{"operation", "n", "p", "dtype", "threads", "results": {name: cell}}]}``;
        a cell holds ``best_s``, ``median_s``, ``number``, ``repeat``, ``gelem_per_s``,
        ``ratio_to_floor`` (to the run's best floor for the row's n, dtype and threads) and
        ``speedup_over_numpy``, or ``error``. The floor's ``best_s`` is that best floor
        time; ``row_best_s`` is what the row itself measured.
    """
    import fastdrop

    operations = list(OPERATIONS) if operations is None else list(operations)
    for operation in operations:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; choose from {list(OPERATIONS)}")
    for p in ps:
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"p must be in [0, 1) for a benchmark, got {p!r}")
    for dtype in dtypes:
        if str(dtype) not in ("float32", "float64", "bfloat16"):
            raise ValueError(f"benchmarks run float32, float64 and bfloat16, got {dtype!r}")
        if str(dtype) == "bfloat16":
            bfloat16_dtype()  # ml_dtypes, which names the dtype (ImportError saying the extra)
    if threads is None:
        threads = [fastdrop.get_num_threads()]
    elif isinstance(threads, int):
        threads = [threads]
    chosen, unavailable = _resolve(implementations)
    run_header = header(threads)
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    fastdrop_threads = fastdrop.get_num_threads()
    rows = []
    try:
        for row in plan(operations, sizes, ps, dtypes, threads):
            operation, n, p, dtype, thread_count = row
            row_implementations = [implementation for implementation in chosen
                                   if implementation.supports(operation)]
            interleaved = interleaving_fits(n, dtype, row_implementations)
            results = time_row(row_implementations, row, repeat, min_time, interleaved)
            if progress is not None:
                for name, cell in results.items():
                    print(_progress_line(row, name, cell), file=progress, flush=True)
            rows.append({"operation": operation, "n": n, "p": p, "dtype": dtype,
                         "threads": thread_count, "interleaved": interleaved,
                         "results": results})
        derive_ratios(rows)
    finally:
        fastdrop.set_num_threads(fastdrop_threads)
        if torch_threads is not None:
            sys.modules["torch"].set_num_threads(torch_threads)
    return {
        "header": run_header,
        "settings": {"operations": operations, "sizes": [int(n) for n in sizes],
                     "ps": [float(p) for p in ps], "dtypes": [np.dtype(d).name for d in dtypes],
                     "threads": list(threads),
                     "implementations": None if implementations is None else [
                         getattr(entry, "name", entry) for entry in implementations],
                     "repeat": repeat, "min_time_s": min_time,
                     "statistic": "best sample, in seconds per call; the samples of a row's "
                                  "implementations interleaved"},
        "implementations": [implementation.name for implementation in chosen],
        "descriptions": {implementation.name: implementation.description
                         for implementation in chosen},
        "unavailable": unavailable,
        "rows": rows,
    }
