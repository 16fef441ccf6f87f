/* bfloat16 words on SIMD: the kernels' only hand-written intrinsics, apart from the templates.
 *
 * dropout.h's bfloat16 variants take one of these as their full-word scaling
 * (FD_WORDS_BF16_256, _512, _NE; fd_bf16_wide_level picks the wide one). Each scales
 * a word's 64 elements by its keep bits, rounding every product as fd_float_to_bfloat16
 * does (the bits of fd_keep_bf16): on AVX2, on AVX-512BW, and with the AVX-512 BF16
 * conversion instruction where no product is NaN or subnormal.
 */
#ifndef FASTDROP_BF16_SIMD_H
#define FASTDROP_BF16_SIMD_H

#include <stdint.h>

#include "half.h"
#include "mask_stream.h"

#if FD_HAVE_AVX2_PATH
/* bfloat16 words on AVX-512BW. A 2-byte element leaves the kernels compute-bound, and
 * there a word's keep bits as a mask register (one masked move per 32 elements) beat
 * lanes gathered one by one. Each 32-bit lane holds two elements: the high one is a
 * float32 once its low half is cleared, the low one once shifted up, so neither needs
 * widening; each product is rounded on its bits as fd_float_to_bfloat16 does. */
#define FD_TARGET_BF16_512 FD_TARGET("avx2,avx512f,avx512bw")

/* Round each lane's float32 to bfloat16 in its top 16 bits (the low 16 are garbage). */
FD_TARGET_BF16_512 static inline __m512i fd_bf16_round_512(__m512 values)
{
    const __m512i bits = _mm512_castps_si512(values);
    const __m512i lowest_kept = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded =
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lowest_kept);
    const __m512i quiet_nan = _mm512_or_si512(
        _mm512_and_si512(bits, _mm512_set1_epi32((int)0x80000000u)), _mm512_set1_epi32(0x7FC00000));
    return _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(values, values, _CMP_UNORD_Q),
                                 quiet_nan);
}

/* 32 bfloat16 elements (16 lanes of two) times scale, each product rounded once. */
FD_TARGET_BF16_512 static inline __m512i fd_bf16_products_512(__m512i pairs, __m512 scale)
{
    const __m512i high_half = _mm512_set1_epi32((int)0xFFFF0000u);
    const __m512 low = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
    const __m512 high = _mm512_castsi512_ps(_mm512_and_si512(pairs, high_half));
    return _mm512_or_si512(_mm512_srli_epi32(fd_bf16_round_512(_mm512_mul_ps(low, scale)), 16),
                           _mm512_and_si512(fd_bf16_round_512(_mm512_mul_ps(high, scale)), high_half));
}

FD_TARGET_BF16_512 static inline void fd_bf16_word_512(const fd_bfloat16 *source,
                                                       fd_bfloat16 *target, uint64_t keep,
                                                       float scale)
{
    const __m512 s = _mm512_set1_ps(scale);
    const __m512i first = _mm512_loadu_si512((const void *)source);
    const __m512i second = _mm512_loadu_si512((const void *)(source + 32));
    _mm512_storeu_si512((void *)target,
                        _mm512_maskz_mov_epi16((__mmask32)keep, fd_bf16_products_512(first, s)));
    _mm512_storeu_si512((void *)(target + 32),
                        _mm512_maskz_mov_epi16((__mmask32)(keep >> 32),
                                               fd_bf16_products_512(second, s)));
}

/* bfloat16 words on AVX2: the pairs of fd_bf16_word_512 on 256 bits, and a word's keep
 * bits as 16-bit lane masks, 16 at a time (a compare against each lane's bit), since
 * lanes gathered one by one leave the kernel compute-bound far from the floor. */
#define FD_TARGET_BF16_256 FD_TARGET("avx2")

/* Round each lane's float32 to bfloat16 in its top 16 bits (the low 16 are garbage). */
FD_TARGET_BF16_256 static inline __m256i fd_bf16_round_256(__m256 values)
{
    const __m256i bits = _mm256_castps_si256(values);
    const __m256i lowest_kept = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lowest_kept);
    const __m256i quiet_nan = _mm256_or_si256(
        _mm256_and_si256(bits, _mm256_set1_epi32((int)0x80000000u)), _mm256_set1_epi32(0x7FC00000));
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(rounded),
                                                _mm256_castsi256_ps(quiet_nan),
                                                _mm256_cmp_ps(values, values, _CMP_UNORD_Q)));
}

/* 16 bfloat16 elements (8 lanes of two) times scale, each product rounded once. */
FD_TARGET_BF16_256 static inline __m256i fd_bf16_products_256(__m256i pairs, __m256 scale)
{
    const __m256i high_half = _mm256_set1_epi32((int)0xFFFF0000u);
    const __m256 low = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    const __m256 high = _mm256_castsi256_ps(_mm256_and_si256(pairs, high_half));
    return _mm256_or_si256(_mm256_srli_epi32(fd_bf16_round_256(_mm256_mul_ps(low, scale)), 16),
                           _mm256_and_si256(fd_bf16_round_256(_mm256_mul_ps(high, scale)), high_half));
}

FD_TARGET_BF16_256 static inline void fd_bf16_word_256(const fd_bfloat16 *source,
                                                       fd_bfloat16 *target, uint64_t keep,
                                                       float scale)
{
    const __m256 s = _mm256_set1_ps(scale);
    const __m256i lane_bits = _mm256_setr_epi16(
        0x0001, 0x0002, 0x0004, 0x0008, 0x0010, 0x0020, 0x0040, 0x0080, 0x0100, 0x0200, 0x0400,
        0x0800, 0x1000, 0x2000, 0x4000, (short)0x8000);
    for (int quarter = 0; quarter < 4; ++quarter) {
        const __m256i elements = _mm256_loadu_si256((const __m256i *)(source + 16 * quarter));
        const __m256i bits = _mm256_set1_epi16((short)(keep >> (16 * quarter)));
        const __m256i kept = _mm256_cmpeq_epi16(_mm256_and_si256(bits, lane_bits), lane_bits);
        _mm256_storeu_si256((__m256i *)(target + 16 * quarter),
                            _mm256_and_si256(fd_bf16_products_256(elements, s), kept));
    }
}

/* With AVX-512 BF16 one instruction rounds 32 float32 products to bfloat16, to nearest
 * even; but it flushes subnormal results to zero and keeps NaN payloads, so a vector
 * holding a NaN or subnormal product goes the integer way above (the same bits). */
#define FD_TARGET_BF16_NE FD_TARGET("avx2,avx512f,avx512bw,avx512dq,avx512bf16")

FD_TARGET_BF16_NE static inline void fd_bf16_word_ne(const fd_bfloat16 *source, fd_bfloat16 *target,
                                                 uint64_t keep, float scale)
{
    const __m512 s = _mm512_set1_ps(scale);
    for (int half = 0; half < 2; ++half) {
        const __m512i elements = _mm512_loadu_si512((const void *)(source + 32 * half));
        const __m512 low = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm512_castsi512_si256(elements)), 16)), s);
        const __m512 high = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(elements, 1)), 16)), s);
        const __mmask32 kept = (__mmask32)(keep >> (32 * half));
        __m512i rounded;
        if ((_mm512_fpclass_ps_mask(low, 0xA1) | _mm512_fpclass_ps_mask(high, 0xA1)) == 0) {
            FD_PATH_TAKEN("bf16 cvtne");
            rounded = (__m512i)_mm512_cvtne2ps_pbh(high, low); /* no NaN, no subnormal */
        } else {
            FD_PATH_TAKEN("bf16 cvtne integer rounding");
            rounded = fd_bf16_products_512(elements, s);
        }
        _mm512_storeu_si512((void *)(target + 32 * half), _mm512_maskz_mov_epi16(kept, rounded));
    }
}

/* Which wide variant the bfloat16 kernels take: BF16 conversions at SIMD level 3,
 * AVX-512BW at level 2 on a CPU with BW (fd_set_simd caps the level). */
static inline int fd_bf16_wide_level(void)
{
    const int level = fd_simd_enabled();
    return level >= 2 && FD_CPU_SUPPORTS("avx512bw") ? (level >= 3 ? 3 : 2) : 0;
}
#endif

#endif /* FASTDROP_BF16_SIMD_H */
