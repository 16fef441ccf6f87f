"""What ``fastdrop bench`` prints: the machine and versions, then one table of ratios.

One row per operation and n; for each of fastdrop's backends, its time over the memory
floor's ("× memory floor": 1.00× is as fast as the memory allows) and its speed-up over
NumPy's textbook formula and over PyTorch ("vs NumPy", "vs PyTorch": their time /
fastdrop's). Cells are printed as measured, below 1× too. No line is wider than `WIDTH`.
"""
import json
import textwrap

from .implementations import BASELINE, FLOOR, OPERATIONS
from .runner import size_label

WIDTH = 100
BACKENDS = ("cython", "numba")  # fastdrop's compiled backends, the default first
TORCH = "torch"
BUSY_RATIO = 2.0  # two backends this far apart on one row: something else had the cores
BUSY_MIN_N = 1 << 20  # below, a call's fixed cost differs between the backends by design


def format_time(seconds):
    """A duration in seconds as text: in ns, us or ms below one second, else in s."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_ratio(ratio, decimals=2):
    """A ratio as text, e.g. ``"1.23×"``; None gives ``"-"``.

    ``decimals`` applies below 10×; from 10× on one decimal, from 100× on none.
    """
    if ratio is None:
        return "-"
    if ratio < 10:
        return f"{ratio:.{decimals}f}×"
    return f"{ratio:.1f}×" if ratio < 100 else f"{ratio:.0f}×"


def _wrap(text):
    return textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def _plural(count, word):
    return f"{count} {word}" + ("" if count == 1 else "s")


def header_lines(run):
    """The machine (CPU, SIMD path, threads) and the versions, wrapped to `WIDTH`."""
    header, threads = run["header"], run["settings"]["threads"]
    openmp = {True: "; OpenMP on", False: "; OpenMP off (a serial build)"}.get(header["openmp"], "")
    machine = (f"machine: {header['cpu']}, {header['simd path']}, "
               f"{_plural(header['cpus available'], 'CPU')}; "
               f"{', '.join(map(str, threads))} thread{'s' if threads != [1] else ''}{openmp}")
    versions = "versions: " + ", ".join(
        f"{label} {header[key]}" for label, key in (
            ("fastdrop", "fastdrop"), ("NumPy", "numpy"), ("Numba", "numba"),
            ("PyTorch", "torch"), ("Python", "python")) if header.get(key))
    return _wrap(f"fastdrop bench, {header['date']}") + _wrap(machine) + _wrap(versions)


def _backends(run):
    return [name for name in BACKENDS if name in run["implementations"]]


def _comparisons(run):
    """(group title, implementation) of the ratio columns: floor, then NumPy and PyTorch."""
    groups = [("× memory floor", FLOOR)]
    groups += [(title, name) for title, name in (("vs NumPy", BASELINE), ("vs PyTorch", TORCH))
               if name in run["implementations"]]
    return groups


def _ratio(row, backend, other):
    """``backend``'s time / the floor's, or ``other``'s time / ``backend``'s; None if missing."""
    mine = row["results"].get(backend, {}).get("best_s")
    theirs = row["results"].get(other, {}).get("best_s")
    if mine is None or theirs is None:
        return None
    return mine / theirs if other == FLOOR else theirs / mine


def _columns(run, rows):
    """[(group title, column title, cells, left-aligned)] of one block of rows."""
    columns = [("", "operation", [OPERATIONS[row["operation"]].title for row in rows], True),
               ("", "n", [size_label(row["n"]) for row in rows], False),
               ("", "floor time", [format_time(row["results"][FLOOR]["best_s"])
                                   if "best_s" in row["results"].get(FLOOR, {}) else "-"
                                   for row in rows], False)]
    for group, other in _comparisons(run):
        for index, backend in enumerate(_backends(run)):
            columns.append((group if index == 0 else "", backend,
                            [format_ratio(_ratio(row, backend, other)) for row in rows], False))
    return columns


def _text_table(columns):
    """Aligned lines: group titles, column titles, a rule, the rows.

    A group title starts over its first column; the group's last column widens if the
    title is longer than the group's columns.
    """
    widths = [max([len(title)] + [len(cell) for cell in cells])
              for _, title, cells, _ in columns]
    starts = [index for index, (group, *_) in enumerate(columns) if group] + [len(columns)]
    for first, end in zip(starts, starts[1:]):
        span = sum(widths[first:end]) + 2 * (end - first - 1)
        widths[end - 1] += max(0, len(columns[first][0]) - span)

    def line(texts):
        return "  ".join(text.ljust(width) if left else text.rjust(width)
                         for text, width, (*_, left) in zip(texts, widths, columns)).rstrip()

    group_line, start = "", 0
    for (group, *_), width in zip(columns, widths):
        group_line = group_line.ljust(start) + group if group else group_line
        start += width + 2
    lines = [group_line, line([title for _, title, _, _ in columns]),
             "  ".join("-" * width for width in widths)]
    lines += [line(cells) for cells in zip(*(cells for _, _, cells, _ in columns))]
    return lines


def _blocks(run):
    """{(dtype, p, threads): rows}, in run order: one table each."""
    blocks = {}
    for row in run["rows"]:
        blocks.setdefault((row["dtype"], row["p"], row["threads"]), []).append(row)
    return blocks


def legend_lines(run):
    """What the columns mean, what was left out and why, and the cells that failed."""
    samples = run["settings"]["repeat"]
    text = ["× memory floor: the backend's time / the time of x *= s over the same array on the "
            "same threads (1.00× is as fast as the memory allows; lower is better).",
            "vs NumPy: the time of NumPy's textbook x * (rng.random(x.shape) >= p) / (1 - p) / "
            "the backend's (higher is better)."]
    if TORCH in run["implementations"]:
        text.append("vs PyTorch: the time of torch.nn.functional.dropout (and its counterparts "
                    "for masks, backward, channels and noise) / the backend's.")
    text.append(f"Each time is the best of {_plural(samples, 'sample')}, the columns' samples "
                f"interleaved; floor time: the memory floor's time per call.")
    for name, reason in run["unavailable"].items():
        text.append(f"not measured: {name} ({reason}).")
    for row in run["rows"]:
        for name, cell in row["results"].items():
            if "error" in cell:
                text.append(f"error: {name} on {OPERATIONS[row['operation']].title} at "
                            f"n={size_label(row['n'])}: {cell['error']}")
    return [wrapped for line in text for wrapped in _wrap(line)]


def busy_note(run):
    """One line if two backends differ by more than `BUSY_RATIO` on one large row, else None.

    The backends do the same work on the same memory; far apart at a size where a call's
    fixed cost does not count, the likelier cause is another process on the cores.
    """
    worst = None
    for row in run["rows"]:
        times = {name: row["results"][name]["best_s"] for name in _backends(run)
                 if "best_s" in row["results"].get(name, {})}
        if row["n"] < BUSY_MIN_N or len(times) < 2:
            continue
        slow, fast = max(times, key=times.get), min(times, key=times.get)
        ratio = times[slow] / times[fast]
        if ratio > BUSY_RATIO and (worst is None or ratio > worst[0]):
            worst = (ratio, slow, fast, row)
    if worst is None:
        return None
    ratio, slow, fast, row = worst
    where = f" ({OPERATIONS[row['operation']].title}, {size_label(row['n'])})"
    note = "{} {} slower than {}{}: the machine may be busy; rerun."
    ratio = format_ratio(ratio, decimals=1)
    text = note.format(slow, ratio, fast, where)
    return text if len(text) <= WIDTH else note.format(slow, ratio, fast, "")


def format_table(run):
    """The whole report of a run as text: header, one table per (dtype, p, threads), legend.

    Parameters
    ----------
    run : dict
        A run from `runner.run_benchmarks` (or its JSON).

    Returns
    -------
    str
        Lines of at most `WIDTH` characters; the last one is `busy_note` if it has one.
    """
    lines = header_lines(run)
    for (dtype, p, threads), rows in _blocks(run).items():
        lines += ["", f"{dtype}, p = {p:g}, {_plural(threads, 'thread')}"]
        lines += _text_table(_columns(run, rows))
    lines += [""] + legend_lines(run)
    note = busy_note(run)
    return "\n".join(lines + ([note] if note else []))


def save_json(run, path):
    """Write the whole run (header, settings, every cell) as JSON."""
    with open(path, "w") as handle:
        json.dump(run, handle, indent=1)
        handle.write("\n")
