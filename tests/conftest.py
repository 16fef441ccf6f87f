"""Shared fixtures: the backend registry drives every cross-backend test (the rest: util.py).

Under pytest-xdist (the default: ``-n auto --dist loadgroup`` in pyproject.toml) the
tests that run on the Numba backend share one worker, so each Numba kernel compiles
once per run rather than once per worker.
"""
import pytest

import fastdrop
from tests.util import ALL_BACKENDS, COMPILED_BACKENDS


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


def runs_on_numba(item):
    """Whether a collected test is parametrised with the Numba backend."""
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        isinstance(value, str) and value == "numba" for value in callspec.params.values())


def pytest_collection_modifyitems(config, items):
    for item in items:
        if runs_on_numba(item):
            item.add_marker(pytest.mark.xdist_group("numba"))
