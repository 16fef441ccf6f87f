"""Build fastdrop.torch's C++ operators now: ``python -m fastdrop.torch.build [--force]``.

The same as ``fastdrop build-torch-ops``. Builds against the installed torch into the
cache (`fastdrop.torch._build`), unless that torch's build is already there, and prints
where it is. Exit status 1 if the build fails (the Python path stays usable).
"""
import argparse
import sys

from . import _build


def main(argv=None):
    """Build (or find) the C++ operators; return 0, or 1 if the build failed.

    Parameters
    ----------
    argv : list of str, optional
        ``["--force"]`` builds again even if a build is cached (a failed build is always
        tried again).

    Returns
    -------
    int
        The exit status.
    """
    parser = argparse.ArgumentParser(prog="python -m fastdrop.torch.build",
                                     description="Build fastdrop.torch's C++ operators.")
    parser.add_argument("--force", action="store_true", help="build again even if built")
    return run(parser.parse_args(argv).force)


def run(force):
    """The build, with one line on stdout (the library) or stderr (why it failed)."""
    try:
        library = _build.build(force=force, retry=True)
        _build._import(library)  # it loads into this torch
    except Exception as error:
        print(f"fastdrop: the C++ torch ops did not build: {_build.short_reason(error)} "
              f"(log: {_build.build_dir() / 'build.log'})", file=sys.stderr)
        return 1
    print(f"fastdrop: C++ torch ops for torch {_build.torch_version()}: {library}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
