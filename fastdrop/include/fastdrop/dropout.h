/* Dropout kernels over ranges of local mask words, one set per element type: the core of
 * fastdrop's embeddable C API.
 *
 * Local mask word k of a call holds elements 64k .. 64k+63 of the array (bit j =
 * element 64k + j, 1 = kept); with an offset that is not a multiple of 64 those
 * elements straddle two global mask words. A range [first, stop) of local words is
 * the unit of work: give each thread its own range and no two threads ever write
 * the same mask word, and the result never depends on the split.
 *
 * For each element type (suffix f64, f32, f16, bf16; f16 arrays are uint16 bit
 * patterns and bf16 arrays fd_bfloat16 elements, both taking a float scale: the
 * float16 or bfloat16 value of s held in a float):
 *
 *   fd_dropout_range_<T>(source, target, words, scale, params, first, stop)
 *       keep bits from the stream; words[k] = keep bits unless words is NULL;
 *       target[i] = source[i] * scale where kept, +0 where dropped, unless target
 *       is NULL (source may equal target: in place). Recomputing backward is the
 *       same call on the gradient with words = NULL. With SIMD mask words and a p
 *       whose batches take more than one Philox block (not 0.5 or 0.25), the elements
 *       of a group of words are scaled while the next group's words are drawn, so the
 *       arithmetic overlaps the memory traffic (FD_PIPELINE_DEFINE).
 *   fd_apply_mask_range_<T>(source, target, words, scale, n, first, stop)
 *       the same scaling with the keep bits read from stored words (backward).
 *   fd_mask_words_range(words, params, first, stop)
 *       mask words only.
 *   fd_scale_range_<T>(values, scale, n, first, stop)
 *       values *= scale with the same vector path and prefetch, no mask: the memory
 *       floor the benchmarks divide by.
 *
 * Blocks of a larger array (fd_dropout_runs_<T>) are in runs.h; the bfloat16 vector
 * words the wide variants scale with, in bf16_simd.h.
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
#include "bf16_simd.h"

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

static inline fd_bfloat16 fd_keep_bf16(fd_bfloat16 value, float scale, uint32_t lane)
{
    fd_bfloat16 product = fd_float_to_bfloat16(fd_bfloat16_to_float(value) * scale);
    product.bits &= (uint16_t)lane;
    return product;
}

/* The 64 lane masks of a word's keep bits (all ones where kept). Two ways, one per
 * instruction set: a table lookup per byte suits plain SSE2; with AVX2 per-lane
 * variable shifts do it in registers. */
#define FD_LANES_FROM_TABLE(lanes, keep)                                                    \
    for (int byte = 0; byte < 8; ++byte)                                                    \
        memcpy((lanes) + 8 * byte, fd_byte_lanes[((keep) >> (8 * byte)) & 0xFF],           \
               sizeof fd_byte_lanes[0]);
#define FD_LANES_FROM_SHIFTS(lanes, keep)                                                   \
    {                                                                                       \
        const uint32_t keep_low = (uint32_t)(keep), keep_high = (uint32_t)((keep) >> 32);  \
        for (int j = 0; j < 32; ++j)                                                        \
            (lanes)[j] = (keep_low & (UINT32_C(1) << j)) ? UINT32_C(0xFFFFFFFF) : 0;        \
        for (int j = 0; j < 32; ++j)                                                        \
            (lanes)[32 + j] = (keep_high & (UINT32_C(1) << j)) ? UINT32_C(0xFFFFFFFF) : 0;  \
    }

/* Prefetch distance in mask words, and a prefetch of one word's elements. 20 words is
 * 5 KiB of float32 and 10 KiB of float64 ahead: far enough to cover a batch of mask
 * arithmetic, and not a multiple of 4 KiB, where the prefetches would alias the stores
 * to the current elements. */
#ifndef FD_PREFETCH_WORDS
#define FD_PREFETCH_WORDS 20
#endif
#if defined(__GNUC__) || defined(__clang__)
#define FD_PREFETCH_WORD(address, T)                                                        \
    for (int line = 0; line < (int)(64 * sizeof(T)); line += 64)                            \
        __builtin_prefetch((const char *)(address) + line, 1, 3);
#else
#define FD_PREFETCH_WORD(address, T)
#endif
/* A word's elements at index `at`: the source's, and an out-of-place target's too (its
 * lines are read for ownership before they are written). */
#define FD_PREFETCH_ELEMENTS(source, target, at, T)                                         \
    {                                                                                       \
        FD_PREFETCH_WORD((source) + (at), T)                                                \
        if ((const T *)(target) != (source))                                                \
            FD_PREFETCH_WORD((target) + (at), T)                                            \
    }

/* The scaling of one full word's 64 elements, out of place and in place: target[j] =
 * source[j] * scale where bit j of keep is set, else +0. The lane masks are gathered
 * first (FILL_LANES), so the scaling is a plain vectorisable loop; an in-place call gets
 * its own function so the compiler sees one array and need not check for overlap. */
#define FD_LANE_WORDS(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, FILL_LANES)                 \
    ATTRIBUTES static inline void fd_scale_word_copy_##SUFFIX##VARIANT(                     \
        const T *FD_RESTRICT source, T *FD_RESTRICT target, uint64_t keep, SCALE_T scale)   \
    {                                                                                       \
        uint32_t lanes[64];                                                                 \
        FILL_LANES(lanes, keep)                                                             \
        for (int j = 0; j < 64; ++j)                                                        \
            target[j] = fd_keep_##SUFFIX(source[j], scale, lanes[j]);                       \
    }                                                                                       \
    ATTRIBUTES static inline void fd_scale_word_inplace_##SUFFIX##VARIANT(                  \
        T *values, uint64_t keep, SCALE_T scale)                                            \
    {                                                                                       \
        uint32_t lanes[64];                                                                 \
        FILL_LANES(lanes, keep)                                                             \
        for (int j = 0; j < 64; ++j)                                                        \
            values[j] = fd_keep_##SUFFIX(values[j], scale, lanes[j]);                       \
    }
#define FD_WORDS_FROM_TABLE(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                        \
    FD_LANE_WORDS(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, FD_LANES_FROM_TABLE)
#define FD_WORDS_FROM_SHIFTS(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                       \
    FD_LANE_WORDS(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, FD_LANES_FROM_SHIFTS)

/* One set of kernels for element type T. WORDS defines the scaling of full words
 * (FD_WORDS_FROM_TABLE, FD_WORDS_FROM_SHIFTS, FD_WORDS_BF16_512); ATTRIBUTES is the
 * variant's target; PIPELINED: FD_PIPELINE (the SIMD variants) or FD_NO_PIPELINE, see
 * below. */
#define FD_DEFINE_KERNELS(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, WORDS, PIPELINED)        \
    WORDS(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                                          \
    ATTRIBUTES static inline void fd_apply_word_##SUFFIX##VARIANT(                          \
        const T *source, T *target, int64_t count, uint64_t keep, SCALE_T scale)            \
    {                                                                                       \
        if (count == 64 && source == target) {                                              \
            fd_scale_word_inplace_##SUFFIX##VARIANT(target, keep, scale);                   \
        } else if (count == 64) {                                                           \
            fd_scale_word_copy_##SUFFIX##VARIANT(source, target, keep, scale);              \
        } else {                                                                            \
            for (int64_t j = 0; j < count; ++j)                                             \
                target[j] = fd_keep_##SUFFIX(source[j], scale,                              \
                                             ((keep >> j) & 1) ? UINT32_C(0xFFFFFFFF) : 0); \
        }                                                                                   \
    }                                                                                       \
    /* Scales words first .. until - 1 of an array of n elements by keep[0 .. until -     \
     * first) (every element kept if keep is NULL, a constant the compiler folds), fetching \
     * the elements FD_PREFETCH_WORDS words ahead while those lie before word            \
     * prefetch_stop. The scaling loop of every kernel here. */                            \
    ATTRIBUTES static inline void fd_apply_words_##SUFFIX##VARIANT(                         \
        const T *source, T *target, const uint64_t *keep, SCALE_T scale, int64_t n,         \
        int64_t first, int64_t until, int64_t prefetch_stop)                                \
    {                                                                                       \
        for (int64_t k = first; k < until; ++k) {                                           \
            const int64_t start = k * 64;                                                   \
            /* keep memory busy while later words are computed: fetch ahead */              \
            if (k + FD_PREFETCH_WORDS < prefetch_stop)                                      \
                FD_PREFETCH_ELEMENTS(source, target, start + 64 * FD_PREFETCH_WORDS, T)     \
            fd_apply_word_##SUFFIX##VARIANT(source + start, target + start,                 \
                                            n - start < 64 ? n - start : 64,                \
                                            keep ? keep[k - first] : ~UINT64_C(0), scale);  \
        }                                                                                   \
    }                                                                                       \
    PIPELINED##_DEFINE(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                             \
    ATTRIBUTES static inline void fd_dropout_range_##SUFFIX##VARIANT(                       \
        const T *source, T *target, uint64_t *words, SCALE_T scale,                         \
        const fd_mask_params *params, int64_t first, int64_t stop)                          \
    {                                                                                       \
        FD_PATH_TAKEN(#SUFFIX #VARIANT);                                                    \
        PIPELINED##_TAKE(SUFFIX, VARIANT)                                                   \
        const unsigned shift = (unsigned)(params->offset & 63);                             \
        const uint64_t base = params->offset >> 6;                                          \
        uint64_t global[2 * FD_GROUP_WORDS], keep[FD_GROUP_WORDS];                        \
        int carried = 0;                                                                    \
        /* a group of words at a time: its bits in one vector batch, then its elements */  \
        for (int64_t group = first; group < stop; group += FD_GROUP_WORDS) {               \
            const int64_t count = stop - group < FD_GROUP_WORDS ? stop - group             \
                                                                 : FD_GROUP_WORDS;         \
            fd_local_words(params, base, shift, group, count, global, &carried, keep);      \
            const int64_t last = params->n - (group + count - 1) * 64;                      \
            if (last < 64) /* the array ends inside the group's last word */                \
                keep[count - 1] &= (UINT64_C(1) << last) - 1;                               \
            if (words)                                                                      \
                memcpy(words + group, keep, (size_t)count * sizeof keep[0]);                \
            if (target)                                                                     \
                fd_apply_words_##SUFFIX##VARIANT(source, target, keep, scale, params->n,    \
                                                 group, group + count, stop);               \
        }                                                                                   \
    }                                                                                       \
    /* The scaling by stored keep bits; words NULL keeps every element (fd_scale_range),  \
     * a constant the compiler folds where it inlines this. */                             \
    ATTRIBUTES static inline void fd_apply_mask_range_##SUFFIX##VARIANT(                    \
        const T *source, T *target, const uint64_t *words, SCALE_T scale, int64_t n,        \
        int64_t first, int64_t stop)                                                        \
    {                                                                                       \
        FD_PATH_TAKEN(#SUFFIX #VARIANT);                                                    \
        fd_apply_words_##SUFFIX##VARIANT(source, target, words ? words + first : NULL, scale, \
                                         n, first, stop, stop);                             \
    }                                                                                       \
    /* values *= scale over words [first, stop): the benchmarks' memory floor, with the    \
     * fused kernel's vector path and prefetch, so the floor is as fast as a scale gets */ \
    ATTRIBUTES static inline void fd_scale_range_##SUFFIX##VARIANT(                         \
        T *values, SCALE_T scale, int64_t n, int64_t first, int64_t stop)                   \
    {                                                                                       \
        fd_apply_mask_range_##SUFFIX##VARIANT(values, values, NULL, scale, n, first, stop); \
    }

/* Mask words scaled after each Philox block of a SIMD batch, per width: enough that a
 * group's loads and stores overlap the next group's arithmetic, which an AVX-512 batch
 * of 16 words draws in about 6 blocks at p = 0.1, and AVX2 in two batches of 8. */
#ifndef FD_INTERLEAVE_512
#define FD_INTERLEAVE_512 3
#endif
#ifndef FD_INTERLEAVE_256
#define FD_INTERLEAVE_256 2
#endif

/* FD_DEFINE_KERNELS's PIPELINED argument: a prefix P naming P_DEFINE(SUFFIX, T, SCALE_T,
 * VARIANT, ATTRIBUTES), which defines the pipelined kernel, and P_TAKE(SUFFIX, VARIANT), a statement
 * at the top of fd_dropout_range that hands the call to it where it applies. FD_NO_PIPELINE
 * (the portable variant): neither. */
#define FD_NO_PIPELINE_DEFINE(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)
#define FD_NO_PIPELINE_TAKE(SUFFIX, VARIANT)

/* Software pipelining of the fused kernel with SIMD mask words. The plain loop draws a
 * group's mask words (pure arithmetic: about 6 Philox blocks at p = 0.1) and then
 * scales its elements (pure memory traffic), so the two add up. Here the elements of
 * group g are scaled a few words after each Philox block of group g + 1's batch
 * (FD_VEC_MASK_BATCH_BODY's AFTER_BLOCK), so the out-of-order core overlaps them.
 * Taken where a batch runs more than one block: with SIMD, 0 < p < 1 and T's bits
 * below the top two not all zero (p = 0.5 and 0.25 take one block, nothing to overlap,
 * and stay on the plain loop, which is faster there). A group's local words come from
 * its global words, and where the offset is not a multiple of 64 its last local word
 * needs the next group's first global word: that word is scaled after the batch. */
static inline int fd_pipeline_takes(const fd_mask_params *params, const void *target)
{
    return target && !params->drop_all && !fd_one_block_decides(params) && fd_simd_enabled();
}
#define FD_PIPELINE_TAKE(SUFFIX, VARIANT)                                                   \
    if (fd_pipeline_takes(params, target)) {                                                \
        fd_dropout_pipelined_##SUFFIX##VARIANT(source, target, words, scale, params, first, \
                                               stop);                                       \
        return;                                                                             \
    }
#define FD_SCALE_SOME(SUFFIX, VARIANT, job, WORDS)                                          \
    fd_scale_ready_##SUFFIX##VARIANT(                                                       \
        job, (job)->done + (WORDS) < (job)->ready ? (job)->done + (WORDS) : (job)->ready);
/* A variant's target with AVX-512F, as one attribute: clang honours one target attribute
 * of a function, not two. */
#define FD_WITH_512_avx2 FD_TARGET("avx2,avx512f")
#define FD_WITH_512_avx512 FD_TARGET_BF16_512
#define FD_WITH_512_avx512ne FD_TARGET_BF16_NE
#define FD_PIPELINE_DEFINE(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                         \
    /* Words group + done .. group + ready - 1 of a group, still to be scaled. */           \
    typedef struct {                                                                        \
        const T *source;                                                                    \
        T *target;                                                                          \
        const uint64_t *keep; /* the group's keep bits */                                   \
        SCALE_T scale;                                                                      \
        int64_t group, done, ready, stop, n;                                                \
    } fd_scale_job_##SUFFIX##VARIANT;                                                       \
    /* Scales words job->done .. until - 1 of the job's group (fetching ahead). */        \
    ATTRIBUTES static inline void fd_scale_ready_##SUFFIX##VARIANT(                         \
        fd_scale_job_##SUFFIX##VARIANT *job, int64_t until)                                 \
    {                                                                                       \
        if (until <= job->done)                                                             \
            return;                                                                         \
        fd_apply_words_##SUFFIX##VARIANT(job->source, job->target, job->keep + job->done,   \
                                         job->scale, job->n, job->group + job->done,        \
                                         job->group + until, job->stop);                    \
        job->done = until;                                                                  \
    }                                                                                       \
    /* Global words word .. word + FD_GROUP_WORDS - 1 into out, scaling the job's ready  \
     * words on the way. */                                                                \
    ATTRIBUTES static void fd_draw_##SUFFIX##VARIANT##_256(                                 \
        const fd_mask_params *params, uint64_t word, uint64_t *out,                         \
        fd_scale_job_##SUFFIX##VARIANT *job)                                                \
    FD_VEC_BATCH(FD_VEC_256_HALF, params, word, out,                                        \
                 FD_SCALE_SOME(SUFFIX, VARIANT, job, FD_INTERLEAVE_256))                    \
    FD_WITH_512##VARIANT static void fd_draw_##SUFFIX##VARIANT##_512(                       \
        const fd_mask_params *params, uint64_t word, uint64_t *out,                         \
        fd_scale_job_##SUFFIX##VARIANT *job)                                                \
    FD_VEC_BATCH(FD_VEC_512, params, word, out,                                             \
                 FD_SCALE_SOME(SUFFIX, VARIANT, job, FD_INTERLEAVE_512))                    \
    static inline void fd_draw_##SUFFIX##VARIANT(const fd_mask_params *params, uint64_t word, \
                                                 uint64_t *out,                             \
                                                 fd_scale_job_##SUFFIX##VARIANT *job)       \
    {                                                                                       \
        if (fd_simd_enabled() >= 2) {                                                       \
            FD_PATH_TAKEN("draw avx512");                                                   \
            fd_draw_##SUFFIX##VARIANT##_512(params, word, out, job);                        \
        } else {                                                                            \
            FD_PATH_TAKEN("draw avx2");                                                     \
            fd_draw_##SUFFIX##VARIANT##_256(params, word, out, job);                        \
            fd_draw_##SUFFIX##VARIANT##_256(params, word + FD_GROUP_WORDS / 2,              \
                                            out + FD_GROUP_WORDS / 2, job);                 \
        }                                                                                   \
    }                                                                                       \
    ATTRIBUTES static void fd_dropout_pipelined_##SUFFIX##VARIANT(                          \
        const T *source, T *target, uint64_t *words, SCALE_T scale,                         \
        const fd_mask_params *params, int64_t first, int64_t stop)                          \
    {                                                                                       \
        const unsigned shift = (unsigned)(params->offset & 63);                             \
        const uint64_t base = params->offset >> 6;                                          \
        uint64_t global[2][FD_GROUP_WORDS], keep[FD_GROUP_WORDS];                           \
        int current = 0;                                                                    \
        if (first >= stop)                                                                  \
            return;                                                                         \
        fd_mask_words_ahead(params, base + (uint64_t)first, global[0]);                     \
        for (int64_t group = first; group < stop; group += FD_GROUP_WORDS) {               \
            const int64_t count = stop - group < FD_GROUP_WORDS ? stop - group             \
                                                                 : FD_GROUP_WORDS;         \
            const uint64_t *now = global[current];                                          \
            uint64_t *next = global[1 - current];                                           \
            /* elements of the group's last word, if the array ends inside it */           \
            const int64_t last = params->n - (group + count - 1) * 64;                      \
            const uint64_t last_bits = last < 64 ? (UINT64_C(1) << last) - 1 : ~UINT64_C(0); \
            const int last_waits = shift != 0 && count == FD_GROUP_WORDS;                   \
            const int64_t ready = last_waits ? count - 1 : count;                           \
            for (int64_t i = 0; i < ready; ++i)                                             \
                keep[i] = shift ? fd_local_word(now[i], now[i + 1], shift) : now[i];        \
            if (ready == count)                                                             \
                keep[count - 1] &= last_bits;                                               \
            fd_scale_job_##SUFFIX##VARIANT job = {source, target, keep, scale, group, 0, ready, \
                                                  stop, params->n};                         \
            /* the next group's words: for the next group, or for this group's last word   \
             * where its elements reach into the next global word */                       \
            const int draw = group + FD_GROUP_WORDS < stop ||                               \
                             (last_waits && last > 64 - (int64_t)shift);                    \
            if (draw)                                                                       \
                fd_draw_##SUFFIX##VARIANT(params, base + (uint64_t)(group + FD_GROUP_WORDS), next, \
                                          &job);                                            \
            if (last_waits)                                                                 \
                keep[count - 1] =                                                           \
                    fd_local_word(now[count - 1], draw ? next[0] : 0, shift) & last_bits;   \
            fd_scale_ready_##SUFFIX##VARIANT(&job, count);                                  \
            if (words)                                                                      \
                memcpy(words + group, keep, (size_t)count * sizeof keep[0]);                \
            current = 1 - current;                                                          \
        }                                                                                   \
    }

#if FD_HAVE_AVX2_PATH
/* The two full-word scalings of a variant whose words go through one function of
 * (source, target, keep, scale), in place and out of place alike. */
#define FD_WORDS_BY(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, WORD)                          \
    ATTRIBUTES static inline void fd_scale_word_copy_##SUFFIX##VARIANT(                     \
        const T *FD_RESTRICT source, T *FD_RESTRICT target, uint64_t keep, SCALE_T scale)   \
    {                                                                                       \
        WORD(source, target, keep, scale);                                                  \
    }                                                                                       \
    ATTRIBUTES static inline void fd_scale_word_inplace_##SUFFIX##VARIANT(                  \
        T *values, uint64_t keep, SCALE_T scale)                                            \
    {                                                                                       \
        WORD(values, values, keep, scale);                                                  \
    }
/* bf16_simd.h's words as the full-word scaling of a bfloat16 variant. */
#define FD_WORDS_BF16_512(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                          \
    FD_WORDS_BY(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, fd_bf16_word_512)
#define FD_WORDS_BF16_256(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                          \
    FD_WORDS_BY(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, fd_bf16_word_256)
#define FD_WORDS_BF16_NE(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES)                           \
    FD_WORDS_BY(SUFFIX, T, SCALE_T, VARIANT, ATTRIBUTES, fd_bf16_word_ne)

/* bfloat16's wide variants, taken ahead of AVX2 where fd_bf16_wide_level says so. */
#define FD_WIDE_bf16(NAME, ARGS)                                                            \
    {                                                                                       \
        const int wide = fd_bf16_wide_level();                                              \
        if (wide == 3) {                                                                    \
            NAME##_bf16_avx512ne ARGS;                                                      \
            return;                                                                         \
        }                                                                                   \
        if (wide == 2) {                                                                    \
            NAME##_bf16_avx512 ARGS;                                                        \
            return;                                                                         \
        }                                                                                   \
    }
#endif
#define FD_WIDE_f64(NAME, ARGS)
#define FD_WIDE_f32(NAME, ARGS)
#define FD_WIDE_f16(NAME, ARGS)

/* The public kernels: a wider variant where a type has one and the CPU takes it
 * (FD_WIDE_<type>), the AVX2 variant where the CPU has it (fd_simd_enabled), the
 * portable one elsewhere. All give identical bits. */
#if FD_HAVE_AVX2_PATH
/* The AVX2 variant where the CPU has it, the portable one elsewhere (fused.h's too). */
#define FD_DISPATCH_AVX2(SUFFIX, NAME, ARGS)                                                \
    if (fd_simd_enabled()) {                                                                \
        NAME##_##SUFFIX##_avx2 ARGS;                                                        \
        return;                                                                             \
    }                                                                                       \
    NAME##_##SUFFIX##_portable ARGS;
#define FD_DISPATCH(SUFFIX, NAME, ARGS)                                                     \
    FD_WIDE_##SUFFIX(NAME, ARGS)                                                            \
    FD_DISPATCH_AVX2(SUFFIX, NAME, ARGS)
#else
#define FD_DISPATCH_AVX2(SUFFIX, NAME, ARGS) NAME##_##SUFFIX##_portable ARGS;
#define FD_DISPATCH(SUFFIX, NAME, ARGS) NAME##_##SUFFIX##_portable ARGS;
#endif

#define FD_DEFINE_PUBLIC_KERNELS(SUFFIX, T, SCALE_T)                                        \
    FD_DEFINE_KERNELS(SUFFIX, T, SCALE_T, _portable, , FD_WORDS_FROM_TABLE, FD_NO_PIPELINE) \
    FD_DEFINE_AVX2_KERNELS(SUFFIX, T, SCALE_T)                                              \
    static inline void fd_dropout_range_##SUFFIX(                                           \
        const T *source, T *target, uint64_t *words, SCALE_T scale,                         \
        const fd_mask_params *params, int64_t first, int64_t stop)                          \
    {                                                                                       \
        FD_DISPATCH(SUFFIX, fd_dropout_range,                                               \
                    (source, target, words, scale, params, first, stop))                    \
    }                                                                                       \
    static inline void fd_apply_mask_range_##SUFFIX(                                        \
        const T *source, T *target, const uint64_t *words, SCALE_T scale, int64_t n,        \
        int64_t first, int64_t stop)                                                        \
    {                                                                                       \
        FD_DISPATCH(SUFFIX, fd_apply_mask_range, (source, target, words, scale, n, first, stop)) \
    }                                                                                       \
    static inline void fd_scale_range_##SUFFIX(T *values, SCALE_T scale, int64_t n,         \
                                               int64_t first, int64_t stop)                 \
    {                                                                                       \
        FD_DISPATCH(SUFFIX, fd_scale_range, (values, scale, n, first, stop))                \
    }

#if FD_HAVE_AVX2_PATH
/* The AVX2 variant's full-word scaling, per element type. */
#define FD_AVX2_WORDS_f64 FD_WORDS_FROM_SHIFTS
#define FD_AVX2_WORDS_f32 FD_WORDS_FROM_SHIFTS
#define FD_AVX2_WORDS_f16 FD_WORDS_FROM_SHIFTS
#define FD_AVX2_WORDS_bf16 FD_WORDS_BF16_256
#define FD_DEFINE_AVX2_KERNELS(SUFFIX, T, SCALE_T)                                          \
    FD_DEFINE_KERNELS(SUFFIX, T, SCALE_T, _avx2, FD_TARGET("avx2"),                        \
                      FD_AVX2_WORDS_##SUFFIX, FD_PIPELINE)
#else
#define FD_DEFINE_AVX2_KERNELS(SUFFIX, T, SCALE_T)
#endif

FD_DEFINE_PUBLIC_KERNELS(f64, double, double)
FD_DEFINE_PUBLIC_KERNELS(f32, float, float)
FD_DEFINE_PUBLIC_KERNELS(f16, uint16_t, float)
#if FD_HAVE_AVX2_PATH
FD_DEFINE_KERNELS(bf16, fd_bfloat16, float, _avx512, FD_TARGET_BF16_512, FD_WORDS_BF16_512,
                  FD_PIPELINE)
FD_DEFINE_KERNELS(bf16, fd_bfloat16, float, _avx512ne, FD_TARGET_BF16_NE, FD_WORDS_BF16_NE,
                  FD_PIPELINE)
#endif
FD_DEFINE_PUBLIC_KERNELS(bf16, fd_bfloat16, float)

/* Number of mask words for n elements. */
static inline int64_t fd_words_for(int64_t n)
{
    return (n + 63) / 64;
}

static inline void fd_mask_words_range(uint64_t *words, const fd_mask_params *params,
                                       int64_t first, int64_t stop)
{
    fd_dropout_range_f32(NULL, NULL, words, 0.0f, params, first, stop);
}

#endif /* FASTDROP_DROPOUT_H */
