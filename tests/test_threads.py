"""Threads: the setting is validated and honoured, and results do not depend on it."""
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastdrop
from fastdrop._config import SERIAL_ELEMENTS
from tests.util import COMPILED_BACKENDS, dtypes_on

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def restore_threads():
    saved = fastdrop.get_num_threads()
    yield
    fastdrop.set_num_threads(saved)


def run_fresh_python(code, **environment):
    """Run ``code`` in a new interpreter that imports this checkout; return its stdout."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("FASTDROP_NUM_THREADS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(environment)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("n, error", [
    (0, ValueError), (-1, ValueError), (-(2**70), ValueError),
    (1.5, TypeError), (2.0, TypeError), ("2", TypeError), (None, TypeError),
])
def test_set_num_threads_rejects_bad_values(n, error, restore_threads):
    fastdrop.set_num_threads(3)
    with pytest.raises(error, match=re.escape(repr(n))):
        fastdrop.set_num_threads(n)
    assert fastdrop.get_num_threads() == 3


@pytest.mark.parametrize("n", [1, 2, 7, np.int64(3), 1000])
def test_set_num_threads_round_trips(n, restore_threads):
    fastdrop.set_num_threads(n)
    assert fastdrop.get_num_threads() == n
    assert type(fastdrop.get_num_threads()) is int


def test_num_threads_block_sets_then_restores(restore_threads):
    fastdrop.set_num_threads(3)
    with fastdrop.num_threads(1) as n:
        assert n == 1 and fastdrop.get_num_threads() == 1
    assert fastdrop.get_num_threads() == 3
    with pytest.raises(KeyError), fastdrop.num_threads(2):
        raise KeyError  # the setting comes back on an exception too
    assert fastdrop.get_num_threads() == 3


@pytest.mark.parametrize("n, error", [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_num_threads_block_rejects_bad_values_before_changing_anything(n, error,
                                                                      restore_threads):
    fastdrop.set_num_threads(3)
    with pytest.raises(error, match=re.escape(repr(n))), fastdrop.num_threads(n):
        pass
    assert fastdrop.get_num_threads() == 3


def test_num_threads_block_in_a_thread_that_never_chose_leaves_it_unchosen():
    def in_new_thread():
        before = (fastdrop.get_num_threads(), fastdrop._config.threads_were_set())
        with fastdrop.num_threads(1):
            inside = (fastdrop.get_num_threads(), fastdrop._config.threads_were_set())
        after = (fastdrop.get_num_threads(), fastdrop._config.threads_were_set())
        seen.extend([before, inside, after])

    seen = []
    worker = threading.Thread(target=in_new_thread)
    worker.start()
    worker.join()
    before, inside, after = seen
    assert inside == (1, True)
    assert after == before and before[1] is (os.environ.get("FASTDROP_NUM_THREADS") is not None)


def test_setting_is_per_python_thread(restore_threads):
    def in_new_thread(action):
        seen = []
        worker = threading.Thread(target=lambda: seen.append(action()))
        worker.start()
        worker.join()
        return seen[0]

    default = in_new_thread(fastdrop.get_num_threads)
    fastdrop.set_num_threads(default + 1)
    # a thread that never set it still sees the default, not this thread's setting
    assert in_new_thread(fastdrop.get_num_threads) == default

    def set_five():
        fastdrop.set_num_threads(5)
        return fastdrop.get_num_threads()

    assert in_new_thread(set_five) == 5
    assert fastdrop.get_num_threads() == default + 1  # the other thread's setting did not leak


PRINT_THREADS = """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import fastdrop
    print(fastdrop.get_num_threads())
    print(len(caught))
    for warning in caught:
        print(warning.category.__name__, warning.message)
"""


def fresh_thread_setting(value=None):
    environment = {} if value is None else {"FASTDROP_NUM_THREADS": value}
    threads, warning_count, *warnings = run_fresh_python(PRINT_THREADS, **environment).splitlines()
    return int(threads), int(warning_count), warnings


def available_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_default_is_the_available_cpus():
    assert fresh_thread_setting() == (available_cpus(), 0, [])


@pytest.mark.parametrize("value", ["3", "1", " 5 ", "64"])
def test_environment_variable_is_honoured(value):
    assert fresh_thread_setting(value) == (int(value), 0, [])


def test_empty_environment_variable_means_default():
    assert fresh_thread_setting("") == (available_cpus(), 0, [])


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_environment_variable_warns_and_falls_back(value):
    threads, warning_count, warnings = fresh_thread_setting(value)
    assert threads == available_cpus()
    assert warning_count == 1
    assert warnings[0].startswith("RuntimeWarning")
    assert "FASTDROP_NUM_THREADS" in warnings[0] and repr(value) in warnings[0]


def test_import_does_not_import_numba():
    code = """
        import sys
        import fastdrop
        fastdrop.available_backends()  # the registry must not import a backend to list it
        print('numba' in sys.modules)
    """
    assert run_fresh_python(code) == "False\n"


def large_input(dtype):
    # > SERIAL_ELEMENTS so the parallel path runs; not a multiple of 64, with infs and NaNs
    n = 3 * SERIAL_ELEMENTS + 37
    x = np.random.default_rng(0).standard_normal(n).astype(dtype)
    x[::1001] = np.inf
    x[5::1003] = np.nan
    return x


@pytest.mark.skipif(not COMPILED_BACKENDS, reason="no compiled backend installed")
@pytest.mark.parametrize("backend, dtype", [(backend, dtype) for backend in COMPILED_BACKENDS
                                            for dtype in dtypes_on(backend, 2)])
def test_results_do_not_depend_on_thread_count(backend, dtype, restore_threads):
    if backend == "numba":
        import numba

        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("Numba runs one thread here: nothing to compare")
    x = large_input(dtype)
    grad = large_input(dtype)[::-1].copy()
    results = {}
    for threads in (1, 2, 3):
        fastdrop.set_num_threads(threads)
        y, mask = fastdrop.dropout(x, 0.3, seed=17, stream=4, offset=29, backend=backend)
        backward = fastdrop.dropout_backward(grad, mask, backend=backend)
        recomputed = fastdrop.dropout_backward_recompute(grad, 0.3, seed=17, stream=4, offset=29,
                                                         backend=backend)
        words = fastdrop.bernoulli_mask(x.size, 0.3, seed=17, stream=4, offset=29,
                                        backend=backend)
        inplace = x.copy()
        fastdrop.dropout(inplace, 0.3, seed=17, stream=4, offset=29, inplace=True,
                         backend=backend)
        results[threads] = [y.tobytes(), mask.words.tobytes(), backward.tobytes(),
                            recomputed.tobytes(), words.tobytes(), inplace.tobytes()]
    assert results[2] == results[1]
    assert results[3] == results[1]
    # and the mask is the specified one, not merely a consistent one
    expected = fastdrop.reference.bernoulli_mask(x.size, 0.3, seed=17, stream=4, offset=29)
    assert results[1][1] == expected.tobytes()


@pytest.mark.skipif(not COMPILED_BACKENDS, reason="no compiled backend installed")
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_drop_all_and_keep_all_do_not_depend_on_thread_count(backend, restore_threads):
    x = large_input(np.float32)
    for p in (0.0, 1.0):
        outputs = set()
        for threads in (1, 2):
            fastdrop.set_num_threads(threads)
            y, mask = fastdrop.dropout(x, p, seed=3, offset=5, backend=backend)
            outputs.add((y.tobytes(), mask.words.tobytes()))
        assert len(outputs) == 1


def test_numba_thread_setting_is_restored_after_a_call(threads):
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    numba.set_num_threads(1)
    try:
        fastdrop.set_num_threads(2)
        fastdrop.dropout(np.ones(2 * SERIAL_ELEMENTS, np.float32), 0.5, seed=1, backend="numba")
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_bool_thread_count_is_a_type_error():
    with pytest.raises(TypeError):
        fastdrop.set_num_threads(True)
