/* The x86 intrinsics fastdrop's headers use, emulated in plain C so that every SIMD path runs
 * on any x86-64 (tests/test_simd_paths.py): SIMD Everywhere (SIMDe, libsimde-dev) for most,
 * and below, written from Intel's pseudo-code, one SIMDe 0.7 gets wrong and four it lacks.
 *
 * Included by kernels_under_test.c as FD_INTRINSICS_HEADER, in place of <immintrin.h>.
 */
#ifndef FASTDROP_TESTS_AVX512_EMULATION_H
#define FASTDROP_TESTS_AVX512_EMULATION_H

#include <stdint.h>
#include <string.h>

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

/* PTEST's ZF: whether a AND b is all zero. SIMDe 0.7's plain-C _mm_testz_si128 (which its
 * _mm256_testz_si256 calls) answers 1 when either 64-bit half is zero, ending the kernels'
 * batches before every lane is decided (fixed upstream: simd-everywhere/simde#1097). */
static inline int fdt_testz(const void *a, const void *b, int bytes)
{
    uint64_t a_words[8], b_words[8], any = 0;
    memcpy(a_words, a, (size_t)bytes);
    memcpy(b_words, b, (size_t)bytes);
    for (int i = 0; i < bytes / 8; ++i)
        any |= a_words[i] & b_words[i];
    return any == 0;
}
static inline int fdt_mm_testz_si128(__m128i a, __m128i b) { return fdt_testz(&a, &b, 16); }
static inline int fdt_mm256_testz_si256(__m256i a, __m256i b) { return fdt_testz(&a, &b, 32); }
#undef _mm_testz_si128
#define _mm_testz_si128(a, b) fdt_mm_testz_si128(a, b)
#undef _mm256_testz_si256
#define _mm256_testz_si256(a, b) fdt_mm256_testz_si256(a, b)

/* Names SIMDe 0.7 has no alias for: mask types, and _mm512_shuffle_epi32's control operand. */
typedef simde__mmask16 __mmask16;
typedef simde__mmask32 __mmask32;
#define _MM_PERM_ENUM int

typedef union {
    __m512i vector;
    uint32_t u32[16];
} fdt_512_u32;
typedef union {
    __m512 vector;
    float f32[16];
    uint32_t bits[16];
} fdt_512_f32;
typedef union {
    __m512i vector;
    uint16_t u16[32];
} fdt_512_u16;
typedef union {
    __m256i vector;
    uint16_t u16[16];
} fdt_256_u16;

/* VPSHUFD (AVX-512F): dst.dword[4l + j] := a.dword[4l + imm8[2j+1:2j]] in each 128-bit lane l. */
static inline __m512i fdt_mm512_shuffle_epi32(__m512i a, int imm8)
{
    fdt_512_u32 in, out;
    in.vector = a;
    for (int lane = 0; lane < 4; ++lane)
        for (int j = 0; j < 4; ++j)
            out.u32[4 * lane + j] = in.u32[4 * lane + ((imm8 >> (2 * j)) & 3)];
    return out.vector;
}
#define _mm512_shuffle_epi32(a, imm8) fdt_mm512_shuffle_epi32(a, (int)(imm8))

/* VPMOVZXWD (AVX-512F): dst.dword[j] := ZeroExtend32(a.word[j]), j = 0 .. 15. */
static inline __m512i fdt_mm512_cvtepu16_epi32(__m256i a)
{
    fdt_256_u16 in;
    fdt_512_u32 out;
    in.vector = a;
    for (int j = 0; j < 16; ++j)
        out.u32[j] = in.u16[j];
    return out.vector;
}
#define _mm512_cvtepu16_epi32(a) fdt_mm512_cvtepu16_epi32(a)

/* VFPCLASSPS (AVX-512DQ), CheckFPClass_FP32: bit j of the mask is set iff element j is in a
 * class imm8 selects (bit 0 QNaN, 1 +0, 2 -0, 3 +inf, 4 -inf, 5 denormal, 6 negative
 * finite, 7 SNaN). */
static inline uint32_t fdt_fp32_class(uint32_t bits, int imm8)
{
    const uint32_t exponent = (bits >> 23) & 0xFF, fraction = bits & 0x7FFFFF;
    const int negative = (int)(bits >> 31);
    const int classes[8] = {
        exponent == 0xFF && fraction != 0 && (fraction >> 22) == 1, /* QNaN */
        bits == 0x00000000u,                                        /* +0 */
        bits == 0x80000000u,                                        /* -0 */
        bits == 0x7F800000u,                                        /* +inf */
        bits == 0xFF800000u,                                        /* -inf */
        exponent == 0 && fraction != 0,                             /* denormal */
        negative && exponent != 0xFF && !(exponent == 0 && fraction == 0), /* negative finite */
        exponent == 0xFF && fraction != 0 && (fraction >> 22) == 0, /* SNaN */
    };
    uint32_t selected = 0;
    for (int c = 0; c < 8; ++c)
        selected |= (uint32_t)(((imm8 >> c) & 1) && classes[c]);
    return selected;
}
static inline __mmask16 fdt_mm512_fpclass_ps_mask(__m512 a, int imm8)
{
    fdt_512_f32 in;
    in.vector = a;
    __mmask16 mask = 0;
    for (int j = 0; j < 16; ++j)
        mask |= (__mmask16)(fdt_fp32_class(in.bits[j], imm8) << j);
    return mask;
}
#define _mm512_fpclass_ps_mask(a, imm8) fdt_mm512_fpclass_ps_mask(a, imm8)

/* convert_fp32_to_bfloat16 of VCVTNE2PS2BF16 (AVX-512 BF16): denormals become a signed zero
 * (the instruction ignores MXCSR and flushes), infinity truncates, NaN truncates and is
 * made quiet, anything else rounds to nearest even on the bits. */
static inline uint16_t fdt_fp32_to_bf16(uint32_t bits)
{
    const uint32_t exponent = (bits >> 23) & 0xFF, fraction = bits & 0x7FFFFF;
    if (exponent == 0)
        return (uint16_t)((bits >> 16) & 0x8000u);
    if (exponent == 0xFF && fraction == 0)
        return (uint16_t)(bits >> 16);
    if (exponent == 0xFF)
        return (uint16_t)((bits >> 16) | 0x0040u);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* VCVTNE2PS2BF16: dst.word[j] := convert(b.fp32[j]) for j < 16, convert(a.fp32[j - 16]) above. */
static inline __m512bh fdt_mm512_cvtne2ps_pbh(__m512 a, __m512 b)
{
    fdt_512_f32 high, low;
    fdt_512_u16 out;
    high.vector = a;
    low.vector = b;
    for (int j = 0; j < 16; ++j) {
        out.u16[j] = fdt_fp32_to_bf16(low.bits[j]);
        out.u16[16 + j] = fdt_fp32_to_bf16(high.bits[j]);
    }
    __m512bh result;
    memcpy(&result, &out, sizeof result);
    return result;
}
#define _mm512_cvtne2ps_pbh(a, b) fdt_mm512_cvtne2ps_pbh(a, b)

#endif /* FASTDROP_TESTS_AVX512_EMULATION_H */
