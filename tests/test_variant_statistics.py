"""Statistical properties of the dropout variants: what each one promises its user.

Channel dropout keeps or drops whole channels at rate p; alpha dropout keeps zero mean and
unit variance; Gaussian dropout multiplies by N(1, p / (1 - p)) noise that is normal,
accurate in its tails and independent of the dropout mask of the same seed and stream.

As in test_statistics.py, each hypothesis test rejects at ALPHA = 1e-6 with fixed seeds (the
same result every run), and each statistic has a companion check showing that it rejects a
deliberately wrong variant of the same size: a test that cannot fail is a defect. The tests
run on every backend of the registry; the bit-for-bit agreement of the backends is
test_variants.py's subject.
"""
import math

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

ALPHA = 1e-6
Z_BOUND = stats.norm.isf(ALPHA / 2)  # two-sided bound of a N(0, 1) statistic


# ---------------------------------------------------------------- helpers


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


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_channel_dropout_zeroes_whole_channels_at_rate_p(any_backend, p):
    """Every channel of every sample is all +0.0 or all 1/(1-p) (PyTorch's Dropout2d test),
    and the number of dropped channels is Binomial(N*C, p)."""
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


@pytest.mark.parametrize("layout", ["NCL", "NLC-channel-last", "CL-unbatched"])
def test_feature_alpha_dropout_sets_whole_channels(any_backend, layout):
    """Each channel is either all a*x + b or all the dropped value c, and the dropped
    fraction is Binomial(channels, p)."""
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


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_alpha_dropout_keeps_zero_mean_and_unit_variance(any_backend, p):
    """On standard normal input: mean and std within 0.1 of 0 and 1 (the acceptance bound),
    and within sampling error of exactly 0 and 1 (z tests on 10**6 elements)."""
    x = np.random.default_rng(2017).standard_normal(ALPHA_ELEMENTS)
    y, mask = fastdrop.alpha_dropout(x, p, seed=8, stream=int(p * 10), backend=any_backend)
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
    """Chi-square of z's counts in 34 bins (width 0.25 on [-4, 4], and both tails beyond)
    against the standard normal: tail frequencies to |z| > 4 (32 expected per 10**6)."""
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
    """The same draws pushed through a logistic distribution of unit variance: a plausible
    wrong transform (symmetric, right mean and variance, heavier tails)."""
    u = special.ndtr(z)
    return np.log(u / (1 - u)) * math.sqrt(3) / math.pi


@pytest.mark.parametrize("p", [0.2, 0.9])
def test_gaussian_noise_is_normal_with_variance_p_over_1_minus_p(any_backend, p):
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
    """z = Phi^-1(u) (AS 241 with the spec's own log) agrees with scipy.special.ndtri to 1e-14
    relative for reachable u, including the extremes 2**-53 and 1 - 2**-53."""
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


@pytest.mark.parametrize("offset", [0, 1, 2**33 - 7, 2**62 + 1])
def test_noise_stream_is_ndtri_of_the_documented_philox_words(any_backend, offset):
    """Element i takes the 64-bit word i % 2 of Philox block i // 2 with counter
    (block low, block high | 2**31, stream low, stream high) and key (seed low, seed high),
    u = ((r >> 12) + 1/2) 2**-52 and z = Phi^-1(u): recomputed here with the Philox block
    function alone and scipy's ndtri."""
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
    """Noise and keep bits of one (seed, stream) come from different Philox counters:

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
