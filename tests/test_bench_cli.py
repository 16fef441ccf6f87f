"""`fastdrop bench` runs end to end on tiny sizes: the table, the targets, JSON and the plot.

No timing is asserted: only that every row and column is there and the files are written.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastdrop
from fastdrop.bench.implementations import (
    IMPLEMENTATIONS,
    OPERATIONS,
    available_implementations,
    channel_shape,
)
from fastdrop.cli.bench import parse_size

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(fastdrop.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))


def run_bench(*args):
    result = subprocess.run([sys.executable, "-m", "fastdrop", "bench", "--quiet", *args],
                            capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_table_has_every_operation_implementation_and_column(tmp_path):
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    plotting = importlib.util.find_spec("matplotlib") is not None
    output = run_bench("--sizes", "1024", "4096", "--repeat", "2", "--min-time", "0.001",
                       "--no-targets", "--json", str(json_path),
                       *(["--plot", str(plot_path)] if plotting else []))
    available = [implementation.name for implementation in available_implementations()]
    for label in ["fastdrop", "numpy", "numba", "torch", "cpu:", "threads:", "floor:",
                  "time", "Gel/s", "xfloor", "speed-up over numpy"] + available:
        assert label in output, label
    table_lines = [line for line in output.splitlines()
                   if line.split("  ")[0].strip() in {op.title for op in OPERATIONS.values()}]
    assert len(table_lines) == len(OPERATIONS) * 2  # one row per (operation, n)
    assert {line.split("  ")[0].strip() for line in table_lines} == \
        {operation.title for operation in OPERATIONS.values()}

    assert "thread scaling" not in output  # one thread count: no scaling table
    run = json.loads(json_path.read_text())
    assert run["implementations"] == available
    assert run["settings"]["sizes"] == [1024, 4096]
    assert run["header"]["fastdrop"] == fastdrop.__version__
    assert run["header"]["threads"] == [fastdrop.get_num_threads()]
    assert len(run["rows"]) == len(OPERATIONS) * 2
    for row in run["rows"]:
        assert set(row["results"]) == set(available)
        assert row["results"]["floor"]["ratio_to_floor"] == pytest.approx(1.0)
        for name, cell in row["results"].items():
            assert "error" not in cell, (row["operation"], name, cell)
            assert cell["best_s"] > 0 and cell["gelem_per_s"] > 0
            assert cell["best_s"] <= cell["median_s"]
    if plotting:
        assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_channel_and_gaussian_rows_run_for_awkward_sizes_and_float64(tmp_path):
    """Every implementation runs the variant rows at n = 300 (no 32x32 maps) and in float64."""
    json_path = tmp_path / "bench.json"
    run_bench("--sizes", "300", "2^11", "--ops", "channel_inplace", "gaussian_inplace",
              "--p", "0.1", "--dtypes", "float32", "float64", "--repeat", "1",
              "--min-time", "0.001", "--no-targets", "--json", str(json_path))
    run = json.loads(json_path.read_text())
    available = [implementation.name for implementation in available_implementations()]
    assert [(row["operation"], row["dtype"], row["n"]) for row in run["rows"]] == [
        (operation, dtype, n) for operation in ("channel_inplace", "gaussian_inplace")
        for dtype in ("float32", "float64") for n in (300, 2048)]
    for row in run["rows"]:
        assert set(row["results"]) == set(available)
        for name, cell in row["results"].items():
            assert "error" not in cell, (row["operation"], row["dtype"], name, cell)


@pytest.mark.parametrize("n", [1, 300, 1024, 2048, 3 * 1024, 1 << 16, 1 << 26])
def test_channel_rows_have_n_elements_in_32x32_maps_where_n_allows(n):
    shape = channel_shape(n)
    assert len(shape) == 4 and math.prod(shape) == n
    if n % 1024 == 0:
        assert shape[2:] == (32, 32)
    if n % (64 * 1024) == 0:
        assert shape[1] == 64


def test_targets_section_lists_every_target(tmp_path):
    json_path = tmp_path / "bench.json"
    output = run_bench("--sizes", "2048", "--ops", "forward_inplace", "backward_mask",
                       "backward_recompute", "--p", "0.5", "0.1", "--repeat", "1",
                       "--min-time", "0.001", "--cold-start-runs", "1", "--json", str(json_path))
    assert "targets (measured in this run; reported, not asserted)" in output
    backends = [name for name in ("numba", "cython") if IMPLEMENTATIONS[name].available()]
    records = json.loads(json_path.read_text())["targets"]
    titles = {record["target"] for record in records}
    expected = {"forward in place p=0.5: time / floor", "forward in place p=0.1: time / floor",
                "backward from mask: time / floor", "backward recompute: time / floor",
                "mask bytes == ceil(n/64)*8", "fused in place: peak extra memory beyond the mask",
                "n=1024: call / np.multiply(x, s, out=x)", "cold start / python -c 'import numpy'",
                "block cut at column 37 of 1000: time / one contiguous range"}
    if len(backends) == 2:
        expected.add("forward in place: backends agree")
    assert expected <= titles
    for record in records:
        assert record["target"] in output
        assert isinstance(record["met"], bool)
        if record["target"] == "mask bytes == ceil(n/64)*8":
            assert record["met"] and record["measured"] == "exact"  # memory, not time


def test_dask_section_times_every_implementation_and_reports_the_targets(tmp_path):
    pytest.importorskip("fastdrop.dask")
    from fastdrop.bench import dask_arrays

    json_path = tmp_path / "dask.json"
    output = run_bench("--dask", "--sizes", "2^22", "--chunks", "2^20", "2^22", "--repeat", "1",
                       "--min-time", "0.001", "--json", str(json_path))
    run = json.loads(json_path.read_text())
    assert [(row["n"], row["chunk"]) for row in run["rows"]] == [(2**22, 2**20), (2**22, 2**22)]
    for row in run["rows"]:
        assert set(row["seconds"]) == set(dask_arrays.IMPLEMENTATIONS)
        assert set(row["breakdown"]) == set(dask_arrays.PARTS)
        assert all(seconds > 0 for seconds in [*row["seconds"].values(),
                                               *row["breakdown"].values()])
    assert run["settings"]["workers"] == 2 and run["header"]["dask"]
    titles = [record["target"] for record in run["targets"]]  # chunks of 2^22 and more only
    assert titles == [f"{name}: time / {baseline} time" for name in
                      ("fastdrop.dask", "fastdrop.dask out=")
                      for baseline in ("in-memory", "dask-native")]
    for label in ("2^20", "fastdrop.dask out= Gelem/s", "dask-native Gelem/s", *titles):
        assert label in output, label


def test_markdown_and_filters():
    output = run_bench("--sizes", "2^10", "--ops", "mask", "--impls", "numpy", "--repeat", "1",
                       "--min-time", "0.001", "--no-targets", "--markdown")
    header = next(line for line in output.splitlines() if line.startswith("| operation"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == \
        ["operation", "n", "p", "dtype", "floor", "numpy"]
    assert "| mask only | 2^10 | 0.5 | float32 |" in output


SCALING_ARGS = ["--no-targets", "--sizes", "2^18", "--impls", "cython", "numba",
                "--ops", "forward_inplace", "backward_mask", "--threads", "1", "2", "--repeat", "1"]
SCALING_BACKENDS = [name for name in ("cython", "numba") if IMPLEMENTATIONS[name].available()]


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory):
    """(stdout, saved run) of a two-thread-count benchmark: 2 operations, 1 n, p and dtype."""
    json_path = tmp_path_factory.mktemp("scaling") / "bench.json"
    output = run_bench(*SCALING_ARGS, "--json", str(json_path))
    return output, json.loads(json_path.read_text())


def markdown_table(text):
    """The rows of a Markdown table as {column title: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    titles = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(titles, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:]]


def test_scaling_markdown_has_one_line_per_row_key_and_a_column_per_threads_and_backend(
        scaling_run):
    from fastdrop.bench import report

    _, run = scaling_run
    rows = markdown_table(report.format_scaling_markdown(run))
    names = ["floor"] + SCALING_BACKENDS
    assert list(rows[0]) == ["operation", "n", "p", "dtype"] + [
        f"{name}<br>{group}" for group in ("1 thread", "2 threads", "scaling, 1→2 threads")
        for name in names]
    assert [(row["operation"], row["n"], row["p"], row["dtype"]) for row in rows] == [
        ("forward in place", "2^18", "0.5", "float32"),
        ("backward from mask", "2^18", "0.5", "float32")]
    # each cell shows its own (operation, threads, implementation) from the run
    for row in rows:
        operation = next(name for name, op in OPERATIONS.items() if op.title == row["operation"])
        results = {measured["threads"]: measured["results"] for measured in run["rows"]
                   if measured["operation"] == operation}
        for threads, group in ((1, "1 thread"), (2, "2 threads")):
            floor = results[threads]["floor"]
            assert row[f"floor<br>{group}"] == report.format_rate(floor["gelem_per_s"])
            for name in SCALING_BACKENDS:
                cell = results[threads][name]
                assert row[f"{name}<br>{group}"] == (
                    f"{report.format_rate(cell['gelem_per_s'])} "
                    f"({report.format_ratio(cell['ratio_to_floor'])})")
        for name in names:
            speedup = results[1][name]["best_s"] / results[2][name]["best_s"]
            assert row[f"{name}<br>scaling, 1→2 threads"] == report.format_ratio(
                speedup, decimals=1 if speedup >= 1 else 2)


def test_scaling_text_has_the_same_rows_and_columns(scaling_run):
    from fastdrop.bench import report

    _, run = scaling_run
    text = report.format_scaling(run)
    lines = text.splitlines()
    assert lines[0] == "thread scaling"
    for label in ("1 thread", "2 threads", "scaling, 1->2 threads"):
        assert label in lines[1]
    assert lines[2].split() == ["operation", "n", "p", "dtype"] + (
        ["floor"] + SCALING_BACKENDS) * 3
    row_lines = [line for line in lines if line.startswith(("forward in place",
                                                            "backward from mask"))]
    assert [line.split("  ")[0] for line in row_lines] == ["forward in place",
                                                           "backward from mask"]
    markdown_rows = markdown_table(report.format_scaling_markdown(run))
    for line, row in zip(row_lines, markdown_rows):  # the same cells in the same order
        position = 0
        for cell in row.values():
            assert cell in line[position:], (cell, line)
            position = line.index(cell, position) + len(cell)


def test_scaling_table_marks_missing_cells_and_is_empty_for_one_thread_count(scaling_run):
    import copy

    from fastdrop.bench import report

    _, run = scaling_run
    partial = copy.deepcopy(run)
    name = SCALING_BACKENDS[-1]
    del next(row for row in partial["rows"] if row["threads"] == 2)["results"][name]
    row = markdown_table(report.format_scaling_markdown(partial))[0]
    assert row[f"{name}<br>2 threads"] == "-"
    assert row[f"{name}<br>scaling, 1→2 threads"] == "-"
    assert row[f"{name}<br>1 thread"] != "-"

    single = dict(run, settings=dict(run["settings"], threads=[1]),
                  rows=[row for row in run["rows"] if row["threads"] == 1])
    assert report.format_scaling(single) == report.format_scaling_markdown(single) == ""


def test_bench_prints_the_scaling_table_after_the_main_table(scaling_run):
    output, _ = scaling_run
    assert "thread scaling" in output
    main_table, scaling = output.split("thread scaling", 1)
    assert "xfloor" in main_table
    assert "scaling, 1->2 threads" in scaling
    assert [line.split("  ")[0] for line in scaling.splitlines()
            if line.startswith(("forward in place", "backward from mask"))] == \
        ["forward in place", "backward from mask"]


def test_bench_markdown_prints_the_markdown_scaling_table():
    output = run_bench("--sizes", "2^10", "--ops", "mask", "--impls", "cython", "--threads",
                       "1", "2", "--repeat", "1", "--min-time", "0.001", "--no-targets",
                       "--markdown")
    headers = [line for line in output.splitlines() if line.startswith("| operation")]
    assert len(headers) == 2  # the main table, then the scaling table
    assert "scaling, 1→2 threads" in headers[1]


def load_make_docs():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "make_docs.py"
    spec = importlib.util.spec_from_file_location("make_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_docs_scaling_json_rewrites_only_the_scaling_section(scaling_run, tmp_path,
                                                                  monkeypatch):
    from fastdrop.bench import report
    from fastdrop.bench.targets import target_record

    make_docs = load_make_docs()
    _, run = scaling_run
    run = dict(run, targets=[target_record("mask bytes == ceil(n/64)*8", "cython", "exact",
                                           "exact", True, unit="text")])
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps(run))
    original = make_docs.DOC.read_text()
    doc, plot = tmp_path / "benchmarks.md", tmp_path / "bench.png"
    doc.write_text(original)
    monkeypatch.setattr(make_docs, "DOC", doc)
    monkeypatch.setattr(make_docs, "PLOT", plot)

    before, rest = original.split(make_docs.SCALING_BEGIN)
    after = rest.split(make_docs.SCALING_END)[1]
    for _ in range(2):  # the second time replaces what the first wrote
        make_docs.main(["--scaling-json", str(json_path), str(json_path)])
        text = doc.read_text()
        assert text.startswith(before + make_docs.SCALING_BEGIN)
        assert text.endswith(make_docs.SCALING_END + after)
        section = text[len(before):len(text) - len(after)]
        assert section.count("### n = 2^18, threads 1, 2\n") == 2
        assert "(not generated yet)" not in section
        assert make_docs.measured_on(run) in section
        assert make_docs.command_line(run["settings"]) in section
        assert "| mask bytes == ceil(n/64)*8 | cython |" in section
        assert section.count(report.format_scaling_markdown(run).splitlines()[0]) == 2
    assert not plot.exists()

    single = dict(run, settings=dict(run["settings"], threads=[1]))
    json_path.write_text(json.dumps(single))
    with pytest.raises(SystemExit, match="one thread count"):
        make_docs.main(["--scaling-json", str(json_path)])
    assert doc.read_text() == text  # refused before writing


@pytest.mark.parametrize("args", [["--p", "1.0"], ["--sizes", "0"], ["--ops", "nonsense"],
                                  ["--threads", "0"], ["--chunks", "2^10"],
                                  ["--dask", "--ops", "forward"],
                                  ["--dask", "--threads", "1", "2"]])
def test_bad_arguments_exit_with_status_2(args):
    result = subprocess.run([sys.executable, "-m", "fastdrop", "bench", "--quiet", "--no-targets",
                             "--sizes", "64", *args],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2
    assert "fastdrop bench" in result.stderr or "error" in result.stderr


@pytest.mark.parametrize("text, value", [("1024", 1024), ("2^16", 65536), ("2**10", 1024),
                                         ("1<<20", 1 << 20), (" 3 ", 3)])
def test_sizes_are_read_in_every_spelling(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "2^", "1e6", "-4", "0", "two"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("interleave", [True, False])
def test_a_row_times_every_implementation_interleaved_or_one_after_another(interleave):
    from fastdrop.bench import runner

    implementations = available_implementations(["floor", "numpy", "numpy-careful", "cython"])
    results = runner.time_row(implementations, ("backward_mask", 300, 0.5, "float64", 1),
                              repeat=3, min_time=0.001, interleave=interleave)
    assert list(results) == [implementation.name for implementation in implementations]
    for cell in results.values():
        assert cell["repeat"] == 3 and cell["number"] >= 1
        assert 0 < cell["best_s"] <= cell["median_s"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 64 * 21 + 5, 100_003])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_floor_kernel_scales_every_element_once(dtype, n, threads):
    """scale_in_place (the floor) multiplies each element exactly once, whatever the split."""
    cython_kernels = pytest.importorskip("fastdrop.kernels.cython.kernels")
    import numpy as np

    values = np.random.default_rng(n).standard_normal(n).astype(dtype)
    expected = values * values.dtype.type(1.7)
    cython_kernels.scale_in_place(values, 1.7, threads)
    np.testing.assert_array_equal(values, expected)


def test_the_floor_kernel_refuses_other_dtypes():
    cython_kernels = pytest.importorskip("fastdrop.kernels.cython.kernels")
    import numpy as np

    with pytest.raises(TypeError, match="int32"):
        cython_kernels.scale_in_place(np.ones(10, np.int32), 2.0, 1)
