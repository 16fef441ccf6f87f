"""`fastdrop bench` end to end on tiny sizes, and the repository's benchmark scripts.

No timing is asserted: only what the table holds and how wide it is, the JSON, the
note on a busy machine, and that the scripts in benchmarks/ run and say what they measure.
"""
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop.bench import report, runner
from fastdrop.bench.implementations import (
    IMPLEMENTATIONS,
    OPERATIONS,
    available_implementations,
    channel_shape,
)
from fastdrop.cli.arguments import parse_size

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(fastdrop.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
QUICK = ["--repeat", "1", "--min-time", "0.001"]
BACKENDS = [name for name in report.BACKENDS if IMPLEMENTATIONS[name].available()]
TORCH = IMPLEMENTATIONS["torch"].available()


def run_python(*args):
    """stdout of ``python args`` (the benchmarks' scripts, or ``-m fastdrop``); must exit 0."""
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_bench(*args):
    return run_python("-m", "fastdrop", "bench", "--quiet", *args)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(stdout, saved run) of `fastdrop bench` at two small sizes, every operation."""
    json_path = tmp_path_factory.mktemp("bench") / "bench.json"
    output = run_bench("--sizes", "1024", "4096", *QUICK, "--json", str(json_path))
    return output, json.loads(json_path.read_text())


def table_lines(output):
    """The lines of the (first) table: group titles, column titles, then the rows."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("operation"))
    end = lines.index("", start)
    return lines[start - 1], lines[start], lines[start + 2:end]


def test_default_output_fits_100_columns_and_reports_no_targets(quick_run):
    output, _ = quick_run
    widest = max(output.splitlines(), key=len)
    assert len(widest) <= report.WIDTH, widest
    assert "target" not in output.lower() and "NOT MET" not in output


def test_the_header_names_the_machine_threads_and_versions(quick_run):
    output, run = quick_run
    lines, header = output.splitlines(), run["header"]
    machine = next(line for line in lines if line.startswith("machine: "))
    for text in (header["cpu"], header["simd path"], f"{fastdrop.get_num_threads()} thread"):
        assert text in machine, text
    versions = next(line for line in lines if line.startswith("versions: "))
    assert f"fastdrop {fastdrop.__version__}" in versions and f"NumPy {np.__version__}" in versions
    assert ("PyTorch" in versions) == TORCH
    assert ("not measured: torch" in output) == (not TORCH)


def test_each_cell_is_the_ratio_the_run_measured(quick_run):
    """A row per (operation, n); per backend: its time / the floor's, NumPy's and torch's / its."""
    output, run = quick_run
    groups, titles, rows = table_lines(output)
    comparisons = [("× memory floor", "floor"), ("vs NumPy", "numpy")] + (
        [("vs PyTorch", "torch")] if TORCH else [])
    assert groups.split() == " ".join(title for title, _ in comparisons).split()
    assert titles.split() == ["operation", "n", "floor", "time"] + BACKENDS * len(comparisons)
    assert len(rows) == len(run["rows"]) == len(OPERATIONS) * 2
    for line, row in zip(rows, run["rows"]):
        cells = line.rsplit(maxsplit=3 + len(BACKENDS) * len(comparisons))
        results = row["results"]
        assert cells[:4] == [OPERATIONS[row["operation"]].title, runner.size_label(row["n"]),
                             *report.format_time(results["floor"]["best_s"]).split()]
        expected = [report.format_ratio(results[name]["best_s"] / results["floor"]["best_s"]
                                        if other == "floor" else
                                        results[other]["best_s"] / results[name]["best_s"])
                    for _, other in comparisons for name in BACKENDS]
        assert cells[4:] == expected, line


def test_the_json_holds_every_cell(quick_run):
    _, run = quick_run
    available = [implementation.name for implementation in available_implementations()]
    assert run["implementations"] == available
    assert run["settings"]["sizes"] == [1024, 4096]
    assert run["header"]["fastdrop"] == fastdrop.__version__
    assert run["header"]["threads"] == [fastdrop.get_num_threads()]
    for row in run["rows"]:
        assert set(row["results"]) == set(available)
        assert row["results"]["floor"]["ratio_to_floor"] == pytest.approx(1.0)
        for name, cell in row["results"].items():
            assert "error" not in cell, (row["operation"], name, cell)
            assert 0 < cell["best_s"] <= cell["median_s"] and cell["gelem_per_s"] > 0


def test_a_busy_machine_note_when_backends_differ_by_more_than_2x(quick_run, subtests):
    if len(BACKENDS) < 2:
        pytest.skip("needs both compiled backends (the Cython extension is not built)")
    _, run = quick_run
    # (n, numba's time / cython's, whether the note appears): small n has fixed costs
    for n, factor, noted in ((1 << 22, 1.5, False), (1 << 22, 3.0, True), (1 << 22, 0.4, True),
                             (1 << 22, 0.6, False), (1024, 3.0, False)):
        with subtests.test(n=n, factor=factor):
            changed = copy.deepcopy(run)
            row = changed["rows"][-1]  # Gaussian dropout: the longest title
            row["n"] = n
            row["results"]["numba"]["best_s"] = row["results"]["cython"]["best_s"] * factor
            lines = report.format_table(changed).splitlines()
            notes = [line for line in lines if "the machine may be busy" in line]
            assert len(notes) == noted
            if noted:
                slower = "numba" if factor > 1 else "cython"
                assert notes[0].startswith(f"{slower} ") and "rerun" in notes[0]
                assert lines[-1] == notes[0] and len(notes[0]) <= report.WIDTH


def test_variant_rows_run_for_awkward_sizes_and_float64(tmp_path):
    """Every implementation runs the variant rows at n = 300 (no 32x32 maps) and in float64."""
    json_path = tmp_path / "bench.json"
    run_bench("--sizes", "300", "2^11", "--ops", "channel_inplace", "gaussian_inplace",
              "--p", "0.1", "--dtypes", "float32", "float64", *QUICK, "--json", str(json_path))
    run = json.loads(json_path.read_text())
    assert [(row["operation"], row["dtype"], row["n"]) for row in run["rows"]] == [
        (operation, dtype, n) for operation in ("channel_inplace", "gaussian_inplace")
        for dtype in ("float32", "float64") for n in (300, 2048)]
    for row in run["rows"]:
        for name, cell in row["results"].items():
            assert "error" not in cell, (row["operation"], row["dtype"], name, cell)


def test_channel_rows_have_n_elements_in_32x32_maps_where_n_allows(subtests):
    for n in (1, 300, 1024, 2048, 3 * 1024, 1 << 16, 1 << 26):
        with subtests.test(n=n):
            shape = channel_shape(n)
            assert len(shape) == 4 and math.prod(shape) == n
            if n % 1024 == 0:
                assert shape[2:] == (32, 32)
            if n % (64 * 1024) == 0:
                assert shape[1] == 64


def test_sizes_are_read_in_every_spelling_and_bad_ones_refused(subtests):
    for text, value in (("1024", 1024), ("2^16", 65536), ("2**10", 1024), ("1<<20", 1 << 20),
                        (" 3 ", 3)):
        with subtests.test(text):
            assert parse_size(text) == value
    for text in ("", "2^", "1e6", "-4", "0", "two"):
        with subtests.test(text):
            with pytest.raises(ValueError):
                parse_size(text)


@pytest.mark.parametrize("interleave", [True, False])
def test_a_row_times_every_implementation_interleaved_or_one_after_another(interleave):
    implementations = available_implementations(["floor", "numpy", "cython"])
    results = runner.time_row(implementations, ("backward_mask", 300, 0.5, "float64", 1),
                              repeat=3, min_time=0.001, interleave=interleave)
    assert list(results) == [implementation.name for implementation in implementations]
    for cell in results.values():
        assert cell["repeat"] == 3 and cell["number"] >= 1
        assert 0 < cell["best_s"] <= cell["median_s"]


def test_the_floor_kernel_scales_every_element_once(subtests):
    """scale_in_place (the floor) multiplies each element exactly once, whatever the split."""
    cython_kernels = pytest.importorskip("fastdrop.kernels.cython.kernels",
                                         reason="the Cython extension is not built")
    for dtype in ("float32", "float64"):
        for n in (1, 63, 64, 65, 1000, 64 * 21 + 5, 100_003):
            for threads in (1, 2, 3):
                with subtests.test(dtype=dtype, n=n, threads=threads):
                    values = np.random.default_rng(n).standard_normal(n).astype(dtype)
                    expected = values * values.dtype.type(1.7)
                    cython_kernels.scale_in_place(values, 1.7, threads)
                    np.testing.assert_array_equal(values, expected)
    with pytest.raises(TypeError, match="int32"):
        cython_kernels.scale_in_place(np.ones(10, np.int32), 2.0, 1)


# -- the repository's benchmarks/ ----------------------------------------------------------


def test_the_targets_script_reports_every_target_and_the_backend_ratio(tmp_path):
    json_path = tmp_path / "targets.json"
    output = run_python(str(BENCHMARKS / "targets.py"), "--sizes", "2048", *QUICK,
                        "--cold-start-runs", "1", "--json", str(json_path))
    records = json.loads(json_path.read_text())["targets"]
    titles = {record["target"] for record in records}
    expected = {"forward in place p=0.5: time / floor", "forward in place p=0.1: time / floor",
                "backward from mask: time / floor", "backward recompute: time / floor",
                "mask bytes == ceil(n/64)*8", "fused in place: peak extra memory beyond the mask",
                "n=1024: call / np.multiply(x, s, out=x)", "cold start / python -c 'import numpy'",
                "block cut at column 37 of 1000: time / one contiguous range"}
    if len(BACKENDS) == 2:  # reported, never a target
        expected.add("forward in place: numba time / cython time")
    assert expected <= titles
    for record in records:
        assert record["target"] in output
        if "numba time / cython time" in record["target"]:
            assert record["met"] is None and record["limit"] is None
        else:
            assert isinstance(record["met"], bool)
        if record["target"] == "mask bytes == ceil(n/64)*8":
            assert record["met"] and record["measured"] == "exact"  # memory, not time


@pytest.fixture
def make_docs(monkeypatch, tmp_path):
    """benchmarks/make_docs.py as a module, writing into a copy of the page in tmp_path."""
    import importlib.util

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("make_docs", BENCHMARKS / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = tmp_path / "benchmarks.md"
    doc.write_text(module.DOC.read_text())
    monkeypatch.setattr(module, "DOC", doc)
    monkeypatch.setattr(module, "PLOT", tmp_path / "bench.png")
    return module


def sections(module, text):
    """(before, main section, between, scaling section, after) of the page."""
    before, rest = text.split(module.BEGIN)
    main_section, rest = rest.split(module.END)
    between, rest = rest.split(module.SCALING_BEGIN)
    scaling, after = rest.split(module.SCALING_END)
    return before, main_section, between, scaling, after


def test_make_docs_rewrites_only_its_sections(make_docs, quick_run, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the test extra)")
    _, run = quick_run
    original = sections(make_docs, make_docs.DOC.read_text())
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps(run))
    make_docs.main(["--from-json", str(json_path)])
    text = make_docs.DOC.read_text()
    before, main_section, between, scaling, after = sections(make_docs, text)
    assert (before, between, scaling, after) == original[:1] + original[2:]
    for operation in OPERATIONS.values():
        assert f"#### {operation.title}\n" in main_section
    assert make_docs.measured_on(run) in main_section
    assert "UTC" not in main_section and "(git " not in main_section
    assert make_docs.PLOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    threads = dict(run, settings=dict(run["settings"], threads=[1, 2]),
                   rows=run["rows"] + [dict(row, threads=2) for row in run["rows"]])
    json_path.write_text(json.dumps(threads))
    for _ in range(2):  # the second time replaces what the first wrote
        make_docs.main(["--scaling-json", str(json_path), str(json_path)])
        parts = sections(make_docs, make_docs.DOC.read_text())
        assert parts[:3] + parts[4:] == (before, main_section, between, after)
        assert parts[3].count("### n = 2^12, threads 1, 2\n") == 2
        assert make_docs.command_line(threads["settings"]) in parts[3]
    assert make_docs.format_scaling_markdown(run) == ""  # one thread count: no table
    single = tmp_path / "single.json"
    single.write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="one thread count"):
        make_docs.main(["--scaling-json", str(single)])


def test_the_scaling_table_has_a_column_per_threads_and_backend(make_docs, subtests):
    names = ["floor"] + BACKENDS
    run = runner.run_benchmarks(operations=["forward_inplace", "backward_mask"], sizes=[1 << 18],
                                threads=[1, 2], implementations=BACKENDS, repeat=1,
                                min_time=0.001)
    del run["rows"][-1]["results"][names[-1]]  # a missing cell reads "-"
    lines = make_docs.format_scaling_markdown(run).splitlines()
    titles = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert titles == ["operation", "n", "p", "dtype"] + [
        f"{name}<br>{group}" for group in ("1 thread", "2 threads", "scaling, 1→2 threads")
        for name in names]
    rows = [dict(zip(titles, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:]]
    assert [row["operation"] for row in rows] == ["forward in place", "backward from mask"]
    for row, operation in zip(rows, ("forward_inplace", "backward_mask")):
        measured = {one["threads"]: one["results"] for one in run["rows"]
                    if one["operation"] == operation}
        for threads, group in ((1, "1 thread"), (2, "2 threads")):
            for name in names:
                with subtests.test(operation=operation, threads=threads, name=name):
                    cell = measured[threads].get(name)
                    expected = "-" if cell is None else make_docs.format_rate(
                        cell["gelem_per_s"]) + ("" if name == "floor" else
                                                f" ({report.format_ratio(cell['ratio_to_floor'])})")
                    assert row[f"{name}<br>{group}"] == expected
        for name in names:
            missing = name not in measured[1] or name not in measured[2]
            speedup = None if missing else measured[1][name]["best_s"] / measured[2][name]["best_s"]
            assert row[f"{name}<br>scaling, 1→2 threads"] == ("-" if missing else (
                report.format_ratio(speedup, decimals=1 if speedup >= 1 else 2)))


def test_the_dask_script_times_every_implementation(tmp_path, monkeypatch):
    pytest.importorskip("dask", reason="needs the dask extra")
    pytest.importorskip("fastdrop.dask", reason="needs the dask extra")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_dask
    json_path = tmp_path / "dask.json"
    output = run_python(str(BENCHMARKS / "bench_dask.py"), "--sizes", "2^22", "--chunks", "2^20",
                        "2^22", *QUICK, "--json", str(json_path))
    run = json.loads(json_path.read_text())
    assert [(row["n"], row["chunk"]) for row in run["rows"]] == [(2**22, 2**20), (2**22, 2**22)]
    for row in run["rows"]:
        assert set(row["seconds"]) == set(bench_dask.IMPLEMENTATIONS)
        assert set(row["breakdown"]) == set(bench_dask.PARTS)
        assert all(seconds > 0 for seconds in [*row["seconds"].values(),
                                               *row["breakdown"].values()])
    titles = [record["target"] for record in run["targets"]]  # chunks of 2^22 and more only
    assert titles == [f"{name}: time / {baseline} time" for name in
                      ("fastdrop.dask", "fastdrop.dask out=")
                      for baseline in ("in-memory", "dask-native")]
    for label in ("2^20", "fastdrop.dask out= Gelem/s", "dask-native Gelem/s", *titles):
        assert label in output, label


def test_the_torch_script_times_the_op_and_a_call(tmp_path):
    pytest.importorskip("torch", reason="needs the torch extra")
    json_path = tmp_path / "torch.json"
    output = run_python(str(BENCHMARKS / "bench_torch.py"), "--sizes", "2^12", "--dtypes",
                        "float32", *QUICK, "--no-steps", "--json", str(json_path))
    section = json.loads(json_path.read_text())
    assert [(row["n"], row["dtype"]) for row in section["ops"]] == [(4096, "float32")]
    assert set(section["ops"][0]["seconds"]) == {"fastdrop.torch", "torch",
                                                 "fastdrop (NumPy API)"}
    assert section["steps"] == [] and section["call_us"]["fastdrop.torch"] > 0
    for label in ("The op alone", "one forward + backward at n=1024",
                  "fastdrop.torch / NumPy API, fwd+bwd (adapter cost)"):
        assert label in output, label


def test_the_next_to_torch_script_times_both_cache_settings():
    pytest.importorskip("torch", reason="needs the torch extra")
    from fastdrop.torch import _build

    if _build.ops() is None:
        pytest.skip(f"needs the C++ path of fastdrop.torch: {_build.describe()}")
    output = run_python(str(BENCHMARKS / "bench_next_to_torch.py"), "--calls", "2",
                        "--log2-n", "16")
    rows = [line for line in output.splitlines() if line.startswith("| default")
            or line.startswith("| off")]
    assert [row.split(" | ")[1] for row in rows] == ["alone", "next to torch's"] * 2, output


def test_settled_samples_follow_an_untimed_call_of_their_own():
    """``settle=True``: every sample of one call comes after an untimed call of the same one."""
    order = []

    def call(name):
        def run():
            time.sleep(0.002)  # longer than min_time: one call a sample
            order.append(name)
        return run

    for settle, per_round in ((False, ["a", "b"]), (True, ["a", "a", "b", "b"])):
        order.clear()
        timings = runner.time_callables({"a": call("a"), "b": call("b")}, repeat=3,
                                        min_time=0.001, settle=settle)
        assert order[:4] == ["a", "a", "b", "b"]  # each prepared: a warm-up, a first sample
        assert order[4:] == per_round * 2 and timings["a"].repeat == 3
