"""The ``fastdrop`` console command: one module per subcommand.

Each subcommand module defines ``register(subparsers)``, which adds its parser
and sets ``handler`` to a function taking the parsed arguments and returning an
exit status. Heavy imports happen inside the handlers, so ``fastdrop --help`` is quick.
"""
import argparse
import importlib
import sys

# subcommand name -> module (relative to this package)
SUBCOMMANDS = {
    "bench": ".bench",
    "demo": ".demo",
    "info": ".info",
    "train": ".train",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastdrop", description="Memory-speed CPU dropout with exact, bit-packed masks.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name, __name__).register(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

        print(f"fastdrop {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
