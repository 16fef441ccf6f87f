"""The soak's short form (tests/soak.py), and that its checks see what they look for.

The soak runs for ``FASTDROP_SOAK_SECONDS`` (default 5) on the default backend; the
long form, with Numba too, is ``python -m tests.soak --minutes 15`` (docs/building.md,
Reliability).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastdrop
from tests import soak

SECONDS = float(os.environ.get("FASTDROP_SOAK_SECONDS", "5"))

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc and calls glibc's mprotect and malloc_trim")


@pytest.mark.slow
@linux_only
def test_random_calls_from_threads_and_processes_match_the_reference(subtests):
    seed = int.from_bytes(os.urandom(4), "little")
    results = soak.run(SECONDS, seed=seed, backends=("auto",), checkpoints=2)
    for place, (stats, rss) in results.items():
        with subtests.test(place=place, seed=seed):
            assert stats.failures == []
            assert stats.calls > stats.warm_up_calls  # the steady state ran
            assert len(set(stats.streams)) == len(stats.streams), "a stream given twice"
            assert soak.growth(rss) < soak.RSS_GROWTH_LIMIT, [value >> 20 for value in rss]
            if place != "threads":
                assert stats.memory_errors > 0  # the limit held, and a call over it raised


def _caller():
    return soak.Caller(np.random.default_rng(0), fastdrop.Generator(1), ("auto",), soak.Stats())


@pytest.mark.parametrize("n", [100, 100_000], ids=["whole", "blocks"])
def test_a_wrong_last_bit_is_a_mismatch(monkeypatch, n):
    true_dropout = fastdrop.dropout

    def off_by_one_bit(*arguments, **options):
        y, mask = true_dropout(*arguments, **options)
        y.reshape(-1)[-1:].view(np.uint8)[0] ^= 1
        return y, mask

    monkeypatch.setattr(fastdrop, "dropout", off_by_one_bit)
    caller = _caller()
    caller.call(function="dropout", n=n, mode="new", element=(np.dtype(np.float32), None))
    assert len(caller.stats.failures) == 1 and "differ" in caller.stats.failures[0]


def test_a_changed_input_is_seen(monkeypatch):
    true_gaussian_dropout = fastdrop.gaussian_dropout

    def scribbling(x, *arguments, **options):
        result = true_gaussian_dropout(x, *arguments, **options)
        x[(0,) * x.ndim] = 7
        return result

    monkeypatch.setattr(fastdrop, "gaussian_dropout", scribbling)
    caller = _caller()
    caller.call(function="gaussian_dropout", n=1000, mode="out")
    assert len(caller.stats.failures) == 1
    assert "the input was changed" in caller.stats.failures[0]


@linux_only
def test_a_write_around_a_fenced_array_is_seen(subtests):
    for layout in soak.LAYOUTS:
        with subtests.test(layout=layout):
            fenced = soak.Fenced((3, 5), np.dtype(np.float32), layout)
            fenced.array[...] = 1.0
            assert fenced.overwritten() == ""
            outside = [byte for byte in (fenced.start - 1, fenced.start + fenced.span)
                       if 0 <= byte < fenced.bytes.size]  # a guard page stands for the rest
            if layout == "strided":
                outside.append(fenced.start + 4)  # the gap after the first element
            for byte in outside:
                fenced.bytes[byte] ^= 0xFF
                assert fenced.overwritten() != ""
                fenced.bytes[byte] ^= 0xFF


@linux_only
@pytest.mark.parametrize("layout", ["guard-start", "guard-end"])
def test_a_guard_page_faults_on_a_touch(layout):
    # past the end for guard-end, before the start for guard-start: in a child, which dies
    step = "fenced.span" if layout == "guard-end" else "-1"
    program = (f"import ctypes, numpy as np; from tests import soak; fenced = soak.Fenced("
               f"(1000,), np.dtype(np.float64), {layout!r}); print(ctypes.c_char.from_address("
               f"fenced.bytes.ctypes.data + fenced.start + {step}).value)")
    child = subprocess.run([sys.executable, "-c", program], capture_output=True,
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert child.returncode == -11, child.stderr  # SIGSEGV


@linux_only
def test_resident_set_measurement_sees_memory_kept():
    before = soak.resident_bytes()
    kept = np.ones(1 << 23)  # 64 MiB, touched
    assert soak.resident_bytes() - before > 60 << 20
    del kept
