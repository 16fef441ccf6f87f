"""``fastdrop info``: versions, backends, OpenMP, threads, CPU, Numba cache."""


def register(subparsers):
    """Add the ``info`` subcommand to ``subparsers``, with `run` as its handler."""
    parser = subparsers.add_parser("info", help="show versions, backends, threads and CPU")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def _text(value):
    if isinstance(value, dict):
        return ", ".join(f"{key} {'yes' if ok else 'no'}" for key, ok in value.items())
    if isinstance(value, list):
        return " ".join(value) or "none"
    if value is None:
        return "not installed / not built"
    if value is True or value is False:
        return "yes" if value else "no"
    return str(value)


def _torch_path():
    """Which eager path fastdrop.torch takes (C++ or Python, and why); None without torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    from ..torch import _build

    return _build.describe()


def run(args):
    """Run ``fastdrop info``: print what `system_info` finds, as a table or JSON; return 0."""
    import json

    from .._internal import system_info

    info = system_info()
    info["fastdrop.torch path"] = _torch_path()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {_text(value)}")
    return 0
