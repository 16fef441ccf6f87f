"""The `fastdrop` command: info and demo run end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import fastdrop
from fastdrop.cli import main

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(fastdrop.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))


def run_module(*args):
    return subprocess.run([sys.executable, "-m", "fastdrop", *args], capture_output=True,
                          text=True, env=ENV, timeout=300)


def test_info_reports_backends_openmp_threads_cpu_and_cache():
    result = run_module("info")
    assert result.returncode == 0, result.stderr
    for label in ["fastdrop", "numpy", "backends", "openmp", "threads (fastdrop)", "cpu", "simd",
                  "numba cache"]:
        assert label in result.stdout
    info = json.loads(run_module("info", "--json").stdout)
    assert info["fastdrop"] == fastdrop.__version__
    assert set(info["backends"]) == set(fastdrop._backends.BACKENDS)
    assert info["backends"]["numpy"] is True
    # a fresh process starts from FASTDROP_NUM_THREADS or the available CPUs
    assert info["threads (fastdrop)"] == fastdrop._config._threads_from_environment()
    if info["backends"]["cython"]:
        assert isinstance(info["openmp"], bool)


def test_info_honours_the_thread_variable():
    env = dict(ENV, FASTDROP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "fastdrop", "info", "--json"],
                            capture_output=True, text=True, env=env)
    assert json.loads(result.stdout)["threads (fastdrop)"] == 1


def test_demo_checks_itself_and_succeeds(capsys):
    assert main(["demo", "--n", "5000", "--p", "0.3"]) == 0
    output = capsys.readouterr().out
    assert "ok   backward from the stored mask == recomputed backward" in output
    assert "FAIL" not in output


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert fastdrop.__version__ in capsys.readouterr().out
    assert main([]) == 2
