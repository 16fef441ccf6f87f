"""``fastdrop build-torch-ops``: compile fastdrop.torch's C++ operators ahead of first use."""


def register(subparsers):
    """Add the ``build-torch-ops`` subcommand to ``subparsers``, with `run` as its handler."""
    parser = subparsers.add_parser(
        "build-torch-ops", help="compile fastdrop.torch's C++ operators for the installed torch")
    parser.add_argument("--force", action="store_true",
                        help="build again even if built (a failed build is always retried)")
    parser.set_defaults(handler=run)


def run(args):
    """Build the operators (`fastdrop.torch.build`); return 0, 1 if it failed, 2 without torch."""
    import importlib.util
    import sys

    if importlib.util.find_spec("torch") is None:
        print("fastdrop build-torch-ops: torch is not installed", file=sys.stderr)
        return 2
    from ..torch import build

    return build.run(args.force)
