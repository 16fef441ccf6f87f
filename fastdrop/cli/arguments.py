"""The command line's parser and argument types, shared by every subcommand.

A bad command line stops before any work with one line on stderr,
``fastdrop <subcommand>: error: <what>``, and exit status 2, argparse's own
convention. Both ways there end in `CommandParser.error`: an argument type below
refuses a value while the command line is parsed, or a subcommand's check raises
`UsageError` for what needs several options, or the data, to decide, and
`fastdrop.cli.main` hands it to the subcommand's parser.
"""
import argparse
import math
import os
import re

from ..maskstream.spec import MAX_SEED

# a typo guard: OpenMP, BLAS and torch start one OS thread per count asked for
MAX_THREADS = max(1024, os.cpu_count() or 1)


class UsageError(Exception):
    """A bad command line found after parsing; reported as argparse reports its own."""


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that takes no abbreviated options and reports errors on one line.

    Subparsers made by `add_subparsers` are of the same class.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # else `train --p 2` would mean `--plot 2`
        super().__init__(*args, **kwargs)

    def error(self, message):
        """Exit with status 2, printing ``PROG: error: MESSAGE`` on one line of stderr.

        Whitespace in ``message`` (newlines included) is collapsed to single spaces.
        """
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def _interval(low, high, low_open, high_open):
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def integer(minimum, maximum=None):
    """An argument type: a whole number from ``minimum`` to ``maximum`` (no limit if None)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            limits = (f">= {minimum}" if maximum is None
                      else f"from {minimum} to {_power_of_two_text(maximum)}")
            raise argparse.ArgumentTypeError(f"must be an integer {limits}, got {text!r}")
        return value

    return parse


def _power_of_two_text(value):
    return "2^64 - 1" if value == 2**64 - 1 else str(value)


def number(low=None, high=None, *, low_open=False, high_open=False):
    """An argument type: a finite float in the interval from ``low`` to ``high``.

    ``low_open``/``high_open`` leave that end out; None means no limit on that side.
    NaN and infinities are always refused.
    """
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        inside = math.isfinite(value)
        if low is not None:
            inside = inside and (value > low if low_open else value >= low)
        if high is not None:
            inside = inside and (value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(
                f"must be a finite number {_interval(low, high, low_open, high_open)}, "
                f"got {text!r}")
        return value

    return parse


seed = integer(0, MAX_SEED)
threads = integer(1, MAX_THREADS)


def parse_size(text):
    """An element count: 65536, 2^16, 2**16 or 1<<16."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:(\^|\*\*|<<)\s*(\d+))?\s*", text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (write 65536, 2^16 or 1<<16)")
    base, operator, exponent = match.groups()
    if operator is not None and int(exponent) > 64:  # 2^100000 would take a while to print
        raise ValueError(f"size {text!r} is beyond 2^64 elements")
    if operator is None:
        value = int(base)
    elif operator == "<<":
        value = int(base) << int(exponent)
    else:
        value = int(base) ** int(exponent)
    if value < 1:
        raise ValueError(f"size must be >= 1, got {text!r}")
    return value


def size(text):
    """An argument type: `parse_size`."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def backend(text):
    """An argument type: 'auto' or a backend built and importable here."""
    from .._internal import BACKENDS, resolve_backend

    if text == "auto":
        return text
    if text not in BACKENDS:
        raise argparse.ArgumentTypeError(
            f"unknown backend {text!r}; choose from auto, {', '.join(BACKENDS)}")
    try:
        resolve_backend(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def input_file(text):
    """An argument type: an existing, readable file."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"file {text!r} is not readable")
    return text


def output_file(text):
    """An argument type: a file this process can create or overwrite, in a folder that exists."""
    if not text:
        raise argparse.ArgumentTypeError("needs a file name, got ''")
    path = os.path.abspath(text)
    if os.path.isdir(path) or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        problem = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r}: folder {folder!r} {problem}")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not writable")
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"{text!r}: cannot create a file in folder {folder!r} (no write permission)")
    return text


def plot_file(text):
    """An argument type: `output_file` whose extension is a format matplotlib can write here."""
    output_file(text)
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: plotting needs matplotlib (pip install matplotlib)") from None
    formats = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(text)[1][1:].lower()
    if extension not in formats:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the name must end in a format matplotlib writes: "
            f"{', '.join('.' + name for name in sorted(formats))}")
    try:  # some formats need more than matplotlib (.pgf needs LaTeX): try one in memory
        _save_tiny_figure(extension)
    except Exception as error:  # noqa: BLE001 -- whatever stops matplotlib stops the plot
        raise argparse.ArgumentTypeError(
            f"{text!r}: matplotlib cannot write .{extension} here: {error}") from None
    return text


def _save_tiny_figure(extension):
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    FigureCanvasAgg(figure)
    figure.text(0.5, 0.5, "fastdrop")  # text: the formats that typeset it need their tools
    figure.savefig(io.BytesIO(), format=extension)


def check_distinct_files(*options):
    """Raise UsageError if two of the ``(option, path)`` pairs name the same file (None: unset)."""
    seen = {}
    for option, path in options:
        if path is None:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{seen[key][0]} {seen[key][1]!r} and {option} {path!r} name the "
                             f"same file; give each its own")
        seen[key] = (option, path)


def check_no_repeats(option, values):
    """Raise UsageError if the list given to ``option`` holds a value twice."""
    for index, value in enumerate(values or ()):
        if value in values[:index]:
            raise UsageError(f"{option} lists {value} twice")


def physical_memory():
    """Bytes of memory in this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(option, value, needed_bytes):
    """Raise UsageError if ``option value`` needs more bytes than the machine has."""
    memory = physical_memory()
    if memory is not None and needed_bytes > memory:
        raise UsageError(f"{option} {value} needs about {needed_bytes / 2**30:,.1f} GiB of "
                         f"memory; this machine has {memory / 2**30:,.1f} GiB")
