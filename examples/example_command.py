"""The command line every concept example shares: demonstrate, print, plot, save, check.

Each example defines ``demonstrate(quick, seed, ...)`` (returns a dict of plain
numbers), ``report(result)`` (prints them), ``plot(result, plt)`` (draws with
matplotlib's pyplot, imported only when a plot is asked for, and returns the
figure) and ``check(result)`` (raises AssertionError unless the property holds),
and its ``main`` calls `run` with them.
"""
import argparse
import json


def run(doc, demonstrate, report, plot, check, argv=None, extra_options=()):
    """Parse ``--quick --seed --plot --json`` and ``extra_options``, run, check; return the result.

    Parameters
    ----------
    doc : str
        The example's docstring; its first line is the command's description.
    demonstrate, report, plot, check : callable
        The example's four steps.
    argv : list of str, optional
        Arguments (default: the command line).
    extra_options : sequence of (flag, dict)
        Further ``add_argument`` calls; their values go to ``demonstrate`` by name.

    Returns
    -------
    dict
        What ``demonstrate`` returned, after ``check`` passed.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings (used by the tests)")
    parser.add_argument("--seed", type=int, default=0, help="(first) random seed")
    for flag, options in extra_options:
        parser.add_argument(flag, **options)
    parser.add_argument("--plot", metavar="PATH.png", help="save the figure")
    parser.add_argument("--json", metavar="PATH", help="save the numbers")
    args = vars(parser.parse_args(argv))
    plot_path, json_path = args.pop("plot"), args.pop("json")
    result = demonstrate(**args)
    report(result)
    if plot_path:
        save_figure(plot, result, plot_path)
    if json_path:
        with open(json_path, "w") as file:
            json.dump(result, file, indent=1, default=int)  # default: NumPy integers
    check(result)
    return result


def save_figure(plot, result, path):
    """Draw ``plot(result, pyplot)`` off screen and save it as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure = plot(result, plt)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
