"""fastdrop's performance targets, measured and reported (never asserted on time).

    PYTHONPATH=. python benchmarks/targets.py            # 2^22 float32, p 0.1 and 0.5
    PYTHONPATH=. python benchmarks/targets.py --sizes 2^26 --dtypes float32 float64

Ratios to the floor come from a benchmark run (`fastdrop.bench.runner.run_benchmarks`):
its largest size is the "large array" (the targets are stated at n = 2^26). The other
targets are measured here: mask memory, peak extra memory of the fused in-place path,
the cost of a call on 1024 elements, the cold start of a fresh interpreter and a block
of a larger array against one contiguous range. How far apart the two compiled
backends are is reported, not a target: Cython carries the tuning.

Every record is ``{"target", "backend", "measured", "limit", "met", "where", "unit"}``;
``unit`` says what ``measured`` is: "ratio", "bytes" or "text"; ``met`` is None for a
figure that is reported only.
"""
import argparse
import math
import os
import subprocess
import sys
import tracemalloc

import numpy as np

from fastdrop.bench.implementations import OPERATIONS
from fastdrop.bench.report import format_ratio
from fastdrop.bench.runner import size_label, time_callables

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
# a 2-d block cut at column 37 of a 1000-column array: each row a run of 963 elements
# whose first and last mask words are partial (docs/mask-stream.md, section 10)
BLOCK_N = 1 << 22
BLOCK_COLUMNS, BLOCK_CUT = 1000, 37
BLOCK_LIMIT = 1.3
BLOCK_TITLE = f"block cut at column {BLOCK_CUT} of {BLOCK_COLUMNS}: time / one contiguous range"
MASK_MEMORY_SIZES = (1, 63, 64, 65, 1000, (1 << 20) + 3)
PEAK_MEMORY_SIZES = (1 << 20, 1 << 24)
FASTDROP_BACKENDS = ("numba", "cython")


def mask_bytes(n):
    """Bytes of a packed mask of n elements: ceil(n / 64) uint64 words."""
    return math.ceil(n / 64) * 8


def target_record(target, backend, measured, limit, met, where="", unit="ratio"):
    """One target record: ``{"target", "backend", "measured", "limit", "met", "where", "unit"}``.

    ``met`` is stored as a bool, or None for a figure reported without a limit; ``unit``
    says what ``measured`` is: "ratio", "bytes" or "text".
    """
    return {"target": target, "backend": backend, "measured": measured, "limit": limit,
            "met": None if met is None else bool(met), "where": where, "unit": unit}


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


def backend_ratio(run):
    """Numba's time / Cython's on every large-array row: reported, not a target."""
    records = []
    for row in _large_rows(run):
        numba_cell, cython_cell = (row["results"].get(name, {}) for name in FASTDROP_BACKENDS)
        if "best_s" in numba_cell and "best_s" in cython_cell:
            records.append(target_record(
                f"{OPERATIONS[row['operation']].title}: numba time / cython time", "both",
                numba_cell["best_s"] / cython_cell["best_s"], None, None, _where(row)))
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
    """Every target: from the run's rows, and measured here for each backend."""
    from fastdrop import available_backends

    backends = [name for name in (backends or FASTDROP_BACKENDS)
                if name in available_backends()]
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
    records.extend(backend_ratio(run))
    return records


# ------------------------------------------------------------------------ the tables

def _measured_text(record):
    if record["unit"] == "ratio":  # three decimals: 1.151 must not read as a limit of 1.15
        return format_ratio(record["measured"], decimals=3)
    if record["unit"] == "bytes":
        return f"{record['measured'] / 1024:.1f} KiB"
    return str(record["measured"])


def _limit_text(limit):
    if limit is None:
        return "-"
    return f"<= {format_ratio(limit)}" if isinstance(limit, (int, float)) else str(limit)


def _status(met):
    return "reported" if met is None else "met" if met else "NOT MET"


TITLES = ["target", "backend", "measured", "limit", "", "where"]


def target_rows(records):
    """The text cells of each record: target, backend, measured, limit, status, where."""
    return [[record["target"], record["backend"], _measured_text(record),
             _limit_text(record["limit"]), _status(record["met"]), record["where"]]
            for record in records]


def format_targets(records):
    """The targets as a text table (reported, never asserted)."""
    rows = target_rows(records)
    widths = [max([len(title)] + [len(row[i]) for row in rows]) for i, title in enumerate(TITLES)]

    def line(cells):
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return "\n".join(["targets (measured in this run; reported, not asserted)", line(TITLES),
                      "  ".join("-" * width for width in widths)] + [line(row) for row in rows])


def format_targets_markdown(records):
    """The targets as a Markdown table (``|`` in cells escaped)."""
    lines = ["| " + " | ".join(TITLES[:4] + ["met", "where"]) + " |",
             "|---|---|--:|--:|---|---|"]
    for row in target_rows(records):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def add_script_arguments(parser, repeat):
    """The options every benchmark script takes: --repeat, --min-time, --markdown, --json."""
    from fastdrop.cli import arguments

    parser.add_argument("--repeat", type=arguments.integer(1), default=repeat)
    parser.add_argument("--min-time", type=arguments.number(0, low_open=True), default=0.05)
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", type=arguments.output_file, metavar="PATH",
                        help="also save the results as JSON")


def print_and_save(results, args, table=None):
    """Print a script's ``table`` (if any) and ``results["targets"]``; save the JSON if asked."""
    from fastdrop.bench.report import save_json

    if table is not None:
        print(table)
        print()
    print(format_targets_markdown(results["targets"]) if args.markdown
          else format_targets(results["targets"]))
    if args.json:
        save_json(results, args.json)


def main(argv=None):
    """Measure the rows the floor-ratio targets need, then every other target; print them."""
    from fastdrop.bench import runner
    from fastdrop.cli import arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=arguments.size, default=[1 << 22],
                        metavar="N", help="element counts; the largest is the 'large array' "
                                          "(default 2^22; the targets are stated at 2^26)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"],
                        choices=("float32", "float64", "bfloat16"))
    parser.add_argument("--threads", type=arguments.threads, help="default: fastdrop's")
    parser.add_argument("--cold-start-runs", type=arguments.integer(1), default=5,
                        help="fresh interpreters timed per command (default 5)")
    add_script_arguments(parser, repeat=5)
    args = parser.parse_args(argv)
    operations = list(dict.fromkeys(operation for operation, *_ in FLOOR_RATIO_TARGETS))
    run = runner.run_benchmarks(
        operations=operations, sizes=args.sizes, ps=[0.5, 0.1], dtypes=args.dtypes,
        threads=args.threads, implementations=["numba", "cython"], repeat=args.repeat,
        min_time=args.min_time, progress=sys.stderr)
    run["targets"] = measure_targets(run, cold_start_runs=args.cold_start_runs)
    print_and_save(run, args)


if __name__ == "__main__":
    main()
