/* The Gaussian noise stream: standard normals from Philox (docs/mask-stream.md, section 9).
 *
 * Part of fastdrop's C interface, beside the mask stream. Element i (global index)
 * takes 64-bit word i % 2 of Philox block i / 2 in the noise domain (counter word 1's
 * top bit set, which mask words never use), u = (r >> 12) + 1/2) 2^-52 in (0, 1), and
 * z = Phi^-1(u) by Wichura's AS 241. log is the spec's own series (frexp, +, *, /),
 * so no libm can change a bit. Mirrored by fastdrop/maskstream/numba_normal.py;
 * fastdrop.reference is the oracle. Needs strict IEEE double arithmetic: no
 * -ffast-math, no fused multiply-add contraction (-ffp-contract=off).
 */
#ifndef FASTDROP_NORMAL_H
#define FASTDROP_NORMAL_H

#include <math.h>
#include <stdint.h>

#include "mask_stream.h"
#include "philox.h"

/* GCC ignores this pragma (pass -ffp-contract=off); clang honours it. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define FD_NORMAL_DOMAIN_BIT 31

/* The two 64-bit words of Gaussian block `block` (elements 2 block and 2 block + 1). */
static inline void fd_normal_block(uint64_t seed, uint64_t stream, uint64_t block,
                                   uint64_t out[2])
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t counter[4] = {(uint32_t)block,
                                 (uint32_t)(block >> 32) | (UINT32_C(1) << FD_NORMAL_DOMAIN_BIT),
                                 (uint32_t)stream, (uint32_t)(stream >> 32)};
    uint32_t x[4];
    fd_philox4x32_10(counter, key, x);
    out[0] = (uint64_t)x[0] | ((uint64_t)x[1] << 32);
    out[1] = (uint64_t)x[2] | ((uint64_t)x[3] << 32);
}

typedef union { uint64_t bits; double value; } fd_double_bits;

/* result = sum_k c[k] r^k by Horner's rule from the highest power (the spec's order). */
#define FD_HORNER8(result, c, r)                                                            \
    {                                                                                       \
        result = (c)[7];                                                                    \
        for (int k = 6; k >= 0; --k)                                                        \
            result = result * (r) + (c)[k];                                                 \
    }

/* AS 241's coefficients, lowest power first. Central region |u - 1/2| <= 0.425:
 * z = q A(r) / B(r), r = 0.180625 - q^2. Tails, t = sqrt(-log(min(u, 1 - u))):
 * C(t - 1.6) / D(t - 1.6) for t <= 5, E(t - 5) / F(t - 5) beyond. */
static const double fd_central_numerator[8] = {
    3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
    1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
    3.3430575583588128105e4, 2.5090809287301226727e3};
static const double fd_central_denominator[8] = {
    1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
    2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
    5.2264952788528545610e3};
static const double fd_intermediate_numerator[8] = {
    1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
    3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
    2.27238449892691845833e-2, 7.74545014278341407640e-4};
static const double fd_intermediate_denominator[8] = {
    1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
    1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
    1.05075007164441684324e-9};
static const double fd_far_numerator[8] = {
    6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
    2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
    2.71155556874348757815e-5, 2.01033439929228813265e-7};
static const double fd_far_denominator[8] = {
    1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
    7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
    2.04426310338993978564e-15};
/* 1 / (2k + 1), k = 0..10: the log series */
static const double fd_log_series[11] = {1.0, 1.0 / 3.0, 1.0 / 5.0, 1.0 / 7.0, 1.0 / 9.0,
                                         1.0 / 11.0, 1.0 / 13.0, 1.0 / 15.0, 1.0 / 17.0,
                                         1.0 / 19.0, 1.0 / 21.0};

/* The spec's log for a normal v > 0: v = m 2^e with m in [sqrt(1/2), sqrt(2)) (frexp,
 * read off the bits), then log m = 2 f (1 + f^2/3 + ... + f^20/21), f = (m-1)/(m+1). */
static inline double fd_spec_log(double v)
{
    fd_double_bits bits, exponent_field, mantissa;
    bits.value = v;
    /* the exponent field as a double, exactly: 2^52 + field minus 2^52 */
    exponent_field.bits = UINT64_C(0x4330000000000000) | (bits.bits >> 52);
    double exponent = (exponent_field.value - 0x1p52) - 1022.0;
    mantissa.bits = (bits.bits & UINT64_C(0x000FFFFFFFFFFFFF)) | UINT64_C(0x3FE0000000000000);
    double m = mantissa.value;
    const int low = m < 0.7071067811865476;
    const double doubled = m * 2.0, lowered = exponent - 1.0;
    m = low ? doubled : m;
    exponent = low ? lowered : exponent;
    const double f = (m - 1.0) / (m + 1.0), s = f * f;
    double series = fd_log_series[10];
    for (int k = 9; k >= 0; --k)
        series = series * s + fd_log_series[k];
    return exponent * 0.6931471805599453 + 2.0 * f * series;
}

/* z for u in a tail (|u - 1/2| > 0.425), without branches so batches vectorise. */
static inline double fd_normal_tail(double u)
{
    const double q = u - 0.5;
    const double complement = 1.0 - u;
    const double tail = sqrt(-fd_spec_log(q < 0.0 ? u : complement));
    const double near = tail - 1.6, far = tail - 5.0;
    double near_top, near_bottom, far_top, far_bottom;
    FD_HORNER8(near_top, fd_intermediate_numerator, near)
    FD_HORNER8(near_bottom, fd_intermediate_denominator, near)
    FD_HORNER8(far_top, fd_far_numerator, far)
    FD_HORNER8(far_bottom, fd_far_denominator, far)
    /* both quotients computed, then one chosen: a select, not a branch */
    const double near_value = near_top / near_bottom, far_value = far_top / far_bottom;
    const double magnitude = tail <= 5.0 ? near_value : far_value;
    return q < 0.0 ? -magnitude : magnitude;
}

/* z = Phi^-1(u) for u in (0, 1): AS 241 (PPND16). */
static inline double fd_inverse_normal_cdf(double u)
{
    const double q = u - 0.5;
    if (fabs(q) <= 0.425) {
        const double r = 0.180625 - q * q;
        double top, bottom;
        FD_HORNER8(top, fd_central_numerator, r)
        FD_HORNER8(bottom, fd_central_denominator, r)
        return q * top / bottom;
    }
    return fd_normal_tail(u);
}

/* The standard normal of one 64-bit random word. */
static inline double fd_standard_normal(uint64_t random_word)
{
    return fd_inverse_normal_cdf(((double)(random_word >> 12) + 0.5) * 0x1p-52);
}

/* Batches: FD_NORMAL_BATCH consecutive normals starting at an even global index (the
 * first element of Philox block `block`), computed as plain loops over the batch that
 * compilers vectorise: the central region of AS 241 for every lane, then the tails
 * (the lanes outside the central region) gathered into a short list and done together. Each lane does
 * the same IEEE operations as fd_standard_normal, so the bits are the same: u is built
 * from bits (1 + k 2^-52 minus 1 is k 2^-52 exactly; adding 2^-53 gives (k + 1/2)
 * 2^-52 exactly), and frexp from the exponent field (exact for the normal numbers
 * u and 1 - u are). */
#define FD_NORMAL_BATCH 64

#define FD_DEFINE_NORMAL_BATCH(VARIANT, ATTRIBUTES, FILL_WORDS)                            \
    ATTRIBUTES static inline void fd_standard_normals_batch##VARIANT(                      \
        uint64_t seed, uint64_t stream, uint64_t block, double z[FD_NORMAL_BATCH])          \
    {                                                                                       \
        uint64_t words[FD_NORMAL_BATCH];                                                    \
        double u[FD_NORMAL_BATCH], tail_u[FD_NORMAL_BATCH], tail_z[FD_NORMAL_BATCH];        \
        int tail_index[FD_NORMAL_BATCH];                                                    \
        FILL_WORDS(seed, stream, block, words)                                              \
        for (int j = 0; j < FD_NORMAL_BATCH; ++j) {                                         \
            fd_double_bits one_plus;                                                        \
            one_plus.bits = (words[j] >> 12) | UINT64_C(0x3FF0000000000000);                \
            u[j] = (one_plus.value - 1.0) + 0x1p-53;                                        \
            const double q = u[j] - 0.5, r = 0.180625 - q * q;                              \
            double top, bottom;                                                             \
            FD_HORNER8(top, fd_central_numerator, r)                                        \
            FD_HORNER8(bottom, fd_central_denominator, r)                                   \
            z[j] = q * top / bottom;                                                        \
        }                                                                                   \
        int tails = 0;                                                                      \
        for (int j = 0; j < FD_NORMAL_BATCH; ++j) {                                         \
            tail_index[tails] = j;                                                          \
            tail_u[tails] = u[j];                                                           \
            tails += fabs(u[j] - 0.5) > 0.425;                                              \
        }                                                                                   \
        for (int t = 0; t < tails; ++t)                                                     \
            tail_z[t] = fd_normal_tail(tail_u[t]);                                          \
        for (int t = 0; t < tails; ++t)                                                     \
            z[tail_index[t]] = tail_z[t];                                                   \
    }

#define FD_NORMAL_WORDS_SCALAR(seed, stream, block, words)                                  \
    for (int b = 0; b < FD_NORMAL_BATCH / 2; ++b)                                           \
        fd_normal_block(seed, stream, (block) + (uint64_t)b, (words) + 2 * b);

FD_DEFINE_NORMAL_BATCH(_portable, , FD_NORMAL_WORDS_SCALAR)

#if FD_HAVE_AVX2_PATH
/* Eight Philox blocks side by side in 64-bit vector lanes, two chains of four (as
 * fd_mask_words_16_avx2's four). */
FD_TARGET("avx2") static inline void fd_normal_words_avx2(
    uint64_t seed, uint64_t stream, uint64_t block, uint64_t words[16])
{
    const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFF);
    const __m256i m0 = _mm256_set1_epi64x(FD_PHILOX_M0), m1 = _mm256_set1_epi64x(FD_PHILOX_M1);
    const __m256i domain = _mm256_set1_epi64x((long long)1 << FD_NORMAL_DOMAIN_BIT);
    const __m256i blocks_a = _mm256_add_epi64(_mm256_set1_epi64x((long long)block),
                                              _mm256_set_epi64x(3, 2, 1, 0));
    const __m256i blocks_b = _mm256_add_epi64(blocks_a, _mm256_set1_epi64x(4));
    __m256i a0 = blocks_a; /* the multiplies read only the low halves */
    __m256i a1 = _mm256_or_si256(_mm256_srli_epi64(blocks_a, 32), domain);
    __m256i b0 = blocks_b;
    __m256i b1 = _mm256_or_si256(_mm256_srli_epi64(blocks_b, 32), domain);
    __m256i a2 = _mm256_set1_epi64x((long long)(stream & 0xFFFFFFFF)), b2 = a2;
    __m256i a3 = _mm256_set1_epi64x((long long)(stream >> 32)), b3 = a3;
    __m256i keys[20];
    FD_VEC_ROUND_KEYS(_mm256_set1_epi64x, seed, keys);
    FD_VEC_PHILOX10(256, FD_CHAINS_2, keys, m0, m1);
    uint64_t even[8], odd[8];
    _mm256_storeu_si256((__m256i *)even, FD_VEC_JOIN(256, a0, a1, low32));
    _mm256_storeu_si256((__m256i *)(even + 4), FD_VEC_JOIN(256, b0, b1, low32));
    _mm256_storeu_si256((__m256i *)odd, FD_VEC_JOIN(256, a2, a3, low32));
    _mm256_storeu_si256((__m256i *)(odd + 4), FD_VEC_JOIN(256, b2, b3, low32));
    for (int b = 0; b < 8; ++b) {
        words[2 * b] = even[b];
        words[2 * b + 1] = odd[b];
    }
}

#define FD_NORMAL_WORDS_AVX2(seed, stream, block, words)                                    \
    for (int b = 0; b < FD_NORMAL_BATCH / 2; b += 8)                                        \
        fd_normal_words_avx2(seed, stream, (block) + (uint64_t)b, (words) + 2 * b);

FD_DEFINE_NORMAL_BATCH(_avx2, FD_TARGET("avx2"), FD_NORMAL_WORDS_AVX2)
#endif

/* FD_NORMAL_BATCH standard normals of global elements 2 block, 2 block + 1, ... */
static inline void fd_standard_normals_batch(uint64_t seed, uint64_t stream, uint64_t block,
                                             double z[FD_NORMAL_BATCH])
{
#if FD_HAVE_AVX2_PATH
    if (fd_simd_enabled()) {
        FD_PATH_TAKEN("normals avx2");
        fd_standard_normals_batch_avx2(seed, stream, block, z);
        return;
    }
#endif
    FD_PATH_TAKEN("normals portable");
    fd_standard_normals_batch_portable(seed, stream, block, z);
}

#endif /* FASTDROP_NORMAL_H */
