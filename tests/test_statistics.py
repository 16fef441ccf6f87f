"""Statistical properties of the mask stream: keep bits act as independent Bernoulli(1 - p) draws.

Each hypothesis test rejects at ALPHA = 1e-6, so a correct generator fails it about once in a
million seed choices; the seeds are fixed, so every run is the same. Sample sizes (~10**6) are
chosen so that a real defect (a biased p, bits copied from a neighbour, a stream that repeats
another) is rejected by a wide margin, and each statistic has a companion test showing that it
does reject a deliberately broken mask of the same size: a test that cannot fail is a defect.

The tests run on every compiled backend (the ``compiled_backend`` fixture of conftest.py, fed
by the backend registry); the NumPy reference is the oracle of the exactness tests
(`fastdrop.reference.lane_uniforms`), not a subject here.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

import fastdrop
from fastdrop import reference

ALPHA = 1e-6
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


@pytest.mark.parametrize("p", [0.1, 1 / 3, 0.5, 0.9, 0.123456789, 0.001, 0.999])
def test_kept_fraction_matches_p(compiled_backend, p):
    """Of 10**6 elements, the number kept passes an exact two-sided binomial test for 1 - p."""
    words = mask_words(compiled_backend, MASK_ELEMENTS, p, seed=20240601)
    kept = int(fastdrop.unpack_mask(words, MASK_ELEMENTS).sum())
    assert stats.binomtest(kept, MASK_ELEMENTS, 1.0 - p).pvalue > ALPHA


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_test_rejects_a_wrong_p(compiled_backend, p):
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


@pytest.mark.parametrize("p", DEPENDENCE_P)
def test_every_lane_keeps_the_same_fraction(compiled_backend, p):
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


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mean_of_dropout_draws_converges_to_input(compiled_backend, p):
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


@pytest.mark.parametrize("kind", ["lanes", "words", "boundary"])
@pytest.mark.parametrize("p", DEPENDENCE_P)
@pytest.mark.parametrize("span", ["from word 0", "across word 2**32"])
def test_no_dependence_between_neighbouring_elements(compiled_backend, kind, p, span):
    """Neighbours are independent: adjacent lanes in a word, the same lane in consecutive words,
    and the bit-63 / bit-0 pair where one word ends and the next begins.

    The second span crosses word 2**32, where the word index carries into counter word 1.
    """
    count = NEIGHBOUR_WORDS[kind]
    first_word = 0 if span == "from word 0" else 2**32 - count // 2
    words = mask_words(compiled_backend, 64 * count, p, seed=8128, stream=5, offset=64 * first_word)
    for first, second in neighbour_pairs(words, kind):
        assert pair_pvalue(first, second, p) > ALPHA


@pytest.mark.parametrize("kind", ["lanes", "words", "boundary"])
def test_neighbour_test_detects_copied_bits(compiled_backend, kind):
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


@pytest.mark.parametrize("p", DEPENDENCE_P)
@pytest.mark.parametrize("streams", NEIGHBOURING_IDS, ids=str)
def test_no_dependence_between_consecutive_streams(compiled_backend, p, streams):
    """The same element in streams s and t (s + 1, or s + 2**32) is independent: a new call
    gets a new mask."""
    first, second = (mask_words(compiled_backend, MASK_ELEMENTS, p, seed=4242, stream=stream)
                     for stream in streams)
    assert pair_pvalue(bit_matrix(first), bit_matrix(second), p) > ALPHA


@pytest.mark.parametrize("p", DEPENDENCE_P)
@pytest.mark.parametrize("seeds", NEIGHBOURING_IDS, ids=str)
def test_no_dependence_between_consecutive_seeds(compiled_backend, p, seeds):
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


@pytest.mark.parametrize("p", [0.25, 0.375, 2**-20, 0.5 + 2**-40, 0.123456789, 1 - 2**-53])
@pytest.mark.parametrize("first_word", [0, 2**32 - 100])
def test_keep_bits_are_exact_uniform_comparisons(compiled_backend, p, first_word):
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
