/* Kernels of the dropout variants: stored masks stretched over an array (noise_shape,
 * channel dropout, alpha dropout) and Gaussian noise. Part of fastdrop's C interface.
 *
 * Both work on ranges [first, stop) of an array's elements in C order; they write
 * no mask words, so any split of the elements among threads gives the same result.
 *
 * For each element type (suffix f64, f32, f16, bf16 as in dropout.h):
 *
 *   fd_apply_broadcast_range_<T>(source, target, words, layout, op, first, stop)
 *       target[i] = op(source[i], keep bit of mask element j(i)), where j(i) maps
 *       element i to the mask through `layout`. op scales (x * scale where kept, +0
 *       where dropped) or, for alpha dropout, is affine (a*x + b where kept, c where
 *       dropped).
 *   fd_gaussian_range_<T>(source, target, sigma, seed, stream, offset, first, stop)
 *       target[i] = source[i] * (1 + sigma * z_{offset+i}), the multiplier rounded to
 *       T (float for f16) first (docs/mask-stream.md, section 9).
 *   fd_gaussian_runs_<T>(source, target, sigma, seed, stream, runs, first, stop)
 *       the same for a block of a larger array: element i takes the global index its
 *       run gives it (fd_runs in runs.h).
 */
#ifndef FASTDROP_VARIANTS_H
#define FASTDROP_VARIANTS_H

#include <stdint.h>

#include "dropout.h"
#include "normal.h"
#include "runs.h"

/* How a mask of fewer elements covers an array. The array's axes are collapsed into
 * `ndim` axes (outermost first); along axis d the mask index advances by
 * mask_strides[d] per step (0: the mask element is shared along that axis). The last
 * axis is the inner run: one bit (stride 0) or consecutive bits (stride 1). */
typedef struct {
    int ndim;
    const int64_t *sizes;
    const int64_t *mask_strides;
} fd_broadcast_layout;

/* What happens to an element: scale (affine == 0): kept -> x * scale, dropped -> +0;
 * affine: kept -> x * scale + shift, dropped -> dropped_value. For f16 and bf16 the
 * constants are floats; dropped_value holds an exact float16 (bfloat16) value. */
typedef struct {
    int affine;
    double scale, shift, dropped_value;
} fd_mask_op_f64;
typedef struct {
    int affine;
    float scale, shift, dropped_value;
} fd_mask_op_f32;
typedef fd_mask_op_f32 fd_mask_op_f16;
typedef fd_mask_op_f32 fd_mask_op_bf16;

/* `count` (<= 64) mask bits starting at bit `bit` of the packed words. */
static inline uint64_t fd_read_bits(const uint64_t *words, int64_t bit, int64_t count)
{
    const int64_t word = bit >> 6;
    const unsigned shift = (unsigned)(bit & 63);
    uint64_t bits = words[word] >> shift;
    if (shift != 0 && (int64_t)(64 - shift) < count)
        bits |= words[word + 1] << (64 - shift);
    return count < 64 ? bits & ((UINT64_C(1) << count) - 1) : bits;
}

#define FD_IDENTITY(value) (value)

#define FD_DEFINE_VARIANT_KERNELS(SUFFIX, T, COMPUTE_T, LOAD, STORE)                        \
    static inline T fd_affine_##SUFFIX(T value, const fd_mask_op_##SUFFIX *op)             \
    {                                                                                       \
        return STORE((COMPUTE_T)(LOAD(value) * op->scale) + op->shift);                     \
    }                                                                                       \
    /* A run of elements that share one keep bit. */                                        \
    static inline void fd_run_one_bit_##SUFFIX(const T *source, T *target, int64_t count,  \
                                               int kept, const fd_mask_op_##SUFFIX *op)     \
    {                                                                                       \
        if (op->affine) {                                                                   \
            if (kept) {                                                                     \
                for (int64_t j = 0; j < count; ++j)                                         \
                    target[j] = fd_affine_##SUFFIX(source[j], op);                          \
            } else {                                                                        \
                const T dropped = STORE(op->dropped_value);                                 \
                for (int64_t j = 0; j < count; ++j)                                         \
                    target[j] = dropped;                                                    \
            }                                                                               \
        } else {                                                                            \
            const uint32_t lane = kept ? UINT32_C(0xFFFFFFFF) : 0;                          \
            for (int64_t j = 0; j < count; ++j)                                             \
                target[j] = fd_keep_##SUFFIX(source[j], op->scale, lane);                   \
        }                                                                                   \
    }                                                                                       \
    /* A run of elements reading consecutive keep bits from `bit` on. */                    \
    static inline void fd_run_bits_##SUFFIX(const T *source, T *target, int64_t count,     \
                                            const uint64_t *words, int64_t bit,             \
                                            const fd_mask_op_##SUFFIX *op)                  \
    {                                                                                       \
        const T dropped = STORE(op->dropped_value);                                         \
        for (int64_t start = 0; start < count; start += 64) {                               \
            const int64_t length = count - start < 64 ? count - start : 64;                 \
            const uint64_t keep = fd_read_bits(words, bit + start, length);                 \
            if (!op->affine) {                                                              \
                fd_apply_word_##SUFFIX##_portable(source + start, target + start, length,   \
                                                  keep, op->scale);                         \
                continue;                                                                   \
            }                                                                               \
            /* lane masks first, then a select per element: the loop vectorises */          \
            uint32_t lanes[64];                                                             \
            FD_LANES_FROM_TABLE(lanes, keep)                                                \
            for (int64_t j = 0; j < length; ++j) {                                          \
                const T kept_value = fd_affine_##SUFFIX(source[start + j], op);             \
                target[start + j] = lanes[j] ? kept_value : dropped;                        \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    static inline void fd_apply_broadcast_range_##SUFFIX(                                   \
        const T *source, T *target, const uint64_t *words, const fd_broadcast_layout *layout, \
        const fd_mask_op_##SUFFIX *op, int64_t first, int64_t stop)                         \
    {                                                                                       \
        const int inner_axis = layout->ndim - 1;                                            \
        const int64_t inner = layout->sizes[inner_axis];                                    \
        const int64_t inner_stride = layout->mask_strides[inner_axis];                      \
        for (int64_t i = first; i < stop;) {                                                \
            const int64_t row = i / inner, column = i % inner;                              \
            const int64_t count = inner - column < stop - i ? inner - column : stop - i;    \
            int64_t mask_index = 0, rest = row;                                             \
            for (int axis = inner_axis - 1; axis >= 0; --axis) {                            \
                mask_index += (rest % layout->sizes[axis]) * layout->mask_strides[axis];    \
                rest /= layout->sizes[axis];                                                \
            }                                                                               \
            if (inner_stride == 0)                                                          \
                fd_run_one_bit_##SUFFIX(source + i, target + i, count,                      \
                                        (int)((words[mask_index >> 6] >> (mask_index & 63)) & 1), \
                                        op);                                                \
            else                                                                            \
                fd_run_bits_##SUFFIX(source + i, target + i, count, words,                  \
                                     mask_index + column, op);                              \
            i += count;                                                                     \
        }                                                                                   \
    }                                                                                       \
    static inline void fd_gaussian_elements_##SUFFIX(const T *source, T *target,            \
                                                      double sigma, uint64_t seed,          \
                                                      uint64_t stream, uint64_t offset,     \
                                                      int64_t first, int64_t stop)          \
    {                                                                                       \
        for (int64_t i = first; i < stop;) {                                                \
            const uint64_t index = offset + (uint64_t)i;                                    \
            uint64_t random_words[2];                                                       \
            fd_normal_block(seed, stream, index >> 1, random_words);                        \
            for (int half = (int)(index & 1); half < 2 && i < stop; ++half, ++i) {          \
                const COMPUTE_T noise =                                                     \
                    (COMPUTE_T)(1.0 + sigma * fd_standard_normal(random_words[half]));      \
                target[i] = STORE((COMPUTE_T)(LOAD(source[i]) * noise));                    \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    static inline void fd_gaussian_range_##SUFFIX(const T *source, T *target, double sigma, \
                                                  uint64_t seed, uint64_t stream,           \
                                                  uint64_t offset, int64_t first,           \
                                                  int64_t stop)                             \
    {                                                                                       \
        /* one by one up to the start of a Philox block, then whole batches */              \
        int64_t i = first;                                                                  \
        if (i < stop && ((offset + (uint64_t)i) & 1)) {                                     \
            fd_gaussian_elements_##SUFFIX(source, target, sigma, seed, stream, offset, i,   \
                                          i + 1);                                           \
            i += 1;                                                                         \
        }                                                                                   \
        for (; stop - i >= FD_NORMAL_BATCH; i += FD_NORMAL_BATCH) {                         \
            double z[FD_NORMAL_BATCH];                                                      \
            fd_standard_normals_batch(seed, stream, (offset + (uint64_t)i) >> 1, z);        \
            for (int j = 0; j < FD_NORMAL_BATCH; ++j) {                                     \
                const COMPUTE_T noise = (COMPUTE_T)(1.0 + sigma * z[j]);                    \
                target[i + j] = STORE((COMPUTE_T)(LOAD(source[i + j]) * noise));            \
            }                                                                               \
        }                                                                                   \
        fd_gaussian_elements_##SUFFIX(source, target, sigma, seed, stream, offset, i, stop); \
    }                                                                                       \
    static inline void fd_gaussian_runs_##SUFFIX(const T *source, T *target, double sigma,  \
                                                 uint64_t seed, uint64_t stream,            \
                                                 const fd_runs *runs, int64_t first,        \
                                                 int64_t stop)                              \
    {                                                                                       \
        const int64_t run = runs->run;                                                      \
        if (run <= 0)                                                                       \
            return;                                                                         \
        for (int64_t r = first / run; r * run < stop; ++r) {                                \
            const int64_t low = r * run > first ? r * run : first;                          \
            const int64_t high = (r + 1) * run < stop ? (r + 1) * run : stop;               \
            fd_gaussian_range_##SUFFIX(source + low, target + low, sigma, seed, stream,     \
                                       fd_run_start(runs, r) + (uint64_t)(low - r * run),   \
                                       0, high - low);                                      \
        }                                                                                   \
    }

FD_DEFINE_VARIANT_KERNELS(f64, double, double, FD_IDENTITY, FD_IDENTITY)
FD_DEFINE_VARIANT_KERNELS(f32, float, float, FD_IDENTITY, FD_IDENTITY)
FD_DEFINE_VARIANT_KERNELS(f16, uint16_t, float, fd_half_to_float, fd_float_to_half)
FD_DEFINE_VARIANT_KERNELS(bf16, fd_bfloat16, float, fd_bfloat16_to_float, fd_float_to_bfloat16)

#endif /* FASTDROP_VARIANTS_H */
