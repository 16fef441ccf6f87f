"""Shared fixtures: the backend registry drives every cross-backend test (the rest: util.py)."""
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
