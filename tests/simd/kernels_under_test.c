/* fastdrop's C kernels as a shared library for tests/test_simd_paths.py, recording which
 * SIMD paths each call took.
 *
 * Built three ways from these same headers: emulated (FDT_EMULATED: every intrinsic from
 * avx512_emulation.h, no target attributes, CPU features set by the test, so the AVX-512F,
 * AVX-512BW and AVX-512 BF16 paths run on any x86-64), native (the real instructions,
 * the CPU's features), and portable (-DFD_HAVE_AVX2_PATH=0: no SIMD path compiled).
 */
#include <stdint.h>
#include <string.h>

#ifdef FDT_EMULATED
#define FD_INTRINSICS_HEADER "avx512_emulation.h"
#define FD_TARGET(features) /* the emulation is plain C: it runs anywhere */
#define FD_CPU_SUPPORTS(feature) fdt_cpu_supports(feature)
static char fdt_emulated_features[256] = "avx2 avx512f avx512bw avx512dq avx512bf16";

/* Whether the emulated CPU has `feature` (a word of fdt_emulated_features). */
static int fdt_cpu_supports(const char *feature)
{
    const size_t length = strlen(feature);
    for (const char *at = strstr(fdt_emulated_features, feature); at; at = strstr(at + 1, feature))
        if ((at == fdt_emulated_features || at[-1] == ' ') && (at[length] == ' ' || !at[length]))
            return 1;
    return 0;
}
#endif

/* The distinct paths taken since fdt_take_paths last ran (names are string literals). */
#define FDT_MAX_PATHS 32
static const char *fdt_paths[FDT_MAX_PATHS];
static int fdt_path_count;

static void fdt_path_taken(const char *name)
{
    for (int i = 0; i < fdt_path_count; ++i)
        if (strcmp(fdt_paths[i], name) == 0)
            return;
    if (fdt_path_count < FDT_MAX_PATHS)
        fdt_paths[fdt_path_count++] = name;
}
#define FD_PATH_TAKEN(name) fdt_path_taken(name)

#include <fastdrop/runs.h>
#include <fastdrop/variants.h>

#define FDT_EXPORT __attribute__((visibility("default")))

/* The element types, as the test numbers them. */
enum { FDT_F64, FDT_F32, FDT_F16, FDT_BF16 };

/* Emulated builds: the CPU's features, space-separated (the level is then re-detected,
 * capped at `cap`); returns the level now in use. Other builds: the cap alone. */
FDT_EXPORT int fdt_emulate_cpu(const char *features, int cap)
{
#ifdef FDT_EMULATED
    strncpy(fdt_emulated_features, features, sizeof fdt_emulated_features - 1);
#else
    (void)features;
#endif
    return fd_set_simd(cap);
}

FDT_EXPORT int fdt_set_simd(int level) { return fd_set_simd(level); }
FDT_EXPORT int fdt_simd_enabled(void) { return fd_simd_enabled(); }

/* The paths taken since the last call, space-separated into out; forgets them. */
FDT_EXPORT void fdt_take_paths(char *out, int size)
{
    out[0] = 0;
    for (int i = 0; i < fdt_path_count; ++i) {
        if (i)
            strncat(out, ",", (size_t)size - strlen(out) - 1);
        strncat(out, fdt_paths[i], (size_t)size - strlen(out) - 1);
    }
    fdt_path_count = 0;
}

#define FDT_BY_KIND(kind, CALL)                                                             \
    switch (kind) {                                                                         \
    case FDT_F64: CALL(f64, double, double) break;                                          \
    case FDT_F32: CALL(f32, float, float) break;                                            \
    case FDT_F16: CALL(f16, uint16_t, float) break;                                         \
    default: CALL(bf16, fd_bfloat16, float) break;                                          \
    }

FDT_EXPORT void fdt_dropout_range(int kind, const void *source, void *target, uint64_t *words,
                                  double scale, const fd_mask_params *params, int64_t first,
                                  int64_t stop)
{
#define FDT_CALL(SUFFIX, T, SCALE_T)                                                        \
    fd_dropout_range_##SUFFIX((const T *)source, (T *)target, words, (SCALE_T)scale, params, \
                              first, stop);
    FDT_BY_KIND(kind, FDT_CALL)
#undef FDT_CALL
}

FDT_EXPORT void fdt_apply_mask_range(int kind, const void *source, void *target,
                                     const uint64_t *words, double scale, int64_t n,
                                     int64_t first, int64_t stop)
{
#define FDT_CALL(SUFFIX, T, SCALE_T)                                                        \
    fd_apply_mask_range_##SUFFIX((const T *)source, (T *)target, words, (SCALE_T)scale, n,  \
                                 first, stop);
    FDT_BY_KIND(kind, FDT_CALL)
#undef FDT_CALL
}

FDT_EXPORT void fdt_scale_range(int kind, void *values, double scale, int64_t n, int64_t first,
                                int64_t stop)
{
#define FDT_CALL(SUFFIX, T, SCALE_T)                                                        \
    fd_scale_range_##SUFFIX((T *)values, (SCALE_T)scale, n, first, stop);
    FDT_BY_KIND(kind, FDT_CALL)
#undef FDT_CALL
}

FDT_EXPORT void fdt_dropout_runs(int kind, const void *source, void *target, uint64_t *words,
                                 double scale, const fd_mask_params *params,
                                 const fd_runs *runs, int64_t first, int64_t stop)
{
#define FDT_CALL(SUFFIX, T, SCALE_T)                                                        \
    fd_dropout_runs_##SUFFIX((const T *)source, (T *)target, words, (SCALE_T)scale, params, \
                             runs, first, stop);
    FDT_BY_KIND(kind, FDT_CALL)
#undef FDT_CALL
}

FDT_EXPORT void fdt_mask_words_range(uint64_t *words, const fd_mask_params *params,
                                     int64_t first, int64_t stop)
{
    fd_mask_words_range(words, params, first, stop);
}

FDT_EXPORT void fdt_gaussian_range(int kind, const void *source, void *target, double sigma,
                                   uint64_t seed, uint64_t stream, uint64_t offset,
                                   int64_t first, int64_t stop)
{
#define FDT_CALL(SUFFIX, T, SCALE_T)                                                        \
    fd_gaussian_range_##SUFFIX((const T *)source, (T *)target, sigma, seed, stream, offset, \
                               first, stop);
    FDT_BY_KIND(kind, FDT_CALL)
#undef FDT_CALL
}

#if FD_HAVE_AVX2_PATH
/* The CPU's features among those the kernels ask for, space-separated (emulated builds:
 * the ones set by fdt_emulate_cpu). */
FDT_EXPORT void fdt_cpu_features(char *out, int size)
{
    static const char *const names[] = {"avx2", "avx512f", "avx512bw", "avx512dq", "avx512bf16"};
    const int has[] = {FD_CPU_SUPPORTS("avx2"), FD_CPU_SUPPORTS("avx512f"),
                       FD_CPU_SUPPORTS("avx512bw"), FD_CPU_SUPPORTS("avx512dq"),
                       FD_CPU_SUPPORTS("avx512bf16")};
    out[0] = 0;
    for (int i = 0; i < 5; ++i) {
        if (!has[i])
            continue;
        if (out[0])
            strncat(out, " ", (size_t)size - strlen(out) - 1);
        strncat(out, names[i], (size_t)size - strlen(out) - 1);
    }
}

/* The two instructions avx512_emulation.h writes from Intel's pseudo-code, so the test can
 * hold the emulation against a CPU that has them. For each 32 floats of values (n a
 * multiple of 32): out gets _mm512_cvtne2ps_pbh of the upper 16 and the lower 16, and
 * masks 9 fpclass masks of the lower 16, one per class bit (imm8 = 1 << c) and the
 * kernels' 0xA1. */
FD_TARGET("avx512f,avx512bw,avx512dq,avx512bf16")
FDT_EXPORT void fdt_bf16_instructions(const float *values, int64_t n, uint16_t *out,
                                      uint32_t *masks)
{
    for (int64_t at = 0; at < n; at += 32, out += 32, masks += 9) {
        const __m512 low = _mm512_loadu_ps(values + at), high = _mm512_loadu_ps(values + at + 16);
        _mm512_storeu_si512((void *)out, (__m512i)_mm512_cvtne2ps_pbh(high, low));
        masks[0] = _mm512_fpclass_ps_mask(low, 0x01);
        masks[1] = _mm512_fpclass_ps_mask(low, 0x02);
        masks[2] = _mm512_fpclass_ps_mask(low, 0x04);
        masks[3] = _mm512_fpclass_ps_mask(low, 0x08);
        masks[4] = _mm512_fpclass_ps_mask(low, 0x10);
        masks[5] = _mm512_fpclass_ps_mask(low, 0x20);
        masks[6] = _mm512_fpclass_ps_mask(low, 0x40);
        masks[7] = _mm512_fpclass_ps_mask(low, 0x80);
        masks[8] = _mm512_fpclass_ps_mask(low, 0xA1);
    }
}
#endif
