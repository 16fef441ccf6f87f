"""Every backend is bit-identical to fastdrop.reference: masks, outputs and records.

One property: the same bits as the reference. Every function of the registry
(tests/util.py) against its reference twin; the grid of the acceptance criteria for
dropout (sizes around word boundaries and one large odd size, p from 0 to 1 including
values a hair from the ends, offsets that are not multiples of 64, every float dtype,
one and two threads); the variants' noise shapes, channel axes and Gaussian shapes
with expected values composed from the spec's primitives (`reference.keep_bits`,
`reference.gaussian_noise`, the output arithmetic of `reference.scale_kept`,
`reference.alpha_affine`, `reference.multiply_noise`), so the reference's whole
functions are checked too (``backend="numpy"`` runs them); the SIMD, portable and
pipelined kernel paths; thread counts. The output arithmetic itself is stated
independently here once, element by element with exact rationals, from
docs/mask-stream.md sections 6, 8 and 9.
"""
import functools
import math
import zlib
from fractions import Fraction

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._config import MIN_ELEMENTS_PER_THREAD, SERIAL_ELEMENTS
from fastdrop.kernels.common import chunk_count
from fastdrop.maskstream.spec import alpha_dropout_constants, dropout_scale, gaussian_sigma
from tests.util import (
    FLOAT_DTYPES,
    OFFSET,
    REGISTRY,
    SEED,
    STREAM,
    Awkward,
    assert_bits_equal,
    assert_same_record,
    awkward,
    bits,
    broadcast_dims_of,
    dtypes_on,
    for_each,
    reference_keep,
    registry,
    sample,
)

SIZES = [0, 1, 63, 64, 65, 1000, 2**20 + 3]
PS = [0.0, 1e-9, 0.1, 1 / 3, 0.5, 0.9, 1 - 1e-9, 1.0]
OFFSETS = [0, 5, 64 * 3 + 61]


# ---------------------------------------------------------------- the registry against its twins


TWIN_INPUTS = (Awkward("C", (10, 5, 100)),
               *awkward("0-d", "empty", "size-0", "size-1", "size-63", "size-64", "size-65"))


@pytest.mark.parametrize("entry", REGISTRY, ids=str)
def test_every_function_matches_its_reference_twin(compiled_backend, entry, subtests):
    """Each public function against the reference function of the same name and arguments.

    On C-contiguous, 0-d and empty arrays and the sizes 0, 1, 63, 64, 65 (other layouts:
    test_offsets_and_layouts): the output's bits, and the words and fields of its record.
    """
    for p in (0.1, 0.5, 0.77):
        for dtype in FLOAT_DTYPES if entry.takes_array else FLOAT_DTYPES[:1]:  # counts: no dtype
            with subtests.test(p=p, dtype=np.dtype(dtype).name):
                for kind in TWIN_INPUTS:
                    if entry.takes_array and not entry.accepts(kind.shape):
                        continue
                    x, _ = kind.make(dtype)
                    result = entry.call(x, compiled_backend, p=p, offset=17)
                    expected = entry.reference(x, p=p, offset=17)
                    assert_bits_equal(entry.output(result), entry.output(expected), kind)
                    assert_same_record(entry.record(result), entry.record(expected))


def test_numpy_and_auto_backends_give_the_reference(subtests):
    """"numpy" runs the reference's functions; "auto" the preferred compiled backend."""
    x = sample((3, 4, 90), np.float64)
    for entry in REGISTRY:
        for backend in ("numpy", "auto"):
            with subtests.test(entry=entry.name, backend=backend):
                result = entry.call(x, backend)
                expected = entry.reference(x)
                assert_bits_equal(entry.output(result), entry.output(expected))
                assert_same_record(entry.record(result), entry.record(expected))


# ---------------------------------------------------------------- dropout's grid


@pytest.mark.parametrize("n", SIZES)
def test_dropout_bit_identical(compiled_backend, threads, n, subtests):
    """Each size against the reference for every p, offset and thread count (subtests)."""
    seed, stream = 0x0123456789ABCDEF, 77
    for p in PS:
        for offset in OFFSETS:
            keep = reference_keep(n, p, seed, stream, offset)
            expected_words = reference.pack_mask(keep)
            expected = {dtype: reference.scale_kept(sample(n, dtype), keep, p)
                        for dtype in FLOAT_DTYPES}  # once for both thread counts
            for thread_count in (1, 2):
                fastdrop.set_num_threads(thread_count)
                with subtests.test(threads=thread_count, p=p, offset=offset):
                    words = fastdrop.bernoulli_mask(n, p, seed=seed, stream=stream,
                                                    offset=offset, backend=compiled_backend)
                    assert np.array_equal(words, expected_words)
                    for dtype in dtypes_on(compiled_backend, thread_count):
                        x = sample(n, dtype)
                        y, mask = fastdrop.dropout(x, p, seed=seed, stream=stream, offset=offset,
                                                   backend=compiled_backend)
                        assert y.dtype == x.dtype and y.shape == x.shape
                        assert np.array_equal(bits(y), bits(expected[dtype])), dtype
                        assert np.array_equal(mask.words, expected_words)
                        assert mask.words.nbytes == 8 * (-(-n // 64))


# ---------------------------------------------------------------- the arithmetic, stated here


def rounded(value, dtype):
    """The exact rational ``value`` rounded to nearest (ties to even) in ``dtype``."""
    dtype = np.dtype(dtype)
    guess = dtype.type(float(value))  # within an ulp (two roundings), so a neighbour is it
    candidates = [np.nextafter(guess, dtype.type(-np.inf)), guess,
                  np.nextafter(guess, dtype.type(np.inf))]
    unsigned = np.dtype(f"u{dtype.itemsize}")
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value),
                                          int(np.array(c).view(unsigned)) & 1))


def exact(value):
    return Fraction(float(value))


@functools.lru_cache(maxsize=None)
def spec_value(arithmetic, dtype, x, keep, p, multiplier=None):
    """What docs/mask-stream.md says element x becomes (finite, nonzero x), one dtype.

    inverted (section 6): s = 1/(1-p) rounded once to the dtype; a kept x is x*s rounded
    to the dtype (float16, bfloat16: the exact float32 product, rounded once); dropped +0.0.
    alpha (section 8): kept a*x rounded, then + b rounded, never fused; float32 rounds a
    and b to float32 first; float16 does the float32 operations and rounds once to
    float16; dropped c rounded once from float64. alpha backward: a in place of s.
    gaussian (section 9): the float64 multiplier rounded once to the dtype (float32 for
    float16), times x rounded (float16: in float32, then rounded once to float16).
    """
    dtype = np.dtype(dtype)
    compute = np.float32 if dtype.itemsize == 2 else dtype  # float16 and bfloat16
    if arithmetic == "gaussian":
        m = rounded(exact(multiplier), compute)
        return rounded(exact(rounded(exact(x) * exact(m), compute)), dtype)
    if arithmetic == "alpha":
        a, b, c = alpha_dropout_constants(p)
        if not keep:
            return rounded(exact(c), dtype)
        a, b = rounded(exact(a), compute), rounded(exact(b), compute)
        product = rounded(exact(x) * exact(a), compute)
        return rounded(exact(rounded(exact(product) + exact(b), compute)), dtype)
    s = alpha_dropout_constants(p)[0] if arithmetic == "alpha backward" else dropout_scale(p)
    if not keep:
        return dtype.type(0.0)
    return rounded(exact(x) * exact(rounded(exact(s), dtype)), dtype)


def finite_nonzero(shape, dtype):
    x = sample(shape, dtype)
    x[~np.isfinite(x) | (x == 0)] = 1.25  # rationals hold neither inf, NaN nor -0.0
    return x


ARITHMETIC_SHAPE = (4, 4, 40)  # 640 elements; channel masks of 16


@pytest.mark.parametrize("entry", registry(where=lambda e: e.takes_array), ids=str)
def test_output_arithmetic_is_the_specs(any_backend, entry, subtests):
    """Every array function's output, element by element, is what the spec says."""
    p = 0.3
    mask_shape = entry.mask_shape(ARITHMETIC_SHAPE)
    keep = np.broadcast_to(reference_keep(math.prod(mask_shape), p).reshape(mask_shape),
                           ARITHMETIC_SHAPE)
    multipliers = (noise_of(math.prod(ARITHMETIC_SHAPE), p, OFFSET).reshape(ARITHMETIC_SHAPE)
                   if entry.arithmetic == "gaussian" else np.zeros(ARITHMETIC_SHAPE))
    for dtype in FLOAT_DTYPES:
        with subtests.test(dtype=np.dtype(dtype).name):
            x = finite_nonzero(ARITHMETIC_SHAPE, dtype)
            y = entry.output(entry.call(x, any_backend, p=p))
            expected = np.array([spec_value(entry.arithmetic, x.dtype, float(value), bool(kept),
                                            p, float(multiplier))
                                 for value, kept, multiplier
                                 in zip(x.flat, keep.flat, multipliers.flat)],
                                dtype=dtype).reshape(x.shape)
            assert_bits_equal(y, expected, entry)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_alpha_arithmetic_statement_tells_the_roundings_apart(dtype):
    """The statement above has power: these inputs tell the three roundings apart.

    On these inputs one fused rounding (float64), a and b left in float64 (float32) and
    float16 arithmetic (float16) each give other values.
    """
    p = 0.3
    a, b, _ = alpha_dropout_constants(p)
    x = finite_nonzero(ARITHMETIC_SHAPE, dtype).ravel()[:160]
    specified = [spec_value("alpha", x.dtype, float(value), True, p) for value in x]
    if dtype == np.float64:
        other = [rounded(exact(value) * exact(a) + exact(b), dtype) for value in x]
    elif dtype == np.float32:
        other = [rounded(exact(rounded(exact(rounded(exact(value) * exact(a), dtype))
                                       + exact(b), dtype)), dtype) for value in x]
    else:
        a16, b16 = rounded(exact(a), dtype), rounded(exact(b), dtype)
        other = [rounded(exact(rounded(exact(value) * exact(a16), dtype)) + exact(b16), dtype)
                 for value in x]
    assert sum(s != o for s, o in zip(specified, other)) >= 5


def test_alpha_dropout_hand_computed_values(any_backend):
    """Section 8 worked by hand for p = 1/2.

    a = 1 / sqrt(1/2 (1 + alpha'**2 / 2)) = 0.88640489..., b = a |alpha'| / 2 = 0.77919393...
    and c = a alpha' + b = -b; a kept x becomes a x + b (0 -> b, 1 -> a + b), a dropped one c.
    """
    a, b, c = alpha_dropout_constants(0.5)
    assert a == pytest.approx(0.8864048946659319, rel=1e-15)
    assert b == pytest.approx(0.7791939305180315, rel=1e-15)
    assert c == -b
    x = np.array([1.0, -2.0, 0.0, 3.5] * 64)
    y, mask = fastdrop.alpha_dropout(x, 0.5, seed=SEED, stream=STREAM, backend=any_backend)
    keep = mask.unpack()
    assert 0 < keep.sum() < keep.size
    assert np.all(y[~keep] == c)
    assert np.all(y[keep & (x == 0.0)] == b)
    assert np.all(y[keep & (x == 1.0)] == a + b)
    assert np.all(y[keep & (x == -2.0)] == -2.0 * a + b)
    assert np.all(y[keep & (x == 3.5)] == 3.5 * a + b)


# ---------------------------------------------------------------- noise shapes and variants

VARIANT_OFFSETS = [0, 5, 253]  # offsets count mask elements; 253 is not a multiple of 64
VARIANT_PS = [0.0, 0.1, 0.5, 1.0]
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


def keep_flags(m, p, offset):
    return reference_keep(m, p, SEED, STREAM, offset)


def mask_shape_of(shape, noise_shape):
    """The mask's shape: noise_shape padded with 1s on the left (NumPy broadcasting)."""
    if noise_shape is None:
        return tuple(shape)
    return (1,) * (len(shape) - len(noise_shape)) + tuple(noise_shape)


def stretched(keep, mask_shape, shape):
    return np.broadcast_to(keep.reshape(mask_shape), shape)


def scaled(x, keep, p=None, scale=None):
    """Section 6's output (the reference's primitive), for x of any shape."""
    return reference.scale_kept(x.reshape(-1), np.ravel(keep), p, scale).reshape(x.shape)


def alpha_affine(x, keep, p):
    """Section 8's output (the reference's primitive), for x of any shape."""
    return reference.alpha_affine(x.reshape(-1), np.ravel(keep), p).reshape(x.shape)


def times_noise(x, noise):
    """Section 9's output (the reference's primitive), for x of any shape."""
    return reference.multiply_noise(x.reshape(-1), noise).reshape(x.shape)


@functools.lru_cache(maxsize=None)
def noise_of(n, p, offset):
    noise = reference.gaussian_noise(n, p, seed=SEED, stream=STREAM, offset=offset)
    noise.flags.writeable = False
    return noise


def offsets_for(backend, case):
    """Every offset on the compiled backends; the reference runs one of them per case, in turn.

    The reference takes about 10 ms per mask and is the oracle of the other tests.
    """
    if backend != "numpy":
        return VARIANT_OFFSETS
    return (VARIANT_OFFSETS[zlib.crc32(case.encode()) % len(VARIANT_OFFSETS)],)


@pytest.mark.parametrize("case", CASE_IDS)
def test_dropout_with_noise_shape_is_bit_identical(any_backend, case, subtests):
    for_each(subtests, check_dropout_with_noise_shape, any_backend, case, p=VARIANT_PS)


def check_dropout_with_noise_shape(any_backend, case, p):
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
            y, mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, offset=offset,
                                       noise_shape=noise_shape, backend=any_backend)
            context = (case, p, offset, np.dtype(dtype).name)
            assert_bits_equal(y, scaled(x, stretched(keep, mask_shape, shape), p), context)
            assert np.array_equal(mask.words, words), context
            assert mask.words.dtype == np.uint64 and mask.words.size == -(-m // 64)
            assert (mask.shape, mask.n, mask.p, mask.seed, mask.stream, mask.offset) == \
                (mask_shape, m, p, SEED, STREAM, offset), context


def test_broadcast_dims_equals_the_noise_shape(any_backend, subtests):
    """broadcast_dims becomes a noise shape before the kernels: the cases loop (subtests)."""
    for_each(subtests, check_broadcast_dims, any_backend,
             case=[c for c in CASE_IDS if NOISE_CASES[c][1] is not None])


def check_broadcast_dims(any_backend, case):
    """broadcast_dims gives the result and mask of the equivalent noise shape.

    broadcast_dims in Flax's form: the axes sharing one mask element, negative or not, a
    tuple, a list or one int.
    """
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
        assert_bits_equal(y, scaled(x, keep, p), form)
        assert mask.shape == mask_shape
        assert np.array_equal(mask.words, reference.pack_mask(flags))
    y, mask = fastdrop.alpha_dropout(x, p, seed=SEED, stream=STREAM, offset=5,
                                     broadcast_dims=dims, backend=any_backend)
    assert_bits_equal(y, alpha_affine(x, keep, p))
    assert mask.shape == mask_shape


@pytest.mark.parametrize("case", CASE_IDS)
def test_alpha_dropout_is_bit_identical(any_backend, case, subtests):
    for_each(subtests, check_alpha_dropout, any_backend, case, p=VARIANT_PS)


def check_alpha_dropout(any_backend, case, p):
    """Kept: a*x + b, dropped: c = a*alpha' + b, from the same keep bits dropout draws.

    p = 0 is the identity (a copy).
    """
    shape, noise_shape = NOISE_CASES[case]
    mask_shape = mask_shape_of(shape, noise_shape)
    m = math.prod(mask_shape)
    for offset in offsets_for(any_backend, case):
        keep = keep_flags(m, p, offset)
        for dtype in FLOAT_DTYPES:
            x = sample(shape, dtype)
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
    if p == 1.0:
        y, _ = fastdrop.alpha_dropout(sample(shape, np.float64), 1.0, seed=SEED,
                                      noise_shape=noise_shape, backend=any_backend)
        assert np.all(y == 0.0) and not np.signbit(y).any()


@pytest.mark.parametrize("case", CASE_IDS)
def test_backward_from_a_broadcast_mask_is_bit_identical(any_backend, case, subtests):
    for_each(subtests, check_backward_from_a_broadcast_mask, any_backend, case, p=VARIANT_PS)


def check_backward_from_a_broadcast_mask(any_backend, case, p):
    """The backward functions stretch a broadcast mask exactly as the forward did.

    dropout_backward, dropout_backward_recompute(noise_shape=), apply_mask and
    alpha_dropout_backward stretch the stored mask over grad exactly as the forward did.
    """
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
            context = (case, p, offset, np.dtype(dtype).name)
            expected = scaled(grad, keep, p)
            backward = fastdrop.dropout_backward(grad, mask, backend=any_backend)
            assert_bits_equal(backward, expected, context)
            recomputed = fastdrop.dropout_backward_recompute(
                grad, p, seed=SEED, stream=STREAM, offset=offset, noise_shape=noise_shape,
                backend=any_backend)
            assert_bits_equal(recomputed, expected, context)
            applied = fastdrop.apply_mask(grad, mask, backend=any_backend)
            assert_bits_equal(applied, expected, context)
            applied = fastdrop.apply_mask(grad, mask, scale=-2.75, backend=any_backend)
            assert_bits_equal(applied, scaled(grad, keep, p, -2.75), context)
            a = 1.0 if p == 0.0 else alpha_dropout_constants(p)[0]
            alpha_backward = fastdrop.alpha_dropout_backward(grad, mask, backend=any_backend)
            assert_bits_equal(alpha_backward, scaled(grad, keep, p, a), context)


def test_apply_mask_with_raw_words_and_p(any_backend, subtests):
    for_each(subtests, check_apply_mask_with_raw_words, any_backend, p=(0.0, 0.3, 1.0))


def check_apply_mask_with_raw_words(any_backend, p):
    """Raw words (one bit per element, in C order) with p give the same bits as the reference.

    A DropoutMask of another shape but x's element count is refused (a mask records its
    shape: tests/test_edges.py).
    """
    shape = (9, 37)
    for offset in (0, 253):
        keep = keep_flags(math.prod(shape), p, offset)
        words = reference.pack_mask(keep)
        flat_mask = fastdrop.DropoutMask(words, shape=(math.prod(shape),), p=p, seed=SEED,
                                         stream=STREAM, offset=offset)
        for dtype in FLOAT_DTYPES:
            x = sample(shape, dtype)
            expected = scaled(x, keep, p)
            assert_bits_equal(fastdrop.apply_mask(x, words, p=p, backend=any_backend), expected)
            with pytest.raises(ValueError, match="does not match"):
                fastdrop.apply_mask(x, flat_mask, backend=any_backend)
            assert_bits_equal(fastdrop.apply_mask(x.reshape(-1), flat_mask, backend=any_backend),
                              expected.reshape(-1))
            assert_bits_equal(fastdrop.apply_mask(x, words, p=p, scale=3, backend=any_backend),
                              scaled(x, keep, p, 3.0))


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


def test_channel_and_feature_alpha_dropout_are_their_noise_shapes(any_backend, subtests):
    """The channel axes become a noise shape before the kernels: the cases loop (subtests)."""
    for_each(subtests, check_channel_variants, any_backend, case=CHANNEL_CASES, p=(0.1, 0.5, 1.0))


def check_channel_variants(any_backend, case, p):
    shape, kwargs, noise_shape = CHANNEL_CASES[case]
    for dtype in FLOAT_DTYPES:
        x = sample(shape, dtype)
        keep = stretched(keep_flags(math.prod(noise_shape), p, 5), noise_shape, shape)
        y, mask = fastdrop.channel_dropout(x, p, seed=SEED, stream=STREAM, offset=5,
                                           backend=any_backend, **kwargs)
        assert_bits_equal(y, scaled(x, keep, p), (case, dtype))
        assert mask.shape == noise_shape
        y, mask = fastdrop.feature_alpha_dropout(x, p, seed=SEED, stream=STREAM, offset=5,
                                                 backend=any_backend, **kwargs)
        assert_bits_equal(y, alpha_affine(x, keep, p), (case, dtype))
        assert mask.shape == noise_shape


def test_dropconnect_mask_maps_the_gradient_back(any_backend):
    """The gradient of dropped weights maps back through DropConnect's mask.

    The mask is the stored one, or the regenerated one (docs/variants.md).
    """
    p = 0.4
    for dtype in FLOAT_DTYPES:
        weight = sample((37, 67), dtype)
        keep = keep_flags(weight.size, p, 253).reshape(weight.shape)
        dropped, mask = fastdrop.dropconnect(weight, p, seed=SEED, stream=STREAM, offset=253,
                                             backend=any_backend)
        assert_bits_equal(dropped, scaled(weight, keep, p))
        assert mask.shape == weight.shape
        grad = sample(weight.shape, dtype, salt=1)
        expected_grad = scaled(grad, keep, p)
        assert_bits_equal(fastdrop.dropout_backward(grad, mask, backend=any_backend),
                          expected_grad)
        assert_bits_equal(fastdrop.dropout_backward_recompute(
            grad, p, seed=mask.seed, stream=mask.stream, offset=mask.offset,
            backend=any_backend), expected_grad)


# ---------------------------------------------------------------- Gaussian dropout


GAUSSIAN_SHAPES = [(0,), (), (1,), (2,), (63,), (64,), (65,), (1000,), (7, 67), (3, 0, 5),
                   (3, 5, 7)]


@pytest.mark.parametrize("shape", GAUSSIAN_SHAPES, ids=str)
def test_gaussian_dropout_is_bit_identical(any_backend, shape, subtests):
    for_each(subtests, check_gaussian_dropout, any_backend, shape, p=GAUSSIAN_PS)


def check_gaussian_dropout(any_backend, shape, p):
    """y = x * (1 + sigma z) with the float64 noise rounded once to x's dtype.

    The noise is rounded to float32 for float16; the noise itself is 1 + sqrt(p / (1 - p)) * z
    of the reference's normals.
    """
    n = math.prod(shape)
    sigma = math.sqrt(p / (1.0 - p))
    assert sigma == gaussian_sigma(p)
    for offset in VARIANT_OFFSETS:
        noise = noise_of(n, p, offset)
        z = reference.standard_normals(n, SEED, STREAM, offset)
        assert np.array_equal(bits(noise), bits(1.0 + sigma * z))
        actual_noise = fastdrop.gaussian_noise(n, p, seed=SEED, stream=STREAM, offset=offset,
                                               backend=any_backend)
        assert_bits_equal(actual_noise, noise, (shape, p, offset))
        for dtype in FLOAT_DTYPES:
            x = sample(shape, dtype)
            context = (shape, p, offset, np.dtype(dtype).name)
            expected = times_noise(x, noise)
            y, record = fastdrop.gaussian_dropout(x, p, seed=SEED, stream=STREAM, offset=offset,
                                                  backend=any_backend)
            assert_bits_equal(y, expected, context)
            assert isinstance(record, fastdrop.GaussianNoise)
            assert (record.shape, record.n, record.p, record.seed, record.stream,
                    record.offset) == (shape, n, p, SEED, STREAM, offset)
            if p == 0.0:
                assert np.array_equal(y, x, equal_nan=True)
            # backward: the same noise, regenerated, on grad
            grad = sample(shape, dtype, salt=1)
            backward = fastdrop.gaussian_dropout_backward(grad, record, backend=any_backend)
            forward_of_grad, _ = fastdrop.gaussian_dropout(grad, p, seed=SEED, stream=STREAM,
                                                           offset=offset, backend=any_backend)
            assert_bits_equal(backward, forward_of_grad, context)
            assert_bits_equal(backward, times_noise(grad, noise), context)
            # a gradient of the same size in another shape lines up in C order
            flat = fastdrop.gaussian_dropout_backward(grad.reshape(-1), record,
                                                      backend=any_backend)
            assert_bits_equal(flat, backward.reshape(-1))


def kernel_standard_normals(backend, random_words):
    """z of each 64-bit random word as the backend's scalar normal transform computes it.

    The far tail (u < exp(-25), about 1e-11) is never reached through the stream in a test,
    so the transform is fed chosen words through the kernels' test hooks.
    """
    if backend == "cython":
        from fastdrop.kernels.cython import kernels as cython_kernels

        return cython_kernels.standard_normals_of_words(random_words)
    if backend == "numba":  # the library's cached @njit function, called word by word
        from fastdrop.kernels.numba.normal import standard_normal

        return np.array([standard_normal(word) for word in random_words])
    raise AssertionError(f"no normal-transform hook for backend {backend!r}")


def test_normal_transform_of_chosen_words_is_bit_identical(compiled_backend):
    """Chosen and random words give the reference's z.

    Both ends (r = 0 and r = 2**64 - 1: u = 2**-53 and 1 - 2**-53), the region boundaries
    of AS 241 (|u - 1/2| = 0.425, u = exp(-25)) and random words give the reference's z.
    """
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


# ---------------------------------------------------------------- SIMD and pipelined paths


@pytest.mark.skipif("cython" not in fastdrop.available_backends(), reason="extension not built")
@pytest.mark.parametrize("simd", [2, 1, 0])
def test_cython_simd_and_portable_paths_agree_with_reference(simd, subtests):
    for_each(subtests, check_cython_simd_path, simd, p=PS)


def check_cython_simd_path(simd, p):
    """The AVX-512, AVX2 and portable paths give the same bits.

    The AVX-512 and AVX2 paths run where the CPU has them.
    """
    from fastdrop.kernels.cython import kernels as cython_kernels

    before = cython_kernels.simd_enabled()
    try:
        cython_kernels.set_simd(simd)
        for n, offset in [(64 * 8 * 3 + 5, 0), (5000, 61), (1000, 2**32 * 64 - 640)]:
            keep = reference_keep(n, p, 12345, 2**40 + 3, offset)
            words = fastdrop.bernoulli_mask(n, p, seed=12345, stream=2**40 + 3, offset=offset,
                                            backend="cython")
            assert np.array_equal(words, reference.pack_mask(keep)), (n, offset)
            for dtype in FLOAT_DTYPES:
                x = sample(n, dtype)
                y, _ = fastdrop.dropout(x, p, seed=12345, stream=2**40 + 3, offset=offset,
                                       backend="cython")
                assert np.array_equal(bits(y), bits(reference.scale_kept(x, keep, p)))
                grad = x[::-1].copy()
                back = fastdrop.dropout_backward(grad, words, p=p, backend="cython")
                assert np.array_equal(bits(back), bits(reference.scale_kept(grad, keep, p)))
    finally:
        cython_kernels.set_simd(before)


@pytest.mark.skipif("cython" not in fastdrop.available_backends(), reason="extension not built")
@pytest.mark.parametrize("simd", [2, 1, 0])
def test_cython_simd_and_portable_variant_paths_agree(simd):
    """The AVX2 and portable variant paths give the reference's bits.

    The AVX2 paths (where the CPU has them) and the portable paths of the Gaussian words
    and of the noise-shaped mask give the reference's bits.
    """
    from fastdrop.kernels.cython import kernels as cython_kernels

    before = cython_kernels.simd_enabled()
    try:
        cython_kernels.set_simd(simd)
        for offset in VARIANT_OFFSETS:
            n = 64 * 8 * 3 + 5
            assert_bits_equal(fastdrop.gaussian_noise(n, 0.3, seed=SEED, stream=STREAM,
                                                      offset=offset, backend="cython"),
                              noise_of(n, 0.3, offset))
            for dtype in FLOAT_DTYPES:
                x = sample((n,), dtype)
                y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=SEED, stream=STREAM, offset=offset,
                                                 backend="cython")
                assert_bits_equal(y, times_noise(x, noise_of(n, 0.3, offset)), (simd, offset))
                x = sample((16, 9, 5, 3), dtype)
                keep = stretched(keep_flags(16 * 9, 0.3, offset), (16, 9, 1, 1), x.shape)
                y, _ = fastdrop.dropout(x, 0.3, seed=SEED, stream=STREAM, offset=offset,
                                        noise_shape=(16, 9, 1, 1), backend="cython")
                assert_bits_equal(y, scaled(x, keep, 0.3), (simd, offset))
                y, _ = fastdrop.alpha_dropout(x, 0.3, seed=SEED, stream=STREAM, offset=offset,
                                              noise_shape=(16, 9, 1, 1), backend="cython")
                assert_bits_equal(y, alpha_affine(x, keep, 0.3), (simd, offset))
    finally:
        cython_kernels.set_simd(before)


# sizes at and around the ends of groups of 16 mask words; offsets whose last local word of
# a group needs the next group's first global word
GROUP_SIZES = [1023, 1024, 1025, 2047, 2049, 64 * 16 * 5 + 64, 64 * 16 * 5 + 65,
               2**18 + 64 * 16 + 65]
GROUP_OFFSETS = [0, 1, 63, 1023, 64 * 17 + 5]


def _check_fused_paths(backend, n, offset, ps):
    """Fused forward out of place (with its mask), in place and recompute against the reference."""
    for p in ps:
        keep = reference_keep(n, p, 5, 6, offset)
        for dtype in dtypes_on(backend, fastdrop.get_num_threads()):
            x = sample(n, dtype)
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
@pytest.mark.parametrize("n", GROUP_SIZES)
def test_numba_pipelined_groups_match_reference(threads, n, subtests):
    """Numba's pipelined groups of mask words give the reference's bits.

    Numba's fused loop for float32/float64 scales a group of 16 mask words while
    drawing the next group's, for every 0 < p < 1 (float16 takes the plain loop): sizes
    at and around group ends, offsets whose last local word of a group needs the next
    group's first global word, thread counts that split the groups unevenly.
    """
    for thread_count in (1, 2, 3):
        fastdrop.set_num_threads(thread_count)
        for offset in GROUP_OFFSETS:
            with subtests.test(threads=thread_count, offset=offset):
                _check_fused_paths("numba", n, offset, (0.1, 1 / 3, 0.5, 0.25))


@pytest.mark.skipif("cython" not in fastdrop.available_backends(), reason="extension not built")
@pytest.mark.parametrize("simd", [2, 1])
@pytest.mark.parametrize("n", GROUP_SIZES)
def test_cython_pipelined_groups_match_reference(threads, simd, n, subtests):
    """Cython's pipelined groups of mask words give the reference's bits.

    The SIMD fused kernel scales a group of 16 mask words while drawing the next
    group's (p = 0.1 and 1/3; p = 0.5 takes one Philox block and the plain loop): sizes
    at and around group ends, offsets whose last local word of a group needs the next
    group's first global word, thread counts that split the groups unevenly.
    """
    from fastdrop.kernels.cython import kernels as cython_kernels

    before = cython_kernels.simd_enabled()
    try:
        cython_kernels.set_simd(simd)
        for thread_count in (1, 2, 3):
            fastdrop.set_num_threads(thread_count)
            for offset in GROUP_OFFSETS:
                with subtests.test(threads=thread_count, offset=offset):
                    _check_fused_paths("cython", n, offset, (0.1, 1 / 3, 0.5))
    finally:
        cython_kernels.set_simd(before)


# ---------------------------------------------------------------- thread counts


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
        lambda x: scaled(x, big_keep((1, BIG), x.shape), BIG_P)),
    "dropout-noise-channels": (
        (64, 9, 911),
        lambda x, b: fastdrop.dropout(x, BIG_P, noise_shape=(64, 9, 1), backend=b,
                                      **BIG_ARGS)[0],
        lambda x: scaled(x, big_keep((64, 9, 1), x.shape), BIG_P)),
    "dropout-noise-inner-33": (
        (15900, 33),
        lambda x, b: fastdrop.dropout(x, BIG_P, noise_shape=(1, 33), backend=b, **BIG_ARGS)[0],
        lambda x: scaled(x, big_keep((1, 33), x.shape), BIG_P)),
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
        lambda x: times_noise(x, noise_of(x.size, BIG_P, BIG_OFFSET))),
    "recompute-noise-long-mask": (
        (2, BIG),
        lambda x, b: fastdrop.dropout_backward_recompute(x, BIG_P, noise_shape=(1, BIG),
                                                         backend=b, **BIG_ARGS),
        lambda x: scaled(x, big_keep((1, BIG), x.shape), BIG_P)),
    "apply-channel-mask": (
        (64, 9, 911),
        lambda x, b: fastdrop.apply_mask(x, big_channel_mask(), backend=b),
        lambda x: scaled(x, big_keep((64, 9, 1), x.shape), BIG_P)),
    "alpha-backward-channel-mask": (
        (64, 9, 911),
        lambda x, b: fastdrop.alpha_dropout_backward(x, big_channel_mask(), backend=b),
        lambda x: scaled(x, big_keep((64, 9, 1), x.shape), BIG_P,
                         alpha_dropout_constants(BIG_P)[0])),
}


@pytest.mark.parametrize("case", list(BIG_CASES))
def test_thread_count_does_not_change_a_bit(compiled_backend, threads, case, subtests):
    shape, call, expect = BIG_CASES[case]
    assert chunk_count(math.prod(shape), 2) == 2, "too small to be split between two threads"
    for dtype in FLOAT_DTYPES:
        x = sample(shape, dtype)
        expected = expect(x)
        for thread_count in (1, 2):
            if dtype not in dtypes_on(compiled_backend, thread_count):
                continue
            with subtests.test(dtype=np.dtype(dtype).name, threads=thread_count):
                fastdrop.set_num_threads(thread_count)
                assert_bits_equal(call(x, compiled_backend), expected)
