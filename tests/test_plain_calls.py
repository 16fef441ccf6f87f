"""The usual dropout call runs in one step (the backends' ``dropout_plain``); it must change nothing.

Plain calls -- an ndarray that is C-contiguous, aligned and native-endian, a float p,
int seed/stream/offset -- give the bits of `fastdrop.reference`; every other call
must be declined (``None``) without touching anything, so that the general path
checks it and raises its own messages. Cython's step is one C function; Numba's
checks in Python and calls one compiled kernel, and also declines float16 and
read-only arrays.
"""
import importlib

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._backends import backend_available
from tests.util import FLOAT_DTYPES, bits, sample

PLAIN_BACKENDS = [pytest.param("cython", marks=pytest.mark.skipif(
                      not backend_available("cython"), reason="the Cython extension is not built")),
                  pytest.param("numba", marks=pytest.mark.skipif(
                      not backend_available("numba"), reason="numba is not installed"))]


def plain(backend):
    return importlib.import_module(f"fastdrop.kernels.{backend}_kernels").dropout_plain


def takes(backend, x, inplace):
    """Whether ``backend``'s one step takes a plain call on x (Numba's declines some)."""
    return backend == "cython" or (x.dtype != np.float16 and x.flags.writeable)


PLAIN_CASES = [
    # shape, p, seed, stream, offset
    ((1024,), 0.5, 1, None, 0),
    ((3, 5, 7), 0.1, 2**64 - 1, 2**64 - 1, 5),
    ((), 0.3, 9, 4, 63),
    ((0, 4), 0.5, 1, 2, 0),
    ((1000,), 0.0, 3, None, 2**63 - 1000),
    ((130,), 1.0, 3, 8, 64 * 7 + 1),
    ((65,), 1 - 2**-53, 0, 0, 2**40 + 3),
    ((513, 520), 0.1, 2**63 + 5, 2**63, 7),  # 266760 elements: threaded at 2 threads
]


@pytest.mark.parametrize("backend", PLAIN_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("shape, p, seed, stream, offset", PLAIN_CASES)
def test_plain_calls_take_the_one_step_and_match_the_reference(shape, p, seed, stream, offset,
                                                               inplace, dtype, backend):
    x = sample(shape, dtype)
    expected, expected_mask = reference.dropout(x, p, seed=seed, stream=stream, offset=offset)
    before = x.copy()
    done = plain(backend)(x, p, seed, stream, offset, inplace, 2)
    if not takes(backend, x, inplace):
        assert done is None and np.array_equal(bits(x), bits(before))
    else:
        assert done is not None, "a plain call was declined"
        y, words = done
        assert (y is x) == inplace
        assert y.shape == x.shape and y.dtype == x.dtype and y.flags.c_contiguous
        assert np.array_equal(bits(y), bits(expected))
        assert np.array_equal(words, expected_mask.words)
    # and through the public function, in place or not, with its DropoutMask
    z = before.copy()
    result, mask = fastdrop.dropout(z, p, seed=seed, stream=stream, offset=offset,
                                    inplace=inplace, backend=backend)
    assert (result is z) == inplace
    assert np.array_equal(bits(result), bits(expected))
    assert np.array_equal(mask.words, expected_mask.words)
    assert (mask.shape, mask.n, mask.p, mask.seed, mask.stream, mask.offset) == (
        expected_mask.shape, expected_mask.n, expected_mask.p, expected_mask.seed,
        expected_mask.stream, expected_mask.offset)


def not_plain():
    """Calls the C step must decline: (description, x, p, seed, stream, offset, inplace)."""
    x = sample((40, 30), np.float32)
    readonly = x.copy()
    readonly.flags.writeable = False
    swapped = x.astype(x.dtype.newbyteorder())

    class Subclass(np.ndarray):
        pass

    return [
        ("list", x.tolist(), 0.5, 1, None, 0, False),
        ("Fortran order", np.asfortranarray(x), 0.5, 1, None, 0, False),
        ("strided view", x[:, ::2], 0.5, 1, None, 0, True),
        ("byte-swapped", swapped, 0.5, 1, None, 0, False),
        ("subclass", x.copy().view(Subclass), 0.5, 1, None, 0, False),
        ("integer array", np.arange(10), 0.5, 1, None, 0, False),
        ("complex array", x.astype(np.complex64), 0.5, 1, None, 0, False),
        ("read-only in place", readonly, 0.5, 1, None, 0, True),
        ("p a NumPy float", x, np.float64(0.5), 1, None, 0, False),
        ("p an int", x, 1, 1, None, 0, False),
        ("p NaN", x, float("nan"), 1, None, 0, False),
        ("p above 1", x, 1.5, 1, None, 0, False),
        ("p below 0", x, -1e-300, 1, None, 0, False),
        ("seed None", x, 0.5, None, None, 0, False),
        ("seed a Generator", x, 0.5, fastdrop.Generator(1), None, 0, False),
        ("seed a NumPy int", x, 0.5, np.uint64(1), None, 0, False),
        ("seed bool", x, 0.5, True, None, 0, False),
        ("seed negative", x, 0.5, -1, None, 0, False),
        ("seed 2**64", x, 0.5, 2**64, None, 0, False),
        ("stream 2**64", x, 0.5, 1, 2**64, 0, False),
        ("stream negative", x, 0.5, 1, -1, 0, False),
        ("stream a float", x, 0.5, 1, 1.0, 0, False),
        ("offset negative", x, 0.5, 1, None, -1, False),
        ("offset past 2**63", x, 0.5, 1, None, 2**63 - x.size + 1, False),
        ("offset a NumPy int", x, 0.5, 1, None, np.int64(3), False),
        ("offset bool", x, 0.5, 1, None, False, False),
    ]


@pytest.mark.parametrize("backend", PLAIN_BACKENDS)
@pytest.mark.parametrize("case", not_plain(), ids=lambda case: case[0])
def test_anything_else_is_declined_untouched(case, backend):
    _, x, p, seed, stream, offset, inplace = case
    before = np.array(x, copy=True)
    assert plain(backend)(x, p, seed, stream, offset, inplace, 2) is None
    assert np.array_equal(bits(np.asarray(x)), bits(before))
