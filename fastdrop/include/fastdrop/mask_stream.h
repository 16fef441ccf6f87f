/* The mask stream: the keep bits of a global mask word (docs/mask-stream.md).
 *
 * Part of fastdrop's C interface. Mirrored by fastdrop/maskstream/numba_words.py;
 * fastdrop.reference is the oracle both are tested against.
 */
#ifndef FASTDROP_MASK_STREAM_H
#define FASTDROP_MASK_STREAM_H

#include <math.h>
#include <stdint.h>

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

#endif /* FASTDROP_MASK_STREAM_H */
