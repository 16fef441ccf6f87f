"""Regenerate the figures of the Concepts pages: run every example with ``--plot``.

Each example runs at its full settings (minutes in all on 2 cores) unless ``--quick`` is
given, prints its numbers and checks its property; the figures go to ``docs/img/``
(``--output`` to change it), named after the examples. From the repository root:

    python examples/make_plots.py                          # all of them, into docs/img/
    python examples/make_plots.py --only adaptive_l2 --quick --output /tmp/plots
"""
import argparse
import importlib.util
import os
import sys
import time

EXAMPLES_FOLDER = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = ["inverted_dropout", "where_and_how_much", "cost_jitter", "weight_spreading",
            "adaptive_l2", "ensemble_view", "when_not_to_use", "dask_zarr_noise"]


def load_example(name):
    """Import ``examples/<name>.py`` as a module (the folder is not a package)."""
    if EXAMPLES_FOLDER not in sys.path:  # the examples import examples/example_command.py
        sys.path.insert(0, EXAMPLES_FOLDER)
    spec = importlib.util.spec_from_file_location(f"fastdrop_example_{name}",
                                                  os.path.join(EXAMPLES_FOLDER, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    """Run the chosen examples with ``--plot OUTPUT/<name>.png``; returns {name: result dict}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=EXAMPLES, metavar="NAME",
                        help=f"examples to run (default: all of {', '.join(EXAMPLES)})")
    parser.add_argument("--output",
                        default=os.path.normpath(os.path.join(EXAMPLES_FOLDER, os.pardir, "docs",
                                                              "img")),
                        help="folder for the PNG files (default: docs/img)")
    parser.add_argument("--quick", action="store_true", help="the examples' small settings")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    results = {}
    for name in args.only or EXAMPLES:
        path = os.path.join(args.output, f"{name}.png")
        print(f"=== {name} -> {path}", flush=True)
        start = time.perf_counter()
        arguments = ["--plot", path] + (["--quick"] if args.quick else [])
        results[name] = load_example(name).main(arguments)
        print(f"=== {name}: {time.perf_counter() - start:.1f} s\n", flush=True)
    return results


if __name__ == "__main__":
    main()
