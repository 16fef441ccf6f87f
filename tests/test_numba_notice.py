"""The Numba backend says one line on stderr before it compiles, and nothing otherwise.

Two fresh interpreters share a Numba cache folder: in the first, empty, the first call
compiles (the notice, once per type however many calls compile); the second loads from
the cache (silent). Each process reports its cache misses, so a silent case is known to
have compiled or not. ``FASTDROP_QUIET=1`` is read by the listener when a compilation
starts: that is checked in this process, on the listener itself, with no compilation.
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


def test_a_compilation_is_announced_once_and_a_cached_load_not(tmp_path):
    assert run(tmp_path) == ([NOTICE], 1)
    assert run(tmp_path) == ([], 0)  # the cache is read: milliseconds, nothing said


def compile_start(dispatcher, element):
    """The event Numba sends as it starts compiling ``dispatcher`` for an array of ``element``."""
    from numba import types
    from numba.core import event

    return event.Event("numba:compile", event.EventStatus.START,
                       data=dict(dispatcher=dispatcher, args=(element[::1], types.uint64)))


def test_fastdrop_quiet_silences_the_notice(monkeypatch, capsys, subtests):
    """The listener itself, given the events of two entry loops and a helper: no compilation."""
    from numba import types

    from fastdrop.kernels.numba import _CompileNotice, words_parallel, words_range
    from fastdrop.kernels.numba.words import mask_word

    for quiet in (None, "0", "1", "yes"):
        with subtests.test(quiet=quiet):
            if quiet is None:
                monkeypatch.delenv("FASTDROP_QUIET", raising=False)
            else:
                monkeypatch.setenv("FASTDROP_QUIET", quiet)
            notice = _CompileNotice()
            for dispatcher, element in ((words_range, types.uint64),
                                        (words_parallel, types.uint64),
                                        (mask_word, types.float32)):
                notice.on_start(compile_start(dispatcher, element))  # once per type; helpers: no
            said = [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()]
            assert said == ([] if quiet in ("1", "yes") else [NOTICE.split(" (")[0]])
