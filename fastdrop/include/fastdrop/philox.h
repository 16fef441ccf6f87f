/* Philox4x32-10 block function (Salmon et al., SC'11; Random123).
 *
 * Part of fastdrop's C interface: the random-number layer. It knows nothing of
 * masks or dropout. Mirrored by fastdrop/rng/philox.py (NumPy) and
 * fastdrop/rng/philox_numba.py (Numba); all are checked against Random123's
 * known-answer vectors.
 */
#ifndef FASTDROP_PHILOX_H
#define FASTDROP_PHILOX_H

#include <stdint.h>

#define FD_PHILOX_M0 UINT32_C(0xD2511F53)
#define FD_PHILOX_M1 UINT32_C(0xCD9E8D57)
#define FD_PHILOX_W0 UINT32_C(0x9E3779B9)
#define FD_PHILOX_W1 UINT32_C(0xBB67AE85)

/* out = Philox4x32-10(counter, key). Safe with out == counter. */
static inline void fd_philox4x32_10(const uint32_t counter[4], const uint32_t key[2],
                                    uint32_t out[4])
{
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
        if (round) { /* the key is bumped before every round but the first */
            k0 += FD_PHILOX_W0;
            k1 += FD_PHILOX_W1;
        }
        const uint64_t product0 = (uint64_t)FD_PHILOX_M0 * c0;
        const uint64_t product1 = (uint64_t)FD_PHILOX_M1 * c2;
        const uint32_t next0 = (uint32_t)(product1 >> 32) ^ c1 ^ k0;
        const uint32_t next2 = (uint32_t)(product0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)product1;
        c3 = (uint32_t)product0;
        c0 = next0;
        c2 = next2;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

#endif /* FASTDROP_PHILOX_H */
