/* Fused dropout kernels: residual + dropout(x) and residual + dropout(x + bias) in one pass.
 *
 * The mask is dropout's (fd_mask_words_range: the same keep bits for the same seed, stream,
 * p and offset) and the arithmetic is the unfused composition's, each step rounded to the
 * element type (docs/mask-stream.md, section 11):
 *
 *   h = x + bias[i mod features]   (only with a bias; rounded to the type)
 *   d = h * scale where kept, +0 where dropped   (fd_keep_<T>, section 6)
 *   y = residual + d               (rounded to the type)
 *
 * float16 and bfloat16 add in float32 and round once: float32 has more than 2q + 1 bits
 * for their q, so that equals rounding the exact sum once. No fused multiply-add can form: the product's bits pass through an AND
 * before the add, and fastdrop builds with -ffp-contract=off.
 *
 * For each element type (suffix f64, f32, f16, bf16):
 *
 *   fd_dropout_add_range_<T>(source, residual, bias, features, target, words, scale,
 *                            params, first, stop)
 *       local mask words [first, stop) of params' call: words[k] = keep bits unless
 *       words is NULL; target[i] = residual[i] + dropout(source[i] (+ bias)), bias NULL
 *       for none (features is then ignored; else the length of the last axis: element i
 *       reads bias[i mod features]). target may be residual (in place into the residual)
 *       or source; the three arrays otherwise must not overlap. Threads given whole word
 *       ranges never write one word or element together.
 */
#ifndef FASTDROP_FUSED_H
#define FASTDROP_FUSED_H

#include <stdint.h>

#include "dropout.h"

/* a + b rounded to the element type (float16, bfloat16: the float32 sum rounded once). */
static inline double fd_add_f64(double a, double b) { return a + b; }
static inline float fd_add_f32(float a, float b) { return a + b; }
static inline uint16_t fd_add_f16(uint16_t a, uint16_t b)
{
    return fd_float_to_half(fd_half_to_float(a) + fd_half_to_float(b));
}
static inline fd_bfloat16 fd_add_bf16(fd_bfloat16 a, fd_bfloat16 b)
{
    return fd_float_to_bfloat16(fd_bfloat16_to_float(a) + fd_bfloat16_to_float(b));
}

/* Mask words drawn ahead of their elements, a few at a time: short bursts of Philox
 * between the streams keep memory busy (1024 words at a time measured 1.26x the
 * three-stream floor at 2^24 float32, 16 words 1.13x). */
#ifndef FD_FUSED_CHUNK_WORDS
#define FD_FUSED_CHUNK_WORDS 16
#endif

/* One variant's kernels (portable, or AVX2 where the CPU has it: the same bits, as in
 * dropout.h). A full word whose bias entries are contiguous is a plain 64-element loop
 * the compiler vectorises; the elements are fetched FD_PREFETCH_WORDS words ahead. */
#define FD_DEFINE_FUSED_VARIANT(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, FILL_LANES)       \
    /* count (<= 64) elements of one word; column: the bias index of element 0 */          \
    ATTRIBUTES static inline void fd_dropout_add_word_##SUFFIX##VARIANT(                    \
        const T *source, const T *residual, const T *bias, int64_t features,                \
        int64_t column, T *target, int64_t count, uint64_t keep, SCALE_T scale)             \
    {                                                                                       \
        uint32_t lanes[64];                                                                 \
        FILL_LANES(lanes, keep)                                                             \
        if (bias == NULL && count == 64) {                                                  \
            for (int j = 0; j < 64; ++j)                                                    \
                target[j] = fd_add_##SUFFIX(residual[j],                                    \
                                            fd_keep_##SUFFIX(source[j], scale, lanes[j]));  \
            return;                                                                         \
        }                                                                                   \
        if (bias == NULL) {                                                                 \
            for (int64_t j = 0; j < count; ++j)                                             \
                target[j] = fd_add_##SUFFIX(residual[j],                                    \
                                            fd_keep_##SUFFIX(source[j], scale, lanes[j]));  \
            return;                                                                         \
        }                                                                                   \
        if (count == 64 && column + 64 <= features) { /* the word's bias entries in a row */ \
            const T *row = bias + column;                                                   \
            for (int j = 0; j < 64; ++j)                                                    \
                target[j] = fd_add_##SUFFIX(                                                \
                    residual[j],                                                            \
                    fd_keep_##SUFFIX(fd_add_##SUFFIX(source[j], row[j]), scale, lanes[j])); \
            return;                                                                         \
        }                                                                                   \
        for (int64_t j = 0; j < count; ++j) {                                               \
            const T shifted = fd_add_##SUFFIX(source[j], bias[column]);                     \
            target[j] = fd_add_##SUFFIX(residual[j], fd_keep_##SUFFIX(shifted, scale, lanes[j])); \
            if (++column == features)                                                       \
                column = 0;                                                                 \
        }                                                                                   \
    }                                                                                       \
    ATTRIBUTES static inline void fd_dropout_add_range_##SUFFIX##VARIANT(                   \
        const T *source, const T *residual, const T *bias, int64_t features, T *target,     \
        uint64_t *words, SCALE_T scale, const fd_mask_params *params, int64_t first,        \
        int64_t stop)                                                                       \
    {                                                                                       \
        uint64_t chunk[FD_FUSED_CHUNK_WORDS];                                               \
        const int64_t n = params->n;                                                        \
        for (int64_t at = first; at < stop; at += FD_FUSED_CHUNK_WORDS) {                   \
            const int64_t count = stop - at < FD_FUSED_CHUNK_WORDS ? stop - at              \
                                                                   : FD_FUSED_CHUNK_WORDS; \
            uint64_t *keep = words ? words + at : chunk;                                    \
            /* the chunk's words: those of the sub-array from element 64 at, drawn alone */ \
            fd_mask_params piece = *params;                                                 \
            piece.offset = params->offset + (uint64_t)(at * 64);                            \
            piece.n = n - at * 64 < count * 64 ? n - at * 64 : count * 64;                  \
            fd_mask_words_range(keep, &piece, 0, count);                                    \
            for (int64_t k = 0; k < count; ++k) {                                           \
                const int64_t start = (at + k) * 64;                                        \
                if ((at + k + FD_PREFETCH_WORDS) * 64 < n) { /* keep memory busy */         \
                    const int64_t ahead = start + 64 * FD_PREFETCH_WORDS;                   \
                    FD_PREFETCH_WORD(source + ahead, T)                                     \
                    FD_PREFETCH_WORD(residual + ahead, T)                                   \
                    if (target != residual && target != source)                             \
                        FD_PREFETCH_WORD(target + ahead, T)                                 \
                }                                                                           \
                fd_dropout_add_word_##SUFFIX##VARIANT(                                      \
                    source + start, residual + start, bias, features,                       \
                    bias ? start % features : 0, target + start,                            \
                    n - start < 64 ? n - start : 64, keep[k], scale);                       \
            }                                                                               \
        }                                                                                   \
    }

#if FD_HAVE_AVX2_PATH
#define FD_DEFINE_FUSED_AVX2(SUFFIX, T, SCALE_T)                                            \
    FD_DEFINE_FUSED_VARIANT(SUFFIX, T, SCALE_T, _avx2, FD_TARGET("avx2"), FD_LANES_FROM_SHIFTS)
#else
#define FD_DEFINE_FUSED_AVX2(SUFFIX, T, SCALE_T)
#endif

#define FD_DEFINE_FUSED_KERNELS(SUFFIX, T, SCALE_T)                                         \
    FD_DEFINE_FUSED_VARIANT(SUFFIX, T, SCALE_T, _portable, , FD_LANES_FROM_TABLE)          \
    FD_DEFINE_FUSED_AVX2(SUFFIX, T, SCALE_T)                                                \
    static inline void fd_dropout_add_range_##SUFFIX(                                       \
        const T *source, const T *residual, const T *bias, int64_t features, T *target,     \
        uint64_t *words, SCALE_T scale, const fd_mask_params *params, int64_t first,        \
        int64_t stop)                                                                       \
    {                                                                                       \
        FD_DISPATCH_AVX2(SUFFIX, fd_dropout_add_range, (source, residual, bias, features,   \
                                                        target, words, scale, params, first, \
                                                        stop))                              \
    }

FD_DEFINE_FUSED_KERNELS(f64, double, double)
FD_DEFINE_FUSED_KERNELS(f32, float, float)
FD_DEFINE_FUSED_KERNELS(f16, uint16_t, float)
FD_DEFINE_FUSED_KERNELS(bf16, fd_bfloat16, float)

#endif /* FASTDROP_FUSED_H */
