# cython: language_level=3
"""fastdrop's C-level API for Cython: ``from fastdrop.libfastdrop cimport ...``.

Declares the ``nogil`` functions of the installed C headers (folder given by
``fastdrop.get_include()``; add it to your extension's ``include_dirs``).
See fastdrop/include/fastdrop/dropout.h (and runs.h, variants.h) and docs/embedding.md.
"""
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t


cdef extern from "fastdrop/dropout.h" nogil:
    ctypedef struct fd_mask_params:
        uint64_t seed
        uint64_t stream
        uint64_t threshold
        int drop_all
        uint64_t offset
        int64_t n

    # random-number layer
    void fd_philox4x32_10(const uint32_t *counter, const uint32_t *key, uint32_t *out)

    # mask stream
    fd_mask_params fd_mask_params_make(uint64_t seed, uint64_t stream, double p,
                                       uint64_t offset, int64_t n)
    uint64_t fd_mask_word(uint64_t seed, uint64_t stream, uint64_t word, uint64_t threshold)
    uint64_t fd_global_mask_word(const fd_mask_params *params, uint64_t word)
    int FD_GROUP_WORDS
    void fd_mask_words_ahead(const fd_mask_params *params, uint64_t word, uint64_t *out)
    int fd_simd_enabled()
    int fd_set_simd(int level)

    # float16 bit patterns, and bfloat16 elements
    float fd_half_to_float(uint16_t half)
    uint16_t fd_float_to_half(float value)
    ctypedef struct fd_bfloat16:
        uint16_t bits
    float fd_bfloat16_to_float(fd_bfloat16 half)
    fd_bfloat16 fd_float_to_bfloat16(float value)

    # kernels over ranges [first, stop) of local mask words
    int64_t fd_words_for(int64_t n)
    void fd_mask_words_range(uint64_t *words, const fd_mask_params *params,
                             int64_t first, int64_t stop)
    void fd_dropout_range_f64(const double *source, double *target, uint64_t *words,
                              double scale, const fd_mask_params *params,
                              int64_t first, int64_t stop)
    void fd_dropout_range_f32(const float *source, float *target, uint64_t *words,
                              float scale, const fd_mask_params *params,
                              int64_t first, int64_t stop)
    void fd_dropout_range_f16(const uint16_t *source, uint16_t *target, uint64_t *words,
                              float scale, const fd_mask_params *params,
                              int64_t first, int64_t stop)
    void fd_dropout_range_bf16(const fd_bfloat16 *source, fd_bfloat16 *target, uint64_t *words,
                               float scale, const fd_mask_params *params,
                               int64_t first, int64_t stop)
    void fd_apply_mask_range_f64(const double *source, double *target, const uint64_t *words,
                                 double scale, int64_t n, int64_t first, int64_t stop)
    void fd_apply_mask_range_f32(const float *source, float *target, const uint64_t *words,
                                 float scale, int64_t n, int64_t first, int64_t stop)
    void fd_apply_mask_range_f16(const uint16_t *source, uint16_t *target,
                                 const uint64_t *words, float scale, int64_t n,
                                 int64_t first, int64_t stop)
    void fd_apply_mask_range_bf16(const fd_bfloat16 *source, fd_bfloat16 *target,
                                  const uint64_t *words, float scale, int64_t n,
                                  int64_t first, int64_t stop)
    void fd_scale_range_f64(double *values, double scale, int64_t n, int64_t first,
                            int64_t stop)
    void fd_scale_range_f32(float *values, float scale, int64_t n, int64_t first, int64_t stop)
    void fd_scale_range_bf16(fd_bfloat16 *values, float scale, int64_t n, int64_t first,
                             int64_t stop)


cdef extern from "fastdrop/runs.h" nogil:
    # blocks of a larger array, as runs of consecutive global indices
    ctypedef struct fd_runs:
        uint64_t base
        int ndim
        const int64_t *shape
        const int64_t *strides
        int64_t run
    uint64_t fd_run_start(const fd_runs *runs, int64_t r)
    void fd_dropout_runs_f64(const double *source, double *target, uint64_t *words,
                             double scale, const fd_mask_params *params, const fd_runs *runs,
                             int64_t first, int64_t stop)
    void fd_dropout_runs_f32(const float *source, float *target, uint64_t *words, float scale,
                             const fd_mask_params *params, const fd_runs *runs, int64_t first,
                             int64_t stop)
    void fd_dropout_runs_f16(const uint16_t *source, uint16_t *target, uint64_t *words,
                             float scale, const fd_mask_params *params, const fd_runs *runs,
                             int64_t first, int64_t stop)
    void fd_dropout_runs_bf16(const fd_bfloat16 *source, fd_bfloat16 *target, uint64_t *words,
                              float scale, const fd_mask_params *params, const fd_runs *runs,
                              int64_t first, int64_t stop)


cdef extern from "fastdrop/variants.h" nogil:
    # Gaussian noise stream
    void fd_normal_block(uint64_t seed, uint64_t stream, uint64_t block, uint64_t *out)
    double fd_inverse_normal_cdf(double u)
    double fd_standard_normal(uint64_t random_word)

    # masks stretched over arrays (noise_shape) and alpha dropout's affine map
    ctypedef struct fd_broadcast_layout:
        int ndim
        const int64_t *sizes
        const int64_t *mask_strides
    ctypedef struct fd_mask_op_f64:
        int affine
        double scale
        double shift
        double dropped_value
    ctypedef struct fd_mask_op_f32:
        int affine
        float scale
        float shift
        float dropped_value
    ctypedef fd_mask_op_f32 fd_mask_op_f16
    ctypedef fd_mask_op_f32 fd_mask_op_bf16

    void fd_apply_broadcast_range_f64(const double *source, double *target,
                                      const uint64_t *words, const fd_broadcast_layout *layout,
                                      const fd_mask_op_f64 *op, int64_t first, int64_t stop)
    void fd_apply_broadcast_range_f32(const float *source, float *target,
                                      const uint64_t *words, const fd_broadcast_layout *layout,
                                      const fd_mask_op_f32 *op, int64_t first, int64_t stop)
    void fd_apply_broadcast_range_f16(const uint16_t *source, uint16_t *target,
                                      const uint64_t *words, const fd_broadcast_layout *layout,
                                      const fd_mask_op_f16 *op, int64_t first, int64_t stop)
    void fd_apply_broadcast_range_bf16(const fd_bfloat16 *source, fd_bfloat16 *target,
                                       const uint64_t *words, const fd_broadcast_layout *layout,
                                       const fd_mask_op_bf16 *op, int64_t first, int64_t stop)

    # Gaussian dropout over element ranges [first, stop)
    void fd_gaussian_range_f64(const double *source, double *target, double sigma,
                               uint64_t seed, uint64_t stream, uint64_t offset,
                               int64_t first, int64_t stop)
    void fd_gaussian_range_f32(const float *source, float *target, double sigma,
                               uint64_t seed, uint64_t stream, uint64_t offset,
                               int64_t first, int64_t stop)
    void fd_gaussian_range_f16(const uint16_t *source, uint16_t *target, double sigma,
                               uint64_t seed, uint64_t stream, uint64_t offset,
                               int64_t first, int64_t stop)
    void fd_gaussian_range_bf16(const fd_bfloat16 *source, fd_bfloat16 *target, double sigma,
                                uint64_t seed, uint64_t stream, uint64_t offset,
                                int64_t first, int64_t stop)
    void fd_gaussian_runs_f64(const double *source, double *target, double sigma,
                              uint64_t seed, uint64_t stream, const fd_runs *runs,
                              int64_t first, int64_t stop)
    void fd_gaussian_runs_f32(const float *source, float *target, double sigma,
                              uint64_t seed, uint64_t stream, const fd_runs *runs,
                              int64_t first, int64_t stop)
    void fd_gaussian_runs_f16(const uint16_t *source, uint16_t *target, double sigma,
                              uint64_t seed, uint64_t stream, const fd_runs *runs,
                              int64_t first, int64_t stop)
    void fd_gaussian_runs_bf16(const fd_bfloat16 *source, fd_bfloat16 *target, double sigma,
                               uint64_t seed, uint64_t stream, const fd_runs *runs,
                               int64_t first, int64_t stop)
