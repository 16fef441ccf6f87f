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
#include <string.h>

#include "half.h"
#include "mask_stream.h"

#ifdef __cplusplus
#define FD_RESTRICT __restrict__
#else
#define FD_RESTRICT restrict
#endif

/* fd_byte_lanes[b][j]: all ones iff bit j of byte b is set. Expanding keep bits through
 * this 8 KiB table is branch-free and lets compilers vectorise the scaling with plain
 * SSE2 (no per-lane variable shifts needed). */
#define FD_LANE(b, j) ((((b) >> (j)) & 1) ? UINT32_C(0xFFFFFFFF) : UINT32_C(0))
#define FD_LANES_1(b) {FD_LANE(b, 0), FD_LANE(b, 1), FD_LANE(b, 2), FD_LANE(b, 3), \
                       FD_LANE(b, 4), FD_LANE(b, 5), FD_LANE(b, 6), FD_LANE(b, 7)}
#define FD_LANES_4(b) FD_LANES_1(b), FD_LANES_1(b + 1), FD_LANES_1(b + 2), FD_LANES_1(b + 3)
#define FD_LANES_16(b) FD_LANES_4(b), FD_LANES_4(b + 4), FD_LANES_4(b + 8), FD_LANES_4(b + 12)
#define FD_LANES_64(b) FD_LANES_16(b), FD_LANES_16(b + 16), FD_LANES_16(b + 32), \
                       FD_LANES_16(b + 48)
static const uint32_t fd_byte_lanes[256][8] = {FD_LANES_64(0), FD_LANES_64(64),
                                               FD_LANES_64(128), FD_LANES_64(192)};

/* value * scale where lane is all ones, +0 where it is zero (also for inf and NaN):
 * the product's bits are ANDed with the lane mask. */
typedef union { double value; uint64_t bits; } fd_f64_bits;
typedef union { float value; uint32_t bits; } fd_f32_bits;

static inline double fd_keep_f64(double value, double scale, uint32_t lane)
{
    fd_f64_bits product;
    product.value = value * scale;
    product.bits &= (uint64_t)(int64_t)(int32_t)lane;
    return product.value;
}

static inline float fd_keep_f32(float value, float scale, uint32_t lane)
{
    fd_f32_bits product;
    product.value = value * scale;
    product.bits &= lane;
    return product.value;
}

static inline uint16_t fd_keep_f16(uint16_t value, float scale, uint32_t lane)
{
    return (uint16_t)(fd_float_to_half(fd_half_to_float(value) * scale) & lane);
}

/* Scaling of one word's elements: target[j] = source[j] * scale where bit j of keep is
 * set, else +0 (j < count). For full words the 64 lane masks are gathered first, so
 * the scaling loop is a plain vectorisable loop; an in-place call gets its own path
 * so the compiler sees one array and need not check for overlap. */
#define FD_SCALE_FULL_WORD(SUFFIX, source, target, keep, scale)                             \
    uint32_t lanes[64];                                                                     \
    for (int byte = 0; byte < 8; ++byte)                                                    \
        memcpy(lanes + 8 * byte, fd_byte_lanes[((keep) >> (8 * byte)) & 0xFF],             \
               sizeof fd_byte_lanes[0]);                                                    \
    for (int j = 0; j < 64; ++j)                                                            \
        (target)[j] = fd_keep_##SUFFIX((source)[j], scale, lanes[j]);

#define FD_DEFINE_APPLY_WORD(SUFFIX, T, SCALE_T)                                            \
    static inline void fd_scale_word_copy_##SUFFIX(const T *FD_RESTRICT source,                \
                                                   T *FD_RESTRICT target, uint64_t keep,       \
                                                   SCALE_T scale)                           \
    {                                                                                       \
        FD_SCALE_FULL_WORD(SUFFIX, source, target, keep, scale)                             \
    }                                                                                       \
    static inline void fd_scale_word_inplace_##SUFFIX(T *values, uint64_t keep,             \
                                                      SCALE_T scale)                        \
    {                                                                                       \
        FD_SCALE_FULL_WORD(SUFFIX, values, values, keep, scale)                             \
    }                                                                                       \
    static inline void fd_apply_word_##SUFFIX(const T *source, T *target, int64_t count,    \
                                              uint64_t keep, SCALE_T scale)                 \
    {                                                                                       \
        if (count == 64 && source == target) {                                              \
            fd_scale_word_inplace_##SUFFIX(target, keep, scale);                            \
        } else if (count == 64) {                                                           \
            fd_scale_word_copy_##SUFFIX(source, target, keep, scale);                       \
        } else {                                                                            \
            for (int64_t j = 0; j < count; ++j)                                             \
                target[j] = fd_keep_##SUFFIX(source[j], scale,                              \
                                             ((keep >> j) & 1) ? UINT32_C(0xFFFFFFFF) : 0); \
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
        fd_word_reader reader;                                                              \
        fd_word_reader_start(&reader, params, (params->offset >> 6) + (uint64_t)first);     \
        uint64_t low = fd_word_reader_next(&reader);                                        \
        for (int64_t k = first; k < stop; ++k) {                                            \
            const int64_t start = k * 64;                                                   \
            const int64_t count = params->n - start < 64 ? params->n - start : 64;          \
            uint64_t keep;                                                                  \
            if (shift == 0) {                                                               \
                keep = low;                                                                 \
                if (k + 1 < stop)                                                           \
                    low = fd_word_reader_next(&reader);                                     \
            } else {                                                                        \
                /* elements reach into the next global word unless the array ends first */  \
                const uint64_t high = count > 64 - (int64_t)shift                          \
                    ? fd_word_reader_next(&reader) : 0;                                     \
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

FD_DEFINE_APPLY_WORD(f64, double, double)
FD_DEFINE_APPLY_WORD(f32, float, float)
FD_DEFINE_APPLY_WORD(f16, uint16_t, float)
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
