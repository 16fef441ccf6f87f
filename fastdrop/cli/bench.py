"""``fastdrop bench``: time fastdrop against the memory floor, NumPy and PyTorch.

The quick default (2^16 and 2^22 elements, p = 0.5, float32, every operation,
then the issue's targets) takes under a minute on two cores; --full runs
2^10 .. 2^26 elements, p in {0.1, 0.5}, float32 and float64. --dask measures
fastdrop.dask instead (a few minutes; needs the dask extra).
"""
from . import arguments
from .arguments import parse_size  # noqa: F401 -- part of this module's interface

# arrays of n elements one implementation holds while timed: input, output or mask, scratch
ARRAYS_PER_ROW = 3


def add_arguments(parser):
    """Add the ``fastdrop bench`` options to ``parser`` (benchmarks/make_docs.py too)."""
    # the registry imports only NumPy, which `import fastdrop` has already loaded
    from ..bench.implementations import IMPLEMENTATIONS, OPERATIONS

    parser.add_argument("--full", action="store_true",
                        help="2^10..2^26 elements, p in {0.1, 0.5}, float32 and float64 "
                             "(minutes to tens of minutes)")
    parser.add_argument("--sizes", nargs="+", type=arguments.size, metavar="N",
                        help="element counts >= 1, e.g. 1024 2^20 1<<24 (default 2^16 2^22)")
    parser.add_argument("--p", nargs="+", type=arguments.number(0, 1, high_open=True),
                        dest="ps", metavar="P", help="drop probabilities in [0, 1) (default 0.5)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "float64", "bfloat16"),
                        help="default float32; bfloat16 needs ml_dtypes (the bf16 extra)")
    parser.add_argument("--ops", nargs="+", choices=list(OPERATIONS), metavar="OP",
                        help=f"operations (default all): {', '.join(OPERATIONS)}")
    parser.add_argument("--impls", nargs="+", choices=list(IMPLEMENTATIONS), metavar="NAME",
                        help=f"implementations (default all available; the floor is always "
                             f"timed): {', '.join(IMPLEMENTATIONS)}")
    parser.add_argument("--threads", nargs="+", type=arguments.threads, metavar="N",
                        help=f"thread counts from 1 to {arguments.MAX_THREADS}, one set of rows "
                             f"each, and a scaling table for more than one (default: fastdrop's "
                             f"setting, all CPUs unless FASTDROP_NUM_THREADS says otherwise)")
    parser.add_argument("--repeat", type=arguments.integer(1), metavar="N",
                        help="samples per cell, >= 1 (default 5; --full 3)")
    parser.add_argument("--min-time", type=arguments.number(0, low_open=True), default=0.05,
                        metavar="SECONDS",
                        help="shortest duration of one sample, > 0 (default 0.05)")
    parser.add_argument("--no-targets", action="store_true",
                        help="skip the targets (memory, n=1024 calls, cold start, agreement)")
    parser.add_argument("--cold-start-runs", type=arguments.integer(1), default=5, metavar="N",
                        help="fresh interpreters timed per command for the cold-start target, "
                             ">= 1 (default 5)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", type=arguments.output_file, metavar="PATH",
                        help="save every result as JSON")
    parser.add_argument("--plot", type=arguments.plot_file, metavar="PATH.png",
                        help="draw throughput against n (needs matplotlib; any format it "
                             "writes: .png, .pdf, .svg, ...)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--torch", action="store_true",
                        help="the PyTorch section instead: fastdrop.torch against torch's "
                             "dropout (op alone, cost of a call, training steps); --sizes "
                             "(default 2^22 2^24 2^26), --dtypes (float32 bfloat16), the first "
                             "--p (0.1) and --threads (2) apply; needs torch")
    parser.add_argument("--dask", action="store_true",
                        help="the Dask section instead: dropout of a float32 dask array stored "
                             "into a NumPy array by fastdrop.dask, against in-memory fastdrop "
                             "and dask's own random numbers; --sizes (default 2^26 2^28), "
                             "--chunks, the first --p (0.5) and --threads (2 dask workers) "
                             "apply; needs dask")
    parser.add_argument("--chunks", nargs="+", type=arguments.size, metavar="N",
                        help="with --dask: elements per chunk (default 2^18 2^20 2^22 2^24)")


def register(subparsers):
    """Add the ``bench`` subcommand to ``subparsers``, with `run` as its handler."""
    parser = subparsers.add_parser(
        "bench", help="benchmark against the memory floor, NumPy and PyTorch",
        description=__doc__.split("\n\n", 1)[1] if "\n\n" in __doc__ else None)
    add_arguments(parser)
    parser.set_defaults(handler=run)


def settings(args):
    """(sizes, ps, dtypes, repeat): the options, or the defaults of a quick or --full run."""
    from ..bench import runner

    sizes = args.sizes or (runner.FULL_SIZES if args.full else runner.QUICK_SIZES)
    ps = args.ps or (runner.FULL_PS if args.full else runner.QUICK_PS)
    dtypes = args.dtypes or (runner.FULL_DTYPES if args.full else runner.QUICK_DTYPES)
    repeat = args.repeat or (3 if args.full else 5)
    return sizes, ps, dtypes, repeat


def check_arguments(args):
    """Raise UsageError for what the argument types alone cannot refuse; measures nothing."""
    import numpy as np

    from ..bench.runner import size_label

    sizes = [size_label(n) for n in args.sizes] if args.sizes else None
    for option, values in (("--sizes", sizes), ("--p", args.ps), ("--dtypes", args.dtypes),
                           ("--ops", args.ops), ("--impls", args.impls),
                           ("--threads", args.threads)):
        arguments.check_no_repeats(option, values)
    sizes, _, dtypes, _ = settings(args)
    if "bfloat16" in dtypes:
        from .._validate import bfloat16_dtype

        try:
            bfloat16_dtype()  # registers np.dtype("bfloat16")
        except ImportError as error:
            raise arguments.UsageError(f"--dtypes bfloat16: {error}") from None
    itemsize = max(np.dtype(dtype).itemsize for dtype in dtypes)
    for n in sizes:
        arguments.check_fits_in_memory("--sizes", size_label(n), ARRAYS_PER_ROW * itemsize * n)
    arguments.check_distinct_files(("--json", args.json), ("--plot", args.plot))


def execute(args):
    """Run the benchmark (and the targets) the arguments describe; return the run dict."""
    import sys

    from ..bench import runner, targets

    sizes, ps, dtypes, repeat = settings(args)
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


def check_section_options(args, section, refused):
    """Raise UsageError for an option in ``refused`` given, or several --p or --threads.

    ``refused`` holds (option, value) pairs of options the section (--torch, --dask)
    does not take; it runs one p and one thread count.
    """
    for option, value in refused:
        if value:
            raise arguments.UsageError(f"{option} does not apply to {section}")
    for option, values in (("--p", args.ps), ("--threads", args.threads)):
        if values and len(values) > 1:
            raise arguments.UsageError(f"{section} takes one {option}")


def check_torch_arguments(args):
    """Raise UsageError for a --torch run that cannot go ahead; measures nothing."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise arguments.UsageError("--torch needs PyTorch: pip install \"fastdrop-cpu[torch]\"")
    check_section_options(args, "--torch", (("--ops", args.ops), ("--impls", args.impls),
                                            ("--plot", args.plot)))
    from ..bench import pytorch
    from ..bench.runner import size_label

    for n in args.sizes or pytorch.DEFAULT_SIZES:  # x, its gradient, the results, the NumPy API's
        arguments.check_fits_in_memory("--sizes", size_label(n), 6 * 8 * n)


def run_torch(args):
    """The PyTorch section: fastdrop.torch against torch's dropout."""
    from ..bench import pytorch

    check_torch_arguments(args)
    section = pytorch.run(sizes=args.sizes or pytorch.DEFAULT_SIZES,
                          dtypes=args.dtypes or pytorch.DEFAULT_DTYPES,
                          p=args.ps[0] if args.ps else pytorch.DEFAULT_P,
                          threads=args.threads[0] if args.threads else 2,
                          repeat=args.repeat or 5, min_time=args.min_time)
    print(pytorch.format_section(section, markdown=args.markdown))
    if not args.no_targets:
        section["targets"] = pytorch.targets(section)
    _finish(args, section)
    return 0


def check_dask_arguments(args):
    """Raise UsageError for a --dask run that cannot go ahead; measures nothing."""
    import importlib.util

    from ..bench import dask_arrays
    from ..bench.runner import size_label

    check_section_options(args, "--dask", (
        ("--torch", args.torch), ("--full", args.full), ("--dtypes", args.dtypes),
        ("--ops", args.ops), ("--impls", args.impls), ("--plot", args.plot)))
    arguments.check_no_repeats("--chunks", [size_label(n) for n in args.chunks or ()])
    for n in args.sizes or dask_arrays.SIZES:  # input, target and the last step's blocks
        arguments.check_fits_in_memory("--sizes", size_label(n), 3 * 4 * n)
    if importlib.util.find_spec("dask") is None:  # last: the cases above need no dask
        raise arguments.UsageError("--dask needs dask: pip install \"fastdrop-cpu[dask]\"")


def run_dask(args):
    """The Dask section: fastdrop.dask against in-memory fastdrop and dask's random numbers."""
    import sys

    from ..bench import dask_arrays

    check_dask_arguments(args)
    section = dask_arrays.run(
        sizes=args.sizes or dask_arrays.SIZES, chunks=args.chunks or dask_arrays.CHUNKS,
        p=args.ps[0] if args.ps else dask_arrays.P,
        workers=args.threads[0] if args.threads else dask_arrays.WORKERS,
        repeat=args.repeat or 3, min_time=args.min_time, targets=not args.no_targets,
        progress=None if args.quiet else sys.stderr)
    print(dask_arrays.format_section(section, markdown=args.markdown))
    _finish(args, section)
    return 0


def _finish(args, results):
    """Print the targets (if measured) and save the JSON (if asked for)."""
    from ..bench import report

    if "targets" in results:
        print()
        print(report.format_targets_markdown(results["targets"]) if args.markdown
              else report.format_targets(results["targets"]))
    if args.json:
        report.save_json(results, args.json)
        print(f"\nsaved {args.json}")


def run(args):
    """Run ``fastdrop bench``: check, measure, print the tables, save what was asked; return 0."""
    from ..bench import report
    from ..bench.runner import size_label

    if args.chunks and not args.dask:
        raise arguments.UsageError(
            f"--chunks {' '.join(size_label(n) for n in args.chunks)} needs --dask")
    if args.dask:
        return run_dask(args)
    if args.torch:
        return run_torch(args)
    check_arguments(args)
    results = execute(args)
    print(report.format_markdown(results) if args.markdown else report.format_table(results))
    scaling = (report.format_scaling_markdown(results) if args.markdown
               else report.format_scaling(results))
    if scaling:  # more than one thread count
        print()
        print(scaling)
    _finish(args, results)
    if args.plot:
        report.plot(results, args.plot)
        print(f"saved {args.plot}")
    return 0
