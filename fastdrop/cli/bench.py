"""``fastdrop bench``: fastdrop's backends against the memory floor, NumPy and PyTorch.

By default every operation at 2^16 and 2^22 float32 elements, p = 0.5, on fastdrop's
thread setting: under a minute on two cores. One table: each backend's time over the
memory floor's, and its speed-up over NumPy and over PyTorch (when installed).
The performance targets and the PyTorch, Dask and training benchmarks are scripts
in the repository's benchmarks/ folder.
"""
from . import arguments

# arrays of n elements one implementation holds while timed: input, output or mask, scratch
ARRAYS_PER_ROW = 3


def register(subparsers):
    """Add the ``bench`` subcommand to ``subparsers``, with `run` as its handler."""
    # the registry imports only NumPy, which `import fastdrop` has already loaded
    from ..bench.implementations import OPERATIONS

    parser = subparsers.add_parser(
        "bench", help="time fastdrop against the memory floor, NumPy and PyTorch",
        description=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sizes", nargs="+", type=arguments.size, metavar="N",
                        help="element counts >= 1, e.g. 1024 2^20 1<<24 (default 2^16 2^22)")
    parser.add_argument("--p", nargs="+", type=arguments.number(0, 1, high_open=True),
                        dest="ps", metavar="P", help="drop probabilities in [0, 1) (default 0.5)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "float64", "bfloat16"),
                        help="default float32; bfloat16 needs ml_dtypes (the bf16 extra)")
    parser.add_argument("--ops", nargs="+", choices=list(OPERATIONS), metavar="OP",
                        help=f"operations (default all): {', '.join(OPERATIONS)}")
    parser.add_argument("--threads", type=arguments.threads, metavar="N",
                        help=f"threads, from 1 to {arguments.MAX_THREADS} (default: fastdrop's "
                             f"setting, all CPUs unless FASTDROP_NUM_THREADS says otherwise)")
    parser.add_argument("--repeat", type=arguments.integer(1), default=5, metavar="N",
                        help="samples per cell, >= 1 (default 5)")
    parser.add_argument("--min-time", type=arguments.number(0, low_open=True), default=0.05,
                        metavar="SECONDS", help="shortest duration of one sample, > 0 "
                                                "(default 0.05)")
    parser.add_argument("--json", type=arguments.output_file, metavar="PATH",
                        help="also save every result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(handler=run)


def settings(args):
    """(sizes, ps, dtypes): the options given, or the defaults."""
    from ..bench import runner

    return (args.sizes or runner.QUICK_SIZES, args.ps or runner.QUICK_PS,
            args.dtypes or runner.QUICK_DTYPES)


def check_arguments(args):
    """Raise UsageError for what the argument types alone cannot refuse; measures nothing."""
    import numpy as np

    from ..bench.runner import size_label

    sizes = [size_label(n) for n in args.sizes] if args.sizes else None
    for option, values in (("--sizes", sizes), ("--p", args.ps), ("--dtypes", args.dtypes),
                           ("--ops", args.ops)):
        arguments.check_no_repeats(option, values)
    sizes, _, dtypes = settings(args)
    if "bfloat16" in dtypes:
        from .._internal import bfloat16_dtype

        try:
            bfloat16_dtype()  # registers np.dtype("bfloat16")
        except ImportError as error:
            raise arguments.UsageError(f"--dtypes bfloat16: {error}") from None
    itemsize = max(np.dtype(dtype).itemsize for dtype in dtypes)
    for n in sizes:
        arguments.check_fits_in_memory("--sizes", size_label(n), ARRAYS_PER_ROW * itemsize * n)


def _print(text):
    """Print ``text``; a terminal that cannot show "×" gets "x"."""
    try:
        print(text)
    except UnicodeEncodeError:
        print(text.replace("×", "x"))


def run(args):
    """Run ``fastdrop bench``: check, measure, print the table, save the JSON if asked; return 0."""
    import sys

    from ..bench import report, runner

    check_arguments(args)
    sizes, ps, dtypes = settings(args)
    results = runner.run_benchmarks(
        operations=args.ops, sizes=sizes, ps=ps, dtypes=dtypes, threads=args.threads,
        repeat=args.repeat, min_time=args.min_time, progress=None if args.quiet else sys.stderr)
    _print(report.format_table(results))
    if args.json:
        report.save_json(results, args.json)
        print(f"saved {args.json}")
    return 0
