"""Every option of every `fastdrop` subcommand refuses its bad values before any work.

A refusal is exit status 2 and one line on stderr, ``fastdrop <subcommand>: error: ...``,
naming the option and the value: no traceback, nothing on stdout, no file written,
and the functions that do the work (training, timing, dropout) never called. The
cases run in this process through `fastdrop.cli.main`, one subtest each (they share
the parser's code path); a few run the real command.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop.cli import build_parser, main

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(fastdrop.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# small settings, so that a command which wrongly starts working ends soon
QUICK_TRAIN = ["--epochs", "1", "--hidden", "8", "--quiet"]
QUICK_BENCH = ["--sizes", "64", "--ops", "mask", "--repeat", "1", "--quiet"]


def case(argv, option, value=None):
    """(argv, the option its message must name, the value: by default the last word)."""
    return argv, option, argv[-1] if value is None else value


def bad_values(command, option, values):
    return [case([command, option, value], option, value) for value in values]


def explicit_value_to_flag(command, option):
    return case([command, f"{option}=1"], option, "1")


COUNTS = ["0", "-1", "x", "2.5"]
PATHS = ["{folder}", "{folder}/", "{missing}/out.json", "{file}/out.json", ""]
PLOTS = ["curves.txt", "curves", "{folder}", "{missing}/c.png", "{file}/c.png", ""]

CASES = [
    # fastdrop (the top-level parser)
    case(["--version=1"], "--version", "1"),
    # fastdrop bench
    *bad_values("bench", "--sizes", ["0", "-4", "two", "1e6", "2^", "2.5", "2^100", "2^40"]),
    case(["bench", "--sizes", "2^10", "1024"], "--sizes", "2^10"),
    *bad_values("bench", "--p", ["1", "1.0", "-0.1", "nan", "inf", "x"]),
    case(["bench", "--p", "0.5", "0.5"], "--p", "0.5"),
    *bad_values("bench", "--dtypes", ["float16", "int32"]),
    case(["bench", "--dtypes", "float32", "float32"], "--dtypes", "float32"),
    *bad_values("bench", "--ops", ["nonsense"]),
    case(["bench", "--ops", "mask", "mask"], "--ops", "mask"),
    *bad_values("bench", "--threads", [*COUNTS, "100000"]),
    *bad_values("bench", "--repeat", COUNTS),
    *bad_values("bench", "--min-time", ["-1", "0", "nan", "inf", "x"]),
    *bad_values("bench", "--json", PATHS),
    explicit_value_to_flag("bench", "--quiet"),
    # fastdrop demo
    *bad_values("demo", "--n", ["0", "-5", "x", "1.5", "2^50"]),
    *bad_values("demo", "--p", ["2", "1.5", "-0.1", "nan", "inf", "x"]),
    *bad_values("demo", "--seed", ["-1", str(2**64), "x", "1.5"]),
    *bad_values("demo", "--backend", ["bogus", ""]),
    *bad_values("demo", "--backend", [name for name in fastdrop._backends.BACKENDS
                                      if name not in fastdrop.available_backends()]),
    # fastdrop info
    explicit_value_to_flag("info", "--json"),
    explicit_value_to_flag("build-torch-ops", "--force"),
    # fastdrop train
    *bad_values("train", "--data", ["{missing}/data.npz", "{folder}", "{text}", "{npy}",
                                    "{no_y}", "{bad_labels}", "{single_class}"]),
    *bad_values("train", "--test-size", ["0", "1", "1.5", "-0.1", "nan", "inf", "x"]),
    *bad_values("train", "--hidden", COUNTS),
    case(["train", "--data", "{good}", "--hidden", str(10**12)], "--hidden"),  # memory
    case(["train", "--hidden", "16", "0"], "--hidden", "0"),
    *bad_values("train", "--activation", ["sigmoid"]),
    *bad_values("train", "--dropout", ["lots", "1", "-0.1", "nan", "inf", "0.1,,0.2",
                                       "0.1,0.2"]),  # 2 rates for 3 layers
    explicit_value_to_flag("train", "--recompute"),
    *bad_values("train", "--dtype", ["float16"]),
    *bad_values("train", "--epochs", COUNTS),
    *bad_values("train", "--batch-size", COUNTS),
    *bad_values("train", "--optimizer", ["rmsprop"]),
    *bad_values("train", "--lr", ["0", "-1", "nan", "inf", "x"]),
    case(["train", "--lr=-inf"], "--lr", "-inf"),
    *bad_values("train", "--momentum", ["1", "-0.1", "nan", "inf", "x"]),
    case(["train", "--optimizer", "adam", "--momentum", "0.5"], "--momentum", "0.5"),
    *bad_values("train", "--weight-decay", ["-1", "nan", "inf", "x"]),
    case(["train", "--weight-decay", "0.1"], "--weight-decay", "0.1"),  # with Adam
    *bad_values("train", "--max-norm", ["0", "-1", "nan", "inf", "x"]),
    *bad_values("train", "--seed", ["-1", str(2**64), "x", "1.5"]),
    *bad_values("train", "--threads", [*COUNTS, "100000"]),
    explicit_value_to_flag("train", "--check-descent"),
    *bad_values("train", "--plot", PLOTS),
    case(["train", "--json", "same.png", "--plot", "same.png"], "--plot", "same.png"),
    *bad_values("train", "--json", PATHS),
    case(["train", "--data", "{good}", "--json", "{good}"], "--json", "{good}"),
    explicit_value_to_flag("train", "--quiet"),
]
# refused only where permissions hold: root may read and write any file
PERMISSION_CASES = [
    *bad_values("bench", "--json", ["{locked}/out.json"]),
    *bad_values("train", "--data", ["{unreadable}"]),
    *bad_values("train", "--plot", ["{locked}/c.png"]),
    *bad_values("train", "--json", ["{locked}/out.json"]),
]


def command_of(argv):
    """The subcommand of a command line, or None for the top-level parser."""
    return None if argv[0].startswith("-") else argv[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Paths the cases name: existing files and folders, outside the working folder."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = {"folder": folder, "missing": folder / "no such folder", "file": folder / "file.txt",
             "text": folder / "notes.npz", "npy": folder / "single.npy",
             "no_y": folder / "no_y.npz", "bad_labels": folder / "bad_labels.npz",
             "single_class": folder / "single_class.npz", "good": folder / "good.npz",
             "locked": folder / "locked", "unreadable": folder / "unreadable.npz"}
    paths["file"].write_text("a file, not a folder\n")
    paths["text"].write_text("not an archive\n")
    np.save(paths["npy"], np.ones(3))
    X = np.arange(20.0).reshape(10, 2)
    np.savez(paths["no_y"], X=X)
    np.savez(paths["bad_labels"], X=X, y=np.linspace(0, 1, 10))
    np.savez(paths["single_class"], X=X, y=np.zeros(10, int))
    np.savez(paths["good"], X=X, y=np.arange(10) % 2)
    paths["locked"].mkdir()
    paths["locked"].chmod(0o500)
    np.savez(paths["unreadable"], X=X, y=np.arange(10) % 2)
    paths["unreadable"].chmod(0)
    yield {name: str(path) for name, path in paths.items()}
    paths["locked"].chmod(0o700)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working folder, where a command that wrongly writes (`2.png`) would write."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no file written


@pytest.fixture
def no_work(monkeypatch):
    """Make the functions that train, time and drop out fail the test if they are called."""
    import fastdrop.bench.runner
    import fastdrop.nn

    def work_started(*args, **kwargs):
        raise AssertionError("the command started working")

    for module, name in ((fastdrop.nn, "MLP"), (fastdrop.nn, "fit"),
                         (fastdrop.bench.runner, "run_benchmarks"), (fastdrop, "dropout")):
        monkeypatch.setattr(module, name, work_started)


def refusal(capsys, argv):
    """(stderr line, exit status) of `fastdrop argv`, run in this process."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    output = capsys.readouterr()
    assert output.out == ""
    return output.err, exit_info.value.code


def check_one_line(stderr, command, option, value):
    prefix = f"fastdrop {command}: error: " if command else "fastdrop: error: "
    assert stderr.startswith(prefix) and stderr.endswith("\n"), stderr
    assert stderr.count("\n") == 1, stderr  # one line: no usage text, no traceback
    assert option in stderr and value in stderr, stderr


def check_refusals(cases, inputs, capsys, subtests):
    for argv, option, value in cases:
        argv = [word.format(**inputs) for word in argv]
        with subtests.test(" ".join(argv) or "''"):
            stderr, status = refusal(capsys, argv)
            assert status == 2
            check_one_line(stderr, command_of(argv), option, value.format(**inputs))


@pytest.mark.parametrize("command", [None, "bench", "demo", "info", "train"])
def test_every_option_refuses_its_bad_values(command, inputs, workdir, no_work, capsys,
                                             subtests):
    check_refusals([one for one in CASES if command_of(one[0]) == command], inputs, capsys,
                   subtests)


@pytest.mark.skipif(ROOT, reason="root may read and write in any folder")
def test_unreadable_inputs_and_unwritable_outputs_are_refused(inputs, workdir, no_work, capsys,
                                                              subtests):
    check_refusals(PERMISSION_CASES, inputs, capsys, subtests)


def options_of(parser):
    return {option for action in parser._actions for option in action.option_strings
            if not isinstance(action, argparse._HelpAction)}


def test_the_cases_cover_every_option_of_every_subcommand():
    parser = build_parser()
    covered = {}
    for argv, option, _ in CASES + PERMISSION_CASES:
        covered.setdefault(command_of(argv), set()).add(option)
    assert covered.pop(None) == options_of(parser)
    for command, subparser in parser.subcommand_parsers.items():
        assert covered.get(command) == options_of(subparser), command


# -- the cases ----------------------------------------------------------------


def test_demo_refuses_bad_arguments_in_one_line_as_bench_does(workdir, no_work, capsys,
                                                              subtests):
    for argv in (["--p", "2"], ["--backend", "bogus"], ["--n", "-5"], ["--seed", "-1"],
                 ["--n", "0"]):
        with subtests.test(" ".join(argv)):
            stderr, status = refusal(capsys, ["demo", "--n", "5000", *argv])
            assert status == 2
            check_one_line(stderr, "demo", argv[0], argv[1])


def test_no_parser_takes_an_abbreviated_option(workdir, no_work, capsys, subtests):
    parser = build_parser()
    assert parser.allow_abbrev is False
    assert all(sub.allow_abbrev is False for sub in parser.subcommand_parsers.values())
    for argv, option in ((["train", *QUICK_TRAIN, "--p", "2"], "--p"),  # was --plot 2
                         (["bench", *QUICK_BENCH, "--min", "1"], "--min"),
                         (["demo", "--n", "5000", "--se", "1"], "--se"),
                         (["info", "--js"], "--js"),
                         (["--vers"], "--vers")):
        with subtests.test(" ".join(argv)):
            stderr, status = refusal(capsys, argv)
            assert status == 2
            check_one_line(stderr, command_of(argv), option, option)
            assert "unrecognized arguments" in stderr


def test_outputs_and_values_are_checked_before_any_work(inputs, workdir, no_work, capsys,
                                                        subtests):
    check_refusals([case(["train", *QUICK_TRAIN, "--plot", "curves.txt"], "--plot"),
                    case(["train", *QUICK_TRAIN, "--json", "{folder}"], "--json"),
                    case(["bench", *QUICK_BENCH, "--min-time", "-1"], "--min-time"),
                    case(["train", *QUICK_TRAIN, "--lr", "inf"], "--lr")],
                   inputs, capsys, subtests)


def test_the_command_exits_2_with_one_line_and_no_traceback(workdir, subtests):
    for argv, option in ((["demo", "--p", "2"], "--p"),
                         (["train", *QUICK_TRAIN, "--p", "2"], "--p"),
                         (["train", *QUICK_TRAIN, "--plot", "curves.txt"], "--plot"),
                         (["bench", *QUICK_BENCH, "--min-time", "-1"], "--min-time")):
        with subtests.test(" ".join(argv)):
            result = subprocess.run([sys.executable, "-m", "fastdrop", *argv],
                                    capture_output=True, text=True, env=ENV, cwd=workdir,
                                    timeout=300, check=False)
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            assert result.stdout == ""
            check_one_line(result.stderr, argv[0], option, argv[-1])


# -- what is not refused --------------------------------------------------------------


def test_edge_values_are_accepted(workdir, subtests):
    from fastdrop.cli import bench, train

    checks = {"bench": bench.check_arguments, "train": train._check_arguments,
              "demo": lambda args: None}
    for argv in (
        ["demo", "--n", "1", "--p", "0", "--seed", "0"],
        ["demo", "--n", "2^10", "--p", "1", "--seed", str(2**64 - 1), "--backend", "numpy"],
        ["bench", "--sizes", "1", "1<<10", "--p", "0", "0.999", "--threads", "1",
         "--repeat", "1", "--min-time", "1e-9"],
        ["bench", "--dtypes", "float32", "float64", "bfloat16", "--json", "run.json"],
        ["train", "--test-size", "0.01", "--hidden", "1", "--dropout", "0", "--epochs", "1",
         "--batch-size", "1", "--lr", "1e-9", "--seed", str(2**64 - 1), "--threads", "1"],
        ["train", "--optimizer", "sgd", "--momentum", "0", "--weight-decay", "0",
         "--max-norm", "3", "--dropout", "0.1,0.2", "--hidden", "8", "--plot", "c.svg",
         "--json", "m.json"],
        ["train", "--optimizer", "adam", "--weight-decay", "0"],
    ):
        with subtests.test(" ".join(argv)):
            # the checks that need several options; nothing runs, nothing is written
            checks[argv[0]](build_parser().parse_args(argv))
