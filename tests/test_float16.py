"""float16 arithmetic: x * s computed in float32 and rounded once, exactly as NumPy rounds."""
import numpy as np
import pytest

import fastdrop
from tests.util import bits

numba = pytest.importorskip("numba")
from fastdrop.kernels.numba.half import float32_to_half_bits, half_bits_to_float32  # noqa: E402


@numba.njit
def _widen(halves):
    out = np.empty(halves.size, np.float32)
    for i in range(halves.size):
        out[i] = half_bits_to_float32(halves[i])
    return out


@numba.njit
def _narrow(values):
    out = np.empty(values.size, np.uint16)
    for i in range(values.size):
        out[i] = float32_to_half_bits(values[i])
    return out


def test_every_float16_widens_exactly():
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    expected = halves.view(np.float16).astype(np.float32)
    got = _widen(halves)
    nan = np.isnan(expected)
    assert np.array_equal(got.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
    assert np.all(np.isnan(got[nan]))


def test_float32_narrows_like_numpy():
    rng = np.random.default_rng(0)
    near_half_range = rng.integers(0x33000000 - 50, 0x47800000 + 50, 2_000_000, dtype=np.int64)
    signs = rng.integers(0, 2, near_half_range.size, dtype=np.int64) << 31
    patterns = np.concatenate([
        (near_half_range | signs).astype(np.uint32),
        rng.integers(0, 2**32, 500_000, dtype=np.uint64).astype(np.uint32),
        np.array([0x33000000, 0x33000001, 0x387FFFFF, 0x38800000, 0x477FEFFF, 0x477FF000,
                  0x47800000, 0x7F800000, 0xFF800000, 0x80000000, 0], np.uint32),
    ])
    values = patterns.view(np.float32)
    with np.errstate(all="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    got = _narrow(values)
    nan = np.isnan(values)
    assert np.array_equal(got[~nan], expected[~nan])
    assert np.all(np.isnan(got.view(np.float16)[nan]))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.999999])
def test_float16_dropout_on_every_float16_value(any_backend, p):
    """All 65536 float16 values through dropout: kept ones equal float16(float32(x) * s16)."""
    x = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    y, mask = fastdrop.dropout(x, p, seed=6, stream=6, backend=any_backend)
    keep = mask.unpack()
    with np.errstate(all="ignore"):
        product = (x.astype(np.float32) * np.float32(np.float16(1 / (1 - p)))).astype(np.float16)
    finite = ~np.isnan(x)
    assert np.array_equal(bits(y[keep & finite]), bits(product[keep & finite]))
    assert np.all(np.isnan(y[keep & ~finite]))
    assert np.all(y.view(np.uint16)[~keep] == 0)


@pytest.mark.parametrize("offset", [0, 37])
def test_every_float16_value_bit_identical_to_the_reference(compiled_backend, offset):
    """Every float16 bit pattern, three times over, gives the reference's bits exactly.

    All patterns (NaN payloads, signalling NaNs, subnormals, infinities), out of place, in
    place and by recompute (Numba's kernels convert float16 vectors in hardware where the
    CPU has F16C).
    """
    from fastdrop import reference

    x = np.tile(np.arange(2**16, dtype=np.uint32).astype(np.uint16), 3).view(np.float16)
    for p in (0.1, 0.5):
        expected, mask = reference.dropout(x, p, seed=3, stream=4, offset=offset)
        y, got = fastdrop.dropout(x, p, seed=3, stream=4, offset=offset, backend=compiled_backend)
        assert np.array_equal(bits(y), bits(expected)) and np.array_equal(got.words, mask.words)
        inplace = x.copy()
        fastdrop.dropout(inplace, p, seed=3, stream=4, offset=offset, inplace=True,
                         backend=compiled_backend)
        assert np.array_equal(bits(inplace), bits(expected))
        back = fastdrop.dropout_backward_recompute(x, p, seed=3, stream=4, offset=offset,
                                                   backend=compiled_backend)
        assert np.array_equal(bits(back), bits(expected))
