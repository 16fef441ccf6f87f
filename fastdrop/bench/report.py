"""What a benchmark run looks like: tables, thread scaling, the targets, JSON, the plot.

The tables come as text and as Markdown.

Cells are printed as measured: a ratio to the floor below 1x (the floor runs
parallel and fastdrop serial below its cutoff, or noise) or far above a target
stays in the table.
"""
import json

from .implementations import BASELINE, FLOOR, OPERATIONS
from .runner import size_label

COLORS = {"floor": "black", "numpy": "tab:red", "numpy-careful": "tab:orange",
          "torch": "tab:purple", "numba": "tab:blue", "cython": "tab:green"}


def format_time(seconds):
    """A duration in seconds as text: in ns, us or ms below one second, else in s."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_rate(gelem_per_s):
    """A throughput in Gelem/s as text: three significant digits, whole from 100 on."""
    return f"{gelem_per_s:.3g}" if gelem_per_s < 100 else f"{gelem_per_s:.0f}"


def format_ratio(ratio, decimals=2):
    """A ratio as text, e.g. ``"1.23x"``; None gives ``"-"``.

    ``decimals`` applies below 10x; from 10x on one decimal, from 100x on none.
    """
    if ratio is None:
        return "-"
    if ratio < 10:
        return f"{ratio:.{decimals}f}x"
    return f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def header_lines(run):
    """The lines that head a text report.

    Date and load average, versions, CPU and OpenMP, threads, the floor, the statistic,
    and one line per skipped (unavailable) implementation.
    """
    header, settings = run["header"], run["settings"]
    cpu_line = (f"cpu: {header['cpu']} ({header['cpus available']} CPUs available; "
                f"{' '.join(header['simd']) or 'no SIMD flags read'}); OpenMP "
                f"{'yes' if header['openmp'] else 'no' if header['openmp'] is False else 'n/a'}")
    load = header.get("load average")
    lines = [
        f"fastdrop bench  {header['date']}"
        + (f"  (load average at start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f})"
           if load else ""),
        " | ".join(f"{name} {header[name] or 'not installed'}"
                   for name in ("fastdrop", "numpy", "numba", "torch", "python"))
        + (f" | git {header['git']}" if header.get("git") else ""),
        cpu_line,
        f"threads: {', '.join(str(t) for t in settings['threads'])} (NumPy baselines run on one)",
        f"floor: {header['floor']}",
        f"statistic: {settings['statistic']}; {settings['repeat']} samples per cell, each "
        f">= {settings['min_time_s'] * 1e3:g} ms of back-to-back calls, after a warm-up call",
    ]
    for name, reason in run["unavailable"].items():
        lines.append(f"skipped: {name} ({reason})")
    return lines


def _multi_thread(run):
    return len(run["settings"]["threads"]) > 1


KEY_TITLES = ["operation", "n", "p", "dtype"]


def _row_cells(row):
    return [OPERATIONS[row["operation"]].title, size_label(row["n"]), f"{row['p']:g}",
            row["dtype"]]


def _key_cells(run, row):
    return _row_cells(row) + ([str(row["threads"])] if _multi_thread(run) else [])


def _key_titles(run):
    return KEY_TITLES + (["threads"] if _multi_thread(run) else [])


def _speedup_names(run):
    return [name for name in run["implementations"] if name not in (FLOOR, BASELINE)] \
        if BASELINE in run["implementations"] else []


def _text_table(columns):
    """Aligned text lines for [(group title, subtitle, values)].

    The first column is left-aligned, the rest right-aligned; a group title starts over its
    first column.
    """
    widths = [max(len(subtitle), *(len(value) for value in values)) if values else len(subtitle)
              for _, subtitle, values in columns]
    # a group title may be wider than its first column: let it run over the next ones
    group_line, position = "", 0
    for (group, _, _), width in zip(columns, widths):
        if group:
            start = max(position, len(group_line) + 2) if group_line else position
            group_line = group_line.ljust(start) + group
        position += width + 2
    numeric = [index >= 1 for index in range(len(columns))]
    lines = [group_line.rstrip()]
    lines.append("  ".join(subtitle.ljust(width) if not right else subtitle.rjust(width)
                           for (_, subtitle, _), width, right in zip(columns, widths, numeric)))
    lines.append("  ".join("-" * width for width in widths))
    for row_index in range(len(columns[0][2])):
        lines.append("  ".join(
            values[row_index].rjust(width) if right else values[row_index].ljust(width)
            for (_, _, values), width, right in zip(columns, widths, numeric)).rstrip())
    return lines


def format_table(run):
    """The run as a text table: one row per (operation, n, p, dtype[, threads])."""
    columns = [("", title, [cells[i] for cells in (_key_cells(run, row) for row in run["rows"])])
               for i, title in enumerate(_key_titles(run))]
    for name in run["implementations"]:
        subtitles = ["time", "Gel/s"] + ([] if name == FLOOR else ["xfloor"])
        for index, subtitle in enumerate(subtitles):
            values = []
            for row in run["rows"]:
                cell = row["results"].get(name)
                if cell is None:
                    values.append("")
                elif "error" in cell:
                    values.append("error" if index == 0 else "")
                else:
                    values.append([format_time(cell["best_s"]), format_rate(cell["gelem_per_s"]),
                                   format_ratio(cell.get("ratio_to_floor"))][index])
            columns.append((name if index == 0 else "", subtitle, values))
    for index, name in enumerate(_speedup_names(run)):
        values = [format_ratio(row["results"].get(name, {}).get("speedup_over_numpy"))
                  if "best_s" in row["results"].get(name, {}) else "" for row in run["rows"]]
        columns.append(("speed-up over numpy" if index == 0 else "", name, values))

    lines = header_lines(run) + [""] + _text_table(columns) + [""]
    lines.append("cells: time per call | Gel/s = 10^9 elements per second | xfloor = time / "
                 "the floor's best time in this run for the row's n, dtype and threads")
    lines.append("speed-up over numpy = the textbook NumPy formula's time / the implementation's")
    for name in run["implementations"]:
        lines.append(f"  {name}: {run['descriptions'][name]}")
    return "\n".join(lines)


def format_markdown(run, by_operation=False):
    """The run as a Markdown table: each cell 'time, Gelem/s, ratio to the floor'.

    ``by_operation`` gives one table per operation, each under a heading.
    """
    if by_operation:
        parts = []
        for operation in dict.fromkeys(row["operation"] for row in run["rows"]):
            part = dict(run, rows=[row for row in run["rows"] if row["operation"] == operation])
            parts.append(f"#### {OPERATIONS[operation].title}\n\n"
                         f"{OPERATIONS[operation].description}.\n\n{format_markdown(part)}")
        return "\n\n".join(parts)
    names = run["implementations"]
    speedups = _speedup_names(run)
    titles = _key_titles(run) + [f"{name}" for name in names] + \
        [f"{name} vs numpy" for name in speedups]
    lines = ["| " + " | ".join(titles) + " |",
             "|" + "|".join(["---"] * len(_key_titles(run)) + ["--:"] * (len(titles) -
                                                                        len(_key_titles(run))))
             + "|"]
    for row in run["rows"]:
        cells = _key_cells(run, row)
        for name in names:
            cell = row["results"].get(name)
            if cell is None:
                cells.append("")
            elif "error" in cell:
                cells.append("error")
            elif name == FLOOR:
                cells.append(f"{format_time(cell['best_s'])}<br>"
                             f"{format_rate(cell['gelem_per_s'])} G/s")
            else:
                cells.append(f"{format_time(cell['best_s'])}<br>{format_rate(cell['gelem_per_s'])}"
                             f" G/s<br>**{format_ratio(cell['ratio_to_floor'])}**")
        for name in speedups:
            cell = row["results"].get(name, {})
            cells.append(format_ratio(cell.get("speedup_over_numpy")) if "best_s" in cell else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SCALED_BACKENDS = ("cython", "numba")  # the fastdrop backends of the scaling table, in order


def _thread_counts(run):
    return sorted(set(run["settings"]["threads"]))


def scaling_columns(run):
    """The cells of the thread-scaling table.

    `format_scaling` and `format_scaling_markdown` render them.

    Parameters
    ----------
    run : dict
        A run from `runner.run_benchmarks` (or its JSON).

    Returns
    -------
    list of (group, name, values)
        ``group`` is None for the key columns (operation, n, p, dtype), a thread count
        for the throughput columns and ``"scaling"`` for the last ones; ``name`` is the
        key's title or the implementation; ``values`` holds one text cell per
        (operation, n, p, dtype), in run order. Empty for a run with one thread count.
    """
    thread_counts = _thread_counts(run)
    if len(thread_counts) < 2:
        return []
    names = [FLOOR] + [name for name in SCALED_BACKENDS if name in run["implementations"]]
    key_cells, results = {}, {}  # (operation, n, p, dtype) -> its cells; (key, threads) -> results
    for row in run["rows"]:
        key = (row["operation"], row["n"], row["p"], row["dtype"])
        key_cells.setdefault(key, _row_cells(row))
        results[key, row["threads"]] = row["results"]
    columns = [(None, title, [cells[index] for cells in key_cells.values()])
               for index, title in enumerate(KEY_TITLES)]

    def cell(key, threads, name):
        return results.get((key, threads), {}).get(name, {})

    for threads in thread_counts:
        for name in names:
            values = []
            for key in key_cells:
                result = cell(key, threads, name)
                if "error" in result:
                    values.append("error")
                elif "gelem_per_s" not in result:
                    values.append("-")
                elif name == FLOOR:
                    values.append(format_rate(result["gelem_per_s"]))
                else:
                    values.append(f"{format_rate(result['gelem_per_s'])} "
                                  f"({format_ratio(result.get('ratio_to_floor'))})")
            columns.append((threads, name, values))
    first, last = thread_counts[0], thread_counts[-1]
    for name in names:
        values = []
        for key in key_cells:
            start, end = cell(key, first, name), cell(key, last, name)
            if "best_s" in start and "best_s" in end:
                speedup = start["best_s"] / end["best_s"]
                values.append(format_ratio(speedup, decimals=1 if speedup >= 1 else 2))
            else:
                values.append("-")
        columns.append(("scaling", name, values))
    return columns


def _threads_text(threads):
    return f"{threads} thread" + ("" if threads == 1 else "s")


def _scaling_group_title(run, group, arrow):
    if group == "scaling":
        thread_counts = _thread_counts(run)
        return f"scaling, {thread_counts[0]}{arrow}{thread_counts[-1]} threads"
    return _threads_text(group)


def format_scaling(run):
    """How throughput changes with the thread count, as a text table.

    Parameters
    ----------
    run : dict
        A run from `runner.run_benchmarks` (or its JSON, ``fastdrop bench --json``).

    Returns
    -------
    str
        One line per (operation, n, p, dtype). For each thread count, ascending: the
        floor's Gelem/s and each fastdrop backend's (cython, then numba, those in the
        run) with its ratio to the floor at that thread count, ``12.3 (1.08x)``; then
        each one's time at the fewest threads divided by its time at the most,
        ``7.9x``. Missing cells are ``-``. Empty for a run with one thread count.

    See Also
    --------
    format_scaling_markdown : the same table in Markdown.
    """
    columns = scaling_columns(run)
    if not columns:
        return ""
    previous, text_columns = None, []
    for group, name, values in columns:  # the group title over its first column only
        title = _scaling_group_title(run, group, "->") if group not in (None, previous) else ""
        text_columns.append((title, name, values))
        previous = group
    thread_counts = _thread_counts(run)
    first, last = thread_counts[0], thread_counts[-1]
    notes = ["", ("cells: Gel/s = 10^9 elements per second (time / the floor's best time at the "
                  "same threads)"),
             f"scaling = time at {_threads_text(first)} / time at {_threads_text(last)}"
             + " (higher is better)"]
    return "\n".join(["thread scaling"] + _text_table(text_columns) + notes)


def format_scaling_markdown(run):
    """How throughput changes with the thread count, as a Markdown table.

    Takes a run as `format_scaling` does and returns its table in Markdown, one header
    cell per (thread count or scaling, implementation); empty for a run with one
    thread count.
    """
    columns = scaling_columns(run)
    if not columns:
        return ""
    titles = [name if group is None else f"{name}<br>{_scaling_group_title(run, group, '→')}"
              for group, name, _ in columns]
    lines = ["| " + " | ".join(titles) + " |",
             "|" + "|".join("---" if group is None else "--:" for group, _, _ in columns) + "|"]
    for row_index in range(len(columns[0][2])):
        lines.append("| " + " | ".join(values[row_index] for _, _, values in columns) + " |")
    return "\n".join(lines)


def _measured_text(record):
    if record["unit"] == "ratio":  # three decimals: 1.151 must not read as a limit of 1.15
        return format_ratio(record["measured"], decimals=3)
    if record["unit"] == "bytes":
        return f"{record['measured'] / 1024:.1f} KiB"
    return str(record["measured"])


def _limit_text(record):
    limit = record["limit"]
    return f"<= {format_ratio(limit)}" if isinstance(limit, (int, float)) else str(limit)


def target_rows(records):
    """The text cells of each target record: target, backend, measured, limit, met, where."""
    return [[record["target"], record["backend"], _measured_text(record), _limit_text(record),
             "met" if record["met"] else "NOT MET", record["where"]] for record in records]


TARGET_TITLES = ["target", "backend", "measured", "target", "", "where"]


def format_targets(records):
    """The issue's targets as a text table (reported, never asserted)."""
    rows = target_rows(records)
    widths = [max([len(title)] + [len(row[i]) for row in rows])
              for i, title in enumerate(TARGET_TITLES)]
    lines = ["targets (measured in this run; reported, not asserted)",
             "  ".join(title.ljust(width) for title, width in zip(TARGET_TITLES, widths)).rstrip(),
             "  ".join("-" * width for width in widths)]
    lines += ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip()
              for row in rows]
    return "\n".join(lines)


def format_targets_markdown(records):
    """The issue's targets as a Markdown table (reported, never asserted).

    Parameters
    ----------
    records : list of dict
        Target records, as `targets.measure_targets` returns them (``run["targets"]``).

    Returns
    -------
    str
        The table: a header, then one row per record (``|`` in cells escaped).
    """
    lines = ["| " + " | ".join(TARGET_TITLES[:4] + ["met", "where"]) + " |",
             "|---|---|--:|--:|---|---|"]
    for row in target_rows(records):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def save_json(run, path):
    """Write the whole run (header, settings, every cell, targets if measured) as JSON."""
    with open(path, "w") as handle:
        json.dump(run, handle, indent=1)
        handle.write("\n")


def plot(run, path):
    """Throughput against n, one panel per (operation) and (dtype, p, threads); floor as a line.

    Needs matplotlib (``pip install matplotlib``); raises ImportError saying so otherwise.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the plot needs matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    operations = list(dict.fromkeys(row["operation"] for row in run["rows"]))
    combinations = list(dict.fromkeys((row["dtype"], row["p"], row["threads"])
                                      for row in run["rows"]))
    figure, axes = plt.subplots(len(combinations), len(operations), squeeze=False,
                                figsize=(3.6 * len(operations), 3.0 * len(combinations) + 0.8),
                                sharex=True)
    handles = {}
    for row_index, (dtype, p, threads) in enumerate(combinations):
        for column_index, operation in enumerate(operations):
            axis = axes[row_index][column_index]
            rows = [row for row in run["rows"] if row["operation"] == operation
                    and (row["dtype"], row["p"], row["threads"]) == (dtype, p, threads)]
            if not rows:
                axis.set_axis_off()
                axis.text(0.5, 0.5, f"{OPERATIONS[operation].title}:\nsee {run['rows'][0]['dtype']}"
                          if OPERATIONS[operation].dtype_independent else "not measured",
                          ha="center", va="center", transform=axis.transAxes, color="gray")
                continue
            for name in run["implementations"]:
                points = [(row["n"], row["results"][name]["gelem_per_s"]) for row in rows
                          if "gelem_per_s" in row["results"].get(name, {})]
                if not points:
                    continue
                sizes, rates = zip(*points)
                style = dict(color="black", linewidth=2.2, linestyle="--") if name == FLOOR else \
                    dict(color=COLORS.get(name), marker="o", markersize=3.5, linewidth=1.2)
                (line,) = axis.plot(sizes, rates, label=name, **style)
                handles.setdefault(name, line)
            axis.set_xscale("log", base=2)
            ticks = sorted({row["n"] for row in run["rows"]})
            ticks = ticks[::2] if len(ticks) > 9 else ticks
            axis.set_xticks(ticks, [f"$2^{{{n.bit_length() - 1}}}$" if n & (n - 1) == 0 else str(n)
                                    for n in ticks])
            axis.xaxis.set_minor_locator(ticker.NullLocator())
            axis.set_yscale("log")
            axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axis.yaxis.set_minor_formatter(ticker.NullFormatter())
            axis.grid(True, which="both", alpha=0.3)
            axis.set_title(f"{OPERATIONS[operation].title}\n{dtype}, p={p:g}, {threads} threads",
                           fontsize=9)
            if column_index == 0:
                axis.set_ylabel("Gelem/s (higher is better)")
            if row_index == len(combinations) - 1:
                axis.set_xlabel("n (elements)")
    header = run["header"]
    figure.suptitle(f"fastdrop {header['fastdrop']} on {header['cpu']}, {header['date']}",
                    fontsize=10)
    figure.legend(list(handles.values()), list(handles), loc="lower center",
                  ncol=len(handles), frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    figure.savefig(path, dpi=90)
    plt.close(figure)
