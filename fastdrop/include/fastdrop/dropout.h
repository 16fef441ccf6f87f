/* Dropout kernels over ranges of local mask words: fastdrop's embeddable C API.
 *
 * Local mask word k of a call holds elements 64k .. 64k+63 of the array (bit j =
 * element 64k + j, 1 = kept); with an offset that is not a multiple of 64 those
 * elements straddle two global mask words. A range [first, stop) of local words is
 * the unit of work: give each thread its own range and no two threads ever write
 * the same mask word, and the result never depends on the split.
 *
 * For each element type (suffix f64, f32, f16; f16 arrays are uint16 bit patterns
 * and take a float scale, the float16 value of s held in a float):
 *
 *   fd_dropout_range_<T>(source, target, words, scale, params, first, stop)
 *       keep bits from the stream; words[k] = keep bits unless words is NULL;
 *       target[i] = source[i] * scale where kept, +0 where dropped, unless target
 *       is NULL (source may equal target: in place). Recomputing backward is the
 *       same call on the gradient with words = NULL.
 *   fd_apply_mask_range_<T>(source, target, words, scale, n, first, stop)
 *       the same scaling with the keep bits read from stored words (backward).
 *   fd_mask_words_range(words, params, first, stop)
 *       mask words only.
 *
 * scale is s = 1 / (1 - p) rounded to the element type (docs/mask-stream.md, section 6).
 */
#ifndef FASTDROP_DROPOUT_H
#define FASTDROP_DROPOUT_H

#include <stddef.h>
#include <stdint.h>

#include "half.h"
#include "mask_stream.h"

#define FD_SCALE_DIRECT(value, scale) ((value) * (scale))
#define FD_SCALE_HALF(value, scale) fd_float_to_half(fd_half_to_float(value) * (scale))

/* target[j] = source[j] * scale where bit j of keep is set, else +0 (j < count). */
#define FD_DEFINE_APPLY_WORD(SUFFIX, T, SCALE_T, SCALE_OP)                                  \
    static inline void fd_apply_word_##SUFFIX(const T *source, T *target, int64_t count,    \
                                              uint64_t keep, SCALE_T scale)                 \
    {                                                                                       \
        for (int64_t j = 0; j < count; ++j) {                                               \
            const T value = SCALE_OP(source[j], scale);                                     \
            target[j] = ((keep >> j) & 1) ? value : (T)0;                                   \
        }                                                                                   \
    }

#define FD_DEFINE_DROPOUT_RANGE(SUFFIX, T, SCALE_T)                                         \
    static inline void fd_dropout_range_##SUFFIX(                                           \
        const T *source, T *target, uint64_t *words, SCALE_T scale,                         \
        const fd_mask_params *params, int64_t first, int64_t stop)                          \
    {                                                                                       \
        if (first >= stop)                                                                  \
            return;                                                                         \
        const unsigned shift = (unsigned)(params->offset & 63);                             \
        const uint64_t base = params->offset >> 6;                                          \
        uint64_t low = fd_global_mask_word(params, base + (uint64_t)first);                 \
        for (int64_t k = first; k < stop; ++k) {                                            \
            const int64_t start = k * 64;                                                   \
            const int64_t count = params->n - start < 64 ? params->n - start : 64;          \
            uint64_t keep;                                                                  \
            if (shift == 0) {                                                               \
                keep = low;                                                                 \
                if (k + 1 < stop)                                                           \
                    low = fd_global_mask_word(params, base + (uint64_t)(k + 1));            \
            } else {                                                                        \
                /* elements reach into the next global word unless the array ends first */  \
                const uint64_t high = count > 64 - (int64_t)shift                          \
                    ? fd_global_mask_word(params, base + (uint64_t)(k + 1)) : 0;            \
                keep = (low >> shift) | (high << (64 - shift));                             \
                low = high;                                                                 \
            }                                                                               \
            if (count < 64)                                                                 \
                keep &= (UINT64_C(1) << count) - 1;                                         \
            if (words)                                                                      \
                words[k] = keep;                                                            \
            if (target)                                                                     \
                fd_apply_word_##SUFFIX(source + start, target + start, count, keep, scale); \
        }                                                                                   \
    }

#define FD_DEFINE_APPLY_MASK_RANGE(SUFFIX, T, SCALE_T)                                      \
    static inline void fd_apply_mask_range_##SUFFIX(                                        \
        const T *source, T *target, const uint64_t *words, SCALE_T scale, int64_t n,        \
        int64_t first, int64_t stop)                                                        \
    {                                                                                       \
        for (int64_t k = first; k < stop; ++k) {                                            \
            const int64_t start = k * 64;                                                   \
            const int64_t count = n - start < 64 ? n - start : 64;                          \
            fd_apply_word_##SUFFIX(source + start, target + start, count, words[k], scale); \
        }                                                                                   \
    }

FD_DEFINE_APPLY_WORD(f64, double, double, FD_SCALE_DIRECT)
FD_DEFINE_APPLY_WORD(f32, float, float, FD_SCALE_DIRECT)
FD_DEFINE_APPLY_WORD(f16, uint16_t, float, FD_SCALE_HALF)
FD_DEFINE_DROPOUT_RANGE(f64, double, double)
FD_DEFINE_DROPOUT_RANGE(f32, float, float)
FD_DEFINE_DROPOUT_RANGE(f16, uint16_t, float)
FD_DEFINE_APPLY_MASK_RANGE(f64, double, double)
FD_DEFINE_APPLY_MASK_RANGE(f32, float, float)
FD_DEFINE_APPLY_MASK_RANGE(f16, uint16_t, float)

static inline void fd_mask_words_range(uint64_t *words, const fd_mask_params *params,
                                       int64_t first, int64_t stop)
{
    fd_dropout_range_f32(NULL, NULL, words, 0.0f, params, first, stop);
}

/* Number of mask words for n elements. */
static inline int64_t fd_words_for(int64_t n)
{
    return (n + 63) / 64;
}

#endif /* FASTDROP_DROPOUT_H */
