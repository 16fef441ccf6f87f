/* The mask stream: the keep bits of a global mask word (docs/mask-stream.md).
 *
 * Part of fastdrop's C interface. Mirrored by fastdrop/maskstream/numba_words.py;
 * fastdrop.reference is the oracle both are tested against.
 */
#ifndef FASTDROP_MASK_STREAM_H
#define FASTDROP_MASK_STREAM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "philox.h"

/* The block index j sits in counter word 1 from this bit up. */
#define FD_BLOCK_SHIFT 26

/* Everything that fixes the keep bits of one call: elements offset .. offset + n - 1. */
typedef struct {
    uint64_t seed;      /* Philox key */
    uint64_t stream;    /* call id */
    uint64_t threshold; /* floor(p * 2^64): a lane is dropped iff its U < threshold */
    int drop_all;       /* p == 1: threshold would be 2^64 */
    uint64_t offset;    /* global index of element 0 */
    int64_t n;          /* number of elements */
} fd_mask_params;

/* Parameters for drop probability p in [0, 1] (the caller validates p). */
static inline fd_mask_params fd_mask_params_make(uint64_t seed, uint64_t stream, double p,
                                                 uint64_t offset, int64_t n)
{
    fd_mask_params params;
    params.seed = seed;
    params.stream = stream;
    params.drop_all = p >= 1.0;
    params.threshold = params.drop_all ? 0 : (uint64_t)ldexp(p, 64); /* exact for p < 1 */
    params.offset = offset;
    params.n = n;
    return params;
}

/* Keep bits of global mask word `word` for 0 <= p < 1: bit i is 1 iff lane i's
 * 64-bit uniform U_i >= threshold. U is compared most significant bit first, one
 * bit of every lane per 64-bit random word, stopping once every lane is decided. */
static inline uint64_t fd_mask_word(uint64_t seed, uint64_t stream, uint64_t word,
                                    uint64_t threshold)
{
    if (threshold == 0)
        return ~UINT64_C(0);
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t counter[4] = {(uint32_t)word, (uint32_t)(word >> 32), (uint32_t)stream,
                           (uint32_t)(stream >> 32)};
    const uint32_t word_high = counter[1];
    uint64_t undecided = ~UINT64_C(0), dropped = 0, odd_word = 0, random_bits;
    for (int bit_round = 0; bit_round < 64; ++bit_round) {
        if ((bit_round & 1) == 0) {
            uint32_t block[4];
            counter[1] = word_high | ((uint32_t)(bit_round >> 1) << FD_BLOCK_SHIFT);
            fd_philox4x32_10(counter, key, block);
            random_bits = (uint64_t)block[0] | ((uint64_t)block[1] << 32);
            odd_word = (uint64_t)block[2] | ((uint64_t)block[3] << 32);
        } else {
            random_bits = odd_word;
        }
        const int position = 63 - bit_round;
        const uint64_t threshold_bit = UINT64_C(0) - ((threshold >> position) & 1);
        /* decided where the lane's bit differs from T's; dropped (U < T) where T's bit is 1 */
        const uint64_t differs = (random_bits ^ threshold_bit) & undecided;
        dropped |= differs & threshold_bit;
        undecided &= ~differs;
        /* lanes still equal to T so far are >= T once T's remaining bits are zero */
        if (undecided == 0 || (threshold & ((UINT64_C(1) << position) - 1)) == 0)
            break;
    }
    return ~dropped;
}

/* Like fd_mask_word, also covering p == 1. */
static inline uint64_t fd_global_mask_word(const fd_mask_params *params, uint64_t word)
{
    return params->drop_all ? 0 : fd_mask_word(params->seed, params->stream, word,
                                               params->threshold);
}

/* Whether one Philox block decides every lane of a word: T's bits below its top two are
 * zero (p = 0, 0.25, 0.5, 0.75), so the first block's two random words settle each lane. */
static inline int fd_one_block_decides(const fd_mask_params *params)
{
    return (params->threshold & ((UINT64_C(1) << 62) - 1)) == 0;
}

/* Keep bits of FD_GROUP_WORDS consecutive global words word, word + 1, ... at once.
 *
 * The same bits as fd_global_mask_word. On x86-64 CPUs with AVX2 (detected at run
 * time; the build itself targets plain x86-64) the sixteen words run side by side in
 * vector lanes, in independent chains whose multiplies hide each other's latency; the
 * group then draws rounds until every lane of every word is decided, which never
 * changes a word's bits. Elsewhere each word is computed alone. */
#define FD_GROUP_WORDS 16

/* Which path a call takes, for the test builds that record it (tests/simd/); nothing here. */
#ifndef FD_PATH_TAKEN
#define FD_PATH_TAKEN(name) ((void)0)
#endif

/* FD_HAVE_AVX2_PATH: whether the SIMD paths are compiled (x86-64 with GCC or Clang);
 * -DFD_HAVE_AVX2_PATH=0 builds the portable path alone, as on any other CPU. */
#ifndef FD_HAVE_AVX2_PATH
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FD_HAVE_AVX2_PATH 1
#else
#define FD_HAVE_AVX2_PATH 0
#endif
#endif

#if FD_HAVE_AVX2_PATH
/* Three things a test build replaces to run every path on any x86-64 (tests/simd/): the
 * intrinsics' header (an emulation), the target attribute of a function using them, and
 * the CPU's features. */
#ifdef FD_INTRINSICS_HEADER
#include FD_INTRINSICS_HEADER
#else
#include <immintrin.h>
#endif
#ifndef FD_TARGET
#define FD_TARGET(features) __attribute__((target(features)))
#endif
#ifndef FD_CPU_SUPPORTS
#define FD_CPU_SUPPORTS(feature) __builtin_cpu_supports(feature)
#endif

/* The instruction set the kernels use: 0 portable, 1 AVX2, 2 AVX-512F, 3 AVX-512F with
 * BW, DQ and BF16 (which only the bfloat16 kernels use beyond 2). -1: not yet detected.
 * fd_set_simd caps it (0 forces the portable path). */
static int fd_simd_state = -1;

static inline int fd_cpu_simd_level(void)
{
    if (FD_CPU_SUPPORTS("avx512f"))
        return FD_CPU_SUPPORTS("avx512bw") && FD_CPU_SUPPORTS("avx512dq") &&
                       FD_CPU_SUPPORTS("avx512bf16")
                   ? 3
                   : 2;
    return FD_CPU_SUPPORTS("avx2") ? 1 : 0;
}

/* The level in use: 0 portable, 1 AVX2, 2 AVX-512F, 3 with BF16 (nonzero: SIMD is on). */
static inline int fd_simd_enabled(void)
{
    if (fd_simd_state < 0)
        fd_simd_state = fd_cpu_simd_level();
    return fd_simd_state;
}

/* Use at most `level` (0 portable, 1 AVX2, 2 AVX-512F, 3 BF16), as far as the CPU has it;
 * returns the level now in use. Results are the same bits on every level. */
static inline int fd_set_simd(int level)
{
    const int cpu = fd_cpu_simd_level();
    fd_simd_state = level < 0 ? 0 : (level < cpu ? level : cpu);
    return fd_simd_state;
}

/* Philox and the keep-bit decision on vectors of 64-bit lanes, one set of macros for
 * both widths: W is 256 (AVX2) or 512 (AVX-512F), naming the intrinsics _mm<W>_...;
 * SET1 broadcasts a 64-bit value (_mm256_set1_epi64x or _mm512_set1_epi64).
 *
 * Each lane holds one 32-bit Philox word in its low half; the upper halves are left
 * holding garbage, which costs nothing: the multiplies read only the low halves, the
 * garbage only ever reaches other upper halves, and FD_VEC_JOIN masks it off at the end.
 * A product's high half comes down by swapping the lane's halves (a shuffle, which runs
 * on another port than the multiplies) instead of a shift. Both save instructions in
 * the ten rounds. */
#define FD_SWAP32_256(v) _mm256_shuffle_epi32(v, 0xB1)
#define FD_SWAP32_512(v) _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)0xB1)
#define FD_VEC_ROUND(W, x0, x1, x2, x3, m0, m1, k0, k1)                                      \
    do {                                                                                    \
        const __m##W##i product0 = _mm##W##_mul_epu32(x0, m0);                              \
        const __m##W##i product1 = _mm##W##_mul_epu32(x2, m1);                              \
        x0 = _mm##W##_xor_si##W(_mm##W##_xor_si##W(FD_SWAP32_##W(product1), x1), k0);      \
        x2 = _mm##W##_xor_si##W(_mm##W##_xor_si##W(FD_SWAP32_##W(product0), x3), k1);      \
        x1 = product1;                                                                      \
        x3 = product0;                                                                      \
    } while (0)

/* The chains of a batch: CHAINS(OP, ...) emits OP(c, ...) for each chain name c. A
 * chain of LANES 64-bit lanes holds words word + i * LANES .. + LANES - 1, i its place. */
#define FD_CHAINS_2(OP, ...) OP(a, __VA_ARGS__) OP(b, __VA_ARGS__)
#define FD_CHAINS_4(OP, ...) OP(a, __VA_ARGS__) OP(b, __VA_ARGS__) OP(c, __VA_ARGS__) \
                             OP(d, __VA_ARGS__)
#define FD_CHAIN_PLACE_a 0
#define FD_CHAIN_PLACE_b 1
#define FD_CHAIN_PLACE_c 2
#define FD_CHAIN_PLACE_d 3

/* A chain's words, their counter word 1, and its decision state (before the blocks). */
#define FD_CHAIN_START(c, W, SET1, LANES, LANE_INDEX, word)                                  \
    const __m##W##i words_##c = _mm##W##_add_epi64(                                         \
        SET1((long long)((word) + (uint64_t)(FD_CHAIN_PLACE_##c * LANES))), LANE_INDEX);    \
    const __m##W##i high_##c = _mm##W##_srli_epi64(words_##c, 32);                          \
    __m##W##i undecided_##c = SET1(-1), dropped_##c = _mm##W##_setzero_si##W();
/* The counters of block `block_bits` (counter word 0 is a word's low half: the lanes as
 * they are, since the multiplies read only the low halves). */
#define FD_CHAIN_COUNTERS(c, W, block_bits, stream0, stream1)                                \
    __m##W##i c##0 = words_##c, c##1 = _mm##W##_or_si##W(high_##c, block_bits);             \
    __m##W##i c##2 = stream0, c##3 = stream1;
#define FD_CHAIN_ROUND(c, W, m0, m1, k0, k1) FD_VEC_ROUND(W, c##0, c##1, c##2, c##3, m0, m1, k0, k1);

/* The 20 round keys of Philox4x32-10 for key `seed`, each broadcast to a vector, into
 * keys[2 r] and keys[2 r + 1] (round r): drawn once for all the blocks of a batch. */
#define FD_VEC_ROUND_KEYS(SET1, seed, keys)                                                 \
    do {                                                                                    \
        uint32_t key0 = (uint32_t)(seed), key1 = (uint32_t)((seed) >> 32);                  \
        for (int round = 0; round < 10; ++round) {                                          \
            if (round) {                                                                    \
                key0 += FD_PHILOX_W0;                                                       \
                key1 += FD_PHILOX_W1;                                                       \
            }                                                                               \
            keys[2 * round] = SET1(key0);                                                   \
            keys[2 * round + 1] = SET1(key1);                                               \
        }                                                                                   \
    } while (0)

/* Philox4x32-10 on every chain's counters with the round keys `keys` (FD_VEC_ROUND_KEYS),
 * the chains' rounds interleaved. */
#define FD_VEC_PHILOX10(W, CHAINS, keys, m0, m1)                                              \
    for (int round = 0; round < 10; ++round) {                                              \
        const __m##W##i k0 = keys[2 * round], k1 = keys[2 * round + 1];                     \
        CHAINS(FD_CHAIN_ROUND, W, m0, m1, k0, k1)                                           \
    }

/* Lanes whose random bit differs from the threshold's are decided: dropped where T's is 1. */
#define FD_VEC_DECIDE(W, random_bits, threshold_bit, undecided, dropped)                     \
    do {                                                                                    \
        const __m##W##i differs = _mm##W##_and_si##W(                                       \
            _mm##W##_xor_si##W(random_bits, threshold_bit), undecided);                     \
        dropped = _mm##W##_or_si##W(dropped, _mm##W##_and_si##W(differs, threshold_bit));   \
        undecided = _mm##W##_andnot_si##W(differs, undecided);                              \
    } while (0)

/* The 64-bit random word of Philox outputs (low, high) in each lane (low32: a vector of
 * 0xFFFFFFFF, which clears low's upper half). */
#define FD_VEC_JOIN(W, low, high, low32)                                                    \
    _mm##W##_or_si##W(_mm##W##_and_si##W(low, low32), _mm##W##_slli_epi64(high, 32))

/* A block's two random words decide the chain's lanes at two bit positions. */
#define FD_CHAIN_DECIDE(c, W, low32, bit_even, bit_odd)                                      \
    FD_VEC_DECIDE(W, FD_VEC_JOIN(W, c##0, c##1, low32), bit_even, undecided_##c, dropped_##c); \
    FD_VEC_DECIDE(W, FD_VEC_JOIN(W, c##2, c##3, low32), bit_odd, undecided_##c, dropped_##c);
#define FD_CHAIN_ANY(c, W, any) any = _mm##W##_or_si##W(any, undecided_##c);
#define FD_CHAIN_STORE(c, W, LANES, out)                                                     \
    _mm##W##_storeu_si##W((__m##W##i *)((out) + FD_CHAIN_PLACE_##c * LANES),                \
                          _mm##W##_xor_si##W(dropped_##c, FD_ALL_ONES_##W));
#define FD_ALL_ONES_256 _mm256_set1_epi64x(-1)
#define FD_ALL_ONES_512 _mm512_set1_epi64(-1)

/* Keep bits of the words word, word + 1, ... in CHAINS of LANES 64-bit lanes each,
 * whose independent multiplies hide each other's latency: the body of a function with
 * the instruction set's target attribute. One body for both widths: W is 256 (AVX2: 4
 * chains of 4 lanes, a group of FD_GROUP_WORDS words; or 2 chains, half a group) or 512
 * (AVX-512F, 2 chains of 8 lanes, a group); LANE_INDEX holds 0 .. LANES-1 and
 * ALL_ZERO(v) tests a vector for zero (FD_VEC_256, FD_VEC_256_HALF and FD_VEC_512 list
 * these six). Rounds are drawn until every lane of every chain is decided, which never
 * changes a word's bits. AFTER_BLOCK is a statement run after every Philox block: empty
 * here; dropout.h's fused kernels scale elements there, so that their loads and stores
 * overlap the arithmetic. */
#define FD_VEC_MASK_BATCH_BODY(W, SET1, LANES, LANE_INDEX, ALL_ZERO, CHAINS, params, word, out, \
                               AFTER_BLOCK)                                                 \
    {                                                                                       \
        const uint64_t threshold = params->threshold;                                       \
        const __m##W##i low32 = SET1(0xFFFFFFFF);                                           \
        const __m##W##i m0 = SET1(FD_PHILOX_M0), m1 = SET1(FD_PHILOX_M1);                   \
        const __m##W##i stream0 = SET1((long long)(params->stream & 0xFFFFFFFF));           \
        const __m##W##i stream1 = SET1((long long)(params->stream >> 32));                  \
        __m##W##i keys[20];                                                                 \
        FD_VEC_ROUND_KEYS(SET1, params->seed, keys);                                        \
        CHAINS(FD_CHAIN_START, W, SET1, LANES, LANE_INDEX, word)                            \
        for (int block = 0; block < 32; ++block) {                                          \
            const __m##W##i block_bits = SET1((long long)block << FD_BLOCK_SHIFT);          \
            CHAINS(FD_CHAIN_COUNTERS, W, block_bits, stream0, stream1)                      \
            FD_VEC_PHILOX10(W, CHAINS, keys, m0, m1);                                       \
            const int position_even = 63 - 2 * block, position_odd = 62 - 2 * block;       \
            const __m##W##i bit_even = SET1(-(long long)((threshold >> position_even) & 1)); \
            const __m##W##i bit_odd = SET1(-(long long)((threshold >> position_odd) & 1));  \
            CHAINS(FD_CHAIN_DECIDE, W, low32, bit_even, bit_odd)                            \
            AFTER_BLOCK                                                                     \
            __m##W##i any = _mm##W##_setzero_si##W();                                       \
            CHAINS(FD_CHAIN_ANY, W, any)                                                    \
            /* lanes still equal to T so far are >= T once T's remaining bits are zero */   \
            if (ALL_ZERO(any) || (threshold & ((UINT64_C(1) << position_odd) - 1)) == 0)    \
                break;                                                                      \
        }                                                                                   \
        CHAINS(FD_CHAIN_STORE, W, LANES, out)                                               \
    }

#define FD_ALL_ZERO_256(v) _mm256_testz_si256(v, v)
#define FD_ALL_ZERO_512(v) (_mm512_test_epi64_mask(v, v) == 0)
/* The first six arguments of FD_VEC_MASK_BATCH_BODY for each width (through
 * FD_VEC_BATCH, which expands them first): a group of FD_GROUP_WORDS words a call. */
#define FD_VEC_256 256, _mm256_set1_epi64x, 4, _mm256_set_epi64x(3, 2, 1, 0), FD_ALL_ZERO_256, \
                   FD_CHAINS_4
/* AVX2 in two chains: half a group (8 words) a call. The fused kernels' pipelined draw
 * takes it, as its scaling between blocks needs registers that four chains hold. */
#define FD_VEC_256_HALF 256, _mm256_set1_epi64x, 4, _mm256_set_epi64x(3, 2, 1, 0),          \
                        FD_ALL_ZERO_256, FD_CHAINS_2
#define FD_VEC_512 512, _mm512_set1_epi64, 8, _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0),     \
                   FD_ALL_ZERO_512, FD_CHAINS_2
#define FD_VEC_BATCH(...) FD_VEC_MASK_BATCH_BODY(__VA_ARGS__)

/* FD_GROUP_WORDS words with AVX2, in four chains. */
FD_TARGET("avx2") static void fd_mask_words_16_avx2(
    const fd_mask_params *params, uint64_t word, uint64_t out[FD_GROUP_WORDS])
FD_VEC_BATCH(FD_VEC_256, params, word, out, )

/* Half a group with AVX2, in two chains. */
FD_TARGET("avx2") static void fd_mask_words_8_avx2(
    const fd_mask_params *params, uint64_t word, uint64_t out[FD_GROUP_WORDS / 2])
FD_VEC_BATCH(FD_VEC_256_HALF, params, word, out, )

/* FD_GROUP_WORDS words on AVX-512F: half the instructions of the AVX2 batch per word. */
FD_TARGET("avx512f") static void fd_mask_words_16_avx512(
    const fd_mask_params *params, uint64_t word, uint64_t out[FD_GROUP_WORDS])
FD_VEC_BATCH(FD_VEC_512, params, word, out, )
#else
static inline int fd_simd_enabled(void) { return 0; }
static inline int fd_set_simd(int level) { (void)level; return 0; }
#endif

/* Keep bits of global words word .. word + FD_GROUP_WORDS - 1 (any p), into out. */
static inline void fd_mask_words_ahead(const fd_mask_params *params, uint64_t word,
                                       uint64_t out[FD_GROUP_WORDS])
{
#if FD_HAVE_AVX2_PATH
    if (!params->drop_all && params->threshold != 0 && fd_simd_enabled()) {
        if (fd_simd_enabled() >= 2) {
            FD_PATH_TAKEN("words avx512");
            fd_mask_words_16_avx512(params, word, out);
        } else if (fd_one_block_decides(params)) {
            /* one Philox block decides every lane (p = 0.25, 0.5, 0.75): four chains
             * hide the multiplies' latency best */
            FD_PATH_TAKEN("words avx2 x16");
            fd_mask_words_16_avx2(params, word, out);
        } else { /* more blocks: four chains' state spills, two chains' does not */
            FD_PATH_TAKEN("words avx2 x8");
            fd_mask_words_8_avx2(params, word, out);
            fd_mask_words_8_avx2(params, word + FD_GROUP_WORDS / 2, out + FD_GROUP_WORDS / 2);
        }
        return;
    }
#endif
    FD_PATH_TAKEN("words scalar");
    for (int w = 0; w < FD_GROUP_WORDS; ++w)
        out[w] = fd_global_mask_word(params, word + (uint64_t)w);
}

/* A local mask word of a call whose element 0 is bit `shift` (1..63) of a global word:
 * the top 64 - shift bits of global word `low`, then the low `shift` bits of the next
 * global word `high`. */
static inline uint64_t fd_local_word(uint64_t low, uint64_t high, unsigned shift)
{
    return (low >> shift) | (high << (64 - shift));
}

/* Keep bits of a group of `count` (<= FD_GROUP_WORDS) local mask words, group ..
 * group + count - 1, of a call whose element 0 is bit `shift` of global word `base`:
 * local word k holds the top 64 - shift bits of global word base + k and the low
 * `shift` bits of base + k + 1. Groups must come in increasing order, FD_GROUP_WORDS
 * apart, through the same `global` buffer and `carried` flag (start it at 0): when a
 * group's last word needs the next group's first global word, the whole next batch is
 * drawn into the buffer's upper half and carried over, never drawn twice. Bits past
 * the array's end may be set; callers clear them. */
static inline void fd_local_words(const fd_mask_params *params, uint64_t base, unsigned shift,
                                  int64_t group, int64_t count,
                                  uint64_t global[2 * FD_GROUP_WORDS], int *carried,
                                  uint64_t keep[FD_GROUP_WORDS])
{
    if (shift == 0) {
        fd_mask_words_ahead(params, base + (uint64_t)group, keep);
        return;
    }
    if (*carried)
        memcpy(global, global + FD_GROUP_WORDS, FD_GROUP_WORDS * sizeof global[0]);
    else
        fd_mask_words_ahead(params, base + (uint64_t)group, global);
    /* the last word's elements reach into the next global word unless the array ends first */
    *carried = count == FD_GROUP_WORDS &&
               params->n - (group + count - 1) * 64 > 64 - (int64_t)shift;
    if (*carried)
        fd_mask_words_ahead(params, base + (uint64_t)(group + FD_GROUP_WORDS),
                            global + FD_GROUP_WORDS);
    for (int64_t i = 0; i < count; ++i)
        keep[i] = fd_local_word(global[i], global[i + 1], shift);
}

#endif /* FASTDROP_MASK_STREAM_H */
