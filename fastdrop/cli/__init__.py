"""The ``fastdrop`` console command: one module per subcommand.

Each subcommand module defines ``register(subparsers)``, which adds its parser
and sets ``handler`` to a function taking the parsed arguments and returning an
exit status. Heavy imports happen inside the handlers, so ``fastdrop --help`` is quick.

A bad command line is refused before any work, with one line on stderr
(``fastdrop <subcommand>: error: ...``) and exit status 2: argument types refuse
single values while parsing, and a handler raises `arguments.UsageError` for the
rest before it starts (see `fastdrop.cli.arguments`).
"""
import importlib
import sys

from .arguments import CommandParser, UsageError

# subcommand name -> module (relative to this package)
SUBCOMMANDS = {
    "bench": ".bench",
    "build-torch-ops": ".build_torch_ops",
    "demo": ".demo",
    "info": ".info",
    "train": ".train",
}


def build_parser():
    """The ``fastdrop`` argument parser, with every subcommand's parser added."""
    parser = CommandParser(
        prog="fastdrop", description="Memory-speed CPU dropout with exact, bit-packed masks.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name, __name__).register(subparsers)
    parser.subcommand_parsers = subparsers.choices  # name -> parser, to report its errors
    return parser


def main(argv=None):
    """Run the ``fastdrop`` command; return its exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program's name (default: the command line).

    Returns
    -------
    int
        The subcommand's exit status; 0 for ``--version``; 2 (after the help) without a
        subcommand. A bad command line exits with status 2 and one line on stderr.
    """
    parser = build_parser()
    # unknown options are reported by the subcommand's parser, so the message names it
    args, unrecognized = parser.parse_known_args(argv)
    command_parser = parser.subcommand_parsers.get(args.command, parser)
    if unrecognized:
        command_parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")
    if args.version:
        from .. import __version__

        print(f"fastdrop {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except UsageError as error:
        command_parser.error(str(error))
    except BrokenPipeError:  # `fastdrop info | head`: the reader left, so no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
