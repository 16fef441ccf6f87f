/* Softmax then dropout in one pass, and its backward (docs/mask-stream.md, section 12).
 *
 * Rows: x viewed as (outer, length, inner) with the softmax along the middle axis, each
 * (i, k) a row of `length` elements at source + i * outer_stride + k * inner_stride +
 * j * length_stride (strides in elements, any sign). Element (i, j, k) is C-order element
 * q = (i * length + j) * inner + k of the call: target, softmax_out and the mask index it
 * so (the last axis: inner = 1, a row is q = i * length .. + length - 1).
 *
 * Per row, in the compute type C (float for float16, bfloat16 and float32, double for
 * float64):
 *
 *   m = max_j x_j;  e_j = fd_exp(x_j - m);  S = lane sum of e;  r = 1 / S;
 *   s_j = e_j * r rounded to C, then to the element type;  y_j = dropout(s_j)
 *
 * fd_exp is the range reduction and polynomial below, on the portable path without and
 * on the SIMD paths (AVX2 and AVX-512, both with FMA) with fused multiply-adds: not
 * bit-specified by the spec, each path's values lie within the bound docs/fused.md
 * states, and a path gives the same bits for every layout and thread count. The lane sum
 * adds element j into accumulator j mod 16 in order, then adds the accumulators pairwise
 * (k + 8, k + 4, k + 2, k + 1). The dropout is fd_keep_<T> with the mask of dropout.h
 * (fd_mask_words_range): exactly fastdrop.dropout of the rounded softmax, on every path.
 * The path is picked once per chunk of rows (fd_softmax_level), whose rows run in one loop.
 *
 * For each element type (suffix f64, f32, f16, bf16):
 *
 *   fd_softmax_dropout_units_<T>(source, layout, target, softmax_out, words, scale,
 *                                params, first, stop)
 *       rows of outer indices [first, stop) (the unit: `length * inner` elements, C-order
 *       contiguous in the call); words NULL: no dropout (y = s), else the call's local
 *       mask words, of which those of the units' elements are drawn here (first * length
 *       * inner must be a multiple of 64 unless first is 0: threads own whole words).
 *       softmax_out NULL: not written.
 *   fd_softmax_dropout_backward_units_<T>(grad, softmax, target, words, scale, layout,
 *                                         first, stop)
 *       dx = s * (g' - D), g' = dropout_backward(grad) (grad itself where words is NULL),
 *       D = lane sum of g' * s; every array C-order contiguous (the layout's strides
 *       unused). The same bits on every path and backend.
 */
#ifndef FASTDROP_SOFTMAX_H
#define FASTDROP_SOFTMAX_H

#include <stdint.h>

#include "dropout.h"

typedef struct {
    int64_t outer, length, inner;                       /* (A, L, B): softmax along L */
    int64_t outer_stride, length_stride, inner_stride;  /* the source's, in elements */
} fd_softmax_layout;

#define FD_SOFTMAX_LANES 16
/* Elements of a row held in the compute type at once (8 KiB of float, 16 KiB of double,
 * a multiple of the lanes); longer rows recompute their exponentials in a third pass. */
#ifndef FD_SOFTMAX_BLOCK
#define FD_SOFTMAX_BLOCK 2048
#endif
/* Elements whose mask words a thread draws ahead of their rows (whole units, at least one). */
#ifndef FD_SOFTMAX_DRAW_ELEMENTS
#define FD_SOFTMAX_DRAW_ELEMENTS 16384
#endif

/* ---------------------------------------------------------------- exp
 *
 * e^x for x <= 0 (or NaN): x = k ln2 + r with k = round(x log2(e)) (adding and taking off
 * 1.5 * 2^p rounds to nearest even), r = (x - k ln2_hi) - k ln2_lo (ln2_hi has few enough
 * bits that k ln2_hi is exact), |r| <= ln2 / 2; e^r by its Taylor polynomial (degree 7 in
 * float, 13 in double: the truncation is under 0.05 ulp), in Horner form; then times 2^k
 * as 2^(k + bias) * 2^-bias, so a subnormal result is rounded once. x is first raised to a
 * floor below which e^x rounds to +0 (NaN stays NaN). The portable path: plain multiplies
 * and adds, within 1.22 ulp of e^x for every float in [-104, 0]. The SIMD paths' variant
 * is further down. */
#define FD_EXP_F32_FLOOR (-110.0f)
#define FD_EXP_F32_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define FD_EXP_F32_LOG2E 1.44269504088896341f
#define FD_EXP_F32_LN2_HI 0.693359375f
#define FD_EXP_F32_LN2_LO (-2.12194440e-4f)
#define FD_EXP_F32_BIAS 64 /* 2^k = 2^(k + 64) * 2^-64, k + 64 + 127 a normal exponent */
#define FD_EXP_F64_FLOOR (-760.0)
#define FD_EXP_F64_MAGIC 6755399441055744.0 /* 1.5 * 2^52 */
#define FD_EXP_F64_LOG2E 1.4426950408889634
#define FD_EXP_F64_LN2_HI 0.6931467056274414 /* 21 significant bits */
#define FD_EXP_F64_LN2_LO 4.7493250390316726e-07
#define FD_EXP_F64_BIAS 512

/* 1/k!, k = 7 .. 0 (float) and 13 .. 0 (double): the Horner order. */
static const float fd_exp_f32_taylor[8] = {
    (float)(1.0 / 5040), (float)(1.0 / 720), (float)(1.0 / 120), (float)(1.0 / 24),
    (float)(1.0 / 6), 0.5f, 1.0f, 1.0f};
static const double fd_exp_f64_taylor[14] = {
    1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
    1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
    1.0 / 6.0, 0.5, 1.0, 1.0};

/* The SIMD paths' float polynomial: degree 6, minimax in relative error on |r| <= ln2 / 2
 * (under 0.04 ulp before rounding), in Horner order; each step a fused multiply-add. */
static const float fd_exp_f32_minimax[7] = {
    0x1.6ab928p-10f, 0x1.126d64p-7f, 0x1.55589cp-5f, 0x1.55540ap-3f, 0x1.fffffap-2f, 1.0f, 1.0f};
#define fd_exp_f64_minimax fd_exp_f64_taylor /* double keeps the Taylor terms */

static const float fd_exp_f32_unbias = 1.0f / 18446744073709551616.0f; /* 2^-64 */
static const double fd_exp_f64_unbias = 0x1p-512;

/* fd_exp_<C>: K the constants' prefix, TERMS the polynomial's, ONE the exponent bias and
 * SHIFT the significand's width, UINT and INT the same-sized integers. */
#define FD_DEFINE_EXP(C, CT, K, TERMS, ONE, SHIFT, UINT, INT)                                \
    static inline CT fd_exp_##C(CT x)                                                       \
    {                                                                                       \
        if (x < FD_EXP_##K##_FLOOR)                                                         \
            x = FD_EXP_##K##_FLOOR;                                                         \
        const CT t = x * FD_EXP_##K##_LOG2E + FD_EXP_##K##_MAGIC;                           \
        const CT k = t - FD_EXP_##K##_MAGIC;                                                \
        const CT r = (x - k * FD_EXP_##K##_LN2_HI) - k * FD_EXP_##K##_LN2_LO;               \
        CT p = fd_exp_##C##_taylor[0];                                                      \
        for (int i = 1; i < TERMS; ++i)                                                     \
            p = p * r + fd_exp_##C##_taylor[i];                                             \
        fd_##C##_bits magic = {FD_EXP_##K##_MAGIC}, rounded = {t}, power;                   \
        power.bits = (UINT)((INT)(rounded.bits - magic.bits) + FD_EXP_##K##_BIAS + ONE) << SHIFT; \
        return p * power.value * fd_exp_##C##_unbias;                                       \
    }

FD_DEFINE_EXP(f32, float, F32, 8, 127, 23, uint32_t, int32_t)
FD_DEFINE_EXP(f64, double, F64, 14, 1023, 52, uint64_t, int64_t)

/* ---------------------------------------------------------------- element types
 *
 * Per element type: its compute type, widening (exact) and narrowing (to nearest even). */
#define FD_COMPUTE_f64 double
#define FD_COMPUTE_f32 float
#define FD_COMPUTE_f16 float
#define FD_COMPUTE_bf16 float
/* FD_PASTE(name_, FD_CTYPE_<T>): the compute type's function of that name. */
#define FD_PASTE(a, b) FD_PASTE_(a, b)
#define FD_PASTE_(a, b) a##b
#define FD_CTYPE_f64 f64
#define FD_CTYPE_f32 f32
#define FD_CTYPE_f16 f32
#define FD_CTYPE_bf16 f32
static inline double fd_widen_f64(double value) { return value; }
static inline float fd_widen_f32(float value) { return value; }
static inline float fd_widen_f16(uint16_t value) { return fd_half_to_float(value); }
static inline float fd_widen_bf16(fd_bfloat16 value) { return fd_bfloat16_to_float(value); }
static inline double fd_narrow_f64(double value) { return value; }
static inline float fd_narrow_f32(float value) { return value; }
static inline uint16_t fd_narrow_f16(float value) { return fd_float_to_half(value); }
static inline fd_bfloat16 fd_narrow_bf16(float value) { return fd_float_to_bfloat16(value); }

/* The keep bit of call element q (words: the call's local words). */
static inline uint32_t fd_keep_lane(const uint64_t *words, int64_t q)
{
    return (uint32_t)0 - (uint32_t)((words[q >> 6] >> (q & 63)) & 1);
}

/* `count` (<= 57) keep bits of call elements q .. q + count - 1, element q in bit 0. */
static inline uint64_t fd_keep_bits(const uint64_t *words, int64_t q, int count)
{
    const int64_t word = q >> 6;
    const int shift = (int)(q & 63);
    uint64_t bits = words[word] >> shift;
    if (shift > 64 - count)
        bits |= words[word + 1] << (64 - shift);
    return bits;
}

/* ---------------------------------------------------------------- row passes, portable
 *
 * Three passes over a row held contiguous in the compute type: the maximum, the
 * exponentials (into e, which may be the values) with their lane sums, and the output.
 * `lane` is the lane of element 0 (blocks of a long row start at multiples of 16). */
#define FD_DEFINE_ROW_PASSES(C, CT)                                                          \
    static inline CT fd_row_max_##C##_portable(const CT *values, int64_t count, CT max)      \
    {                                                                                       \
        for (int64_t j = 0; j < count; ++j)                                                 \
            max = values[j] > max ? values[j] : max;                                        \
        return max;                                                                         \
    }                                                                                       \
    static inline void fd_row_exp_##C##_portable(const CT *values, CT *e, int64_t count,     \
                                                 CT max, CT sums[FD_SOFTMAX_LANES])         \
    {                                                                                       \
        int64_t j = 0;                                                                      \
        for (; j + FD_SOFTMAX_LANES <= count; j += FD_SOFTMAX_LANES) /* lanes apart: vectors */ \
            for (int lane = 0; lane < FD_SOFTMAX_LANES; ++lane) {                           \
                e[j + lane] = fd_exp_##C(values[j + lane] - max);                           \
                sums[lane] += e[j + lane];                                                  \
            }                                                                               \
        for (; j < count; ++j) {                                                            \
            e[j] = fd_exp_##C(values[j] - max);                                             \
            sums[j & (FD_SOFTMAX_LANES - 1)] += e[j];                                       \
        }                                                                                   \
    }                                                                                       \
    /* The lanes added pairwise: k + 8, k + 4, k + 2, k + 1. */                            \
    static inline CT fd_lane_total_##C(const CT sums[FD_SOFTMAX_LANES])                      \
    {                                                                                       \
        CT tree[FD_SOFTMAX_LANES];                                                          \
        for (int k = 0; k < FD_SOFTMAX_LANES; ++k)                                          \
            tree[k] = sums[k];                                                              \
        for (int width = FD_SOFTMAX_LANES / 2; width > 0; width /= 2)                       \
            for (int k = 0; k < width; ++k)                                                 \
                tree[k] = tree[k] + tree[k + width];                                        \
        return tree[0];                                                                     \
    }

FD_DEFINE_ROW_PASSES(f32, float)
FD_DEFINE_ROW_PASSES(f64, double)

/* s = e * r rounded to the element type; y = its dropout (or s where words is NULL). */
#define FD_DEFINE_ROW_OUTPUT(SUFFIX, T, SCALE_T)                                            \
    static inline void fd_row_output_##SUFFIX##_portable(                                   \
        const FD_COMPUTE_##SUFFIX *e, FD_COMPUTE_##SUFFIX r, int64_t count, T *target,      \
        T *softmax_out, int64_t step, const uint64_t *words, int64_t q, SCALE_T scale)      \
    {                                                                                       \
        for (int64_t j = 0; j < count; ++j, q += step) {                                   \
            const T s = fd_narrow_##SUFFIX(e[j] * r);                                       \
            if (softmax_out)                                                                \
                softmax_out[j * step] = s;                                                  \
            target[j * step] = words ? fd_keep_##SUFFIX(s, scale, fd_keep_lane(words, q)) : s; \
        }                                                                                   \
    }

/* ---------------------------------------------------------------- row passes, SIMD
 *
 * The same passes on vectors of WIDTH lanes, 16 elements a step (the 16 lane sums in one
 * AVX-512 float vector, two AVX2 ones, two or four double ones). The exponential: the same
 * reduction with fused multiply-adds, a degree-6 minimax polynomial in float (the Taylor
 * one in double), and 2^k applied by vscalef on AVX-512 (one rounding, subnormals too);
 * on AVX2 by the exponent field, the biased form only where a lane's x is below the normal
 * range. Within 1.05 ulp of e^x for every float in [-104, 0]. A row's last count mod 16
 * elements go through it as one more step padded with -inf (whose e^x is +0, which leaves
 * a lane sum as it is). */
#if FD_HAVE_AVX2_PATH
#define FD_TARGET_SOFTMAX_512 FD_TARGET("avx2,fma,avx512f")
#define FD_TARGET_SOFTMAX_256 FD_TARGET("avx2,fma")
/* Below these, e^x may be below the normal range (2^k not a normal number). */
#define FD_EXP_F32_NORMAL (-87.0f)
#define FD_EXP_F64_NORMAL (-708.0)

/* The reduction and polynomial of fd_exp_<C> on a vector, with fused multiply-adds: t
 * (k + magic, k in its low significand bits) into *t. */
#define FD_DEFINE_VEC_EXP_POLYNOMIAL(C, ATTRIBUTES, W, P, VEC, K, TERMS)                    \
    ATTRIBUTES static inline VEC fd_exp_polynomial_##C##_##W(VEC x, VEC *t)                 \
    {                                                                                       \
        const VEC magic = _mm##W##_set1_##P(FD_EXP_##K##_MAGIC);                            \
        *t = _mm##W##_fmadd_##P(x, _mm##W##_set1_##P(FD_EXP_##K##_LOG2E), magic);           \
        const VEC k = _mm##W##_sub_##P(*t, magic);                                          \
        const VEC r = _mm##W##_fnmadd_##P(                                                  \
            k, _mm##W##_set1_##P(FD_EXP_##K##_LN2_LO),                                      \
            _mm##W##_fnmadd_##P(k, _mm##W##_set1_##P(FD_EXP_##K##_LN2_HI), x));             \
        VEC p = _mm##W##_set1_##P(fd_exp_##C##_minimax[0]);                                 \
        for (int i = 1; i < TERMS; ++i)                                                     \
            p = _mm##W##_fmadd_##P(p, r, _mm##W##_set1_##P(fd_exp_##C##_minimax[i]));       \
        return p;                                                                           \
    }

/* AVX-512: p * 2^k by vscalef, which rounds a subnormal result once. */
#define FD_DEFINE_VEC_EXP_512(C, P, VEC, K, TERMS)                                          \
    FD_DEFINE_VEC_EXP_POLYNOMIAL(C, FD_TARGET_SOFTMAX_512, 512, P, VEC, K, TERMS)           \
    FD_TARGET_SOFTMAX_512 static inline VEC fd_exp_##C##_512(VEC x)                         \
    {                                                                                       \
        VEC t;                                                                              \
        x = _mm512_max_##P(_mm512_set1_##P(FD_EXP_##K##_FLOOR), x); /* NaN stays */          \
        const VEC p = fd_exp_polynomial_##C##_512(x, &t);                                   \
        return _mm512_scalef_##P(p, _mm512_sub_##P(t, _mm512_set1_##P(FD_EXP_##K##_MAGIC))); \
    }

/* AVX2: p * 2^k with 2^k built in the exponent field; where a lane's x is below the
 * normal range, as 2^(k + bias) * 2^-bias (one rounding of a subnormal result, the same
 * value where 2^k is normal). IVEC, EPI, SET1I: the integer lanes; ONE the exponent bias,
 * SHIFT the significand's width. */
#define FD_DEFINE_VEC_EXP_256(C, P, VEC, IVEC, EPI, SET1I, K, TERMS, ONE, SHIFT)             \
    FD_DEFINE_VEC_EXP_POLYNOMIAL(C, FD_TARGET_SOFTMAX_256, 256, P, VEC, K, TERMS)           \
    FD_TARGET_SOFTMAX_256 static inline VEC fd_exp_##C##_256(VEC x)                         \
    {                                                                                       \
        VEC t;                                                                              \
        x = _mm256_max_##P(_mm256_set1_##P(FD_EXP_##K##_FLOOR), x); /* NaN stays */          \
        const int low = _mm256_movemask_##P(                                                \
            _mm256_cmp_##P(x, _mm256_set1_##P(FD_EXP_##K##_NORMAL), _CMP_LT_OQ));           \
        const VEC p = fd_exp_polynomial_##C##_256(x, &t);                                   \
        const IVEC exponent = _mm256_sub_##EPI(                                             \
            _mm256_cast##P##_si256(t),                                                      \
            _mm256_cast##P##_si256(_mm256_set1_##P(FD_EXP_##K##_MAGIC)));                   \
        if (!low)                                                                           \
            return _mm256_mul_##P(p, _mm256_castsi256_##P(_mm256_slli_##EPI(                \
                                         _mm256_add_##EPI(exponent, SET1I(ONE)), SHIFT)));  \
        const IVEC power = _mm256_slli_##EPI(                                               \
            _mm256_add_##EPI(exponent, SET1I(FD_EXP_##K##_BIAS + ONE)), SHIFT);             \
        return _mm256_mul_##P(_mm256_mul_##P(p, _mm256_castsi256_##P(power)),               \
                              _mm256_set1_##P(fd_exp_##C##_unbias));                        \
    }

FD_DEFINE_VEC_EXP_512(f32, ps, __m512, F32, 7)
FD_DEFINE_VEC_EXP_512(f64, pd, __m512d, F64, 14)
FD_DEFINE_VEC_EXP_256(f32, ps, __m256, __m256i, epi32, _mm256_set1_epi32, F32, 7, 127, 23)
FD_DEFINE_VEC_EXP_256(f64, pd, __m256d, __m256i, epi64, _mm256_set1_epi64x, F64, 14, 1023, 52)

/* The largest lane (none is NaN: the max pass keeps its running maximum). */
FD_TARGET_SOFTMAX_512 static inline float fd_lane_max_f32_512(__m512 v)
{
    return _mm512_reduce_max_ps(v);
}
FD_TARGET_SOFTMAX_512 static inline double fd_lane_max_f64_512(__m512d v)
{
    return _mm512_reduce_max_pd(v);
}
FD_TARGET_SOFTMAX_256 static inline float fd_lane_max_f32_256(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
FD_TARGET_SOFTMAX_256 static inline double fd_lane_max_f64_256(__m256d v)
{
    const __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
}

/* fd_lane_total_<C>'s order (k + 8, k + 4, k + 2, k + 1) by shuffles: the same bits. */
FD_TARGET_SOFTMAX_256 static inline float fd_lane_total_f32_vec(const float sums[FD_SOFTMAX_LANES])
{
    const __m256 half = _mm256_add_ps(_mm256_loadu_ps(sums), _mm256_loadu_ps(sums + 8));
    __m128 quarter = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    quarter = _mm_add_ps(quarter, _mm_movehl_ps(quarter, quarter));
    return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
}
FD_TARGET_SOFTMAX_256 static inline double fd_lane_total_f64_vec(
    const double sums[FD_SOFTMAX_LANES])
{
    const __m256d low = _mm256_add_pd(_mm256_loadu_pd(sums), _mm256_loadu_pd(sums + 8));
    const __m256d high = _mm256_add_pd(_mm256_loadu_pd(sums + 4), _mm256_loadu_pd(sums + 12));
    const __m256d quarter = _mm256_add_pd(low, high);
    const __m128d eighth = _mm_add_pd(_mm256_castpd256_pd128(quarter),
                                      _mm256_extractf128_pd(quarter, 1));
    return _mm_cvtsd_f64(_mm_add_sd(eighth, _mm_unpackhi_pd(eighth, eighth)));
}

/* product where the keep bits (bit j: lane j) are set, +0.0 elsewhere: fd_keep_<C>'s bits. */
FD_TARGET_SOFTMAX_512 static inline __m512 fd_keep_f32_512(__m512 product, uint64_t bits)
{
    return _mm512_maskz_mov_ps((__mmask16)bits, product);
}
FD_TARGET_SOFTMAX_512 static inline __m512d fd_keep_f64_512(__m512d product, uint64_t bits)
{
    return _mm512_maskz_mov_pd((__mmask8)bits, product);
}
FD_TARGET_SOFTMAX_256 static inline __m256 fd_keep_f32_256(__m256 product, uint64_t bits)
{
    const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i kept = _mm256_cmpeq_epi32(
        _mm256_and_si256(_mm256_set1_epi32((int)bits), lane_bits), lane_bits);
    return _mm256_and_ps(product, _mm256_castsi256_ps(kept));
}
FD_TARGET_SOFTMAX_256 static inline __m256d fd_keep_f64_256(__m256d product, uint64_t bits)
{
    const __m256i lane_bits = _mm256_setr_epi64x(1, 2, 4, 8);
    const __m256i kept = _mm256_cmpeq_epi64(
        _mm256_and_si256(_mm256_set1_epi64x((long long)bits), lane_bits), lane_bits);
    return _mm256_and_pd(product, _mm256_castsi256_pd(kept));
}

/* The passes of compute type C on W-bit vectors of WIDTH lanes (VARIANT _avx512, _avx2). */
#define FD_DEFINE_VEC_PASSES(C, CT, VARIANT, ATTRIBUTES, W, P, VEC, WIDTH)                   \
    ATTRIBUTES static inline CT fd_row_max_##C##VARIANT(const CT *values, int64_t count, CT max) \
    {                                                                                       \
        int64_t j = 0;                                                                      \
        if (count >= WIDTH) {                                                               \
            VEC best = _mm##W##_set1_##P(max);                                              \
            for (; j + WIDTH <= count; j += WIDTH)                                          \
                best = _mm##W##_max_##P(_mm##W##_loadu_##P(values + j), best);              \
            max = fd_lane_max_##C##_##W(best);                                              \
        }                                                                                   \
        return fd_row_max_##C##_portable(values + j, count - j, max);                       \
    }                                                                                       \
    ATTRIBUTES static inline void fd_row_exp_##C##VARIANT(const CT *values, CT *e, int64_t count, \
                                                          CT max, CT sums[FD_SOFTMAX_LANES]) \
    {                                                                                       \
        enum { VECTORS = FD_SOFTMAX_LANES / WIDTH };                                        \
        const VEC m = _mm##W##_set1_##P(max);                                               \
        VEC acc[VECTORS];                                                                   \
        int64_t j = 0;                                                                      \
        for (int v = 0; v < VECTORS; ++v)                                                   \
            acc[v] = _mm##W##_loadu_##P(sums + v * WIDTH);                                  \
        for (; j + FD_SOFTMAX_LANES <= count; j += FD_SOFTMAX_LANES)                        \
            for (int v = 0; v < VECTORS; ++v) {                                             \
                const VEC exp = fd_exp_##C##_##W(                                           \
                    _mm##W##_sub_##P(_mm##W##_loadu_##P(values + j + v * WIDTH), m));       \
                _mm##W##_storeu_##P(e + j + v * WIDTH, exp);                                \
                acc[v] = _mm##W##_add_##P(acc[v], exp);                                     \
            }                                                                               \
        if (j < count) { /* the tail, padded with -inf */                                   \
            CT padded[FD_SOFTMAX_LANES];                                                    \
            for (int i = 0; i < FD_SOFTMAX_LANES; ++i)                                      \
                padded[i] = j + i < count ? values[j + i] : (CT)-INFINITY;                  \
            for (int v = 0; v < VECTORS; ++v) {                                             \
                const VEC exp = fd_exp_##C##_##W(                                           \
                    _mm##W##_sub_##P(_mm##W##_loadu_##P(padded + v * WIDTH), m));           \
                _mm##W##_storeu_##P(padded + v * WIDTH, exp);                               \
                acc[v] = _mm##W##_add_##P(acc[v], exp);                                     \
            }                                                                               \
            for (int i = 0; j + i < count; ++i)                                             \
                e[j + i] = padded[i];                                                       \
        }                                                                                   \
        for (int v = 0; v < VECTORS; ++v)                                                   \
            _mm##W##_storeu_##P(sums + v * WIDTH, acc[v]);                                  \
    }                                                                                       \
    ATTRIBUTES static inline void fd_row_output_##C##VARIANT(                               \
        const CT *e, CT r, int64_t count, CT *target, CT *softmax_out, int64_t step,        \
        const uint64_t *words, int64_t q, CT scale)                                         \
    {                                                                                       \
        int64_t j = 0;                                                                      \
        if (step == 1) {                                                                    \
            const VEC reciprocal = _mm##W##_set1_##P(r), factor = _mm##W##_set1_##P(scale); \
            for (; j + WIDTH <= count; j += WIDTH) {                                        \
                const VEC s = _mm##W##_mul_##P(_mm##W##_loadu_##P(e + j), reciprocal);      \
                if (softmax_out)                                                            \
                    _mm##W##_storeu_##P(softmax_out + j, s);                                \
                _mm##W##_storeu_##P(target + j,                                             \
                                    words ? fd_keep_##C##_##W(_mm##W##_mul_##P(s, factor),  \
                                                              fd_keep_bits(words, q + j, WIDTH)) \
                                          : s);                                             \
            }                                                                               \
        }                                                                                   \
        fd_row_output_##C##_portable(e + j, r, count - j, target + j * step,                \
                                     softmax_out ? softmax_out + j * step : NULL, step, words, \
                                     q + j * step, scale);                                  \
    }                                                                                       \
    /* backward: D's lane sums of g' * s, g' = dropout_backward(grad) (or grad) */          \
    ATTRIBUTES static inline void fd_row_dot_##C##VARIANT(                                  \
        const CT *grad, const CT *softmax, int64_t count, int64_t step, const uint64_t *words, \
        int64_t q, CT scale, CT sums[FD_SOFTMAX_LANES])                                     \
    {                                                                                       \
        enum { VECTORS = FD_SOFTMAX_LANES / WIDTH };                                        \
        const VEC factor = _mm##W##_set1_##P(scale);                                        \
        VEC acc[VECTORS];                                                                   \
        int64_t j = 0;                                                                      \
        if (step != 1) {                                                                    \
            fd_row_dot_##C##_portable(grad, softmax, count, step, words, q, scale, sums);   \
            return;                                                                         \
        }                                                                                   \
        for (int v = 0; v < VECTORS; ++v)                                                   \
            acc[v] = _mm##W##_loadu_##P(sums + v * WIDTH);                                  \
        for (; j + FD_SOFTMAX_LANES <= count; j += FD_SOFTMAX_LANES)                        \
            for (int v = 0; v < VECTORS; ++v) {                                             \
                const int64_t at = j + v * WIDTH;                                           \
                VEC g = _mm##W##_loadu_##P(grad + at);                                      \
                if (words)                                                                  \
                    g = fd_keep_##C##_##W(_mm##W##_mul_##P(g, factor),                      \
                                          fd_keep_bits(words, q + at, WIDTH));              \
                acc[v] = _mm##W##_add_##P(acc[v],                                           \
                                          _mm##W##_mul_##P(g, _mm##W##_loadu_##P(softmax + at))); \
            }                                                                               \
        for (int v = 0; v < VECTORS; ++v)                                                   \
            _mm##W##_storeu_##P(sums + v * WIDTH, acc[v]);                                  \
        fd_row_dot_##C##_portable(grad + j, softmax + j, count - j, 1, words, q + j, scale, \
                                  sums);                                                    \
    }                                                                                       \
    ATTRIBUTES static inline void fd_row_gradient_##C##VARIANT(                             \
        const CT *grad, const CT *softmax, CT *target, int64_t count, int64_t step,         \
        const uint64_t *words, int64_t q, CT scale, CT dot)                                 \
    {                                                                                       \
        const VEC factor = _mm##W##_set1_##P(scale), d = _mm##W##_set1_##P(dot);            \
        int64_t j = 0;                                                                      \
        if (step != 1) {                                                                    \
            fd_row_gradient_##C##_portable(grad, softmax, target, count, step, words, q,    \
                                           scale, dot);                                     \
            return;                                                                         \
        }                                                                                   \
        for (; j + WIDTH <= count; j += WIDTH) {                                            \
            VEC g = _mm##W##_loadu_##P(grad + j);                                           \
            if (words)                                                                      \
                g = fd_keep_##C##_##W(_mm##W##_mul_##P(g, factor),                          \
                                      fd_keep_bits(words, q + j, WIDTH));                   \
            _mm##W##_storeu_##P(target + j, _mm##W##_mul_##P(_mm##W##_loadu_##P(softmax + j), \
                                                             _mm##W##_sub_##P(g, d)));      \
        }                                                                                   \
        fd_row_gradient_##C##_portable(grad + j, softmax + j, target + j, count - j, 1, words, \
                                       q + j, scale, dot);                                  \
    }
#endif

/* ---------------------------------------------------------------- backward, portable
 *
 * g'_j = dropout_backward(grad)_j (rounded to the element type) or grad_j; D = lane sum
 * of g'_j * s_j in the compute type; dx_j = s_j * (g'_j - D), each step rounded to the
 * compute type, then dx_j to the element type. */
#define FD_DEFINE_ROW_BACKWARD(SUFFIX, T, SCALE_T)                                          \
    static inline FD_COMPUTE_##SUFFIX fd_gradient_at_##SUFFIX(T grad, const uint64_t *words, \
                                                              int64_t q, SCALE_T scale)     \
    {                                                                                       \
        return fd_widen_##SUFFIX(words ? fd_keep_##SUFFIX(grad, scale, fd_keep_lane(words, q)) \
                                       : grad);                                             \
    }                                                                                       \
    static inline void fd_row_dot_##SUFFIX##_portable(                                      \
        const T *grad, const T *softmax, int64_t count, int64_t step, const uint64_t *words, \
        int64_t q, SCALE_T scale, FD_COMPUTE_##SUFFIX sums[FD_SOFTMAX_LANES])               \
    {                                                                                       \
        for (int64_t j = 0; j < count; ++j)                                                 \
            sums[j & (FD_SOFTMAX_LANES - 1)] +=                                             \
                fd_gradient_at_##SUFFIX(grad[j * step], words, q + j * step, scale) *       \
                fd_widen_##SUFFIX(softmax[j * step]);                                       \
    }                                                                                       \
    static inline void fd_row_gradient_##SUFFIX##_portable(                                 \
        const T *grad, const T *softmax, T *target, int64_t count, int64_t step,            \
        const uint64_t *words, int64_t q, SCALE_T scale, FD_COMPUTE_##SUFFIX dot)           \
    {                                                                                       \
        for (int64_t j = 0; j < count; ++j) {                                               \
            const FD_COMPUTE_##SUFFIX g =                                                   \
                fd_gradient_at_##SUFFIX(grad[j * step], words, q + j * step, scale);        \
            target[j * step] = fd_narrow_##SUFFIX(fd_widen_##SUFFIX(softmax[j * step]) * (g - dot)); \
        }                                                                                   \
    }

/* The portable passes that read or write elements, per element type. */
#define FD_DEFINE_ROW_ELEMENTS(SUFFIX, T, SCALE_T)                                          \
    FD_DEFINE_ROW_OUTPUT(SUFFIX, T, SCALE_T)                                                \
    FD_DEFINE_ROW_BACKWARD(SUFFIX, T, SCALE_T)

FD_DEFINE_ROW_ELEMENTS(f64, double, double)
FD_DEFINE_ROW_ELEMENTS(f32, float, float)
FD_DEFINE_ROW_ELEMENTS(f16, uint16_t, float)
FD_DEFINE_ROW_ELEMENTS(bf16, fd_bfloat16, float)

#if FD_HAVE_AVX2_PATH
FD_DEFINE_VEC_PASSES(f32, float, _avx512, FD_TARGET_SOFTMAX_512, 512, ps, __m512, 16)
FD_DEFINE_VEC_PASSES(f64, double, _avx512, FD_TARGET_SOFTMAX_512, 512, pd, __m512d, 8)
FD_DEFINE_VEC_PASSES(f32, float, _avx2, FD_TARGET_SOFTMAX_256, 256, ps, __m256, 8)
FD_DEFINE_VEC_PASSES(f64, double, _avx2, FD_TARGET_SOFTMAX_256, 256, pd, __m256d, 4)
#endif

/* The level the softmax kernels take: 2 AVX-512F, 1 AVX2, 0 portable; both SIMD levels
 * with FMA (fd_set_simd caps the level). The backward's bits are the same on every level. */
#if FD_HAVE_AVX2_PATH
static inline int fd_softmax_level(void)
{
    const int level = fd_simd_enabled();
    if (level == 0 || !FD_CPU_SUPPORTS("fma"))
        return 0;
    return level >= 2 ? 2 : 1;
}
/* NAME##_avx512, _avx2 or _portable, by fd_softmax_level. */
#define FD_SOFTMAX_DISPATCH(NAME, ARGS)                                                     \
    {                                                                                       \
        const int level = fd_softmax_level();                                               \
        if (level == 2) {                                                                   \
            FD_PATH_TAKEN("softmax avx512");                                                \
            NAME##_avx512 ARGS;                                                             \
        } else if (level == 1) {                                                            \
            FD_PATH_TAKEN("softmax avx2");                                                  \
            NAME##_avx2 ARGS;                                                               \
        } else {                                                                            \
            NAME##_portable ARGS;                                                           \
        }                                                                                   \
    }
#define fd_lane_total_f32_avx512 fd_lane_total_f32_vec
#define fd_lane_total_f32_avx2 fd_lane_total_f32_vec
#define fd_lane_total_f64_avx512 fd_lane_total_f64_vec
#define fd_lane_total_f64_avx2 fd_lane_total_f64_vec
#else
#define FD_SOFTMAX_DISPATCH(NAME, ARGS) NAME##_portable ARGS;
#endif
#define fd_lane_total_f32_portable fd_lane_total_f32
#define fd_lane_total_f64_portable fd_lane_total_f64

/* ---------------------------------------------------------------- rows and units */

/* A pass of the compute type of element type SUFFIX on a level (VARIANT _avx512, _avx2,
 * _portable): FD_PASS(fd_row_max_, f16, _avx2) is fd_row_max_f32_avx2. */
#define FD_PASS(NAME, SUFFIX, VARIANT) FD_PASTE(FD_PASTE(NAME, FD_CTYPE_##SUFFIX), VARIANT)
/* The output pass of an element type on a level: vectors for float32 and float64. */
#define FD_ROW_OUTPUT_f64(VARIANT) fd_row_output_f64##VARIANT
#define FD_ROW_OUTPUT_f32(VARIANT) fd_row_output_f32##VARIANT
#define FD_ROW_OUTPUT_f16(VARIANT) fd_row_output_f16_portable
#define FD_ROW_OUTPUT_bf16(VARIANT) fd_row_output_bf16_portable
#define FD_ROW_DOT_f64(VARIANT) fd_row_dot_f64##VARIANT
#define FD_ROW_DOT_f32(VARIANT) fd_row_dot_f32##VARIANT
#define FD_ROW_DOT_f16(VARIANT) fd_row_dot_f16_portable
#define FD_ROW_DOT_bf16(VARIANT) fd_row_dot_bf16_portable
#define FD_ROW_GRADIENT_f64(VARIANT) fd_row_gradient_f64##VARIANT
#define FD_ROW_GRADIENT_f32(VARIANT) fd_row_gradient_f32##VARIANT
#define FD_ROW_GRADIENT_f16(VARIANT) fd_row_gradient_f16_portable
#define FD_ROW_GRADIENT_bf16(VARIANT) fd_row_gradient_bf16_portable
/* Whether the elements are the compute type (a contiguous row is read in place). */
#define FD_SAME_TYPE_f64 1
#define FD_SAME_TYPE_f32 1
#define FD_SAME_TYPE_f16 0
#define FD_SAME_TYPE_bf16 0

/* count elements of a row from element `at` (stride apart), in the compute type. */
#define FD_DEFINE_ROW_BLOCK(SUFFIX, T)                                                      \
    static inline const FD_COMPUTE_##SUFFIX *fd_row_block_##SUFFIX(                         \
        const T *source, int64_t stride, int64_t at, int64_t count,                         \
        FD_COMPUTE_##SUFFIX *buffer)                                                        \
    {                                                                                       \
        if (FD_SAME_TYPE_##SUFFIX && stride == 1)                                           \
            return (const FD_COMPUTE_##SUFFIX *)(const void *)(source + at);                \
        for (int64_t j = 0; j < count; ++j)                                                 \
            buffer[j] = fd_widen_##SUFFIX(source[(at + j) * stride]);                       \
        return buffer;                                                                      \
    }

/* The rows of units [first, stop) on one level, its passes inlined into one loop. */
#define FD_DEFINE_SOFTMAX_ROWS(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                     \
    ATTRIBUTES static void fd_softmax_rows_##SUFFIX##VARIANT(                               \
        const T *source, const fd_softmax_layout *layout, T *target, T *softmax_out,        \
        const uint64_t *words, SCALE_T scale, int64_t first, int64_t stop,                  \
        FD_COMPUTE_##SUFFIX *buffer)                                                        \
    {                                                                                       \
        typedef FD_COMPUTE_##SUFFIX compute_t;                                              \
        const int64_t length = layout->length, inner = layout->inner, unit = length * inner; \
        const int64_t stride = layout->length_stride;                                       \
        const int whole = length <= FD_SOFTMAX_BLOCK; /* the exponentials stay in buffer */ \
        for (int64_t i = first; i < stop; ++i)                                              \
            for (int64_t k = 0; k < inner; ++k) {                                           \
                const T *row = source + i * layout->outer_stride + k * layout->inner_stride; \
                const int64_t q = i * unit + k;                                             \
                compute_t sums[FD_SOFTMAX_LANES] = {0}, unused[FD_SOFTMAX_LANES];           \
                compute_t max = -INFINITY;                                                  \
                const compute_t *values = NULL;                                             \
                for (int64_t at = 0; at < length; at += FD_SOFTMAX_BLOCK) {                 \
                    const int64_t count = length - at < FD_SOFTMAX_BLOCK ? length - at      \
                                                                         : FD_SOFTMAX_BLOCK; \
                    values = fd_row_block_##SUFFIX(row, stride, at, count, buffer);         \
                    max = FD_PASS(fd_row_max_, SUFFIX, VARIANT)(values, count, max);        \
                }                                                                           \
                for (int64_t at = 0; at < length; at += FD_SOFTMAX_BLOCK) {                 \
                    const int64_t count = length - at < FD_SOFTMAX_BLOCK ? length - at      \
                                                                         : FD_SOFTMAX_BLOCK; \
                    if (!whole)                                                             \
                        values = fd_row_block_##SUFFIX(row, stride, at, count, buffer);     \
                    FD_PASS(fd_row_exp_, SUFFIX, VARIANT)(values, buffer, count, max, sums); \
                }                                                                           \
                const compute_t reciprocal =                                                \
                    (compute_t)1 / FD_PASS(fd_lane_total_, SUFFIX, VARIANT)(sums);          \
                for (int64_t at = 0; at < length; at += FD_SOFTMAX_BLOCK) {                 \
                    const int64_t count = length - at < FD_SOFTMAX_BLOCK ? length - at      \
                                                                         : FD_SOFTMAX_BLOCK; \
                    if (!whole) /* the same exponentials again */                           \
                        FD_PASS(fd_row_exp_, SUFFIX, VARIANT)(                              \
                            fd_row_block_##SUFFIX(row, stride, at, count, buffer), buffer,  \
                            count, max, unused);                                            \
                    FD_ROW_OUTPUT_##SUFFIX(VARIANT)(                                        \
                        buffer, reciprocal, count, target + q + at * inner,                 \
                        softmax_out ? softmax_out + q + at * inner : NULL, inner, words,    \
                        q + at * inner, scale);                                             \
                }                                                                           \
            }                                                                               \
    }                                                                                       \
    /* The backward of units [first, stop) on one level. */                                 \
    ATTRIBUTES static void fd_softmax_backward_rows_##SUFFIX##VARIANT(                      \
        const T *grad, const T *softmax, T *target, const uint64_t *words, SCALE_T scale,   \
        const fd_softmax_layout *layout, int64_t first, int64_t stop)                       \
    {                                                                                       \
        const int64_t length = layout->length, inner = layout->inner, unit = length * inner; \
        for (int64_t i = first; i < stop; ++i)                                              \
            for (int64_t k = 0; k < inner; ++k) {                                           \
                const int64_t q = i * unit + k;                                             \
                FD_COMPUTE_##SUFFIX sums[FD_SOFTMAX_LANES] = {0};                           \
                FD_ROW_DOT_##SUFFIX(VARIANT)(grad + q, softmax + q, length, inner, words, q, \
                                             scale, sums);                                  \
                FD_ROW_GRADIENT_##SUFFIX(VARIANT)(grad + q, softmax + q, target + q, length, \
                                                  inner, words, q, scale,                   \
                                                  FD_PASS(fd_lane_total_, SUFFIX, VARIANT)(sums)); \
            }                                                                               \
    }

#if FD_HAVE_AVX2_PATH
#define FD_DEFINE_SIMD_SOFTMAX_ROWS(SUFFIX, T, SCALE_T)                                     \
    FD_DEFINE_SOFTMAX_ROWS(SUFFIX, T, SCALE_T, _avx512, FD_TARGET_SOFTMAX_512)              \
    FD_DEFINE_SOFTMAX_ROWS(SUFFIX, T, SCALE_T, _avx2, FD_TARGET_SOFTMAX_256)
#else
#define FD_DEFINE_SIMD_SOFTMAX_ROWS(SUFFIX, T, SCALE_T)
#endif

#define FD_DEFINE_SOFTMAX_KERNELS(SUFFIX, T, SCALE_T)                                       \
    FD_DEFINE_ROW_BLOCK(SUFFIX, T)                                                          \
    FD_DEFINE_SOFTMAX_ROWS(SUFFIX, T, SCALE_T, _portable, )                                 \
    FD_DEFINE_SIMD_SOFTMAX_ROWS(SUFFIX, T, SCALE_T)                                         \
    static inline void fd_softmax_dropout_units_##SUFFIX(                                   \
        const T *source, const fd_softmax_layout *layout, T *target, T *softmax_out,        \
        uint64_t *words, SCALE_T scale, const fd_mask_params *params, int64_t first,        \
        int64_t stop)                                                                       \
    {                                                                                       \
        /* the row's exponentials, and room for a padded tail */                           \
        FD_COMPUTE_##SUFFIX buffer[FD_SOFTMAX_BLOCK + FD_SOFTMAX_LANES];                    \
        const int64_t unit = layout->length * layout->inner;                                \
        if (unit == 0)                                                                      \
            return;                                                                         \
        const int64_t per_draw = FD_SOFTMAX_DRAW_ELEMENTS / unit > 1                        \
                                     ? FD_SOFTMAX_DRAW_ELEMENTS / unit : 1;                 \
        for (int64_t at = first; at < stop; at += per_draw) {                               \
            const int64_t until = stop - at < per_draw ? stop : at + per_draw;              \
            if (words) /* a word shared with the previous draw is drawn again, the same */  \
                fd_mask_words_range(words, params, (at * unit) >> 6, fd_words_for(until * unit)); \
            FD_SOFTMAX_DISPATCH(fd_softmax_rows_##SUFFIX, (source, layout, target, softmax_out, \
                                                          words, scale, at, until, buffer)) \
        }                                                                                   \
    }                                                                                       \
    static inline void fd_softmax_dropout_backward_units_##SUFFIX(                          \
        const T *grad, const T *softmax, T *target, const uint64_t *words, SCALE_T scale,   \
        const fd_softmax_layout *layout, int64_t first, int64_t stop)                       \
    {                                                                                       \
        FD_SOFTMAX_DISPATCH(fd_softmax_backward_rows_##SUFFIX,                              \
                            (grad, softmax, target, words, scale, layout, first, stop))     \
    }

FD_DEFINE_SOFTMAX_KERNELS(f64, double, double)
FD_DEFINE_SOFTMAX_KERNELS(f32, float, float)
FD_DEFINE_SOFTMAX_KERNELS(f16, uint16_t, float)
FD_DEFINE_SOFTMAX_KERNELS(bf16, fd_bfloat16, float)

#endif /* FASTDROP_SOFTMAX_H */
