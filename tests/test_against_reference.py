"""Compiled backends are bit-identical to fastdrop.reference: masks and outputs.

The grid of the acceptance criteria: sizes around word boundaries and one large
odd size, p from 0 to 1 including values a hair from the ends, offsets that are
not multiples of 64, every float dtype, one and two threads.
"""
import functools

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from tests.util import FLOAT_DTYPES, bits

SIZES = [0, 1, 63, 64, 65, 1000, 2**20 + 3]
PS = [0.0, 1e-9, 0.1, 1 / 3, 0.5, 0.9, 1 - 1e-9, 1.0]
OFFSETS = [0, 5, 64 * 3 + 61]


@functools.lru_cache(maxsize=None)
def reference_keep(n, p, seed, stream, offset):
    return reference.keep_bits(n, p, seed, stream, offset)


@functools.lru_cache(maxsize=None)
def sample_input(n, dtype):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n) * 3
    x[::97] = 0.0
    x[1::101] = -0.0
    if n > 10:
        x[2], x[3], x[4] = np.inf, -np.inf, np.nan  # dropped lanes must still give +0.0
    return x.astype(dtype)


@pytest.mark.parametrize("thread_count", [1, 2])
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("n", SIZES)
def test_dropout_bit_identical(compiled_backend, threads, thread_count, n, p, offset):
    fastdrop.set_num_threads(thread_count)
    seed, stream = 0x0123456789ABCDEF, 77
    keep = reference_keep(n, p, seed, stream, offset)
    expected_words = reference.pack_mask(keep)
    words = fastdrop.bernoulli_mask(n, p, seed=seed, stream=stream, offset=offset,
                                    backend=compiled_backend)
    assert np.array_equal(words, expected_words)
    for dtype in FLOAT_DTYPES:
        x = sample_input(n, dtype)
        expected = reference.scale_kept(x, keep, p)
        y, mask = fastdrop.dropout(x, p, seed=seed, stream=stream, offset=offset,
                                   backend=compiled_backend)
        assert y.dtype == x.dtype and y.shape == x.shape
        assert np.array_equal(bits(y), bits(expected)), (dtype, n, p, offset)
        assert np.array_equal(mask.words, expected_words)
        assert mask.words.nbytes == 8 * (-(-n // 64))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.77])
def test_public_functions_match_reference_functions(compiled_backend, dtype, p):
    """Each public function against the reference function of the same name and arguments."""
    x = sample_input(5000, dtype).reshape(50, 100)
    kwargs = dict(seed=99, stream=3, offset=17)
    y, mask = fastdrop.dropout(x, p, backend=compiled_backend, **kwargs)
    y_ref, mask_ref = reference.dropout(x, p, **kwargs)
    assert np.array_equal(bits(y), bits(y_ref))
    assert np.array_equal(mask.words, mask_ref.words)
    assert (mask.seed, mask.stream, mask.offset, mask.p, mask.n, mask.shape) == \
        (mask_ref.seed, mask_ref.stream, mask_ref.offset, mask_ref.p, mask_ref.n, mask_ref.shape)

    grad = sample_input(5000, dtype)[::-1].reshape(50, 100)
    backward = fastdrop.dropout_backward(grad, mask, backend=compiled_backend)
    assert np.array_equal(bits(backward), bits(reference.dropout_backward(grad, mask_ref)))
    recomputed = fastdrop.dropout_backward_recompute(grad, p, backend=compiled_backend, **kwargs)
    assert np.array_equal(bits(recomputed),
                          bits(reference.dropout_backward_recompute(grad, p, **kwargs)))
    assert np.array_equal(
        fastdrop.bernoulli_mask(5000, p, backend=compiled_backend, **kwargs),
        reference.bernoulli_mask(5000, p, **kwargs))


def test_numpy_backend_is_the_reference():
    x = sample_input(1000, np.float32)
    y, mask = fastdrop.dropout(x, 0.3, seed=5, stream=6, backend="numpy")
    y_ref, mask_ref = reference.dropout(x, 0.3, seed=5, stream=6)
    assert np.array_equal(bits(y), bits(y_ref))
    assert np.array_equal(mask.words, mask_ref.words)


def test_auto_backend_gives_the_same_result_as_reference():
    x = sample_input(1000, np.float64)
    y, _ = fastdrop.dropout(x, 0.4, seed=1, stream=2)
    y_ref, _ = reference.dropout(x, 0.4, seed=1, stream=2)
    assert np.array_equal(bits(y), bits(y_ref))


@pytest.mark.skipif("cython" not in fastdrop.available_backends(), reason="extension not built")
@pytest.mark.parametrize("simd", [2, 1, 0])
@pytest.mark.parametrize("p", PS)
def test_cython_simd_and_portable_paths_agree_with_reference(p, simd):
    """The AVX-512 and AVX2 paths (where the CPU has them) and the portable paths give the same bits."""
    from fastdrop.kernels import cython_kernels

    before = cython_kernels.simd_enabled()
    try:
        cython_kernels.set_simd(simd)
        for n, offset in [(64 * 8 * 3 + 5, 0), (5000, 61), (1000, 2**32 * 64 - 640)]:
            keep = reference_keep(n, p, 12345, 2**40 + 3, offset)
            words = fastdrop.bernoulli_mask(n, p, seed=12345, stream=2**40 + 3, offset=offset,
                                            backend="cython")
            assert np.array_equal(words, reference.pack_mask(keep)), (n, offset)
            for dtype in FLOAT_DTYPES:
                x = sample_input(n, dtype)
                y, _ = fastdrop.dropout(x, p, seed=12345, stream=2**40 + 3, offset=offset,
                                       backend="cython")
                assert np.array_equal(bits(y), bits(reference.scale_kept(x, keep, p)))
                grad = x[::-1].copy()
                back = fastdrop.dropout_backward(grad, words, p=p, backend="cython")
                assert np.array_equal(bits(back), bits(reference.scale_kept(grad, keep, p)))
    finally:
        cython_kernels.set_simd(before)


def _check_fused_paths(backend, n, offset, ps):
    """Fused forward out of place (with its mask), in place and recompute against the reference."""
    for p in ps:
        keep = reference_keep(n, p, 5, 6, offset)
        for dtype in FLOAT_DTYPES:
            x = sample_input(n, dtype)
            expected = reference.scale_kept(x, keep, p)
            y, mask = fastdrop.dropout(x, p, seed=5, stream=6, offset=offset, backend=backend)
            assert np.array_equal(bits(y), bits(expected)), (p, dtype)
            assert np.array_equal(mask.words, reference.pack_mask(keep)), (p, dtype)
            inplace = x.copy()
            fastdrop.dropout(inplace, p, seed=5, stream=6, offset=offset, inplace=True,
                             backend=backend)
            assert np.array_equal(bits(inplace), bits(expected)), (p, dtype)
            back = fastdrop.dropout_backward_recompute(x, p, seed=5, stream=6, offset=offset,
                                                       backend=backend)
            assert np.array_equal(bits(back), bits(expected)), (p, dtype)


@pytest.mark.skipif("numba" not in fastdrop.available_backends(), reason="numba not installed")
@pytest.mark.parametrize("thread_count", [1, 2, 3])
@pytest.mark.parametrize("offset", [0, 1, 63, 1023, 64 * 17 + 5])
@pytest.mark.parametrize("n", [1023, 1024, 1025, 2047, 2049, 64 * 16 * 5 + 64, 64 * 16 * 5 + 65,
                               2**18 + 64 * 16 + 65])
def test_numba_pipelined_groups_match_reference(threads, thread_count, offset, n):
    """Numba's fused loop for float32/float64 scales a group of 16 mask words while
    drawing the next group's, for every 0 < p < 1 (float16 takes the plain loop): sizes
    at and around group ends, offsets whose last local word of a group needs the next
    group's first global word, thread counts that split the groups unevenly."""
    fastdrop.set_num_threads(thread_count)
    _check_fused_paths("numba", n, offset, (0.1, 1 / 3, 0.5, 0.25))


@pytest.mark.skipif("cython" not in fastdrop.available_backends(), reason="extension not built")
@pytest.mark.parametrize("simd", [2, 1])
@pytest.mark.parametrize("thread_count", [1, 2, 3])
@pytest.mark.parametrize("offset", [0, 1, 63, 1023, 64 * 17 + 5])
@pytest.mark.parametrize("n", [1023, 1024, 1025, 2047, 2049, 64 * 16 * 5 + 64, 64 * 16 * 5 + 65,
                               2**18 + 64 * 16 + 65])
def test_cython_pipelined_groups_match_reference(threads, simd, thread_count, offset, n):
    """The SIMD fused kernel scales a group of 16 mask words while drawing the next
    group's (p = 0.1 and 1/3; p = 0.5 takes one Philox block and the plain loop): sizes
    at and around group ends, offsets whose last local word of a group needs the next
    group's first global word, thread counts that split the groups unevenly."""
    from fastdrop.kernels import cython_kernels

    before = cython_kernels.simd_enabled()
    fastdrop.set_num_threads(thread_count)
    try:
        cython_kernels.set_simd(simd)
        _check_fused_paths("cython", n, offset, (0.1, 1 / 3, 0.5))
    finally:
        cython_kernels.set_simd(before)
