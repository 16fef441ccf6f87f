"""Shared fixtures: the backend registry drives every cross-backend test (the rest: util.py).

Under pytest-xdist (the default: ``-n auto`` in pyproject.toml) the tests that run on
the Numba backend share one worker, so each Numba kernel compiles once per run rather
than once per worker. NumPy's BLAS runs one thread in every test process and in the
processes they start: the workers already use every core, and a second BLAS thread
only spins between the small products of the tests (4x the CPU time of a training
example on a busy machine). OpenMP's threads wait passively, for the same reason.
"""
import os

import pytest

import fastdrop
from tests.util import ALL_BACKENDS, COMPILED_BACKENDS


def pytest_configure(config):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the processes tests start
    # OpenMP threads sleep rather than spin between kernels (read when OpenMP loads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # (a scikit-learn dependency) this process keeps its BLAS threads
        return
    threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(params=COMPILED_BACKENDS)
def compiled_backend(request):
    return request.param


@pytest.fixture(params=ALL_BACKENDS)
def any_backend(request):
    return request.param


@pytest.fixture
def threads():
    """Restore the thread setting after a test changes it."""
    before = fastdrop.get_num_threads()
    yield
    fastdrop.set_num_threads(before)


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling with every test that names Numba on one worker.

    Numba compiles each kernel once per process (seconds each), so its tests share a
    worker and the compilation is paid once; the other tests spread over the workers.
    (The ``xdist_group`` mark would say the same, but pytest-xdist 3.8 cannot read it
    under pytest 9.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class NumbaTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return "numba" if "numba" in nodeid else nodeid

    return NumbaTestsTogether(config, log)
