"""Statistical properties: keep bits act as independent Bernoulli(1 - p) draws.

Each variant does what it promises its user.

The mask stream: the kept fraction is 1 - p in every lane, p is exact, neighbouring
elements, streams and seeds are independent, E[dropout(h)] = h. Every function of the
registry (tests/util.py) that draws a mask keeps a fraction 1 - p of its mask elements,
and every unbiased one keeps the mean of its input. Channel dropout keeps or drops whole
channels at rate p; alpha dropout keeps zero mean and unit variance; Gaussian dropout
multiplies by N(1, p / (1 - p)) noise that is normal, accurate in its tails and
independent of the dropout mask of the same seed and stream.

Each hypothesis test rejects at ALPHA = 1e-6, so a correct generator fails it about once in
a million seed choices; the seeds are fixed, so every run is the same. Sample sizes (~10**6)
are chosen so that a real defect (a biased p, bits copied from a neighbour, a stream that
repeats another) is rejected by a wide margin, and each statistic has a companion test or
check showing that it does reject a deliberately broken result of the same size: a test
that cannot fail is a defect.

The mask-stream tests run on every compiled backend (the ``compiled_backend`` fixture of
conftest.py, fed by the backend registry); the NumPy reference is the oracle of the
exactness tests (`fastdrop.reference.lane_uniforms`), not a subject there. The variants'
tests run on every backend; the bit-for-bit agreement of the backends is
test_against_reference.py's subject.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import special, stats

import fastdrop
from fastdrop import reference
from fastdrop.maskstream.spec import (
    ALPHA_DROPPED,
    SELU_ALPHA,
    SELU_SCALE,
    alpha_dropout_constants,
)
from tests.util import for_each, registry

ALPHA = 1e-6
Z_BOUND = stats.norm.isf(ALPHA / 2)  # two-sided bound of a N(0, 1) statistic
MASK_ELEMENTS = 10**6
NEIGHBOUR_WORDS = {"lanes": 2**14, "words": 2**14, "boundary": 2**20}
# Drop probabilities whose threshold ends after one bit (0.5) and one that needs many bits.
DEPENDENCE_P = [0.5, 0.123456789]
LANES = np.arange(64, dtype=np.uint64)


# ---------------------------------------------------------------- helpers


def mask_words(backend, n, p, *, seed, stream=0, offset=0):
    return fastdrop.bernoulli_mask(n, p, seed=seed, stream=stream, offset=offset, backend=backend)


def bit_matrix(words):
    """(len(words), 64) booleans: [w, i] is bit i of words[w] (decoded here, not by fastdrop)."""
    return ((words[:, None] >> LANES) & np.uint64(1)).astype(bool)


def lane_bit(words, lane):
    return ((words >> np.uint64(lane)) & np.uint64(1)).astype(bool)


def random_bit_masks(count, fraction, rng):
    """``count`` uint64 words whose bits are set independently with probability ``fraction``."""
    bits = rng.random((count, 64)) < fraction
    return (bits.astype(np.uint64) << LANES).sum(axis=1, dtype=np.uint64)


def pair_pvalue(first, second, p):
    """p-value of "pairs (first[k], second[k]) are independent, each kept with probability 1 - p".

    Chi-square goodness of fit of the four patterns (dropped/kept x dropped/kept) against
    the independent probabilities; 3 degrees of freedom (p is known, not estimated). The
    pairs must be disjoint, so that under the hypothesis they are independent samples.
    """
    first, second = np.ravel(first), np.ravel(second)
    observed = np.bincount(2 * first.astype(np.int64) + second, minlength=4)
    kept = 1.0 - p
    expected = np.array([p * p, p * kept, kept * p, kept * kept]) * observed.sum()
    return stats.chisquare(observed, expected).pvalue


def neighbour_pairs(words, kind):
    """Disjoint pairings of neighbouring elements in consecutive mask words.

    "lanes": elements 64w+i and 64w+i+1 inside a word, as (2j, 2j+1) and (2j+1, 2j+2);
    "words": lane i of words w and w+1, as (2m, 2m+1) and (2m+1, 2m+2);
    "boundary": lane 63 of word w and lane 0 of word w+1 (elements 64w+63 and 64w+64).
    """
    if kind == "boundary":
        return [(lane_bit(words[:-1], 63), lane_bit(words[1:], 0))]
    bits = bit_matrix(words)
    if kind == "lanes":
        return [(bits[:, 0::2], bits[:, 1::2]), (bits[:, 1:-1:2], bits[:, 2::2])]
    return [(bits[0:-1:2], bits[1::2]), (bits[1:-1:2], bits[2::2])]


def copy_from_neighbours(words, kind, fraction, rng):
    """The words with a ``fraction`` of bits copied from the neighbour ``kind`` pairs them with."""
    words = words.copy()
    if kind == "lanes":  # element 64w+i+1 copies element 64w+i
        select = random_bit_masks(words.size, fraction, rng) & ~np.uint64(1)
        words = (words & ~select) | ((words << np.uint64(1)) & select)
    elif kind == "words":  # lane i of word w+1 copies lane i of word w
        select = random_bit_masks(words.size - 1, fraction, rng)
        words[1:] = (words[1:] & ~select) | (words[:-1] & select)
    else:  # lane 0 of word w+1 copies lane 63 of word w
        select = rng.random(words.size - 1) < fraction
        copied = (words[:-1] >> np.uint64(63)) & np.uint64(1)
        words[1:] = np.where(select, (words[1:] & ~np.uint64(1)) | copied, words[1:])
    return words


# ---------------------------------------------------------------- 1. the kept fraction is 1 - p


def test_kept_fraction_matches_p(compiled_backend, subtests):
    for_each(subtests, check_kept_fraction_matches_p, compiled_backend,
             p=[0.1, 1 / 3, 0.5, 0.9, 0.123456789, 0.001, 0.999])


def check_kept_fraction_matches_p(compiled_backend, p):
    """Of 10**6 elements, the number kept passes an exact two-sided binomial test for 1 - p."""
    words = mask_words(compiled_backend, MASK_ELEMENTS, p, seed=20240601)
    kept = int(fastdrop.unpack_mask(words, MASK_ELEMENTS).sum())
    assert stats.binomtest(kept, MASK_ELEMENTS, 1.0 - p).pvalue > ALPHA


def test_kept_fraction_test_rejects_a_wrong_p(compiled_backend, subtests):
    for_each(subtests, check_kept_fraction_test_rejects_a_wrong_p, compiled_backend,
             p=[0.1, 0.5, 0.9])


def check_kept_fraction_test_rejects_a_wrong_p(compiled_backend, p):
    """The binomial test has power: the same 10**6 elements reject a p off by 0.005."""
    words = mask_words(compiled_backend, MASK_ELEMENTS, p, seed=20240601)
    kept = int(fastdrop.unpack_mask(words, MASK_ELEMENTS).sum())
    for wrong_p in (p - 0.005, p + 0.005):
        assert stats.binomtest(kept, MASK_ELEMENTS, 1.0 - wrong_p).pvalue < ALPHA


def lane_uniformity_pvalue(words, p):
    """p-value of "every lane i (elements 64w + i) keeps a fraction 1 - p": chi-square, 64 dof."""
    kept = bit_matrix(words).sum(axis=0)
    expected = words.size * (1.0 - p)
    statistic = np.sum((kept - expected) ** 2 / (words.size * p * (1.0 - p)))
    return stats.chi2.sf(statistic, 64)


def test_every_lane_keeps_the_same_fraction(compiled_backend, subtests):
    for_each(subtests, check_every_lane_keeps_the_same_fraction, compiled_backend, p=DEPENDENCE_P)


def check_every_lane_keeps_the_same_fraction(compiled_backend, p):
    """No bit position of a mask word is favoured: per-lane kept counts agree with 1 - p."""
    words = mask_words(compiled_backend, 64 * 2**17, p, seed=99)
    assert lane_uniformity_pvalue(words, p) > ALPHA


def test_lane_test_rejects_one_biased_lane(compiled_backend):
    """The per-lane test has power: one lane whose keep rate is off by 2.5 points is rejected."""
    p = 0.5
    words = mask_words(compiled_backend, 64 * 2**17, p, seed=99)
    forced = (np.random.default_rng(5).random(words.size) < 0.05).astype(np.uint64) << np.uint64(17)
    assert lane_uniformity_pvalue(words | forced, p) < ALPHA


# ---------------------------------------------------------------- 2. E[dropout(h)] = h


def scaled_chi2_pvalue(statistic, mean, variance):
    """Two-sided p-value of ``statistic`` under c * chi2(d) matched to its mean and variance."""
    scale = variance / (2.0 * mean)
    dof = 2.0 * mean**2 / variance
    tail = stats.chi2.sf(statistic / scale, dof)
    return 2.0 * min(tail, 1.0 - tail)


def test_mean_of_dropout_draws_converges_to_input(compiled_backend, subtests):
    for_each(subtests, check_mean_of_dropout_draws_converges_to_input, compiled_backend,
             p=[0.1, 0.5, 0.9])


def check_mean_of_dropout_draws_converges_to_input(compiled_backend, p):
    """The average of K dropout outputs (streams 0..K-1) converges to h at the rate sqrt(var / K).

    Each output element is h_i * B / (1 - p) with B ~ Bernoulli(1 - p), so the mean of K
    draws has expectation h_i and variance v_i = h_i**2 p / (1 - p) / K. Checked at each K:

    - z = sum_i (mean_i - h_i) / sqrt(sum_i v_i) is N(0, 1) (a sum of n*K independent terms);
      a missing 1 / (1 - p) shifts it by hundreds of standard deviations;
    - Q = sum_i (mean_i - h_i)**2 / v_i has mean n and variance n (2 + (1 - 6pq) / (K pq))
      (q = 1 - p; the fourth moment of a binomial), so the per-element error has the
      predicted size;
    - the root-mean-square error shrinks as K grows (by about sqrt(16) = 4 per checkpoint).
    """
    h = np.random.default_rng(2024).uniform(0.5, 2.0, size=1024)  # positive: errors cannot cancel
    n, q = h.size, 1.0 - p
    z_bound = stats.norm.isf(ALPHA / 2)
    total = np.zeros_like(h)
    root_mean_square_errors = []
    checkpoints = (16, 256, 4096)
    for draws in range(1, checkpoints[-1] + 1):
        y, _ = fastdrop.dropout(h, p, seed=31337, stream=draws - 1, backend=compiled_backend)
        total += y
        if draws not in checkpoints:
            continue
        mean = total / draws
        variance = h**2 * p / q / draws
        z = np.sum(mean - h) / np.sqrt(variance.sum())
        assert abs(z) < z_bound, f"K={draws}: z={z:.2f}"
        unscaled_z = np.sum(mean * q - h) / np.sqrt(variance.sum())
        assert abs(unscaled_z) > z_bound, "the z bound would not notice a missing 1 / (1 - p)"
        squares = np.sum((mean - h) ** 2 / variance)
        squares_variance = n * (2.0 + (1.0 - 6.0 * p * q) / (draws * p * q))
        assert scaled_chi2_pvalue(squares, n, squares_variance) > ALPHA, f"K={draws}: Q={squares}"
        root_mean_square_errors.append(np.sqrt(np.mean((mean - h) ** 2)))
    for before, after in zip(root_mean_square_errors, root_mean_square_errors[1:]):
        assert after < before / 2


# ---------------------------------------------------------------- 3. independence


def test_no_dependence_between_neighbouring_elements(compiled_backend, subtests):
    for_each(subtests, check_no_dependence_between_neighbouring_elements, compiled_backend,
             span=["from word 0", "across word 2**32"],
             p=DEPENDENCE_P,
             kind=["lanes", "words", "boundary"])


def check_no_dependence_between_neighbouring_elements(compiled_backend, span, p, kind):
    """Neighbours are independent.

    Adjacent lanes in a word, the same lane in consecutive words, and the bit-63 / bit-0
    pair where one word ends and the next begins.

    The second span crosses word 2**32, where the word index carries into counter word 1.
    """
    count = NEIGHBOUR_WORDS[kind]
    first_word = 0 if span == "from word 0" else 2**32 - count // 2
    words = mask_words(compiled_backend, 64 * count, p, seed=8128, stream=5, offset=64 * first_word)
    for first, second in neighbour_pairs(words, kind):
        assert pair_pvalue(first, second, p) > ALPHA


def test_neighbour_test_detects_copied_bits(compiled_backend, subtests):
    for_each(subtests, check_neighbour_test_detects_copied_bits, compiled_backend,
             kind=["lanes", "words", "boundary"])


def check_neighbour_test_detects_copied_bits(compiled_backend, kind):
    """The neighbour test has power: it rejects the mask with 2% of bits copied from a neighbour."""
    p = 0.123456789
    words = mask_words(compiled_backend, 64 * NEIGHBOUR_WORDS[kind], p, seed=8128, stream=5)
    broken = copy_from_neighbours(words, kind, 0.02, np.random.default_rng(11))
    for first, second in neighbour_pairs(broken, kind):
        assert pair_pvalue(first, second, p) < ALPHA


# Consecutive values (s, s + 1), the carry from the low 32-bit half into the high one, the top
# of the range, and a pair that differs only in the high half (a counter or key that dropped
# its high word would make these two masks identical).
NEIGHBOURING_IDS = [(0, 1), (2**32 - 1, 2**32), (2**64 - 2, 2**64 - 1), (5, 5 + 2**32)]


def test_no_dependence_between_consecutive_streams(compiled_backend, subtests):
    for_each(subtests, check_no_dependence_between_consecutive_streams, compiled_backend,
             streams=NEIGHBOURING_IDS,
             p=DEPENDENCE_P)


def check_no_dependence_between_consecutive_streams(compiled_backend, streams, p):
    """The same element in streams s and t (s + 1, or s + 2**32) is independent.

    A new call gets a new mask.
    """
    first, second = (mask_words(compiled_backend, MASK_ELEMENTS, p, seed=4242, stream=stream)
                     for stream in streams)
    assert pair_pvalue(bit_matrix(first), bit_matrix(second), p) > ALPHA


def test_no_dependence_between_consecutive_seeds(compiled_backend, subtests):
    for_each(subtests, check_no_dependence_between_consecutive_seeds, compiled_backend,
             seeds=NEIGHBOURING_IDS,
             p=DEPENDENCE_P)


def check_no_dependence_between_consecutive_seeds(compiled_backend, seeds, p):
    """The same element and stream under seeds s and t (s + 1, or s + 2**32) is independent."""
    first, second = (mask_words(compiled_backend, MASK_ELEMENTS, p, seed=seed, stream=7)
                     for seed in seeds)
    assert pair_pvalue(bit_matrix(first), bit_matrix(second), p) > ALPHA


def test_stream_test_detects_copied_bits(compiled_backend):
    """The stream/seed test has power: it rejects stream 1 with 2% of bits copied from stream 0."""
    p = 0.123456789
    first = mask_words(compiled_backend, MASK_ELEMENTS, p, seed=4242, stream=0)
    second = mask_words(compiled_backend, MASK_ELEMENTS, p, seed=4242, stream=1)
    select = random_bit_masks(first.size, 0.02, np.random.default_rng(12))
    broken = (second & ~select) | (first & select)
    assert pair_pvalue(bit_matrix(first), bit_matrix(broken), p) < ALPHA


# ---------------------------------------------------------------- 4. p is exact


def exact_threshold(p):
    """floor(p * 2**64), computed with rationals (independently of fastdrop's keep_threshold)."""
    return math.floor(Fraction(p) * 2**64)


def test_keep_bits_are_exact_uniform_comparisons(compiled_backend, subtests):
    for_each(subtests, check_keep_bits_are_exact_uniform_comparisons, compiled_backend,
             first_word=[0, 2**32 - 100],
             p=[0.25, 0.375, 2**-20, 0.5 + 2**-40, 0.123456789, 1 - 2**-53])


def check_keep_bits_are_exact_uniform_comparisons(compiled_backend, first_word, p):
    """Each element is kept iff its 64-bit uniform U >= floor(p * 2**64), with U from the reference.

    Dyadic p = k / 2**m are exact (e.g. 0.375 drops exactly the lanes whose top three bits of
    U are below 011); other p are exact to 2**-64.
    """
    word_count = 200
    seed, stream = 1618033988749, 3
    indices = np.arange(first_word, first_word + word_count, dtype=np.uint64)
    uniforms = reference.lane_uniforms(seed, stream, indices)
    expected = uniforms >= np.uint64(exact_threshold(p))
    words = mask_words(compiled_backend, 64 * word_count, p, seed=seed, stream=stream,
                       offset=64 * first_word)
    np.testing.assert_array_equal(bit_matrix(words), expected)


def test_threshold_next_to_a_lane_uniform_decides_that_lane_exactly(compiled_backend):
    """A threshold equal to a lane's U keeps it (U >= T), the next larger p drops it.

    p is chosen so that T agrees with U in all of its leading bits, so the comparison runs
    through (nearly) all 64 bit-sliced rounds, the kernels' early exit included.
    """
    seed, stream = 2718281828, 9
    uniforms = reference.lane_uniforms(seed, stream, np.arange(4096, dtype=np.uint64))
    # U with 11 trailing zero bits has at most 53 significant bits: U / 2**64 is a float64.
    representable = np.argwhere((uniforms & np.uint64(2**11 - 1)) == 0)[:4]
    # and lanes with arbitrary U, where p is the largest float64 with floor(p 2**64) <= U
    arbitrary = [(5, 0), (77, 31), (1000, 63), (4095, 40)]
    assert len(representable) == 4
    cases = []
    for word, lane in representable:
        uniform = int(uniforms[word, lane])
        p = math.ldexp(uniform, -64)
        assert exact_threshold(p) == uniform
        cases.append((word, lane, p))
    for word, lane in arbitrary:
        uniform = int(uniforms[word, lane])
        p = math.ldexp(uniform, -64)
        while exact_threshold(p) > uniform:
            p = np.nextafter(p, 0.0)
        cases.append((word, lane, float(p)))
    for word, lane, p in cases:
        larger_p = float(np.nextafter(p, 1.0))
        assert exact_threshold(larger_p) > int(uniforms[word, lane])
        for probability, kept in ((p, True), (larger_p, False)):
            words = mask_words(compiled_backend, 64, probability, seed=seed, stream=stream,
                               offset=64 * int(word))
            bits = bit_matrix(words)[0]
            assert bits[lane] == kept, f"word {word} lane {lane} p={probability!r}"
            threshold = np.uint64(exact_threshold(probability))
            np.testing.assert_array_equal(bits, uniforms[word] >= threshold)


def test_p_zero_keeps_everything_and_p_one_drops_everything(compiled_backend):
    """p = 0 keeps every element (and leaves values unchanged); p = 1 drops every element to +0.0.

    The smallest positive p, 5e-324, has threshold 0 and so keeps everything too.
    """
    n = MASK_ELEMENTS + 17  # not a multiple of 64: the last word is partial
    x = np.random.default_rng(3).normal(size=n)
    for p in (0.0, 5e-324):
        assert fastdrop.unpack_mask(mask_words(compiled_backend, n, p, seed=1, stream=2), n).all()
        y, mask = fastdrop.dropout(x, p, seed=1, stream=2, backend=compiled_backend)
        np.testing.assert_array_equal(y, x)
        assert mask.unpack().all()
    assert not fastdrop.unpack_mask(mask_words(compiled_backend, n, 1.0, seed=1, stream=2), n).any()
    y, mask = fastdrop.dropout(x, 1.0, seed=1, stream=2, backend=compiled_backend)
    assert not mask.unpack().any()
    assert np.all(y == 0.0) and not np.signbit(y).any()


# ---------------------------------------------------------------- every function of the registry

REGISTRY_P = 0.3
REGISTRY_SHAPE = (200, 1000, 2)  # 4 * 10**5 elements; a channel mask of 2 * 10**5


def drawn_kept_fraction(entry, backend):
    """(kept mask elements, mask elements) of one call of a mask-drawing function."""
    x = np.ones(REGISTRY_SHAPE, np.float32)
    result = entry.call(x, backend, p=REGISTRY_P, seed=20240601, stream=3, offset=0)
    if entry.returns == "mask words":
        n = x.size
        return int(fastdrop.unpack_mask(result, n).sum()), n
    mask = entry.record(result)
    return int(mask.unpack().sum()), mask.n


@pytest.mark.parametrize("entry", registry(where=lambda e: e.draws_stream and e.returns in (
    "array and DropoutMask", "mask words")), ids=str)
def test_every_drawn_mask_keeps_a_fraction_1_minus_p(compiled_backend, entry):
    """The kept mask elements pass an exact binomial test for 1 - p, and reject p +- 0.01."""
    kept, n = drawn_kept_fraction(entry, compiled_backend)
    assert n >= 2 * 10**5
    assert stats.binomtest(kept, n, 1.0 - REGISTRY_P).pvalue > ALPHA
    for wrong_p in (REGISTRY_P - 0.01, REGISTRY_P + 0.01):
        assert stats.binomtest(kept, n, 1.0 - wrong_p).pvalue < ALPHA


@pytest.mark.parametrize("entry", registry(where=lambda e: e.draws_stream and e.arithmetic in (
    "inverted", "gaussian", "noise")), ids=str)
def test_every_unbiased_function_keeps_the_mean(compiled_backend, entry):
    """E[y] = x for inverted and Gaussian dropout (and E[noise] = 1).

    On ones, the mean of y is 1 within sampling error, with Var = p / (1 - p) per independent
    draw (a mask element, or an element of Gaussian noise); a 1% bias is rejected.
    """
    x = np.ones(REGISTRY_SHAPE, np.float32)  # large: Numba's threads, float32 (dtypes_on)
    result = entry.output(entry.call(x, compiled_backend, p=REGISTRY_P, seed=4711, stream=2,
                                     offset=0)).astype(np.float64)
    draws = result.size if entry.arithmetic != "inverted" else math.prod(
        entry.mask_shape(REGISTRY_SHAPE))
    z = (result.mean() - 1.0) / math.sqrt(REGISTRY_P / (1 - REGISTRY_P) / draws)
    assert abs(z) < Z_BOUND, z
    biased_z = (0.99 * result.mean() - 1.0) / math.sqrt(REGISTRY_P / (1 - REGISTRY_P) / draws)
    assert abs(biased_z) > Z_BOUND, biased_z


# ---------------------------------------------------------------- helpers of the variants' tests


def binomial_pvalue(count, total, probability):
    return stats.binomtest(int(count), int(total), probability).pvalue


def independence_pvalue(first, second):
    """p-value of "booleans first[k] and second[k] are independent" (2x2 chi-square)."""
    table = np.array([[np.sum(~first & ~second), np.sum(~first & second)],
                      [np.sum(first & ~second), np.sum(first & second)]])
    return stats.chi2_contingency(table, correction=False).pvalue


def mean_and_variance_z(y, mean, variance):
    """z statistics of "y has this mean" and "y has this variance" (large-sample normal)."""
    n = y.size
    mean_z = (y.mean() - mean) / math.sqrt(variance / n)
    squares = (y - mean) ** 2
    variance_z = (squares.mean() - variance) / (squares.std() / math.sqrt(n))
    return mean_z, variance_z


# ---------------------------------------------------------------- channel dropout

CHANNELS = (400, 500)  # 2 * 10**5 (sample, channel) pairs


def test_channel_dropout_zeroes_whole_channels_at_rate_p(any_backend, subtests):
    for_each(subtests, check_channel_dropout_zeroes_whole_channels_at_rate_p, any_backend,
             p=[0.2, 0.5])


def check_channel_dropout_zeroes_whole_channels_at_rate_p(any_backend, p):
    """Every channel of every sample is all +0.0 or all 1/(1-p) (PyTorch's Dropout2d test).

    The number of dropped channels is Binomial(N*C, p).
    """
    n, c = CHANNELS
    x = np.ones((n, c, 2, 3), np.float32)
    y, mask = fastdrop.channel_dropout(x, p, seed=777, stream=3, backend=any_backend)
    per_channel = y.reshape(n, c, -1)
    first = per_channel[:, :, :1]
    assert np.all(per_channel == first), "a channel was partly dropped"
    assert set(np.unique(first).tolist()) <= {0.0, float(np.float32(1 / (1 - p)))}
    dropped = first[:, :, 0] == 0
    assert np.array_equal(dropped, ~mask.unpack().reshape(n, c))
    assert binomial_pvalue(dropped.sum(), dropped.size, p) > ALPHA
    for wrong_p in (p - 0.01, p + 0.01):  # the binomial test has power
        assert binomial_pvalue(dropped.sum(), dropped.size, wrong_p) < ALPHA


def test_channel_masks_of_consecutive_samples_are_independent(any_backend):
    """Sample k + 1 does not reuse sample k's channel mask (the batch axis has its own bits)."""
    n, c = CHANNELS
    y, _ = fastdrop.channel_dropout(np.ones((n, c, 2), np.float32), 0.5, seed=778, stream=0,
                                    backend=any_backend)
    kept = y[:, :, 0] != 0
    assert independence_pvalue(kept[0::2].ravel(), kept[1::2].ravel()) > ALPHA
    # power: 5% of the channels of each odd sample copied from the sample before it
    copied = kept.copy()
    select = np.random.default_rng(1).random((n // 2, c)) < 0.05
    copied[1::2] = np.where(select, copied[0::2], copied[1::2])
    assert independence_pvalue(copied[0::2].ravel(), copied[1::2].ravel()) < ALPHA


def test_feature_alpha_dropout_sets_whole_channels(any_backend, subtests):
    for_each(subtests, check_feature_alpha_dropout_sets_whole_channels, any_backend,
             layout=["NCL", "NLC-channel-last", "CL-unbatched"])


def check_feature_alpha_dropout_sets_whole_channels(any_backend, layout):
    """Each channel is either all a*x + b or all the dropped value c.

    The dropped fraction is Binomial(channels, p).
    """
    p = 0.3
    rng = np.random.default_rng(5)
    shape, kwargs, channel_axes = {
        "NCL": ((300, 200, 4), {}, (0, 1)),
        "NLC-channel-last": ((300, 4, 200), dict(channel_axis=-1), (0, 2)),
        "CL-unbatched": ((60000, 4), dict(channel_axis=0, batch_axis=None), (0,)),
    }[layout]
    x = rng.standard_normal(shape)
    y, mask = fastdrop.feature_alpha_dropout(x, p, seed=9, stream=1, backend=any_backend,
                                             **kwargs)
    a, b, c = alpha_dropout_constants(p)
    shared = tuple(axis for axis in range(x.ndim) if axis not in channel_axes)
    is_dropped_value = np.all(y == c, axis=shared)
    is_kept_value = np.all(np.abs(y - (a * x + b)) <= 1e-15 * (1 + np.abs(y)), axis=shared)
    assert np.all(is_dropped_value ^ is_kept_value), "a channel is neither kept nor dropped whole"
    assert np.array_equal(is_kept_value, mask.unpack().reshape(is_kept_value.shape))
    assert binomial_pvalue(is_dropped_value.sum(), is_dropped_value.size, p) > ALPHA
    assert binomial_pvalue(is_dropped_value.sum(), is_dropped_value.size, p + 0.02) < ALPHA


# ---------------------------------------------------------------- alpha dropout


def test_alpha_dropout_constants_are_those_of_the_selu_paper():
    """alpha' = -lambda alpha with lambda, alpha of Klambauer et al. (2017), eq. 14 and 15."""
    assert SELU_ALPHA == pytest.approx(1.6732632423543772848170429916717, rel=1e-15)
    assert SELU_SCALE == pytest.approx(1.0507009873554804934193349852946, rel=1e-15)
    assert ALPHA_DROPPED == pytest.approx(-1.7580993408473766, rel=1e-15)
    for p in (0.05, 0.2, 0.5, 0.8):
        a, b, c = alpha_dropout_constants(p)
        q = 1 - p
        assert a == pytest.approx((q + ALPHA_DROPPED**2 * q * p) ** -0.5, rel=1e-14)
        assert b == pytest.approx(-a * p * ALPHA_DROPPED, rel=1e-14)
        assert c == pytest.approx(a * ALPHA_DROPPED + b, rel=1e-14)


ALPHA_ELEMENTS = 10**6


def test_alpha_dropout_keeps_zero_mean_and_unit_variance(any_backend, subtests):
    for_each(subtests, check_alpha_dropout_keeps_zero_mean_and_unit_variance, any_backend,
             p=[0.2, 0.5, 0.8])


def check_alpha_dropout_keeps_zero_mean_and_unit_variance(any_backend, p):
    """On standard normal input: mean and std within 0.1 of 0 and 1 (the acceptance bound).

    They are also within sampling error of exactly 0 and 1 (z tests on 10**6 elements).
    """
    x = np.random.default_rng(2017).standard_normal(ALPHA_ELEMENTS, dtype=np.float32)
    y, mask = fastdrop.alpha_dropout(x, p, seed=8, stream=int(p * 10), backend=any_backend)
    x, y = x.astype(np.float64), y.astype(np.float64)  # float32 above: see dtypes_on
    assert abs(y.mean()) < 0.1 and abs(y.std() - 1.0) < 0.1
    mean_z, variance_z = mean_and_variance_z(y, 0.0, 1.0)
    assert abs(mean_z) < Z_BOUND and abs(variance_z) < Z_BOUND, (mean_z, variance_z)
    kept = mask.unpack()
    assert binomial_pvalue(ALPHA_ELEMENTS - kept.sum(), ALPHA_ELEMENTS, p) > ALPHA
    # power: inverted dropout of the same input fails both the bound and the z test
    # (std sqrt(1 / (1 - p)) >= 1.118), and so do alpha dropout's constants for p + 0.02
    # (mean a alpha' (p - p'), about 0.03)
    plain = np.where(kept, x / (1 - p), 0.0)
    assert abs(plain.std() - 1.0) > 0.1
    assert abs(mean_and_variance_z(plain, 0.0, 1.0)[1]) > Z_BOUND
    a, b, c = alpha_dropout_constants(p + 0.02)
    wrong = np.where(kept, a * x + b, c)
    assert abs(mean_and_variance_z(wrong, 0.0, 1.0)[0]) > Z_BOUND


# ---------------------------------------------------------------- Gaussian dropout

NOISE_ELEMENTS = 10**6
GAUSSIAN_BINS = np.concatenate([[-np.inf], np.arange(-4.0, 4.01, 0.25), [np.inf]])


def bin_pvalue(z):
    """Chi-square of z's counts in 34 bins against the standard normal.

    Bins of width 0.25 on [-4, 4], and both tails beyond: tail frequencies to |z| > 4 (32
    expected per 10**6).
    """
    observed = np.histogram(z, GAUSSIAN_BINS)[0]
    expected = np.diff(stats.norm.cdf(GAUSSIAN_BINS)) * z.size
    return stats.chisquare(observed, expected).pvalue


def ks_pvalue(sorted_values, mean, sigma):
    """Kolmogorov-Smirnov p-value of sorted draws against N(mean, sigma**2).

    The statistic of scipy.stats.kstest, computed here so the draws are sorted once for
    several tests; the p-value from Kolmogorov's limit distribution (within 0.1% of the
    exact one at 10**6 draws, which scipy computes slowly far in the tail).
    """
    n = sorted_values.size
    cdf = special.ndtr((sorted_values - mean) / sigma)
    steps = np.arange(1, n + 1) / n
    statistic = max(np.max(steps - cdf), np.max(cdf - (steps - 1.0 / n)))
    return stats.kstwobign.sf(math.sqrt(n) * statistic)


def logistic_like(z):
    """The same draws pushed through a logistic distribution of unit variance.

    A plausible wrong transform (symmetric, right mean and variance, heavier tails).
    """
    u = special.ndtr(z)
    return np.log(u / (1 - u)) * math.sqrt(3) / math.pi


def test_gaussian_noise_is_normal_with_variance_p_over_1_minus_p(any_backend, subtests):
    for_each(subtests, check_gaussian_noise_is_normal_with_variance_p_over_1_minus_p, any_backend,
             p=[0.2, 0.9])


def check_gaussian_noise_is_normal_with_variance_p_over_1_minus_p(any_backend, p):
    sigma2 = p / (1 - p)
    sigma = math.sqrt(sigma2)
    noise = fastdrop.gaussian_noise(NOISE_ELEMENTS, p, seed=1234, stream=5, backend=any_backend)
    z = (noise - 1.0) / sigma
    ordered = np.sort(noise)
    assert ks_pvalue(ordered, 1.0, sigma) > ALPHA
    assert stats.normaltest(noise).pvalue > ALPHA
    assert bin_pvalue(z) > ALPHA
    # variance: sum (noise - 1)**2 / sigma**2 is chi-square with n degrees of freedom
    statistic = np.sum((noise - 1.0) ** 2) / sigma2
    tail = stats.chi2.sf(statistic, NOISE_ELEMENTS)
    assert 2 * min(tail, 1 - tail) > ALPHA
    mean_z = (noise.mean() - 1.0) / math.sqrt(sigma2 / NOISE_ELEMENTS)
    assert abs(mean_z) < Z_BOUND
    # power: a 5% wrong sigma fails the KS test, a 1% wrong variance the chi-square test,
    # and logistic draws of the right variance fail the normality and tail tests
    assert ks_pvalue(ordered, 1.0, 1.05 * sigma) < ALPHA
    wrong_tail = stats.chi2.sf(statistic / 1.01, NOISE_ELEMENTS)
    assert 2 * min(wrong_tail, 1 - wrong_tail) < ALPHA
    assert stats.normaltest(logistic_like(z)).pvalue < ALPHA
    assert bin_pvalue(logistic_like(z)) < ALPHA


def test_gaussian_dropout_multiplies_by_the_noise(any_backend):
    """E[y] = x and Var[y] = x**2 p / (1 - p): gaussian_dropout of ones is the noise."""
    p = 0.5
    y, _ = fastdrop.gaussian_dropout(np.ones(NOISE_ELEMENTS), p, seed=99, stream=0,
                                     backend=any_backend)
    mean_z, variance_z = mean_and_variance_z(y, 1.0, p / (1 - p))
    assert abs(mean_z) < Z_BOUND and abs(variance_z) < Z_BOUND
    assert abs(mean_and_variance_z(y, 1.0, 1.02 * p / (1 - p))[1]) > Z_BOUND
    assert np.all(y != 0.0), "Gaussian dropout sets no element to zero"


# Reachable uniforms are u = (k + 1/2) 2**-52 for k in [0, 2**52): from 2**-53 to 1 - 2**-53.
K_MAX = 2**52 - 1


def uniforms_of(k):
    return (np.asarray(k, dtype=np.float64) + 0.5) * 2.0**-52


def extreme_and_boundary_ks():
    """k for u at both ends, at AS 241's region boundaries and in between."""
    ks = [0, 1, 2, 3, 7, 100, 12345, K_MAX, K_MAX - 1, K_MAX - 2, K_MAX - 100]
    for boundary in (0.075, 0.925, math.exp(-25.0), 1 - math.exp(-25.0), 0.5):
        centre = int(boundary * 2**52)
        ks += list(range(centre - 3, centre + 4))
    logs = np.geomspace(1, 2**51, 2000)
    ks += [int(v) for v in logs] + [K_MAX - int(v) for v in logs]
    ks += np.random.default_rng(0).integers(0, 2**52, 20000).tolist()
    return np.unique(np.array(ks, dtype=np.int64))


def test_normal_transform_agrees_with_scipy_ndtri_to_1e_14():
    """z = Phi^-1(u) (AS 241 with the spec's own log) agrees with scipy.special.ndtri.

    To 1e-14 relative, for reachable u, including the extremes 2**-53 and 1 - 2**-53.
    """
    u = uniforms_of(extreme_and_boundary_ks())
    assert u.min() == 2.0**-53 and u.max() == 1 - 2.0**-53
    z = reference.inverse_normal_cdf(u)
    expected = special.ndtri(u)
    relative = np.abs(z - expected) / np.abs(expected)
    assert relative.max() < 1e-14, (relative.max(), u[np.argmax(relative)])
    assert np.array_equal(np.sign(z), np.sign(u - 0.5))
    assert np.all(np.diff(z) > 0), "z is not increasing in u"
    assert z.max() == -z.min() == pytest.approx(8.2095361516013856, rel=1e-14)
    # power: a transform with float32's precision (or a 1e-9 approximation) is rejected
    z_float32 = special.ndtri(u.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(z_float32 - expected) / np.abs(expected)) > 1e-14


def test_noise_stream_is_ndtri_of_the_documented_philox_words(any_backend, subtests):
    for_each(subtests, check_noise_stream_is_ndtri_of_the_documented_philox_words, any_backend,
             offset=[0, 1, 2**33 - 7, 2**62 + 1])


def check_noise_stream_is_ndtri_of_the_documented_philox_words(any_backend, offset):
    """Element i's normal, recomputed with the Philox block function alone and scipy's ndtri.

    Element i takes the 64-bit word i % 2 of Philox block i // 2 with counter
    (block low, block high | 2**31, stream low, stream high) and key (seed low, seed high),
    u = ((r >> 12) + 1/2) 2**-52 and z = Phi^-1(u).
    """
    seed, stream, n = 0xDEADBEEF12345678, 2**40 + 9, 4000
    index = np.arange(offset, offset + n, dtype=np.uint64)
    block = index >> np.uint64(1)
    low32 = np.uint64(0xFFFFFFFF)
    counter = np.stack([block & low32, (block >> np.uint64(32)) | np.uint64(2**31),
                        np.full(n, stream & 0xFFFFFFFF, np.uint64),
                        np.full(n, stream >> 32, np.uint64)], axis=-1).astype(np.uint32)
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    x = fastdrop.philox4x32_10(counter, key).astype(np.uint64)
    odd = (index & np.uint64(1)).astype(bool)
    words = np.where(odd, x[:, 2] | (x[:, 3] << np.uint64(32)),
                     x[:, 0] | (x[:, 1] << np.uint64(32)))
    u = uniforms_of(words >> np.uint64(12))
    noise = fastdrop.gaussian_noise(n, 0.5, seed=seed, stream=stream, offset=offset,
                                    backend=any_backend)  # sigma = 1: noise = 1 + z
    np.testing.assert_allclose(noise - 1.0, special.ndtri(u), rtol=0, atol=1e-14)
    assert np.array_equal(reference.standard_normals(n, seed, stream, offset),
                          reference.inverse_normal_cdf(u))


# ---------------------------------------------------------------- noise vs mask independence

INDEPENDENCE_WORDS = 2**14


def mask_and_normals(backend, seed=4242, stream=17):
    n = 64 * INDEPENDENCE_WORDS
    kept = fastdrop.unpack_mask(fastdrop.bernoulli_mask(n, 0.5, seed=seed, stream=stream,
                                                        backend=backend), n)
    z = fastdrop.gaussian_noise(n, 0.5, seed=seed, stream=stream, backend=backend) - 1.0
    return kept, z


def test_gaussian_noise_is_independent_of_the_mask_of_the_same_seed_and_stream(any_backend):
    """Noise and keep bits of one (seed, stream) come from different Philox counters.

    Checked:

    - element by element: keep_i is uncorrelated with z_i, z_i > 0 and |z_i| > 1;
    - where the counters would coincide without the noise domain bit: the sign of z_2j is
      the top bit of word 0 of mask word j's block 0, which decides lane 63 at p = 1/2.
    """
    kept, z = mask_and_normals(any_backend)
    n = kept.size
    correlation = np.corrcoef(kept, z)[0, 1]
    assert abs(correlation) * math.sqrt(n) < Z_BOUND
    assert independence_pvalue(kept, z > 0) > ALPHA
    assert independence_pvalue(kept, np.abs(z) > 1) > ALPHA
    lane_63 = kept[63::64]
    assert independence_pvalue(lane_63, z[0:2 * INDEPENDENCE_WORDS:2] > 0) > ALPHA


def test_independence_tests_detect_noise_made_from_the_mask_bits():
    """Power: normals built from the mask stream's own random numbers are rejected.

    - z_i from lane i's 64-bit uniform U (the bits that decide keep_i): the element test;
    - z_2j from mask word j's first random word (what a missing domain bit would give):
      the lane-63 test.
    """
    seed, stream = 4242, 17
    words = np.arange(INDEPENDENCE_WORDS, dtype=np.uint64)
    uniforms = reference.lane_uniforms(seed, stream, words)
    kept = (uniforms >= np.uint64(2**63)).ravel()
    z_from_u = special.ndtri(uniforms_of((uniforms >> np.uint64(12)).ravel()))
    assert independence_pvalue(kept, z_from_u > 0) < ALPHA
    first_words = reference.random_words(seed, stream, words)[:, 0]
    z_from_first_word = special.ndtri(uniforms_of(first_words >> np.uint64(12)))
    assert independence_pvalue(kept[63::64], z_from_first_word > 0) < ALPHA
    # and these are the keep bits the library draws
    assert np.array_equal(kept, fastdrop.unpack_mask(fastdrop.reference.bernoulli_mask(
        kept.size, 0.5, seed=seed, stream=stream), kept.size))
