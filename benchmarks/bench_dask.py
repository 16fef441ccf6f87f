"""fastdrop.dask against in-memory fastdrop and dask's random numbers (needs the dask extra).

    PYTHONPATH=. python benchmarks/bench_dask.py [--sizes 2^26] [--chunks 2^20 2^22]

A float32 array of n elements, shaped ``(n / 4096, 4096)``, goes into a dask array with
``da.from_array`` in chunks of whole rows (``CHUNKS`` elements each); each cell stores
dropout of it into a preallocated NumPy array, so dask's final concatenation is not
timed. Dask runs its threaded scheduler with ``workers`` threads and fastdrop one
thread per task; the in-memory call runs on ``workers`` threads. Every timed call
builds its graph too, as a user's call does. The implementations:

- ``in-memory``: ``fastdrop.dropout(x, p, seed=, out=target)``, the baseline;
- ``fastdrop.dask``: ``da.store(fastdrop.dask.dropout(x_dask, p, seed=)[0], target,
  lock=False)``, the lazy default path: each task allocates its block, dask copies it;
- ``fastdrop.dask out=``: ``fastdrop.dask.dropout(x_dask, p, seed=, out=target)``: each
  task's kernel writes straight into its region of the target;
- ``dask-native``: ``da.store(x * (da.random.random(x.shape, chunks=x.chunks) >= p) /
  (1 - p), target, lock=False)``, the formula with dask's own random numbers;
- ``da.store copy``: ``da.store(x_dask, target, lock=False)``, no dropout at all: dask's
  task overhead and the one copy into the target, what any stored graph pays.

`time_breakdown` measures, on one thread without dask, what a block costs: the kernel
writing into the target's region, the kernel into a fresh output array, and the copy of
a block into the target (docs/dask.md, where the time goes).
"""
import argparse
import math
import sys

import numpy as np

from fastdrop.bench.runner import size_label, time_callables

SEED, STREAM, P = 1234, 0, 0.5
SIZES = (1 << 26, 1 << 28)
CHUNKS = (1 << 18, 1 << 20, 1 << 22, 1 << 24)
COLUMNS = 1 << 12
WORKERS = 2
TARGET_CHUNKS = 1 << 22  # the targets hold for chunks of this many elements and more
IN_MEMORY_LIMIT = 2.0  # time / in-memory time: at least half its speed
NATIVE_LIMIT = 0.2  # time / dask-native time: at least 5x its speed
IMPLEMENTATIONS = ("in-memory", "fastdrop.dask", "fastdrop.dask out=", "dask-native",
                   "da.store copy")
RATIOS = (("fastdrop.dask", "in-memory"), ("fastdrop.dask out=", "in-memory"),
          ("fastdrop.dask", "dask-native"), ("fastdrop.dask out=", "dask-native"))
PARTS = ("kernel into target", "kernel, fresh output", "copy into target")


def shape_of(n):
    """The benchmark's 2-d shape for n elements: rows of ``COLUMNS`` where n allows."""
    columns = math.gcd(n, COLUMNS)
    return (n // columns, columns)


def dask_array(values, chunk):
    """``values`` as a dask array in chunks of whole rows, about ``chunk`` elements each."""
    import dask.array as da

    rows = max(1, chunk // values.shape[1])
    return da.from_array(values, chunks=(rows, values.shape[1]))


def setups(values, target, chunk, p):
    """{implementation: zero-argument call} for one chunk size (the timed calls)."""
    import dask.array as da

    import fastdrop
    import fastdrop.dask

    x = dask_array(values, chunk)

    def in_memory():
        fastdrop.dropout(values, p, seed=SEED, stream=STREAM, out=target)

    def lazy_and_store():
        da.store(fastdrop.dask.dropout(x, p, seed=SEED, stream=STREAM)[0], target, lock=False)

    def into_target():
        fastdrop.dask.dropout(x, p, seed=SEED, stream=STREAM, out=target)

    def native():
        uniform = da.random.random(x.shape, chunks=x.chunks)
        da.store(x * (uniform >= p) / (1 - p), target, lock=False)

    def copy():
        da.store(x, target, lock=False)

    return dict(zip(IMPLEMENTATIONS, (in_memory, lazy_and_store, into_target, native, copy)))


def time_chunks(n, chunks=CHUNKS, p=P, workers=WORKERS, repeat=3, min_time=0.05, progress=None):
    """Best seconds per call of every implementation for each chunk size: {chunk: {name: s}}.

    The in-memory call does not depend on the chunks: it is timed in every round, and
    each chunk size's cells are interleaved with it.
    """
    import dask

    import fastdrop

    values = np.random.default_rng(0).standard_normal(shape_of(n), dtype=np.float32)
    target = np.zeros_like(values)  # touched: no cell pays for its first pages
    results = {}
    with dask.config.set(scheduler="threads", num_workers=workers), \
            fastdrop.num_threads(workers), np.errstate(all="ignore"):
        for chunk in chunks:
            timings = time_callables(setups(values, target, chunk, p), repeat, min_time)
            results[chunk] = {name: timing.best for name, timing in timings.items()}
            if progress is not None:
                cells = "  ".join(f"{name} {n / seconds / 1e9:.3f}"
                                  for name, seconds in results[chunk].items())
                print(f"  dask n={size_label(n)} chunk={size_label(chunk)}: {cells} Gelem/s",
                      file=progress, flush=True)
    return results


def _block_parts(values, target, chunk, p):
    """{part: call} over the blocks of ``values`` in chunks of whole rows (see `time_breakdown`)."""
    import fastdrop

    rows = max(1, chunk // values.shape[1])
    blocks = [(values[start:start + rows], start) for start in range(0, len(values), rows)]
    where = dict(seed=SEED, global_shape=values.shape)
    done = [fastdrop.dropout(block, p, origin=(start, 0), **where)[0] for block, start in blocks]

    def into_target():
        for block, start in blocks:
            fastdrop.dropout(block, p, origin=(start, 0), out=target[start:start + len(block)],
                             **where)

    def fresh_output():
        for block, start in blocks:
            fastdrop.dropout(block, p, origin=(start, 0), **where)

    def copy():
        for (block, start), result in zip(blocks, done):
            target[start:start + len(block)] = result

    return {"kernel into target": into_target, "kernel, fresh output": fresh_output,
            "copy into target": copy}


def time_breakdown(n, chunks=CHUNKS, p=P, repeat=3, min_time=0.05):
    """Seconds per call of one block's parts on one thread, without dask: {chunk: {part: s}}.

    Parts, summed over all blocks of an array of n elements: ``kernel into target`` (the
    kernel writing into the target's region), ``kernel, fresh output`` (into a new array,
    as a lazy task does) and ``copy into target`` (what ``da.store`` does with it).
    """
    import fastdrop

    values = np.random.default_rng(0).standard_normal(shape_of(n), dtype=np.float32)
    target = np.zeros_like(values)
    results = {}
    with fastdrop.num_threads(1):
        for chunk in chunks:
            timings = time_callables(_block_parts(values, target, chunk, p), repeat, min_time)
            results[chunk] = {name: timing.best for name, timing in timings.items()}
    return results


def target_records(n, times):
    """The issue's targets from `time_chunks`'s result, for chunks of `TARGET_CHUNKS` and more."""
    from targets import target_record

    records = []
    for chunk, cells in times.items():
        if chunk < TARGET_CHUNKS:
            continue
        where = f"n={size_label(n)} float32, chunks of {size_label(chunk)} elements"
        for name in ("fastdrop.dask", "fastdrop.dask out="):
            if name not in cells:
                continue
            for baseline, limit in (("in-memory", IN_MEMORY_LIMIT), ("dask-native", NATIVE_LIMIT)):
                if baseline in cells:
                    ratio = cells[name] / cells[baseline]
                    records.append(target_record(
                        f"{name}: time / {baseline} time", "auto", ratio, limit, ratio <= limit,
                        f"{where}; speed {1 / ratio:.2f}x {baseline}"))
    return records


def run(sizes=SIZES, chunks=CHUNKS, p=P, workers=WORKERS, repeat=3, min_time=0.05,
        targets=True, progress=None):
    """Measure every size and chunk size, the breakdown and (unless not) the targets.

    Returns
    -------
    dict
        ``{"header", "settings", "rows": [{"n", "chunk", "seconds": {name: s},
        "breakdown": {part: s}}], "targets": [...]}``: best seconds per call;
        no ``"targets"`` when ``targets`` is false.
    """
    import dask

    from fastdrop.bench.runner import header

    rows, records = [], []
    for n in sizes:
        times = time_chunks(n, chunks, p, workers, repeat, min_time, progress)
        breakdown = time_breakdown(n, chunks, p, repeat, min_time)
        rows += [{"n": n, "chunk": chunk, "seconds": times[chunk], "breakdown": breakdown[chunk]}
                 for chunk in chunks]
        records += target_records(n, times)
    section = {"header": dict(header([workers]), dask=dask.__version__),
               "settings": {"sizes": list(sizes), "chunks": list(chunks), "p": p,
                            "workers": workers, "repeat": repeat, "min_time_s": min_time,
                            "statistic": "best sample, in seconds per call, samples "
                                         "interleaved"},
               "rows": rows}
    if targets:
        section["targets"] = records
    return section


def _table_row(row):
    """The text cells of one (n, chunk) row of `format_section`."""
    n, seconds, parts = row["n"], row["seconds"], row["breakdown"]
    speeds = [f"{n / seconds[name] / 1e9:.3f}" if name in seconds else "-"
              for name in IMPLEMENTATIONS]
    ratios = [f"{seconds[baseline] / seconds[name]:.2f}x"
              if name in seconds and baseline in seconds else "-"
              for name, baseline in RATIOS]
    return ([size_label(n), size_label(row["chunk"])] + speeds + ratios
            + [f"{parts[part] / n * 1e9:.2f}" for part in PARTS])


def format_section(run, markdown=False):
    """Gelem/s of each implementation per (n, chunk), the ratios, and the one-thread breakdown."""
    titles = (["n", "chunk"] + [f"{name} Gelem/s" for name in IMPLEMENTATIONS]
              + ["dask / in-memory", "out= / in-memory", "dask / native", "out= / native"]
              + [f"ns/elem {part}" for part in PARTS])
    rows = [_table_row(row) for row in run["rows"]]
    settings = run["settings"]
    caption = (f"fastdrop.dask dropout p={settings['p']} float32, stored into a NumPy array; "
               f"dask {run['header']['dask']} threaded scheduler, {settings['workers']} workers, "
               f"fastdrop 1 thread per task; in-memory on {settings['workers']} threads; "
               f"breakdown on 1 thread without dask")
    if markdown:
        lines = [caption, "", "| " + " | ".join(titles) + " |",
                 "|" + "|".join("--:" for _ in titles) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(lines)
    widths = [max(len(title), *(len(cells[i]) for cells in rows)) for i, title in
              enumerate(titles)]
    lines = [caption, "  ".join(title.rjust(width) for title, width in zip(titles, widths))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(cells, widths))
              for cells in rows]
    return "\n".join(lines)


def main(argv=None):
    """Measure with the command line's settings; print the table and the targets."""
    from targets import add_script_arguments, print_and_save

    from fastdrop.cli import arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=arguments.size, default=list(SIZES),
                        metavar="N", help="elements of the float32 array (default 2^26 2^28)")
    parser.add_argument("--chunks", nargs="+", type=arguments.size, default=list(CHUNKS),
                        metavar="N", help="elements per chunk (default 2^18 2^20 2^22 2^24)")
    parser.add_argument("--p", type=arguments.number(0, 1, high_open=True), default=P)
    parser.add_argument("--workers", type=arguments.threads, default=WORKERS,
                        help="dask's threads, and the in-memory call's (default 2)")
    add_script_arguments(parser, repeat=3)
    args = parser.parse_args(argv)
    section = run(sizes=args.sizes, chunks=args.chunks, p=args.p, workers=args.workers,
                  repeat=args.repeat, min_time=args.min_time, progress=sys.stderr)
    print_and_save(section, args, format_section(section, markdown=args.markdown))


if __name__ == "__main__":
    main()
