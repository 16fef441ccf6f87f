"""Dropout variants are bit-identical on every backend, layout, offset and thread count.

The variants of issue 6: dropout with a noise shape (or broadcast_dims), channel dropout,
alpha and feature alpha dropout, Gaussian dropout, DropConnect, and masks reused with
apply_mask (variational dropout), with their backward functions. Each compiled backend
is compared with `fastdrop.reference`; the expected values are also composed here from
the mask-stream primitives (`reference.keep_bits`, `reference.gaussian_noise`) and the
documented output arithmetic, so the reference's own functions are checked too
(``backend="numpy"`` runs them).
"""
import functools
import math
import zlib

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._config import MIN_ELEMENTS_PER_THREAD, SERIAL_ELEMENTS
from fastdrop.kernels.common import chunk_count
from fastdrop.maskstream.spec import alpha_dropout_constants
from tests.util import FLOAT_DTYPES, bits

SEED, STREAM = 0x5EED_F00D_0123_4567, 41
OFFSETS = [0, 5, 253]  # offsets count mask elements; 253 is not a multiple of 64
PS = [0.0, 0.1, 0.5, 1.0]
GAUSSIAN_PS = [0.0, 0.1, 0.5, 0.9]

# name -> (x's shape, noise shape); None means one mask element per element of x
NOISE_CASES = {
    "per-element": ((7, 67), None),
    "NCHW-channels-runs-of-63": ((3, 5, 7, 9), (3, 5, 1, 1)),
    "NCHW-channels-runs-of-130": ((2, 3, 10, 13), (2, 3, 1, 1)),
    "NCHW-many-mask-words": ((16, 9, 5, 3), (16, 9, 1, 1)),
    "one-channel-mask-for-every-sample": ((3, 5, 7, 9), (1, 5, 1, 1)),
    "time-shared-33-features": ((4, 6, 33), (4, 1, 33)),
    "time-shared-67-features": ((4, 6, 67), (4, 1, 67)),
    "last-axis-only": ((3, 5, 70), (1, 1, 70)),
    "all-ones": ((3, 5, 7), (1, 1, 1)),
    "equal-to-shape": ((3, 5, 7), (3, 5, 7)),
    "shorter-rank-last-axis": ((4, 6, 67), (67,)),
    "shorter-rank-two-axes": ((3, 5, 7), (5, 1)),
    "alternating-varies-first": ((3, 4, 5, 6), (3, 1, 5, 1)),
    "alternating-shared-first": ((3, 4, 5, 6), (1, 4, 1, 6)),
    "unit-axis-in-x-shared": ((3, 1, 65), (3, 1, 1)),
    "unit-axis-in-x-varies": ((3, 1, 65), (1, 1, 65)),
    "1-d-one-bit": ((100,), (1,)),
    "0-d": ((), ()),
    "empty-batch": ((0, 5, 7), (0, 5, 1)),
    "empty-x-nonempty-mask": ((0, 5, 7), (1, 5, 1)),
    "empty-middle-axis": ((3, 0, 4), (3, 1, 4)),
}
CASE_IDS = list(NOISE_CASES)


# ---------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def _sample(shape, dtype, salt):
    rng = np.random.default_rng([zlib.crc32(repr(shape).encode()), salt])
    flat = rng.standard_normal(math.prod(shape)) * 3
    flat[::97] = 0.0
    flat[1::101] = -0.0
    if flat.size > 10:
        flat[2], flat[3], flat[4] = np.inf, -np.inf, np.nan
    flat = flat.astype(dtype)
    flat.flags.writeable = False
    return flat.reshape(shape)


def sample(shape, dtype, salt=0):
    """A fresh array of normal values with zeros, -0.0, inf, -inf and NaN among them."""
    return _sample(tuple(shape), np.dtype(dtype).type, salt).copy()


@functools.lru_cache(maxsize=None)
def keep_flags(m, p, offset, seed=SEED, stream=STREAM):
    """Keep flags of m mask elements from global index offset (the reference runs the spec)."""
    keep = reference.keep_bits(m, p, seed, stream, offset)
    keep.flags.writeable = False
    return keep


def mask_shape_of(shape, noise_shape):
    """The mask's shape: noise_shape padded with 1s on the left (NumPy broadcasting)."""
    if noise_shape is None:
        return tuple(shape)
    return (1,) * (len(shape) - len(noise_shape)) + tuple(noise_shape)


def stretched(keep, mask_shape, shape):
    return np.broadcast_to(keep.reshape(mask_shape), shape)


def scaled(x, keep, scale):
    """Kept: x * s with s rounded once to x's dtype; dropped: +0.0 (docs/mask-stream.md, 6)."""
    with np.errstate(all="ignore"):
        kept = x * x.dtype.type(scale)  # float16: the product of two halves is exact in float32
    return np.where(keep, kept, x.dtype.type(0))


def drop_scale(p):
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


def alpha_affine(x, keep, p):
    """Kept: a*x + b (float16 through float32, a and b rounded to the compute type); dropped: c."""
    a, b, c = alpha_dropout_constants(p)
    with np.errstate(all="ignore"):
        if x.dtype == np.float16:
            kept = (x.astype(np.float32) * np.float32(a) + np.float32(b)).astype(np.float16)
        else:
            kept = x * x.dtype.type(a) + x.dtype.type(b)
    return np.where(keep, kept, x.dtype.type(c))


def times_noise(x, noise):
    """x times the float64 noise rounded once to x's dtype (float32 for float16 input)."""
    with np.errstate(all="ignore"):
        if x.dtype == np.float16:
            return (x.astype(np.float32) * noise.astype(np.float32)).astype(np.float16)
        return x * noise.astype(x.dtype)


@functools.lru_cache(maxsize=None)
def noise_of(n, p, offset, seed=SEED, stream=STREAM):
    noise = reference.gaussian_noise(n, p, seed=seed, stream=stream, offset=offset)
    noise.flags.writeable = False
    return noise


def offsets_for(backend, case):
    """Every offset on the compiled backends; the reference (about 10 ms per mask, the oracle
    of the other tests) runs one of them per case, in turn."""
    if backend != "numpy":
        return OFFSETS
    return (OFFSETS[zlib.crc32(case.encode()) % len(OFFSETS)],)


def dtypes_for(backend):
    """Layout handling is the same for every dtype in the reference; kernels have one per dtype."""
    return FLOAT_DTYPES if backend != "numpy" else (np.float32,)


def assert_bits_equal(actual, expected, context=""):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, context
    assert np.array_equal(bits(actual), bits(expected)), context


# ---------------------------------------------------------------- noise shapes


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("case", CASE_IDS)
def test_dropout_with_noise_shape_is_bit_identical(any_backend, case, p):
    """y = x * s where the stretched mask keeps, +0.0 elsewhere; the mask has m elements only.

    The stored words are bernoulli_mask(m, p, seed, stream, offset): offset counts mask
    elements, not elements of x.
    """
    shape, noise_shape = NOISE_CASES[case]
    mask_shape = mask_shape_of(shape, noise_shape)
    m = math.prod(mask_shape)
    for offset in offsets_for(any_backend, case):
        keep = keep_flags(m, p, offset)
        words = reference.pack_mask(keep)
        assert np.array_equal(fastdrop.bernoulli_mask(m, p, seed=SEED, stream=STREAM,
                                                      offset=offset, backend=any_backend), words)
        for dtype in FLOAT_DTYPES:
            x = sample(shape, dtype)
            before = x.copy()
            y, mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, offset=offset,
                                       noise_shape=noise_shape, backend=any_backend)
            context = (case, p, offset, np.dtype(dtype).name)
            assert_bits_equal(y, scaled(x, stretched(keep, mask_shape, shape), drop_scale(p)),
                              context)
            assert np.array_equal(mask.words, words), context
            assert mask.words.dtype == np.uint64 and mask.words.size == -(-m // 64)
            assert (mask.shape, mask.n, mask.p, mask.seed, mask.stream, mask.offset) == \
                (mask_shape, m, p, SEED, STREAM, offset), context
            assert np.array_equal(bits(x), bits(before)), "dropout changed its input"


def broadcast_dims_of(shape, mask_shape):
    return tuple(axis for axis, length in enumerate(mask_shape) if length == 1)


@pytest.mark.parametrize("case", [c for c in CASE_IDS if NOISE_CASES[c][1] is not None])
def test_broadcast_dims_equals_the_noise_shape(any_backend, case):
    """broadcast_dims (Flax's form: the axes sharing one mask element, negative or not, a
    tuple, a list or one int) gives the result and mask of the equivalent noise shape."""
    shape, noise_shape = NOISE_CASES[case]
    mask_shape = mask_shape_of(shape, noise_shape)
    dims = broadcast_dims_of(shape, mask_shape)
    negative_dims = [axis - len(shape) for axis in dims]
    x = sample(shape, np.float32)
    p = 0.3
    flags = keep_flags(math.prod(mask_shape), p, 5)
    keep = stretched(flags, mask_shape, shape)
    forms = [dims, negative_dims] + ([dims[0]] if len(dims) == 1 else [])
    for form in forms:
        y, mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, offset=5, broadcast_dims=form,
                                   backend=any_backend)
        assert_bits_equal(y, scaled(x, keep, drop_scale(p)), form)
        assert mask.shape == mask_shape
        assert np.array_equal(mask.words, reference.pack_mask(flags))
    y, mask = fastdrop.alpha_dropout(x, p, seed=SEED, stream=STREAM, offset=5,
                                     broadcast_dims=dims, backend=any_backend)
    assert_bits_equal(y, alpha_affine(x, keep, p))
    assert mask.shape == mask_shape


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("case", CASE_IDS)
def test_alpha_dropout_is_bit_identical(any_backend, case, p):
    """Kept: a*x + b, dropped: c = a*alpha' + b, from the same keep bits dropout draws; p = 0
    is the identity (a copy)."""
    shape, noise_shape = NOISE_CASES[case]
    mask_shape = mask_shape_of(shape, noise_shape)
    m = math.prod(mask_shape)
    for offset in offsets_for(any_backend, case):
        keep = keep_flags(m, p, offset)
        for dtype in FLOAT_DTYPES:
            x = sample(shape, dtype)
            before = x.copy()
            y, mask = fastdrop.alpha_dropout(x, p, seed=SEED, stream=STREAM, offset=offset,
                                             noise_shape=noise_shape, backend=any_backend)
            context = (case, p, offset, np.dtype(dtype).name)
            if p == 0.0:
                expected = x
                assert not np.shares_memory(y, x)
            else:
                expected = alpha_affine(x, stretched(keep, mask_shape, shape), p)
            assert_bits_equal(y, expected, context)
            assert np.array_equal(mask.words, reference.pack_mask(keep)), context
            assert mask.shape == mask_shape and mask.offset == offset
            assert np.array_equal(bits(x), bits(before))
    if p == 1.0:
        y, _ = fastdrop.alpha_dropout(sample(shape, np.float64), 1.0, seed=SEED,
                                      noise_shape=noise_shape, backend=any_backend)
        assert np.all(y == 0.0) and not np.signbit(y).any()


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("case", CASE_IDS)
def test_backward_from_a_broadcast_mask_is_bit_identical(any_backend, case, p):
    """dropout_backward, dropout_backward_recompute(noise_shape=), apply_mask and
    alpha_dropout_backward stretch the stored mask over grad exactly as the forward did."""
    shape, noise_shape = NOISE_CASES[case]
    mask_shape = mask_shape_of(shape, noise_shape)
    m = math.prod(mask_shape)
    for offset in offsets_for(any_backend, case):
        flags = keep_flags(m, p, offset)
        keep = stretched(flags, mask_shape, shape)
        mask = fastdrop.DropoutMask(reference.pack_mask(flags), shape=mask_shape, p=p, seed=SEED,
                                    stream=STREAM, offset=offset)
        for dtype in FLOAT_DTYPES:
            grad = sample(shape, dtype, salt=1)
            before = grad.copy()
            context = (case, p, offset, np.dtype(dtype).name)
            expected = scaled(grad, keep, drop_scale(p))
            backward = fastdrop.dropout_backward(grad, mask, backend=any_backend)
            assert_bits_equal(backward, expected, context)
            recomputed = fastdrop.dropout_backward_recompute(
                grad, p, seed=SEED, stream=STREAM, offset=offset, noise_shape=noise_shape,
                backend=any_backend)
            assert_bits_equal(recomputed, expected, context)
            applied = fastdrop.apply_mask(grad, mask, backend=any_backend)
            assert_bits_equal(applied, expected, context)
            applied = fastdrop.apply_mask(grad, mask, scale=-2.75, backend=any_backend)
            assert_bits_equal(applied, scaled(grad, keep, -2.75), context)
            a = 1.0 if p == 0.0 else alpha_dropout_constants(p)[0]
            alpha_backward = fastdrop.alpha_dropout_backward(grad, mask, backend=any_backend)
            assert_bits_equal(alpha_backward, scaled(grad, keep, a), context)
            assert np.array_equal(bits(grad), bits(before)), "backward changed grad"


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_apply_mask_with_raw_words_and_p(any_backend, p):
    """Raw words (one bit per element) with p, and a mask of another shape but x's element
    count (lined up in C order), give the same bits as the reference."""
    shape = (9, 37)
    for offset in (0, 253):
        keep = keep_flags(math.prod(shape), p, offset)
        words = reference.pack_mask(keep)
        flat_mask = fastdrop.DropoutMask(words, shape=(math.prod(shape),), p=p, seed=SEED,
                                         stream=STREAM, offset=offset)
        for dtype in FLOAT_DTYPES:
            x = sample(shape, dtype)
            expected = scaled(x, keep.reshape(shape), drop_scale(p))
            assert_bits_equal(fastdrop.apply_mask(x, words, p=p, backend=any_backend), expected)
            assert_bits_equal(fastdrop.apply_mask(x, flat_mask, backend=any_backend), expected)
            assert_bits_equal(fastdrop.apply_mask(x, words, p=p, scale=3, backend=any_backend),
                              scaled(x, keep.reshape(shape), 3.0))


def test_variational_mask_reuse_equals_a_time_shared_noise_shape(any_backend):
    """One (batch, features) mask applied at every time step (apply_mask) is dropout of the
    whole (batch, time, features) sequence with noise_shape (batch, 1, features)."""
    batch, time, features, p = 5, 7, 67, 0.3
    x = sample((batch, time, features), np.float32)
    words = fastdrop.bernoulli_mask(batch * features, p, seed=SEED, stream=STREAM, offset=5,
                                    backend=any_backend)
    steps = [fastdrop.apply_mask(x[:, t, :], words, p=p, backend=any_backend) for t in range(time)]
    whole, mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, offset=5,
                                   noise_shape=(batch, 1, features), backend=any_backend)
    assert_bits_equal(np.stack(steps, axis=1), whole)
    assert np.array_equal(mask.words, words)
    # the stored mask of the whole sequence applies to each step as well
    for t in range(time):
        step_mask = fastdrop.DropoutMask(mask.words, shape=(batch, features), p=p, seed=SEED,
                                         stream=STREAM, offset=5)
        assert_bits_equal(fastdrop.apply_mask(x[:, t, :], step_mask, backend=any_backend),
                          steps[t])


def test_noise_shaped_pieces_with_offsets_equal_slices_of_the_whole(any_backend):
    """Samples a:b processed alone with offset = base + a*C (mask elements before them) give
    the rows a:b of the whole batch: offset counts mask elements."""
    n, c, h, w, p = 23, 7, 3, 5, 0.2
    x = sample((n, c, h, w), np.float32)
    for base in (0, 5, 253):
        whole, whole_mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, offset=base,
                                             noise_shape=(n, c, 1, 1), backend=any_backend)
        whole_alpha, _ = fastdrop.alpha_dropout(x, p, seed=SEED, stream=STREAM, offset=base,
                                                noise_shape=(n, c, 1, 1), backend=any_backend)
        keep = whole_mask.unpack()
        for a, b in [(0, 1), (1, 10), (10, 19), (19, 23), (0, 23)]:
            piece, piece_mask = fastdrop.channel_dropout(
                x[a:b], p, seed=SEED, stream=STREAM, offset=base + a * c, backend=any_backend)
            assert_bits_equal(piece, whole[a:b], (base, a, b))
            assert np.array_equal(piece_mask.unpack(), keep[a:b])
            alpha_piece, _ = fastdrop.feature_alpha_dropout(
                x[a:b], p, seed=SEED, stream=STREAM, offset=base + a * c, backend=any_backend)
            assert_bits_equal(alpha_piece, whole_alpha[a:b], (base, a, b))


# ---------------------------------------------------------------- channel dropout


# name -> (x's shape, keyword arguments, the noise shape they must mean)
CHANNEL_CASES = {
    "Dropout1d-NCL": ((6, 5, 67), {}, (6, 5, 1)),
    "Dropout2d-NCHW": ((4, 5, 7, 9), {}, (4, 5, 1, 1)),
    "Dropout3d-NCDHW": ((2, 3, 4, 5, 6), {}, (2, 3, 1, 1, 1)),
    "NHWC-channel-last": ((4, 7, 9, 5), dict(channel_axis=-1), (4, 1, 1, 5)),
    "unbatched-CHW": ((5, 7, 9), dict(channel_axis=0, batch_axis=None), (5, 1, 1)),
    "unbatched-CL": ((5, 67), dict(channel_axis=0, batch_axis=None), (5, 1)),
    "batch-last": ((5, 7, 3), dict(channel_axis=0, batch_axis=-1), (5, 1, 3)),
    "empty-batch": ((0, 5, 7), {}, (0, 5, 1)),
}


@pytest.mark.parametrize("case", list(CHANNEL_CASES))
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_channel_and_feature_alpha_dropout_are_their_noise_shapes(any_backend, case, p):
    shape, kwargs, noise_shape = CHANNEL_CASES[case]
    for dtype in FLOAT_DTYPES:
        x = sample(shape, dtype)
        keep = stretched(keep_flags(math.prod(noise_shape), p, 5), noise_shape, shape)
        y, mask = fastdrop.channel_dropout(x, p, seed=SEED, stream=STREAM, offset=5,
                                           backend=any_backend, **kwargs)
        assert_bits_equal(y, scaled(x, keep, drop_scale(p)), (case, dtype))
        assert mask.shape == noise_shape
        y, mask = fastdrop.feature_alpha_dropout(x, p, seed=SEED, stream=STREAM, offset=5,
                                                 backend=any_backend, **kwargs)
        assert_bits_equal(y, alpha_affine(x, keep, p), (case, dtype))
        assert mask.shape == noise_shape


# ---------------------------------------------------------------- Gaussian dropout


GAUSSIAN_SHAPES = [(0,), (), (1,), (2,), (63,), (64,), (65,), (1000,), (7, 67), (3, 0, 5),
                   (3, 5, 7)]


@pytest.mark.parametrize("p", GAUSSIAN_PS)
@pytest.mark.parametrize("shape", GAUSSIAN_SHAPES, ids=str)
def test_gaussian_dropout_is_bit_identical(any_backend, shape, p):
    """y = x * (1 + sigma z) with the float64 noise rounded once to x's dtype (float32 for
    float16); the noise itself is 1 + sqrt(p / (1 - p)) * z of the reference's normals."""
    n = math.prod(shape)
    sigma = math.sqrt(p / (1.0 - p))
    for offset in OFFSETS:
        noise = noise_of(n, p, offset)
        z = reference.standard_normals(n, SEED, STREAM, offset)
        assert np.array_equal(bits(noise), bits(1.0 + sigma * z))
        actual_noise = fastdrop.gaussian_noise(n, p, seed=SEED, stream=STREAM, offset=offset,
                                               backend=any_backend)
        assert_bits_equal(actual_noise, noise, (shape, p, offset))
        for dtype in FLOAT_DTYPES:
            x = sample(shape, dtype)
            before = x.copy()
            context = (shape, p, offset, np.dtype(dtype).name)
            expected = times_noise(x.reshape(-1), noise).reshape(shape)
            y, record = fastdrop.gaussian_dropout(x, p, seed=SEED, stream=STREAM, offset=offset,
                                                  backend=any_backend)
            assert_bits_equal(y, expected, context)
            assert isinstance(record, fastdrop.GaussianNoise)
            assert (record.shape, record.n, record.p, record.seed, record.stream,
                    record.offset) == (shape, n, p, SEED, STREAM, offset)
            assert np.array_equal(bits(x), bits(before))
            if p == 0.0:
                assert np.array_equal(y, x, equal_nan=True)
            # backward: the same noise, regenerated, on grad
            grad = sample(shape, dtype, salt=1)
            backward = fastdrop.gaussian_dropout_backward(grad, record, backend=any_backend)
            forward_of_grad, _ = fastdrop.gaussian_dropout(grad, p, seed=SEED, stream=STREAM,
                                                           offset=offset, backend=any_backend)
            assert_bits_equal(backward, forward_of_grad, context)
            assert_bits_equal(backward, times_noise(grad.reshape(-1), noise).reshape(shape),
                              context)
            # a gradient of the same size in another shape lines up in C order
            flat = fastdrop.gaussian_dropout_backward(grad.reshape(-1), record,
                                                      backend=any_backend)
            assert_bits_equal(flat, backward.reshape(-1))


@pytest.mark.parametrize("base", [0, 1, 253, 2**33 - 5, 2**63 - 3001])
def test_gaussian_noise_slices_with_offsets_equal_slices_of_the_whole(any_backend, base):
    """Element i uses half i % 2 of block i // 2: pieces starting at odd or even indices,
    and across block 2**32 (the carry into counter word 1), match the whole."""
    n, p = 3000, 0.3
    whole = fastdrop.gaussian_noise(n, p, seed=SEED, stream=STREAM, offset=base,
                                    backend=any_backend)
    assert_bits_equal(whole, noise_of(n, p, base))
    x = sample((n,), np.float32)
    whole_y, _ = fastdrop.gaussian_dropout(x, p, seed=SEED, stream=STREAM, offset=base,
                                           backend=any_backend)
    edges = [0, 1, 2, 3, 64, 65, 127, 1000, 1001, 2999, 3000]
    for a, b in zip(edges, edges[1:]):
        piece = fastdrop.gaussian_noise(b - a, p, seed=SEED, stream=STREAM, offset=base + a,
                                        backend=any_backend)
        assert_bits_equal(piece, whole[a:b], (base, a, b))
        piece_y, _ = fastdrop.gaussian_dropout(x[a:b], p, seed=SEED, stream=STREAM,
                                               offset=base + a, backend=any_backend)
        assert_bits_equal(piece_y, whole_y[a:b], (base, a, b))
    other_stream = fastdrop.gaussian_noise(n, p, seed=SEED, stream=STREAM + 1, offset=base,
                                           backend=any_backend)
    assert not np.any(other_stream == whole), "another stream repeats the noise"


def kernel_standard_normals(backend, random_words):
    """z of each 64-bit random word as the backend's scalar normal transform computes it.

    The far tail (u < exp(-25), about 1e-11) is never reached through the stream in a test,
    so the transform is fed chosen words through the kernels' test hooks.
    """
    if backend == "cython":
        from fastdrop.kernels import cython_kernels

        return cython_kernels.standard_normals_of_words(random_words)
    if backend == "numba":  # the library's cached @njit function, called word by word
        from fastdrop.maskstream.numba_normal import standard_normal

        return np.array([standard_normal(word) for word in random_words])
    raise AssertionError(f"no normal-transform hook for backend {backend!r}")


def test_normal_transform_of_chosen_words_is_bit_identical(compiled_backend):
    """Both ends (r = 0 and r = 2**64 - 1: u = 2**-53 and 1 - 2**-53), the region boundaries
    of AS 241 (|u - 1/2| = 0.425, u = exp(-25)) and random words give the reference's z."""
    k_max = 2**52 - 1
    ks = [0, 1, 2, 3, k_max, k_max - 1, k_max - 2]
    for boundary in (0.075, 0.925, math.exp(-25.0), 1 - math.exp(-25.0), 0.5):
        ks += range(int(boundary * 2**52) - 3, int(boundary * 2**52) + 4)
    ks += [int(v) for v in np.geomspace(1, 2**51, 500)]
    ks += [k_max - int(v) for v in np.geomspace(1, 2**51, 500)]
    words = np.array(ks, dtype=np.uint64) << np.uint64(12)
    low_bits = np.random.default_rng(1).integers(0, 2**12, words.size, dtype=np.uint64)
    random_words = np.random.default_rng(2).integers(0, 2**64, 5000, dtype=np.uint64,
                                                     endpoint=False)
    words = np.concatenate([words, words | low_bits, random_words,
                            np.array([2**64 - 1], dtype=np.uint64)])
    u = ((words >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52
    expected = reference.inverse_normal_cdf(u)
    actual = kernel_standard_normals(compiled_backend, words)
    mismatch = np.flatnonzero(bits(actual).view(np.uint64) != bits(expected).view(np.uint64))
    assert mismatch.size == 0, [(int(words[i]), actual[i], expected[i]) for i in mismatch[:5]]
    assert np.abs(expected).max() == pytest.approx(8.2095361516013856, rel=1e-14)


@pytest.mark.parametrize("simd", [2, 1, 0])
@pytest.mark.parametrize("backend", [b for b in fastdrop.available_backends() if b == "cython"])
def test_cython_simd_and_portable_paths_agree(backend, simd):
    """The AVX2 paths (where the CPU has them) and the portable paths of the Gaussian words
    and of the noise-shaped mask give the reference's bits."""
    from fastdrop.kernels import cython_kernels

    before = cython_kernels.simd_enabled()
    try:
        cython_kernels.set_simd(simd)
        for offset in OFFSETS:
            n = 64 * 8 * 3 + 5
            assert_bits_equal(fastdrop.gaussian_noise(n, 0.3, seed=SEED, stream=STREAM,
                                                      offset=offset, backend=backend),
                              noise_of(n, 0.3, offset))
            for dtype in FLOAT_DTYPES:
                x = sample((n,), dtype)
                y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=SEED, stream=STREAM, offset=offset,
                                                 backend=backend)
                assert_bits_equal(y, times_noise(x, noise_of(n, 0.3, offset)), (simd, offset))
                x = sample((16, 9, 5, 3), dtype)
                keep = stretched(keep_flags(16 * 9, 0.3, offset), (16, 9, 1, 1), x.shape)
                y, _ = fastdrop.dropout(x, 0.3, seed=SEED, stream=STREAM, offset=offset,
                                        noise_shape=(16, 9, 1, 1), backend=backend)
                assert_bits_equal(y, scaled(x, keep, drop_scale(0.3)), (simd, offset))
                y, _ = fastdrop.alpha_dropout(x, 0.3, seed=SEED, stream=STREAM, offset=offset,
                                              noise_shape=(16, 9, 1, 1), backend=backend)
                assert_bits_equal(y, alpha_affine(x, keep, 0.3), (simd, offset))
    finally:
        cython_kernels.set_simd(before)


# ---------------------------------------------------------------- DropConnect


WEIGHT_LAYOUTS = {
    "C": lambda w: w,
    "F": np.asfortranarray,
    "transposed": lambda w: w.T,
    "strided": lambda w: w[::2, ::-3],
    "1-d": lambda w: w[3],
}


@pytest.mark.parametrize("layout", list(WEIGHT_LAYOUTS))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dropconnect_never_modifies_the_weight(any_backend, dtype, layout):
    weight = WEIGHT_LAYOUTS[layout](sample((37, 67), dtype))
    before = weight.copy()
    p = 0.4
    keep = keep_flags(weight.size, p, 253).reshape(weight.shape)
    dropped, mask = fastdrop.dropconnect(weight, p, seed=SEED, stream=STREAM, offset=253,
                                         backend=any_backend)
    assert_bits_equal(dropped, scaled(np.ascontiguousarray(weight), keep, drop_scale(p)))
    assert not np.shares_memory(dropped, weight)
    assert np.array_equal(bits(weight), bits(before)), "dropconnect wrote into the weight"
    assert mask.shape == weight.shape
    reference_dropped, _ = reference.dropconnect(weight, p, seed=SEED, stream=STREAM, offset=253)
    assert_bits_equal(reference_dropped, dropped)
    # backward through the stored or the regenerated mask
    grad = sample(weight.shape, dtype, salt=1)
    expected_grad = scaled(grad, keep, drop_scale(p))
    assert_bits_equal(fastdrop.dropout_backward(grad, mask, backend=any_backend), expected_grad)
    assert_bits_equal(fastdrop.dropout_backward_recompute(
        grad, p, seed=mask.seed, stream=mask.stream, offset=mask.offset, backend=any_backend),
        expected_grad)
    out = np.full(weight.shape, -7.0, dtype)
    result, _ = fastdrop.dropconnect(weight, p, seed=SEED, stream=STREAM, offset=253, out=out,
                                     backend=any_backend)
    assert result is out
    assert_bits_equal(out, dropped)
    assert np.array_equal(bits(weight), bits(before))
    same, mask = fastdrop.dropconnect(weight, p, seed=SEED, training=False, backend=any_backend)
    assert same is weight and mask is None


# ---------------------------------------------------------------- layouts


def channel_noise(shape):
    """A noise shape for any x: (N, C, 1, ...) for ndim >= 3, (N, 1) for 2-d, (1,) for 1-d."""
    if len(shape) >= 3:
        return shape[:2] + (1,) * (len(shape) - 2)
    if len(shape) == 2:
        return (shape[0], 1)
    return (1,) * len(shape)


def broadcast_mask(shape, p=0.4):
    """The mask dropout(x, p, noise_shape=channel_noise(shape), offset=5) stores."""
    mask_shape = mask_shape_of(shape, channel_noise(shape))
    words = reference.pack_mask(keep_flags(math.prod(mask_shape), p, 5))
    return fastdrop.DropoutMask(words, shape=mask_shape, p=p, seed=SEED, stream=STREAM, offset=5)


def _gaussian_backward(x, backend, **target):
    record = fastdrop.GaussianNoise(shape=x.shape, p=0.4, seed=SEED, stream=STREAM, offset=5)
    return fastdrop.gaussian_dropout_backward(x, record, backend=backend, **target)


COMMON = dict(seed=SEED, stream=STREAM, offset=5)
# One registry: name -> call(x, backend, **target) returning the result; target is
# inplace=True or out=... Every variant runs through every layout test below.
VARIANTS = {
    "dropout-noise_shape": lambda x, b, **t: fastdrop.dropout(
        x, 0.4, noise_shape=channel_noise(x.shape), backend=b, **COMMON, **t)[0],
    "dropout-broadcast_dims": lambda x, b, **t: fastdrop.dropout(
        x, 0.4, broadcast_dims=broadcast_dims_of(x.shape, channel_noise(x.shape)), backend=b,
        **COMMON, **t)[0],
    "channel_dropout": lambda x, b, **t: fastdrop.channel_dropout(
        x, 0.4, backend=b, **COMMON, **t)[0],
    "alpha_dropout": lambda x, b, **t: fastdrop.alpha_dropout(
        x, 0.4, backend=b, **COMMON, **t)[0],
    "alpha_dropout-noise_shape": lambda x, b, **t: fastdrop.alpha_dropout(
        x, 0.4, noise_shape=channel_noise(x.shape), backend=b, **COMMON, **t)[0],
    "feature_alpha_dropout": lambda x, b, **t: fastdrop.feature_alpha_dropout(
        x, 0.4, backend=b, **COMMON, **t)[0],
    "gaussian_dropout": lambda x, b, **t: fastdrop.gaussian_dropout(
        x, 0.4, backend=b, **COMMON, **t)[0],
    "apply_mask-broadcast": lambda x, b, **t: fastdrop.apply_mask(
        x, broadcast_mask(x.shape), backend=b, **t),
    "dropout_backward-broadcast": lambda x, b, **t: fastdrop.dropout_backward(
        x, broadcast_mask(x.shape), backend=b, **t),
    "recompute-noise_shape": lambda x, b, **t: fastdrop.dropout_backward_recompute(
        x, 0.4, noise_shape=channel_noise(x.shape), backend=b, **COMMON, **t),
    "alpha_dropout_backward": lambda x, b, **t: fastdrop.alpha_dropout_backward(
        x, broadcast_mask(x.shape), backend=b, **t),
    "gaussian_dropout_backward": _gaussian_backward,
    "dropconnect": lambda x, b, **t: fastdrop.dropconnect(
        x, 0.4, backend=b, **COMMON, **t)[0],
}
NEEDS_3D = {"channel_dropout", "feature_alpha_dropout"}
NOT_INPLACE = {"dropconnect"}  # never writes into the weight
NOT_0D = {"dropconnect"} | NEEDS_3D


def layouts(dtype):
    base = sample((37, 29, 5), dtype)
    return {
        "C": base,
        "F": np.asfortranarray(base),
        "transposed": base.transpose(2, 0, 1),
        "strided": base[::2, 1::3, ::-1],
        "4-d-view": base[:36].reshape(6, 6, 29, 5)[:, ::2],
        "column": base[:, 3, 2],
        "0-d": np.array(1.5, dtype=dtype),
        "empty": np.empty((0, 7, 3), dtype=dtype),
    }


def layout_params(kinds):
    return [pytest.param(name, kind, id=f"{name}-{kind}") for name in VARIANTS for kind in kinds
            if not (name in NEEDS_3D and kind in ("column", "0-d"))
            and not (name in NOT_0D and kind == "0-d")]


@pytest.mark.parametrize("name, layout", layout_params(list(layouts(np.float32))))
def test_every_layout_gives_the_values_of_its_c_contiguous_copy(any_backend, name, layout):
    for dtype in dtypes_for(any_backend):
        x = layouts(dtype)[layout]
        before = x.copy()
        expected = VARIANTS[name](x.copy(order="C"), any_backend)
        y = VARIANTS[name](x, any_backend)
        assert y.shape == x.shape and y.flags.c_contiguous
        assert_bits_equal(y, expected, (name, layout, np.dtype(dtype).name))
        assert np.array_equal(bits(x), bits(before)), "out-of-place call changed its input"


VIEWS = {
    "C": lambda a: a, "F": lambda a: a.T, "transposed": lambda a: a.transpose(2, 0, 1),
    "strided": lambda a: a[::2, 1::3, ::-1], "column": lambda a: a[:, 3, 2],
    "0-d": lambda a: a[4, 4, 4, ...],
}


@pytest.mark.parametrize("name, view_kind",
                         [param for param in layout_params(list(VIEWS))
                          if param.values[0] not in NOT_INPLACE])
def test_inplace_writes_through_views_and_nowhere_else(any_backend, name, view_kind):
    for dtype in dtypes_for(any_backend):
        owner = sample((37, 29, 5), dtype)
        view = VIEWS[view_kind](owner)
        expected = VARIANTS[name](view.copy(), any_backend)
        inside = np.zeros(owner.shape, bool)
        VIEWS[view_kind](inside)[...] = True
        outside = owner[~inside].copy()
        result = VARIANTS[name](view, any_backend, inplace=True)
        assert result is view
        assert_bits_equal(view.copy(order="C"), expected, (name, view_kind, dtype))
        assert np.array_equal(bits(owner[~inside]), bits(outside)), "wrote outside the view"


@pytest.mark.parametrize("out_layout", ["C", "F", "strided"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_out_receives_the_result(any_backend, name, out_layout):
    x = sample((37, 29, 5), np.float32)
    holder = np.full((74, 29, 5), 7.0, np.float32)
    out = {"C": np.empty_like(x), "F": np.asfortranarray(np.empty_like(x)),
           "strided": holder[::2]}[out_layout]
    expected = VARIANTS[name](x, any_backend)
    result = VARIANTS[name](x, any_backend, out=out)
    assert result is out
    assert_bits_equal(np.ascontiguousarray(out), expected)
    if out_layout == "strided":
        assert np.all(holder[1::2] == 7.0)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_out_overlapping_the_input_reads_the_original_values(any_backend, name):
    base = np.arange(1, 3 * 7 * 40 + 1, dtype=np.float64).reshape(3 * 7 * 2, 20)
    x = base[:30].reshape(3, 5, 40)
    out = base[12:42].reshape(3, 5, 40)  # overlaps x shifted by 12 rows
    expected = VARIANTS[name](x.copy(), any_backend)
    VARIANTS[name](x, any_backend, out=out)
    assert_bits_equal(out, expected)


@pytest.mark.parametrize("call", [
    lambda x, b: fastdrop.dropout(x, 0.5, seed=1, noise_shape=(1, 3, 1), training=False,
                                  backend=b),
    lambda x, b: fastdrop.channel_dropout(x, 0.5, seed=1, training=False, backend=b),
    lambda x, b: fastdrop.alpha_dropout(x, 0.5, seed=1, training=False, backend=b),
    lambda x, b: fastdrop.feature_alpha_dropout(x, 0.5, seed=1, training=False, backend=b),
    lambda x, b: fastdrop.gaussian_dropout(x, 0.5, seed=1, training=False, backend=b),
    lambda x, b: fastdrop.dropconnect(x, 0.5, seed=1, training=False, backend=b),
], ids=["dropout-noise_shape", "channel", "alpha", "feature_alpha", "gaussian", "dropconnect"])
def test_training_false_returns_the_input_untouched(any_backend, call):
    x = sample((2, 3, 4), np.float32)
    before = x.copy()
    y, record = call(x, any_backend)
    assert y is x and record is None
    assert np.array_equal(bits(x), bits(before))


# ---------------------------------------------------------------- threads


BIG = 2**19 + 37  # above SERIAL_ELEMENTS: two threads each get more than MIN_ELEMENTS_PER_THREAD
assert BIG > SERIAL_ELEMENTS and BIG // MIN_ELEMENTS_PER_THREAD >= 2

BIG_P, BIG_OFFSET = 0.3, 253
BIG_ARGS = dict(seed=SEED, stream=STREAM, offset=BIG_OFFSET)


def big_keep(mask_shape, shape):
    return stretched(keep_flags(math.prod(mask_shape), BIG_P, BIG_OFFSET), mask_shape, shape)


def big_channel_mask():
    flags = keep_flags(64 * 9, BIG_P, BIG_OFFSET)
    return fastdrop.DropoutMask(reference.pack_mask(flags), shape=(64, 9, 1), p=BIG_P,
                                seed=SEED, stream=STREAM, offset=BIG_OFFSET)


# name -> (x's shape, call(x, backend), expected(x)); each array, and each mask where it has
# a noise shape, is big enough to be split between two threads. The expected values are
# composed from the reference's keep bits and noise (computed once, shared by the cases).
BIG_CASES = {
    "dropout-noise-long-mask": (
        (2, BIG),
        lambda x, b: fastdrop.dropout(x, BIG_P, noise_shape=(1, BIG), backend=b, **BIG_ARGS)[0],
        lambda x: scaled(x, big_keep((1, BIG), x.shape), drop_scale(BIG_P))),
    "dropout-noise-channels": (
        (64, 9, 911),
        lambda x, b: fastdrop.dropout(x, BIG_P, noise_shape=(64, 9, 1), backend=b,
                                      **BIG_ARGS)[0],
        lambda x: scaled(x, big_keep((64, 9, 1), x.shape), drop_scale(BIG_P))),
    "dropout-noise-inner-33": (
        (15900, 33),
        lambda x, b: fastdrop.dropout(x, BIG_P, noise_shape=(1, 33), backend=b, **BIG_ARGS)[0],
        lambda x: scaled(x, big_keep((1, 33), x.shape), drop_scale(BIG_P))),
    "alpha-per-element": (
        (BIG,),
        lambda x, b: fastdrop.alpha_dropout(x, BIG_P, backend=b, **BIG_ARGS)[0],
        lambda x: alpha_affine(x, big_keep((BIG,), x.shape), BIG_P)),
    "alpha-noise-long-mask": (
        (2, BIG),
        lambda x, b: fastdrop.alpha_dropout(x, BIG_P, noise_shape=(1, BIG), backend=b,
                                            **BIG_ARGS)[0],
        lambda x: alpha_affine(x, big_keep((1, BIG), x.shape), BIG_P)),
    "feature-alpha": (
        (64, 9, 911),
        lambda x, b: fastdrop.feature_alpha_dropout(x, BIG_P, backend=b, **BIG_ARGS)[0],
        lambda x: alpha_affine(x, big_keep((64, 9, 1), x.shape), BIG_P)),
    "gaussian": (
        (BIG,),
        lambda x, b: fastdrop.gaussian_dropout(x, BIG_P, backend=b, **BIG_ARGS)[0],
        lambda x: times_noise(x, noise_of(BIG, BIG_P, BIG_OFFSET))),
    "gaussian-noise": (
        (BIG,),
        lambda x, b: fastdrop.gaussian_noise(x.size, BIG_P, backend=b, **BIG_ARGS),
        lambda x: noise_of(BIG, BIG_P, BIG_OFFSET)),
    "gaussian-backward": (
        (2, BIG // 2),
        lambda x, b: fastdrop.gaussian_dropout_backward(x, fastdrop.GaussianNoise(
            shape=x.shape, p=BIG_P, **BIG_ARGS), backend=b),
        lambda x: times_noise(x.reshape(-1), noise_of(x.size, BIG_P, BIG_OFFSET)).reshape(
            x.shape)),
    "recompute-noise-long-mask": (
        (2, BIG),
        lambda x, b: fastdrop.dropout_backward_recompute(x, BIG_P, noise_shape=(1, BIG),
                                                         backend=b, **BIG_ARGS),
        lambda x: scaled(x, big_keep((1, BIG), x.shape), drop_scale(BIG_P))),
    "apply-channel-mask": (
        (64, 9, 911),
        lambda x, b: fastdrop.apply_mask(x, big_channel_mask(), backend=b),
        lambda x: scaled(x, big_keep((64, 9, 1), x.shape), drop_scale(BIG_P))),
    "alpha-backward-channel-mask": (
        (64, 9, 911),
        lambda x, b: fastdrop.alpha_dropout_backward(x, big_channel_mask(), backend=b),
        lambda x: scaled(x, big_keep((64, 9, 1), x.shape), alpha_dropout_constants(BIG_P)[0])),
}


@pytest.mark.parametrize("thread_count", [1, 2])
@pytest.mark.parametrize("case", list(BIG_CASES))
def test_thread_count_does_not_change_a_bit(compiled_backend, threads, case, thread_count):
    fastdrop.set_num_threads(thread_count)
    shape, call, expect = BIG_CASES[case]
    assert chunk_count(math.prod(shape), 2) == 2, "too small to be split between two threads"
    for dtype in FLOAT_DTYPES:
        x = sample(shape, dtype)
        assert_bits_equal(call(x, compiled_backend), expect(x),
                          (case, thread_count, np.dtype(dtype).name))
