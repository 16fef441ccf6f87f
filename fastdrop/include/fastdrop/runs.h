/* Dropout on a block of a larger array: a layer over dropout.h that only blocks need.
 *
 * A block's elements take the global indices their runs give them, so a block (of a
 * Dask array, a chunked store) gets the mask it has inside the whole array.
 *
 * Part of fastdrop's C interface, over dropout.h's kernels. For each element type
 * (suffix f64, f32, f16, bf16 as in dropout.h):
 *
 *   fd_dropout_runs_<T>(source, target, words, scale, params, runs, first, stop)
 *       fd_dropout_range for a block of a larger array (docs/mask-stream.md, section
 *       10): local element i of the block takes the global index its run gives it
 *       (fd_runs), not params->offset + i; params->n is the block's element count.
 */
#ifndef FASTDROP_RUNS_H
#define FASTDROP_RUNS_H

#include <stdint.h>
#include <string.h>

#include "dropout.h"

/* A block of a larger C-order array, as runs of consecutive global indices: the block's
 * elements in C order come in runs of `run`; run r starts at global index base +
 * sum_d i_d * strides[d], i the index of r over the `ndim` outer axes of `shape`. */
typedef struct {
    uint64_t base;
    int ndim;
    const int64_t *shape;
    const int64_t *strides;
    int64_t run;
} fd_runs;

static inline uint64_t fd_run_start(const fd_runs *runs, int64_t r)
{
    uint64_t start = runs->base;
    for (int axis = runs->ndim - 1; axis >= 0; --axis) {
        const int64_t extent = runs->shape[axis];
        start += (uint64_t)((r % extent) * runs->strides[axis]);
        r /= extent;
    }
    return start;
}

/* The start of one run after another without a division per run: the run's index over
 * the outer axes, counted up like an odometer. */
#define FD_MAX_DIMS 64
typedef struct {
    uint64_t start;
    int64_t index[FD_MAX_DIMS];
} fd_run_cursor;

static inline fd_run_cursor fd_run_cursor_at(const fd_runs *runs, int64_t r)
{
    fd_run_cursor cursor;
    cursor.start = fd_run_start(runs, r);
    for (int axis = runs->ndim - 1; axis >= 0; --axis) {
        cursor.index[axis] = r % runs->shape[axis];
        r /= runs->shape[axis];
    }
    return cursor;
}

static inline void fd_run_cursor_next(fd_run_cursor *cursor, const fd_runs *runs)
{
    for (int axis = runs->ndim - 1; axis >= 0; --axis) {
        cursor->start += (uint64_t)runs->strides[axis];
        if (++cursor->index[axis] < runs->shape[axis])
            return;
        cursor->start -= (uint64_t)(runs->shape[axis] * runs->strides[axis]);
        cursor->index[axis] = 0;
    }
}

/* words |= bits [from, from + count) of `bits`, placed from bit `at` on; only bits below
 * at + count are touched. Where `from` is not word-aligned, the word after the last one
 * holding a source bit is read too (its bits are masked off): `bits` needs it. */
static inline void fd_or_bits(uint64_t *words, int64_t at, const uint64_t *bits, int64_t from,
                              int64_t count)
{
    const unsigned in_shift = (unsigned)(from & 63), shift = (unsigned)(at & 63);
    const uint64_t *source = bits + (from >> 6);
    uint64_t *word = words + (at >> 6);
    for (int64_t i = 0; i * 64 < count; ++i) {
        uint64_t value = source[i] >> in_shift;
        if (in_shift != 0)
            value |= source[i + 1] << (64 - in_shift);
        const int64_t remain = count - i * 64;
        if (remain < 64)
            value &= (UINT64_C(1) << remain) - 1;
        word[i] |= value << shift;
        if (shift != 0 && remain > 64 - (int64_t)shift)
            word[i + 1] |= value >> (64 - shift);
    }
}

/* Mask words per chunk of a block: 8 KiB of bits, on the stack. */
#define FD_RUN_CHUNK_WORDS 1024
/* A chunk whose runs lie densely in the global array (its global span at most twice its
 * elements) draws the span's words once and takes each run's bits out of them: a run
 * drawn as a range of its own costs a batch set-up and two partial words. */
#define FD_RUN_SPAN_WORDS (2 * FD_RUN_CHUNK_WORDS)

/* Local words [first, stop) of a block, as keep bits, into out[0 .. stop - first). */
static inline void fd_runs_mask_words(uint64_t *out, const fd_mask_params *params,
                                      const fd_runs *runs, int64_t first, int64_t stop)
{
    const int64_t run = runs->run;
    const int64_t begin = first * 64, end = stop * 64 < params->n ? stop * 64 : params->n;
    uint64_t bits[FD_RUN_SPAN_WORDS + 1];
    memset(out, 0, (size_t)(stop - first) * sizeof out[0]);
    if (begin >= end || run <= 0)
        return;
    fd_run_cursor cursor = fd_run_cursor_at(runs, begin / run);
    const uint64_t span_start = cursor.start + (uint64_t)(begin % run);
    const uint64_t span = fd_run_start(runs, (end - 1) / run) + (uint64_t)((end - 1) % run) + 1 -
                          span_start;
    const int dense = span <= (uint64_t)(64 * FD_RUN_SPAN_WORDS) &&
                      span <= 2 * (uint64_t)(end - begin);
    if (dense) {
        fd_mask_params piece = *params;
        piece.offset = span_start;
        piece.n = (int64_t)span;
        const int64_t count = fd_words_for(piece.n);
        fd_mask_words_range(bits, &piece, 0, count);
        bits[count] = 0;
    }
    for (int64_t r = begin / run; r * run < end; ++r, fd_run_cursor_next(&cursor, runs)) {
        const int64_t low = r * run > begin ? r * run : begin;
        const int64_t high = (r + 1) * run < end ? (r + 1) * run : end;
        const uint64_t global = cursor.start + (uint64_t)(low - r * run);
        if (dense) {
            fd_or_bits(out, low - begin, bits, (int64_t)(global - span_start), high - low);
            continue;
        }
        for (int64_t at = low; at < high; at += 64 * FD_RUN_CHUNK_WORDS) {
            fd_mask_params piece = *params;
            piece.offset = global + (uint64_t)(at - low);
            piece.n = high - at < 64 * FD_RUN_CHUNK_WORDS ? high - at : 64 * FD_RUN_CHUNK_WORDS;
            fd_mask_words_range(bits, &piece, 0, fd_words_for(piece.n));
            fd_or_bits(out, at - begin, bits, 0, piece.n);
        }
    }
}

/* fd_dropout_range for local words [first, stop) of a block, a chunk of words at a
 * time: the chunk's keep bits from the runs (fd_runs_mask_words), then one pass over its
 * elements (fd_apply_mask_range, prefetching across runs). The range's words are its own,
 * so threads given whole word ranges never write one word together. */
#define FD_DEFINE_RUN_KERNELS(SUFFIX, T, SCALE_T)                                           \
    static inline void fd_dropout_runs_##SUFFIX(                                            \
        const T *source, T *target, uint64_t *words, SCALE_T scale,                         \
        const fd_mask_params *params, const fd_runs *runs, int64_t first, int64_t stop)     \
    {                                                                                       \
        uint64_t chunk[FD_RUN_CHUNK_WORDS];                                                 \
        for (int64_t at = first; at < stop; at += FD_RUN_CHUNK_WORDS) {                     \
            const int64_t count = stop - at < FD_RUN_CHUNK_WORDS ? stop - at                \
                                                                 : FD_RUN_CHUNK_WORDS;     \
            uint64_t *keep = words ? words + at : chunk;                                    \
            fd_runs_mask_words(keep, params, runs, at, at + count);                         \
            if (target)                                                                     \
                fd_apply_mask_range_##SUFFIX(source + at * 64, target + at * 64, keep,      \
                                             scale, params->n - at * 64, 0, count);         \
        }                                                                                   \
    }

FD_DEFINE_RUN_KERNELS(f64, double, double)
FD_DEFINE_RUN_KERNELS(f32, float, float)
FD_DEFINE_RUN_KERNELS(f16, uint16_t, float)
FD_DEFINE_RUN_KERNELS(bf16, fd_bfloat16, float)

#endif /* FASTDROP_RUNS_H */
