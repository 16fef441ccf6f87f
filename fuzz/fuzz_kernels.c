/* libFuzzer harness for fastdrop's C entry points (the header-only kernels).
 *
 * Each input picks an entry point, an element type, a SIMD level (fd_set_simd 0-3),
 * a length, p's bit pattern, seed, stream, offset, a sub-range of words or elements,
 * a split of it between one or two threads, element-aligned but otherwise misaligned
 * pointers, in place or not, and the elements' bit patterns. The result is compared
 * with a scalar oracle written here from docs/mask-stream.md: its own Philox4x32-10
 * (checked against Random123's known answers) and each lane's 64-bit uniform
 * assembled from all 64 random words, with none of the kernels' early stopping; the
 * Gaussian kernels against the header's one-element path. Every buffer is exactly
 * its size (ASan sees an overrun), the bytes a misalignment skips and every element
 * or word outside the range must keep their pattern, and ASan/UBSan watch the rest.
 * Build and run: fuzz/README.md.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fastdrop/dropout.h>
#include <fastdrop/variants.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define MAX_SMALL 4096          /* elements of an input */
#define MAX_LARGE (1 << 18)     /* elements of a block of runs when the input asks for one */
#define INDEX_LIMIT (UINT64_C(1) << 63)
#define PATTERN 0xA5

/* ------------------------------------------------------------------ the input */

typedef struct {
    const uint8_t *data;
    size_t size;
} input;

static uint64_t take(input *in, int bytes)
{
    uint64_t value = 0;
    for (int b = 0; b < bytes && in->size; ++b, ++in->data, --in->size)
        value |= (uint64_t)in->data[0] << (8 * b);
    return value;
}

static char context[512]; /* the call, for the report of a failure */

static void fail(const char *what, int64_t where)
{
    fprintf(stderr, "fuzz_kernels: %s (at %lld)\n  in %s\n", what, (long long)where, context);
    abort();
}

/* ------------------------------------------------------------------ the oracle */

static void oracle_philox(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t x0 = counter[0], x1 = counter[1], x2 = counter[2], x3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
        const uint64_t a = (uint64_t)0xD2511F53u * x0, b = (uint64_t)0xCD9E8D57u * x2;
        const uint32_t y0 = (uint32_t)(b >> 32) ^ x1 ^ k0, y2 = (uint32_t)(a >> 32) ^ x3 ^ k1;
        x1 = (uint32_t)b;
        x3 = (uint32_t)a;
        x0 = y0;
        x2 = y2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = x0;
    out[1] = x1;
    out[2] = x2;
    out[3] = x3;
}

/* Keep bits of global mask word `word` by the spec: lane i's U has bit 63 - b equal to
 * bit i of random word r_b (r_2j, r_2j+1 from Philox block j), kept iff U >= threshold. */
static uint64_t oracle_word(uint64_t seed, uint64_t stream, uint64_t word, uint64_t threshold,
                            int drop_all)
{
    if (drop_all)
        return 0;
    uint64_t uniforms[64] = {0};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    for (uint32_t block = 0; block < 32; ++block) {
        const uint32_t counter[4] = {(uint32_t)word, (uint32_t)(word >> 32) | (block << 26),
                                     (uint32_t)stream, (uint32_t)(stream >> 32)};
        uint32_t x[4];
        oracle_philox(counter, key, x);
        const uint64_t random[2] = {x[0] | (uint64_t)x[1] << 32, x[2] | (uint64_t)x[3] << 32};
        for (int half = 0; half < 2; ++half)
            for (int lane = 0; lane < 64; ++lane)
                uniforms[lane] |= ((random[half] >> lane) & 1) << (63 - (2 * block + half));
    }
    uint64_t keep = 0;
    for (int lane = 0; lane < 64; ++lane)
        keep |= (uint64_t)(uniforms[lane] >= threshold) << lane;
    return keep;
}

/* The keep bits of global indices, from a direct-mapped cache of the oracle's words. */
#define CACHE_WORDS 4096
typedef struct {
    const fd_mask_params *params;
    uint64_t word[CACHE_WORDS], keep[CACHE_WORDS];
    uint8_t known[CACHE_WORDS];
} oracle_mask;

static int oracle_keep(oracle_mask *mask, uint64_t index)
{
    const uint64_t word = index >> 6;
    const size_t slot = (size_t)(word % CACHE_WORDS);
    if (!mask->known[slot] || mask->word[slot] != word) {
        mask->word[slot] = word;
        mask->keep[slot] = oracle_word(mask->params->seed, mask->params->stream, word,
                                       mask->params->threshold, mask->params->drop_all);
        mask->known[slot] = 1;
    }
    return (int)((mask->keep[slot] >> (index & 63)) & 1);
}

static float oracle_bf16_to_float(uint16_t bits)
{
    const uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

static uint16_t oracle_float_to_bf16(float value)
{
    uint32_t f;
    memcpy(&f, &value, sizeof f);
    if (value != value)
        return (uint16_t)(((f >> 16) & 0x8000u) | 0x7FC0u);
    return (uint16_t)((f + 0x7FFFu + ((f >> 16) & 1u)) >> 16);
}

/* SplitMix64's finaliser: stored mask words from the fuzzed seed. */
static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Element types: 0 f64, 1 f32, 2 f16 (uint16 bits), 3 bf16. */
static const size_t item_size[4] = {8, 4, 2, 2};

/* source * scale rounded to the type, +0 where dropped (type's bits in a uint64). */
static uint64_t oracle_scaled(int type, const void *source, int64_t i, double scale, int kept)
{
    if (!kept)
        return 0;
    switch (type) {
    case 0: {
        double value = ((const double *)source)[i] * scale;
        uint64_t bits;
        memcpy(&bits, &value, 8);
        return bits;
    }
    case 1: {
        float value = ((const float *)source)[i] * (float)scale;
        uint32_t bits;
        memcpy(&bits, &value, 4);
        return bits;
    }
    case 2:
        return fd_float_to_half(fd_half_to_float(((const uint16_t *)source)[i]) * (float)scale);
    default:
        return oracle_float_to_bf16(oracle_bf16_to_float(((const uint16_t *)source)[i]) *
                                    (float)scale);
    }
}

/* Alpha dropout's affine op: a*x + b where kept, c where dropped, in the type's arithmetic. */
static uint64_t oracle_affine(int type, const void *source, int64_t i, double scale,
                              double shift, double dropped, int kept)
{
    switch (type) {
    case 0: {
        double value = kept ? ((const double *)source)[i] * scale + shift : dropped;
        uint64_t bits;
        memcpy(&bits, &value, 8);
        return bits;
    }
    case 1: {
        float value = kept ? ((const float *)source)[i] * (float)scale + (float)shift
                           : (float)dropped;
        uint32_t bits;
        memcpy(&bits, &value, 4);
        return bits;
    }
    case 2:
        return kept ? fd_float_to_half((float)(fd_half_to_float(((const uint16_t *)source)[i]) *
                                               (float)scale) + (float)shift)
                    : fd_float_to_half((float)dropped);
    default:
        return kept ? oracle_float_to_bf16((float)(oracle_bf16_to_float(
                                               ((const uint16_t *)source)[i]) * (float)scale) +
                                           (float)shift)
                    : oracle_float_to_bf16((float)dropped);
    }
}

static uint64_t element_bits(int type, const void *array, int64_t i)
{
    uint64_t bits = 0;
    memcpy(&bits, (const char *)array + (size_t)i * item_size[type], item_size[type]);
    return bits;
}

/* ------------------------------------------------------------------ fenced buffers */

/* `count` items of `size` bytes, `skip` items past a 64-byte boundary; the allocation
 * ends where the array does, so ASan sees an overrun; the skipped bytes hold PATTERN. */
typedef struct {
    uint8_t *base;
    void *array;
    size_t skip_bytes, bytes;
} buffer;

static buffer buffer_make(int64_t count, size_t size, int skip)
{
    buffer b;
    b.skip_bytes = (size_t)skip * size;
    b.bytes = (size_t)count * size;
    if (posix_memalign((void **)&b.base, 64, b.skip_bytes + b.bytes + (b.skip_bytes + b.bytes == 0)))
        abort();
    memset(b.base, PATTERN, b.skip_bytes + b.bytes);
    b.array = b.base + b.skip_bytes;
    return b;
}

static void buffer_check_skip(const buffer *b, const char *name)
{
    for (size_t i = 0; i < b->skip_bytes; ++i)
        if (b->base[i] != PATTERN)
            fail(name, (int64_t)i - (int64_t)b->skip_bytes);
}

/* ------------------------------------------------------------------ two threads */

typedef void (*range_call)(void *job, int64_t first, int64_t stop);
typedef struct {
    range_call call;
    void *job;
    int64_t first, stop;
} thread_part;

static void *run_part(void *argument)
{
    thread_part *part = argument;
    part->call(part->job, part->first, part->stop);
    return NULL;
}

/* call(job, first, stop) on one thread, or split at `split` between two. */
static void run_range(range_call call, void *job, int64_t first, int64_t stop, int threads,
                      int64_t split)
{
    if (threads < 2 || stop - first < 2) {
        call(job, first, stop);
        return;
    }
    split = first + 1 + split % (stop - first - 1);
    thread_part other = {call, job, split, stop};
    pthread_t thread;
    if (pthread_create(&thread, NULL, run_part, &other) != 0) {
        call(job, first, stop); /* no thread to be had: the same range, one thread */
        return;
    }
    call(job, first, split);
    pthread_join(thread, NULL);
}

/* ------------------------------------------------------------------ one call */

typedef struct {
    int type, operation;
    const void *source;
    void *target;
    uint64_t *words;
    double scale;
    fd_mask_params params;
    const fd_runs *runs;
    const fd_broadcast_layout *layout;
    const void *op;
    double sigma;
} job;

#define BY_TYPE(type, CALL)                                                                 \
    switch (type) {                                                                         \
    case 0: CALL(f64, double, double) break;                                               \
    case 1: CALL(f32, float, float) break;                                                 \
    case 2: CALL(f16, uint16_t, float) break;                                              \
    default: CALL(bf16, fd_bfloat16, float) break;                                         \
    }

enum { DROPOUT, APPLY_MASK, MASK_WORDS, SCALE, DROPOUT_RUNS, BROADCAST, GAUSSIAN,
       GAUSSIAN_RUNS, MASK_WORD, OPERATIONS };

static void call_range(void *argument, int64_t first, int64_t stop)
{
    const job *j = argument;
#define DROPOUT_CALL(S, T, SCALE_T)                                                         \
    fd_dropout_range_##S((const T *)j->source, (T *)j->target, j->words, (SCALE_T)j->scale, \
                         &j->params, first, stop);
#define APPLY_CALL(S, T, SCALE_T)                                                           \
    fd_apply_mask_range_##S((const T *)j->source, (T *)j->target, j->words,                 \
                            (SCALE_T)j->scale, j->params.n, first, stop);
#define SCALE_CALL(S, T, SCALE_T)                                                           \
    fd_scale_range_##S((T *)j->target, (SCALE_T)j->scale, j->params.n, first, stop);
#define RUNS_CALL(S, T, SCALE_T)                                                            \
    fd_dropout_runs_##S((const T *)j->source, (T *)j->target, j->words, (SCALE_T)j->scale,  \
                        &j->params, j->runs, first, stop);
#define BROADCAST_CALL(S, T, SCALE_T)                                                       \
    fd_apply_broadcast_range_##S((const T *)j->source, (T *)j->target, j->words, j->layout, \
                                 (const fd_mask_op_##S *)j->op, first, stop);
#define GAUSSIAN_CALL(S, T, SCALE_T)                                                        \
    fd_gaussian_range_##S((const T *)j->source, (T *)j->target, j->sigma, j->params.seed,   \
                          j->params.stream, j->params.offset, first, stop);
#define GAUSSIAN_RUNS_CALL(S, T, SCALE_T)                                                   \
    fd_gaussian_runs_##S((const T *)j->source, (T *)j->target, j->sigma, j->params.seed,    \
                         j->params.stream, j->runs, first, stop);
    switch (j->operation) {
    case DROPOUT: BY_TYPE(j->type, DROPOUT_CALL) break;
    case APPLY_MASK: BY_TYPE(j->type, APPLY_CALL) break;
    case MASK_WORDS: fd_mask_words_range(j->words, &j->params, first, stop); break;
    case SCALE:
        if (j->type == 2) /* no float16 scale kernel: the identity mask does it */
            fd_apply_mask_range_f16((const uint16_t *)j->target, (uint16_t *)j->target, NULL,
                                    (float)j->scale, j->params.n, first, stop);
        else
            BY_TYPE(j->type, SCALE_CALL)
        break;
    case DROPOUT_RUNS: BY_TYPE(j->type, RUNS_CALL) break;
    case BROADCAST: BY_TYPE(j->type, BROADCAST_CALL) break;
    case GAUSSIAN: BY_TYPE(j->type, GAUSSIAN_CALL) break;
    default: BY_TYPE(j->type, GAUSSIAN_RUNS_CALL) break;
    }
}

/* p in [0, 1] from fuzzed bits, by `how`: the bits themselves where they are such a
 * double (subnormals, the ends), a value the kernels treat apart, a dyadic k / 2^m
 * (thresholds whose low bits are zero: one Philox block may decide), or a uniform draw. */
static double p_from_bits(int how, uint64_t bits)
{
    static const double special[] = {0.0, 1.0, 0.5, 0.25, 0.75, 0x1p-64, 0x1p-1074,
                                     1.0 - 0x1p-53, 0.1, 0x1p-63, 0.5 + 0x1p-53};
    double p;
    memcpy(&p, &bits, sizeof p);
    switch (how) {
    case 0:
        if (p >= 0.0 && p <= 1.0)
            return p;
        break;
    case 1:
        return special[bits % (sizeof special / sizeof special[0])];
    case 2: {
        const int m = (int)(bits >> 58); /* 0 .. 63 */
        return ldexp((double)((bits & ((UINT64_C(1) << 53) - 1)) >> (m < 53 ? 53 - m : 0)),
                     -m);
    }
    }
    return (double)(bits >> 11) * 0x1p-53;
}

/* The scale a kernel is given: 1/(1-p) rounded to the type, or a fuzzed finite value. */
static double scale_for(int type, double p, uint64_t bits, int fuzzed)
{
    double scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
    if (fuzzed) {
        memcpy(&scale, &bits, sizeof scale);
        if (!isfinite(scale))
            scale = 1.5;
    }
    switch (type) {
    case 0: return scale;
    case 1: return (float)scale;
    case 2: return fd_half_to_float(fd_float_to_half((float)scale));
    default: return oracle_bf16_to_float(oracle_float_to_bf16((float)scale));
    }
}

/* A count in [low, limit] from fuzzed bits: any, or (top bit set) next to a multiple of
 * 64, where a word ends: the edges coverage alone does not steer to. */
static int64_t count_from(uint64_t bits, int64_t low, int64_t limit)
{
    if (!(bits & (UINT64_C(1) << 23)))
        return low + (int64_t)(bits % (uint64_t)(limit - low + 1));
    const int64_t value = 64 * (int64_t)((bits & 0xFFFF) % (uint64_t)(limit / 64 + 1)) +
                          (int64_t)((bits >> 16) % 5) - 2;
    return value < low ? low : value > limit ? limit : value;
}

/* A block of a C-order array as runs (dropout.h's fd_runs): `outer` axes of global
 * extents `global`, the block's extents `shape` from `origin`; each run `run` elements
 * of an inner axis of `inner` starting at `inner_origin`. */
typedef struct {
    fd_runs runs;
    int64_t shape[3], strides[3];
} block_runs;

static int64_t make_runs(block_runs *block, input *in, int64_t limit, uint64_t *offset)
{
    const int outer = (int)(take(in, 1) % 4);
    int64_t elements = 1, origin_index = 0;
    const int64_t inner = count_from(take(in, 3), 1, limit > 300 ? limit : 300);
    int64_t run = count_from(take(in, 3), 1, inner);
    const int64_t inner_origin = (int64_t)(take(in, 3) % (uint64_t)(inner - run + 1));
    int64_t global[3], origin[3];
    for (int d = 0; d < outer; ++d) {
        global[d] = 1 + (int64_t)(take(in, 1) % 12);
        block->shape[d] = 1 + (int64_t)(take(in, 1) % (uint64_t)global[d]);
        origin[d] = (int64_t)(take(in, 1) % (uint64_t)(global[d] - block->shape[d] + 1));
    }
    int64_t stride = inner;
    for (int d = outer - 1; d >= 0; --d) {
        block->strides[d] = stride;
        origin_index += origin[d] * stride;
        stride *= global[d];
        elements *= block->shape[d];
    }
    if (elements * run > limit) { /* too many elements: one run of the block */
        for (int d = 0; d < outer; ++d)
            block->shape[d] = 1;
        elements = 1;
        run = run < limit ? run : limit;
    }
    if (*offset > INDEX_LIMIT - (uint64_t)stride) /* the global array within the indices */
        *offset = INDEX_LIMIT - (uint64_t)stride;
    block->runs.base = *offset + (uint64_t)(origin_index + inner_origin);
    block->runs.ndim = outer;
    block->runs.shape = block->shape;
    block->runs.strides = block->strides;
    block->runs.run = run;
    return elements * run;
}

/* Global index of local element i of a block (computed apart from fd_run_start). */
static uint64_t run_index(const fd_runs *runs, int64_t i)
{
    int64_t r = i / runs->run;
    uint64_t index = runs->base + (uint64_t)(i % runs->run);
    for (int d = runs->ndim - 1; d >= 0; --d) {
        index += (uint64_t)((r % runs->shape[d]) * runs->strides[d]);
        r /= runs->shape[d];
    }
    return index;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Random123's known answers for Philox4x32-10: the oracle's generator is right */
    static const uint32_t cases[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1}};
    for (int c = 0; c < 3; ++c) {
        uint32_t out[4];
        oracle_philox(cases[c], cases[c] + 4, out);
        if (memcmp(out, cases[c] + 6, sizeof out) != 0)
            fail("the oracle's Philox is not Random123's", c);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    const int operation = (int)(take(&in, 1) % OPERATIONS);
    const int type = (int)(take(&in, 1) % 4);
    const int level = (int)(take(&in, 1) % 4);
    const uint64_t flags = take(&in, 1);
    const int in_place = flags & 1, with_words = (flags >> 1) & 1, large = (flags >> 2) & 1;
    const int threads = 1 + (int)((flags >> 3) & 1), fuzzed_scale = (flags >> 4) & 1;
    const int no_target = (flags >> 5) & 1, affine = (flags >> 6) & 1;
    int64_t n = count_from(take(&in, 3), 0, MAX_SMALL);
    const int p_how = (int)(take(&in, 1) % 4);
    const double p = p_from_bits(p_how, take(&in, 8));
    const uint64_t seed = take(&in, 8), stream = take(&in, 8);
    uint64_t offset = take(&in, 8) % INDEX_LIMIT;
    const uint64_t range_bits = take(&in, 4), split = take(&in, 3);
    const uint64_t scale_bits = take(&in, 8), sigma_bits = take(&in, 8);
    const int skip_source = (int)(take(&in, 1) % 33), skip_target = (int)(take(&in, 1) % 33);
    const int skip_words = (int)(take(&in, 1) % 9);
    fd_set_simd(level);
    if (operation == MASK_WORD) { /* the scalar word function itself */
        const fd_mask_params params = fd_mask_params_make(seed, stream, p, 0, 0);
        const uint64_t word = offset >> 6;
        if (fd_global_mask_word(&params, word) !=
            oracle_word(seed, stream, word, params.threshold, params.drop_all))
            fail("fd_global_mask_word differs from the oracle", (int64_t)word);
        return 0;
    }

    block_runs block;
    fd_broadcast_layout layout;
    int64_t sizes[4], mask_strides[4], mask_elements = 0;
    if (operation == DROPOUT_RUNS || operation == GAUSSIAN_RUNS) {
        n = make_runs(&block, &in, large && operation == DROPOUT_RUNS ? MAX_LARGE : MAX_SMALL,
                      &offset);
    } else if (operation == BROADCAST) {
        layout.ndim = 1 + (int)(take(&in, 1) % 4);
        int64_t stride = 1;
        n = 1;
        for (int d = layout.ndim - 1; d >= 0; --d) {
            sizes[d] = 1 + (int64_t)(take(&in, 1) % (d == layout.ndim - 1 ? 200 : 6));
            const int shared = (int)(take(&in, 1) & 1);
            mask_strides[d] = shared ? 0 : stride;
            stride *= shared ? 1 : sizes[d];
            n *= sizes[d];
        }
        mask_elements = stride;
        layout.sizes = sizes;
        layout.mask_strides = mask_strides;
    }
    if (offset > INDEX_LIMIT - (uint64_t)n)
        offset = INDEX_LIMIT - (uint64_t)n;
    const int64_t total_words = fd_words_for(n);
    const int elementwise = operation == BROADCAST || operation == GAUSSIAN ||
                            operation == GAUSSIAN_RUNS; /* ranges of elements, not of words */
    const int64_t extent = elementwise ? n : total_words;
    const int64_t first = extent ? (int64_t)((range_bits & 0xFFFF) % (uint64_t)(extent + 1)) : 0;
    const int64_t stop = first + (extent ? (int64_t)((range_bits >> 16) %
                                                     (uint64_t)(extent - first + 1)) : 0);
    snprintf(context, sizeof context,
             "operation %d type %d level %d flags 0x%02x n %lld p %a seed %llu stream %llu "
             "offset %llu range [%lld, %lld) skips %d %d %d", operation, type, level,
             (unsigned)flags, (long long)n, p, (unsigned long long)seed,
             (unsigned long long)stream, (unsigned long long)offset, (long long)first,
             (long long)stop, skip_source, skip_target, skip_words);
    const size_t size_of = item_size[type];

    job j;
    memset(&j, 0, sizeof j);
    j.type = type;
    j.operation = operation;
    j.params = fd_mask_params_make(seed, stream, p, offset, n);
    j.scale = scale_for(type, p, scale_bits, fuzzed_scale);
    j.runs = &block.runs;
    j.layout = &layout;
    memcpy(&j.sigma, &sigma_bits, sizeof j.sigma);
    if (!isfinite(j.sigma) || j.sigma < 0)
        j.sigma = p < 1.0 ? sqrt(p / (1.0 - p)) : 1.0;

    /* the arrays: the source's bits from the rest of the input (cycled) */
    buffer source = buffer_make(n, size_of, skip_source);
    for (size_t b = 0; b < source.bytes; ++b)
        ((uint8_t *)source.array)[b] = in.size ? in.data[b % in.size] : (uint8_t)(b * 131);
    buffer copy = buffer_make(n, size_of, 0); /* the source as it was */
    memcpy(copy.array, source.array, source.bytes);
    const int writes_elements = operation != MASK_WORDS &&
                                !(no_target && (operation == DROPOUT ||
                                                operation == DROPOUT_RUNS));
    buffer target = buffer_make(in_place || !writes_elements ? 0 : n, size_of, skip_target);
    void *target_array = !writes_elements ? NULL : in_place ? source.array : target.array;
    if (operation == SCALE) /* in place only */
        target_array = source.array;
    const int64_t mask_words = operation == BROADCAST ? fd_words_for(mask_elements) : total_words;
    const int stores_words = operation == MASK_WORDS ||
                             ((operation == DROPOUT || operation == DROPOUT_RUNS) &&
                              (with_words || !target_array));
    const int reads_words = operation == APPLY_MASK || operation == BROADCAST;
    buffer words = buffer_make(stores_words || reads_words ? mask_words : 0, 8, skip_words);
    if (reads_words) /* stored keep bits: pseudo-random, from the fuzzed seed */
        for (int64_t k = 0; k < mask_words; ++k)
            ((uint64_t *)words.array)[k] = mix(seed + (uint64_t)k * UINT64_C(0x9E3779B97F4A7C15));
    buffer words_copy = buffer_make(words.bytes / 8, 8, 0);
    memcpy(words_copy.array, words.array, words.bytes);

    fd_mask_op_f64 op64 = {affine, j.scale, 0.0, 0.0};
    fd_mask_op_f32 op32 = {affine, (float)j.scale, 0.0f, 0.0f};
    if (affine) { /* alpha dropout's constants, or fuzzed ones */
        double shift, dropped;
        memcpy(&shift, &sigma_bits, sizeof shift);
        dropped = -1.7580993408473766 * (1.0 + 0.5 * p);
        if (!isfinite(shift))
            shift = 0.25;
        op64.shift = shift;
        op64.dropped_value = dropped;
        op32.shift = (float)shift;
        op32.dropped_value = type == 2 ? fd_half_to_float(fd_float_to_half((float)dropped))
                             : type == 3 ? oracle_bf16_to_float(oracle_float_to_bf16((float)dropped))
                                         : (float)dropped;
    }
    j.op = type == 0 ? (const void *)&op64 : (const void *)&op32;
    j.source = source.array;
    j.target = target_array;
    j.words = stores_words || reads_words ? (uint64_t *)words.array : NULL;

    run_range(call_range, &j, first, stop, threads, (int64_t)split);

    static oracle_mask mask;
    mask.params = &j.params;
    memset(mask.known, 0, sizeof mask.known);

    /* elements: [begin, end) were in the call's range */
    const int64_t begin = elementwise ? first : first * 64;
    const int64_t end = elementwise ? stop : (stop * 64 < n ? stop * 64 : n);
    const void *result = target_array;
    buffer one = buffer_make(1, size_of, 0);
    for (int64_t i = 0; result && i < n; ++i) {
        const uint64_t got = element_bits(type, result, i);
        /* outside the range: in place the source's bits, else the target's PATTERN */
        uint64_t expected = result == source.array ? element_bits(type, copy.array, i)
                                                   : UINT64_C(0xA5A5A5A5A5A5A5A5) >>
                                                         (64 - 8 * size_of);
        if (i >= begin && i < end) {
            switch (operation) {
            case DROPOUT:
                expected = oracle_scaled(type, copy.array, i, j.scale,
                                         oracle_keep(&mask, offset + (uint64_t)i));
                break;
            case DROPOUT_RUNS:
                expected = oracle_scaled(type, copy.array, i, j.scale,
                                         oracle_keep(&mask, run_index(&block.runs, i)));
                break;
            case APPLY_MASK:
                expected = oracle_scaled(type, copy.array, i, j.scale,
                                         (int)((((uint64_t *)words_copy.array)[i >> 6] >>
                                                (i & 63)) & 1));
                break;
            case SCALE:
                expected = oracle_scaled(type, copy.array, i, j.scale, 1);
                break;
            case BROADCAST: {
                int64_t rest = i, mask_index = 0;
                for (int d = layout.ndim - 1; d >= 0; --d) {
                    mask_index += (rest % sizes[d]) * mask_strides[d];
                    rest /= sizes[d];
                }
                const int kept = (int)((((uint64_t *)words_copy.array)[mask_index >> 6] >>
                                        (mask_index & 63)) & 1);
                expected = affine ? oracle_affine(type, copy.array, i, op64.scale, op64.shift,
                                                  type == 0 ? op64.dropped_value
                                                            : op32.dropped_value, kept)
                                  : oracle_scaled(type, copy.array, i, j.scale, kept);
                break;
            }
            default: { /* Gaussian: the one-element path of the header, element by element */
                const uint64_t index = operation == GAUSSIAN ? offset + (uint64_t)i
                                                             : run_index(&block.runs, i);
#define ONE_GAUSSIAN(S, T, SCALE_T)                                                         \
    fd_gaussian_range_##S((const T *)copy.array + i, (T *)one.array, j.sigma, seed, stream,  \
                          index, 0, 1);
                BY_TYPE(type, ONE_GAUSSIAN)
                expected = element_bits(type, one.array, 0);
            }
            }
        }
        if (got != expected) {
            fprintf(stderr, "got 0x%llx, expected 0x%llx\n", (unsigned long long)got,
                    (unsigned long long)expected);
            fail("an element differs from the oracle (or one outside the range changed)", i);
        }
    }
    for (int64_t k = 0; stores_words && k < mask_words; ++k) {
        uint64_t expected = ((uint64_t *)words_copy.array)[k];
        if (k >= first && k < stop) {
            expected = 0;
            for (int64_t b = 0; b < 64 && k * 64 + b < n; ++b) {
                const uint64_t index = operation == DROPOUT_RUNS
                                           ? run_index(&block.runs, k * 64 + b)
                                           : offset + (uint64_t)(k * 64 + b);
                expected |= (uint64_t)oracle_keep(&mask, index) << b;
            }
        }
        if (((uint64_t *)words.array)[k] != expected)
            fail("a mask word differs from the oracle (or one outside the range changed)", k);
    }
    if (reads_words && memcmp(words.array, words_copy.array, words.bytes) != 0)
        fail("stored mask words were written", 0);
    if (!in_place && operation != SCALE && memcmp(source.array, copy.array, source.bytes) != 0)
        fail("the source was written", 0);
    buffer_check_skip(&source, "a byte before the source was written");
    buffer_check_skip(&target, "a byte before the target was written");
    buffer_check_skip(&words, "a byte before the words was written");

    free(one.base);
    free(source.base);
    free(copy.base);
    free(target.base);
    free(words.base);
    free(words_copy.base);
    return 0;
}
