"""The Numba backend says one line on stderr before it compiles, and nothing otherwise.

Each case runs a fresh interpreter with its own Numba cache folder: an empty one makes
the first call compile (the notice, once per type however many calls compile), the
same folder again loads from the cache (silent), and ``FASTDROP_QUIET=1`` silences a
compilation. Each process reports its cache misses, so a silent case is known to have
compiled or not.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]
# packed masks (bernoulli_mask) compile the smallest loop; two calls, one notice
SCRIPT = """
import fastdrop
from fastdrop.kernels.numba import words_range
for _ in range(2):
    fastdrop.bernoulli_mask(100, 0.5, seed=1, backend="numba")
print(sum(words_range._cache_misses.values()))
"""
NOTICE = ("fastdrop: Numba is compiling the kernels for packed masks (once per type; cached "
          "on disk) ...")


def run(cache_folder, **environment):
    """(stderr lines, cache misses) of SCRIPT in a fresh interpreter using ``cache_folder``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_folder), PYTHONPATH=str(ROOT),
               **environment)
    for name in ("FASTDROP_QUIET", "FASTDROP_NUMBA_CACHE"):
        if name not in environment:
            env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=env, cwd=cache_folder, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines(), int(result.stdout.split()[-1])


def test_a_compilation_is_announced_once_a_cached_load_and_a_quiet_one_not(tmp_path):
    first, quiet = tmp_path / "first", tmp_path / "quiet"
    first.mkdir()
    quiet.mkdir()
    assert run(first) == ([NOTICE], 1)
    assert run(first) == ([], 0)  # the cache is read: milliseconds, nothing said
    assert run(quiet, FASTDROP_QUIET="1") == ([], 1)
