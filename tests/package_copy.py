"""A copy of the package with its extensions built another way, for the tests that build one.

tests/test_embedding.py builds it without OpenMP, tests/test_portable_build.py without
any SIMD path; each then runs a script against the copy in a fresh interpreter.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_copy(folder, **variables):
    """Copy the package into ``folder`` and build its extensions with ``variables`` set.

    Returns the environment the copy runs in (the variables kept).
    """
    shutil.copytree(REPO / "fastdrop", folder / "fastdrop",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "nn", "examples"))
    for name in ["setup.py", "pyproject.toml", "README.md"]:
        shutil.copy(REPO / name, folder / name)
    environment = dict(os.environ, **variables)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=folder,
                           env=environment, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    return environment


def run_in_copy(folder, environment, script):
    """Run ``script`` with the copy in ``folder`` imported as fastdrop; it must print ok."""
    preamble = (f"import fastdrop\n"
                f"assert fastdrop.__file__.startswith({str(folder)!r}), fastdrop.__file__\n")
    result = subprocess.run([sys.executable, "-c", preamble + script], cwd=folder,
                            capture_output=True, text=True, timeout=300,
                            env=dict(environment, PYTHONPATH=str(folder)))
    assert result.stdout.strip().endswith("ok"), result.stdout[-2000:] + result.stderr[-3000:]
