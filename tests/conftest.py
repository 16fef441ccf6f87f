"""Shared fixtures: the backend registry drives every cross-backend test."""
import numpy as np
import pytest

import fastdrop
from fastdrop._backends import available_backends

# Compiled backends are compared with the reference; "numpy" *is* the reference.
COMPILED_BACKENDS = [name for name in available_backends() if name != "numpy"]
ALL_BACKENDS = available_backends()
FLOAT_DTYPES = [np.float16, np.float32, np.float64]


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


def bits(array):
    """An array's raw bytes, so comparisons are bit for bit (NaN, -0.0 included)."""
    return np.ascontiguousarray(array).view(np.uint8)
