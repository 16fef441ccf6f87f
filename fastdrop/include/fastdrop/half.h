/* IEEE float16 <-> float32 and bfloat16 <-> float32 conversions on bit patterns.
 *
 * Portable C with no compiler float16 or bfloat16 type, so every compiler and the
 * Numba mirror (fastdrop/kernels/numba/half.py) give the same bits as NumPy and
 * ml_dtypes. Narrowing rounds to nearest, ties to even (docs/mask-stream.md, section 6).
 */
#ifndef FASTDROP_HALF_H
#define FASTDROP_HALF_H

#include <stdint.h>
#include <string.h>

static inline float fd_half_to_float(uint16_t half)
{
    const uint32_t h = half;
    const uint32_t sign = (h & 0x8000u) << 16;
    const uint32_t exponent = h & 0x7C00u;
    uint32_t mantissa = h & 0x03FFu, bits;
    if (exponent == 0x7C00u) {            /* inf or NaN */
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else if (exponent != 0) {           /* normal: rebias the exponent from 15 to 127 */
        bits = sign | (((h & 0x7FFFu) + 0x1C000u) << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {                              /* subnormal: normalise the significand */
        uint32_t biased = 113;
        while ((mantissa & 0x0400u) == 0) {
            mantissa <<= 1;
            biased -= 1;
        }
        bits = sign | (biased << 23) | ((mantissa & 0x03FFu) << 13);
    }
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint16_t fd_float_to_half(float value)
{
    uint32_t f;
    memcpy(&f, &value, sizeof f);
    const uint32_t sign = (f >> 16) & 0x8000u;
    f &= 0x7FFFFFFFu;
    if (f >= 0x7F800000u) {               /* inf, or NaN kept quiet with its top payload */
        if (f == 0x7F800000u)
            return (uint16_t)(sign | 0x7C00u);
        return (uint16_t)(sign | 0x7E00u | ((f >> 13) & 0x03FFu));
    }
    if (f >= 0x47800000u)                 /* |v| >= 2^16 overflows */
        return (uint16_t)(sign | 0x7C00u);
    if (f >= 0x38800000u) {               /* normal: drop 13 bits, round half to even */
        uint32_t half = (f >> 13) - 0x1C000u;
        const uint32_t rest = f & 0x1FFFu;
        if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
            half += 1;                    /* a carry into the exponent is right (up to inf) */
        return (uint16_t)(sign | half);
    }
    if (f <= 0x33000000u)                 /* |v| <= 2^-25 rounds to zero (a tie goes to even) */
        return (uint16_t)sign;
    const uint32_t shift = 126u - (f >> 23); /* subnormal: units of 2^-24 */
    const uint32_t significand = (f & 0x007FFFFFu) | 0x00800000u;
    uint32_t half = significand >> shift;
    const uint32_t rest = significand & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half & 1u)))
        half += 1;
    return (uint16_t)(sign | half);
}

/* bfloat16: the top half of a float32. An element type of its own (a struct, not a
 * bare uint16_t), so a bfloat16 array cannot be passed where float16 bits are meant. */
typedef struct {
    uint16_t bits;
} fd_bfloat16;

/* Exact: the bits shifted up by 16. */
static inline float fd_bfloat16_to_float(fd_bfloat16 half)
{
    const uint32_t bits = (uint32_t)half.bits << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Round to nearest even on the bits: add 0x7FFF plus the lowest kept bit, drop the low
 * 16 (a carry into the exponent is right, up to inf). NaN becomes the quiet NaN 0x7FC0
 * with its sign, as ml_dtypes converts it. Branch-free, so loops of it vectorise. */
static inline fd_bfloat16 fd_float_to_bfloat16(float value)
{
    uint32_t f;
    memcpy(&f, &value, sizeof f);
    const uint32_t rounded = (f + 0x7FFFu + ((f >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = ((f >> 16) & 0x8000u) | 0x7FC0u;
    fd_bfloat16 result;
    result.bits = (uint16_t)(value != value ? quiet_nan : rounded);
    return result;
}

#endif /* FASTDROP_HALF_H */
