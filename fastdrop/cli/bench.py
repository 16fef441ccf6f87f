"""``fastdrop bench``: time fastdrop against the memory floor, NumPy and PyTorch.

The quick default (2^16 and 2^22 elements, p = 0.5, float32, every operation,
then the issue's targets) takes under a minute on two cores; --full runs
2^10 .. 2^26 elements, p in {0.1, 0.5}, float32 and float64.
"""
import re


def parse_size(text):
    """An element count: 65536, 2^16, 2**16 or 1<<16."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:(\^|\*\*|<<)\s*(\d+))?\s*", text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (write 65536, 2^16 or 1<<16)")
    base, operator, exponent = match.groups()
    if operator is None:
        value = int(base)
    elif operator == "<<":
        value = int(base) << int(exponent)
    else:
        value = int(base) ** int(exponent)
    if value < 1:
        raise ValueError(f"size must be >= 1, got {text!r}")
    return value


def _size(text):
    import argparse

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text):
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_arguments(parser):
    # the registry imports only NumPy, which `import fastdrop` has already loaded
    from ..bench.implementations import IMPLEMENTATIONS, OPERATIONS

    parser.add_argument("--full", action="store_true",
                        help="2^10..2^26 elements, p in {0.1, 0.5}, float32 and float64 "
                             "(minutes to tens of minutes)")
    parser.add_argument("--sizes", nargs="+", type=_size, metavar="N",
                        help="element counts, e.g. 1024 2^20 1<<24 (default 2^16 2^22)")
    parser.add_argument("--p", nargs="+", type=float, dest="ps", metavar="P",
                        help="drop probabilities in [0, 1) (default 0.5)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                        help="default float32")
    parser.add_argument("--ops", nargs="+", choices=list(OPERATIONS), metavar="OP",
                        help=f"operations (default all): {', '.join(OPERATIONS)}")
    parser.add_argument("--impls", nargs="+", choices=list(IMPLEMENTATIONS), metavar="NAME",
                        help=f"implementations (default all available; the floor is always "
                             f"timed): {', '.join(IMPLEMENTATIONS)}")
    parser.add_argument("--threads", nargs="+", type=_positive, metavar="N",
                        help="thread counts, one set of rows each, and a scaling table for "
                             "more than one (default: fastdrop's setting, all CPUs unless "
                             "FASTDROP_NUM_THREADS says otherwise)")
    parser.add_argument("--repeat", type=_positive, help="samples per cell (default 5; --full 3)")
    parser.add_argument("--min-time", type=float, default=0.05, metavar="SECONDS",
                        help="shortest duration of one sample (default 0.05)")
    parser.add_argument("--no-targets", action="store_true",
                        help="skip the targets (memory, n=1024 calls, cold start, agreement)")
    parser.add_argument("--cold-start-runs", type=_positive, default=5, metavar="N",
                        help="fresh interpreters timed per command for the cold-start target "
                             "(default 5)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", metavar="PATH", help="save every result as JSON")
    parser.add_argument("--plot", metavar="PATH.png",
                        help="draw throughput against n (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def register(subparsers):
    parser = subparsers.add_parser(
        "bench", help="benchmark against the memory floor, NumPy and PyTorch",
        description=__doc__.split("\n\n", 1)[1] if "\n\n" in __doc__ else None)
    add_arguments(parser)
    parser.set_defaults(handler=run)


def execute(args):
    """Run the benchmark (and the targets) the arguments describe; return the run dict."""
    import sys

    from ..bench import runner, targets

    sizes = args.sizes or (runner.FULL_SIZES if args.full else runner.QUICK_SIZES)
    ps = args.ps or (runner.FULL_PS if args.full else runner.QUICK_PS)
    dtypes = args.dtypes or (runner.FULL_DTYPES if args.full else runner.QUICK_DTYPES)
    repeat = args.repeat or (3 if args.full else 5)
    run = runner.run_benchmarks(
        operations=args.ops, sizes=sizes, ps=ps, dtypes=dtypes, threads=args.threads,
        implementations=args.impls, repeat=repeat, min_time=args.min_time,
        progress=None if args.quiet else sys.stderr)
    if not args.no_targets:
        if not args.quiet:
            print("  measuring the targets (memory, n=1024 calls, cold start) ...",
                  file=sys.stderr, flush=True)
        run["targets"] = targets.measure_targets(run, cold_start_runs=args.cold_start_runs)
    return run


def run(args):
    import importlib.util
    import sys

    from ..bench import report

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("fastdrop bench: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2
    try:
        results = execute(args)
    except ValueError as error:
        print(f"fastdrop bench: {error}", file=sys.stderr)
        return 2
    print(report.format_markdown(results) if args.markdown else report.format_table(results))
    scaling = (report.format_scaling_markdown(results) if args.markdown
               else report.format_scaling(results))
    if scaling:  # more than one thread count
        print()
        print(scaling)
    if "targets" in results:
        print()
        print(report.format_targets_markdown(results["targets"]) if args.markdown
              else report.format_targets(results["targets"]))
    if args.json:
        report.save_json(results, args.json)
        print(f"\nsaved {args.json}")
    if args.plot:
        report.plot(results, args.plot)
        print(f"saved {args.plot}")
    return 0
