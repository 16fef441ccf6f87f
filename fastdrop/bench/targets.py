"""The issue's performance targets, measured and reported (never asserted on time).

Ratios to the floor come from a benchmark run (`runner.run_benchmarks`): its largest
size is the "large array" (the targets are stated at n = 2^26). The other targets
are measured here: mask memory, peak extra memory of the fused in-place path, the
cost of a call on 1024 elements, the cold start of a fresh interpreter, a block of a
larger array against one contiguous range, and how close the two compiled backends
are to each other.

Every record is ``{"target", "backend", "measured", "limit", "met", "where", "unit"}``;
``unit`` says what ``measured`` is: "ratio", "bytes" or "text".
"""
import math
import os
import subprocess
import sys
import tracemalloc

import numpy as np

from .implementations import OPERATIONS, mask_bytes
from .runner import size_label, time_callables

TARGET_N = 1 << 26
# (operation, p or None for every p, dtypes, limit on the ratio to the floor)
FLOOR_RATIO_TARGETS = (
    ("forward_inplace", 0.5, ("float32", "float64"), 1.3),
    ("forward_inplace", 0.1, ("float32", "float64"), 1.6),
    ("backward_mask", None, ("float32", "float64"), 1.15),
    ("backward_recompute", None, ("float32", "float64"), 1.6),
    ("forward_inplace", 0.5, ("bfloat16",), 1.3),
    ("forward_inplace", 0.1, ("bfloat16",), 1.8),
    ("backward_mask", None, ("bfloat16",), 1.2),
)
SMALL_N = 1024
SMALL_LIMIT = 3.0
COLD_START_LIMIT = 3.0
AGREEMENT_LIMIT = 1.15
# a 2-d block cut at column 37 of a 1000-column array: each row a run of 963 elements
# whose first and last mask words are partial (docs/mask-stream.md, section 10)
BLOCK_N = 1 << 22
BLOCK_COLUMNS, BLOCK_CUT = 1000, 37
BLOCK_LIMIT = 1.3
BLOCK_TITLE = f"block cut at column {BLOCK_CUT} of {BLOCK_COLUMNS}: time / one contiguous range"
MASK_MEMORY_SIZES = (1, 63, 64, 65, 1000, (1 << 20) + 3)
PEAK_MEMORY_SIZES = (1 << 20, 1 << 24)
FASTDROP_BACKENDS = ("numba", "cython")


def target_record(target, backend, measured, limit, met, where="", unit="ratio"):
    """One target record: ``{"target", "backend", "measured", "limit", "met", "where", "unit"}``.

    ``met`` is stored as a bool; ``unit`` says what ``measured`` is: "ratio", "bytes" or
    "text".
    """
    return {"target": target, "backend": backend, "measured": measured, "limit": limit,
            "met": bool(met), "where": where, "unit": unit}


def _large_rows(run):
    """Rows at the run's largest size, the stand-in for the targets' n = 2^26."""
    if not run["rows"]:
        return []
    largest = max(row["n"] for row in run["rows"])
    return [row for row in run["rows"] if row["n"] == largest]


def _where(row):
    note = "" if row["n"] >= TARGET_N else f" (target stated at {size_label(TARGET_N)})"
    return (f"n={size_label(row['n'])} p={row['p']} {row['dtype']} "
            f"threads={row['threads']}{note}")


def floor_ratio_targets(run):
    """Ratio to the floor of fastdrop's forward in place and backward, at the largest size."""
    records = []
    for operation, target_p, dtypes, limit in FLOOR_RATIO_TARGETS:
        for row in _large_rows(run):
            if (row["operation"] != operation or row["dtype"] not in dtypes
                    or (target_p is not None and row["p"] != target_p)):
                continue
            for backend in FASTDROP_BACKENDS:
                ratio = row["results"].get(backend, {}).get("ratio_to_floor")
                if ratio is not None:
                    title = OPERATIONS[operation].title + (f" p={target_p}" if target_p else "")
                    records.append(target_record(f"{title}: time / floor", backend, ratio, limit,
                                           ratio <= limit, _where(row)))
    return records


def backend_agreement(run):
    """Slower / faster of the two compiled backends on every large-array row."""
    records = []
    for row in _large_rows(run):
        numba_cell, cython_cell = (row["results"].get(name, {}) for name in FASTDROP_BACKENDS)
        if "best_s" in numba_cell and "best_s" in cython_cell:
            slower = max(numba_cell["best_s"], cython_cell["best_s"])
            faster = min(numba_cell["best_s"], cython_cell["best_s"])
            which = "numba" if numba_cell["best_s"] > cython_cell["best_s"] else "cython"
            records.append(target_record(f"{OPERATIONS[row['operation']].title}: backends agree",
                                   f"{which} slower", slower / faster, AGREEMENT_LIMIT,
                                   slower / faster <= AGREEMENT_LIMIT, _where(row)))
    return records


def mask_memory(backend, sizes=MASK_MEMORY_SIZES):
    """Bytes of the stored mask (dropout's and bernoulli_mask's) against ceil(n/64)*8."""
    import fastdrop

    worst = None
    for n in sizes:
        _, mask = fastdrop.dropout(np.ones(n, np.float32), 0.5, seed=1, backend=backend)
        words = fastdrop.bernoulli_mask(n, 0.5, seed=1, backend=backend)
        for measured in (mask.nbytes, mask.words.nbytes, words.nbytes):
            if measured != mask_bytes(n):
                worst = (n, measured)
    sizes_text = ", ".join(size_label(n) for n in sizes)
    return target_record("mask bytes == ceil(n/64)*8", backend,
                   "exact" if worst is None else f"{worst[1]} bytes at n={worst[0]}",
                   "exact", worst is None, f"n in {sizes_text}", unit="text")


def _status_bytes(key):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _status_bytes("VmHWM") is not None
    except OSError:
        return False


def peak_extra_memory(backend, n, threads=None, dtype=np.float32):
    """Peak memory the fused in-place forward allocates beyond its packed mask.

    Returns ``{"n", "array_bytes", "mask_bytes", "traced_extra_bytes", "rss_rise_bytes"}``:
    tracemalloc's peak (NumPy reports its buffers to it) minus the mask, and how far
    the process's peak resident memory (VmHWM, which also sees native allocations,
    thread stacks included) rose above its resident memory before the call, mask
    included (0 when the mask reuses freed pages); None where not measurable.
    """
    import fastdrop

    before_threads = fastdrop.get_num_threads()
    if threads is not None:
        fastdrop.set_num_threads(threads)
    try:
        x = np.full(n, 1.5, dtype=dtype)
        fastdrop.dropout(x, 0.5, seed=1, inplace=True, backend=backend)  # warm-up: JIT, threads
        rss_rise = None
        if _reset_peak_rss():
            rss_before = _status_bytes("VmRSS")
            fastdrop.dropout(x, 0.5, seed=1, inplace=True, backend=backend)
            rss_rise = _status_bytes("VmHWM") - rss_before
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            traced_before = tracemalloc.get_traced_memory()[0]
            _, mask = fastdrop.dropout(x, 0.5, seed=1, inplace=True, backend=backend)
            traced_extra = tracemalloc.get_traced_memory()[1] - traced_before - mask.nbytes
        finally:
            if not tracing:
                tracemalloc.stop()
    finally:
        fastdrop.set_num_threads(before_threads)
    return {"n": n, "array_bytes": x.nbytes, "mask_bytes": mask.nbytes,
            "traced_extra_bytes": traced_extra, "rss_rise_bytes": rss_rise}


def peak_memory_target(backend, threads=None, sizes=PEAK_MEMORY_SIZES):
    """O(threads), not O(n): the extra bytes do not grow with n and stay far below one copy."""
    small, large = (peak_extra_memory(backend, n, threads) for n in sizes)
    growth = large["traced_extra_bytes"] - small["traced_extra_bytes"]
    met = growth <= 64 * 1024 and large["traced_extra_bytes"] <= large["array_bytes"] // 64
    rss = "" if large["rss_rise_bytes"] is None else (
        f"; peak RSS rise, mask included: {_kib(small['rss_rise_bytes'])} / "
        f"{_kib(large['rss_rise_bytes'])} (mask {_kib(small['mask_bytes'])} / "
        f"{_kib(large['mask_bytes'])})")
    where = (f"tracemalloc extra at n={size_label(small['n'])} / {size_label(large['n'])}: "
             f"{_kib(small['traced_extra_bytes'])} / {_kib(large['traced_extra_bytes'])}"
             f"{rss}; one float32 copy at {size_label(large['n'])} = "
             f"{_kib(large['array_bytes'])}")
    return target_record("fused in place: peak extra memory beyond the mask", backend,
                   large["traced_extra_bytes"], "O(threads)", met, where, unit="bytes")


def _kib(count):
    return "n/a" if count is None else f"{count / 1024:.1f} KiB"


def small_array_ratio(backend, threads=None, repeat=5, min_time=0.05):
    """Time of fastdrop's in-place dropout on 1024 float32 over ``np.multiply(x, s, out=x)``."""
    import fastdrop

    before_threads = fastdrop.get_num_threads()
    if threads is not None:
        fastdrop.set_num_threads(threads)
    try:
        x, y, scale = (np.full(SMALL_N, 1.5, np.float32), np.full(SMALL_N, 1.5, np.float32),
                       np.float32(2.0))
        dropout = fastdrop.dropout
        timings = time_callables({
            "fastdrop": lambda: dropout(x, 0.5, seed=1, inplace=True, backend=backend),
            "multiply": lambda: np.multiply(y, scale, out=y)}, repeat, min_time)
        fastdrop_time, multiply_time = timings["fastdrop"].best, timings["multiply"].best
    finally:
        fastdrop.set_num_threads(before_threads)
    ratio = fastdrop_time / multiply_time
    return target_record(f"n={SMALL_N}: call / np.multiply(x, s, out=x)", backend, ratio,
                         SMALL_LIMIT, ratio <= SMALL_LIMIT,
                   f"{fastdrop_time * 1e6:.2f} us vs {multiply_time * 1e6:.2f} us")


def block_arrays(n=BLOCK_N):
    """(block, flat): a float32 block of about n elements and one array of as many.

    The block is cut at column `BLOCK_CUT` of an array of ``(len(block), BLOCK_COLUMNS)``.
    """
    rows = -(-n // (BLOCK_COLUMNS - BLOCK_CUT))
    block = np.full((rows, BLOCK_COLUMNS - BLOCK_CUT), 1.5, np.float32)
    return block, np.full(block.size, 1.5, np.float32)


def block_calls(backend, n=BLOCK_N):
    """{"block": call, "contiguous": call}: out-of-place dropout of `block_arrays`, p = 0.5."""
    import fastdrop

    block, flat = block_arrays(n)
    out_block, out_flat = np.empty_like(block), np.empty_like(flat)
    where = dict(origin=(0, BLOCK_CUT), global_shape=(len(block), BLOCK_COLUMNS))
    return {"block": lambda: fastdrop.dropout(block, 0.5, seed=1, out=out_block, **where,
                                              backend=backend),
            "contiguous": lambda: fastdrop.dropout(flat, 0.5, seed=1, out=out_flat,
                                                   backend=backend)}


def block_kernel_ratio(backend, threads=None, repeat=5, min_time=0.05):
    """Time of dropout on a block cut at column 37 over one contiguous range of as many elements.

    The same number of elements, p, threads and backend, the samples interleaved: what
    the block's runs cost (each row a run whose first and last mask words are partial).
    """
    import fastdrop

    before_threads = fastdrop.get_num_threads()
    if threads is not None:
        fastdrop.set_num_threads(threads)
    try:
        timings = time_callables(block_calls(backend), repeat, min_time)
        threads = fastdrop.get_num_threads()
    finally:
        fastdrop.set_num_threads(before_threads)
    ratio = timings["block"].best / timings["contiguous"].best
    return target_record(BLOCK_TITLE, backend, ratio, BLOCK_LIMIT, ratio <= BLOCK_LIMIT,
                         f"n={size_label(BLOCK_N)} float32 p=0.5 out= threads={threads}: "
                         f"{timings['block'].best * 1e3:.2f} ms vs "
                         f"{timings['contiguous'].best * 1e3:.2f} ms")


def _fresh_python_seconds(codes, env, runs):
    """Best wall time of ``python -c code`` for each code, runs interleaved after a warm-up."""
    import time

    best = [math.inf] * len(codes)
    for attempt in range(runs + 1):
        for index, code in enumerate(codes):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
            if attempt:  # the first round warms the file cache (and Numba's disk cache)
                best[index] = min(best[index], time.perf_counter() - start)
    return best


def cold_start_ratio(backend, runs=5):
    """A fresh interpreter importing fastdrop and running one small dropout, over ``import numpy``.

    Both commands run once untimed (warming the OS file cache and, for Numba, its
    on-disk cache), then ``runs`` times each, interleaved; the best of each counts.
    """
    import fastdrop

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastdrop.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root] + [part for part in [os.environ.get("PYTHONPATH")] if part]))
    code = ("import numpy as np, fastdrop; "
            f"fastdrop.dropout(np.ones(1000, np.float32), 0.5, seed=1, backend={backend!r})")
    fastdrop_time, numpy_time = _fresh_python_seconds([code, "import numpy"], env, runs)
    ratio = fastdrop_time / numpy_time
    return target_record("cold start / python -c 'import numpy'", backend, ratio, COLD_START_LIMIT,
                   ratio <= COLD_START_LIMIT,
                   f"best of {runs}: {fastdrop_time * 1e3:.0f} ms vs {numpy_time * 1e3:.0f} ms"
                   + (" (Numba cache warm)" if backend == "numba" else ""))


def measure_targets(run, backends=None, threads=None, cold_start_runs=5):
    """Every target of the issue: from the run's rows, and measured here for each backend."""
    from .._internal import backend_available

    backends = [name for name in (backends or FASTDROP_BACKENDS) if backend_available(name)]
    threads = threads if threads is not None else run["settings"]["threads"][-1]
    records = floor_ratio_targets(run)
    for backend in backends:
        records.append(mask_memory(backend))
    for backend in backends:
        records.append(peak_memory_target(backend, threads))
    for backend in backends:
        records.append(small_array_ratio(backend, threads))
    for backend in backends:
        records.append(cold_start_ratio(backend, cold_start_runs))
    for backend in backends:
        records.append(block_kernel_ratio(backend, threads))
    records.extend(backend_agreement(run))
    return records
