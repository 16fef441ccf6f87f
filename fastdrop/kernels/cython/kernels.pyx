# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython/OpenMP backend: the kernels of fastdrop/include/fastdrop/dropout.h over threads.

The kernel interface of `fastdrop.kernels.interface` (1-D C-contiguous arrays, checked
machine values in its records, whose typed fields are copied here into the C structs
they mirror). Element types: float64, float32, float16 (as float16 arrays) and
bfloat16 (as uint16 arrays of bit patterns). Threads run ``prange`` over ranges of
whole mask words, so no two threads write one word; built without OpenMP the same
loop runs serially.
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t, uint64_t

from fastdrop.kernels.cython.openmp cimport FD_OPENMP_ENABLED, omp_get_max_threads
from fastdrop.kernels.records cimport BlockRuns, BroadcastLayout, MaskParams, NoiseParams
from fastdrop.libfastdrop cimport (
    fd_apply_broadcast_range_bf16, fd_apply_broadcast_range_f16, fd_apply_broadcast_range_f32,
    fd_apply_broadcast_range_f64, fd_apply_mask_range_bf16, fd_apply_mask_range_f16,
    fd_apply_mask_range_f32, fd_apply_mask_range_f64, fd_bfloat16, fd_broadcast_layout,
    fd_dropout_range_bf16, fd_dropout_range_f16, fd_dropout_range_f32, fd_dropout_range_f64,
    fd_dropout_runs_bf16, fd_dropout_runs_f16, fd_dropout_runs_f32, fd_dropout_runs_f64,
    fd_gaussian_range_bf16, fd_gaussian_range_f16, fd_gaussian_range_f32, fd_gaussian_range_f64,
    fd_gaussian_runs_bf16, fd_gaussian_runs_f16, fd_gaussian_runs_f32, fd_gaussian_runs_f64,
    fd_mask_op_f32, fd_mask_op_f64, fd_mask_params, fd_runs, fd_scale_range_bf16,
    fd_scale_range_f32,
    fd_scale_range_f64, fd_set_simd, fd_simd_enabled, fd_standard_normal, fd_words_for,
)

from fastdrop._config import MIN_ELEMENTS_PER_THREAD
from fastdrop.kernels.common import kernel_mask_op, kernel_scale

cnp.import_array()

cdef int64_t _MIN_ELEMENTS_PER_THREAD = MIN_ELEMENTS_PER_THREAD

# The element types, one per NumPy type number kernels are given.
cdef enum Kind:
    F64, F32, F16, BF16
cdef int _NPY_HALF = np.dtype(np.float16).num  # not in Cython's numpy declarations


cdef inline Kind _kind(array) except *:
    """The element type of an array a kernel is given (bfloat16 comes as uint16 bits)."""
    cdef int number = cnp.PyArray_TYPE(<cnp.ndarray>array)
    if number == cnp.NPY_DOUBLE:
        return F64
    if number == cnp.NPY_FLOAT:
        return F32
    if number == _NPY_HALF:
        return F16
    if number == cnp.NPY_UINT16:
        return BF16
    raise TypeError(f"no kernel for dtype {array.dtype}")


cdef inline void *_data(array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray>array)


cdef inline int _chunk_count(int64_t n, int threads):
    """common.chunk_count in C: ranges of whole mask words, one per thread; 1 = serial."""
    return <int>max(1, min(<int64_t>threads, n // _MIN_ELEMENTS_PER_THREAD))


cdef inline double _element_scale(array, Kind kind, double scale):
    """common.kernel_scale without the Python call for float32 and float64 (C rounds the same)."""
    if kind == F64:
        return scale
    if kind == F32:
        return <float>scale
    return kernel_scale(array.dtype, scale)


def openmp_enabled():
    """Whether this module was compiled with OpenMP."""
    return bool(FD_OPENMP_ENABLED)


def simd_enabled():
    """The vector path in use: 0 portable, 1 AVX2, 2 AVX-512F, 3 AVX-512 with BF16 conversions.

    Level 3 changes only the bfloat16 kernels; each level is as far as the CPU has it.
    """
    return fd_simd_enabled()


def set_simd(level):
    """Cap the vector path: False or 0 portable, 1 AVX2, 2 AVX-512F, True or 3 the best the CPU has.

    Results are identical on every path; tests use this to check each of them.
    Returns the level now in use.
    """
    if level is True or level is False:
        level = 3 if level else 0
    return fd_set_simd(int(level))


def max_threads():
    """OpenMP's default team size (1 without OpenMP)."""
    return omp_get_max_threads()


cdef void _stream_range(Kind kind, const void *source, void *target, uint64_t *words,
                        double scale, const fd_mask_params *params, int64_t first,
                        int64_t stop) noexcept nogil:
    if kind == F64:
        fd_dropout_range_f64(<const double *>source, <double *>target, words, scale, params,
                             first, stop)
    elif kind == F32:
        fd_dropout_range_f32(<const float *>source, <float *>target, words, <float>scale,
                             params, first, stop)
    elif kind == F16:
        fd_dropout_range_f16(<const uint16_t *>source, <uint16_t *>target, words, <float>scale,
                             params, first, stop)
    else:
        fd_dropout_range_bf16(<const fd_bfloat16 *>source, <fd_bfloat16 *>target, words,
                              <float>scale, params, first, stop)


cdef void _runs_range(Kind kind, const void *source, void *target, uint64_t *words,
                      double scale, const fd_mask_params *params, const fd_runs *runs,
                      int64_t first, int64_t stop) noexcept nogil:
    if kind == F64:
        fd_dropout_runs_f64(<const double *>source, <double *>target, words, scale, params,
                            runs, first, stop)
    elif kind == F32:
        fd_dropout_runs_f32(<const float *>source, <float *>target, words, <float>scale, params,
                            runs, first, stop)
    elif kind == F16:
        fd_dropout_runs_f16(<const uint16_t *>source, <uint16_t *>target, words, <float>scale,
                            params, runs, first, stop)
    else:
        fd_dropout_runs_bf16(<const fd_bfloat16 *>source, <fd_bfloat16 *>target, words,
                             <float>scale, params, runs, first, stop)


cdef void _gaussian_runs_range(Kind kind, const void *source, void *target, double sigma,
                               uint64_t seed, uint64_t stream, const fd_runs *runs,
                               int64_t first, int64_t stop) noexcept nogil:
    if kind == F64:
        fd_gaussian_runs_f64(<const double *>source, <double *>target, sigma, seed, stream,
                             runs, first, stop)
    elif kind == F32:
        fd_gaussian_runs_f32(<const float *>source, <float *>target, sigma, seed, stream, runs,
                             first, stop)
    elif kind == F16:
        fd_gaussian_runs_f16(<const uint16_t *>source, <uint16_t *>target, sigma, seed, stream,
                             runs, first, stop)
    else:
        fd_gaussian_runs_bf16(<const fd_bfloat16 *>source, <fd_bfloat16 *>target, sigma, seed,
                              stream, runs, first, stop)


cdef void _mask_range(Kind kind, const void *source, void *target, const uint64_t *words,
                      double scale, int64_t n, int64_t first, int64_t stop) noexcept nogil:
    if kind == F64:
        fd_apply_mask_range_f64(<const double *>source, <double *>target, words, scale, n,
                                first, stop)
    elif kind == F32:
        fd_apply_mask_range_f32(<const float *>source, <float *>target, words, <float>scale, n,
                                first, stop)
    elif kind == F16:
        fd_apply_mask_range_f16(<const uint16_t *>source, <uint16_t *>target, words,
                                <float>scale, n, first, stop)
    else:
        fd_apply_mask_range_bf16(<const fd_bfloat16 *>source, <fd_bfloat16 *>target, words,
                                 <float>scale, n, first, stop)


cdef void _broadcast_range(Kind kind, const void *source, void *target, const uint64_t *words,
                           const fd_broadcast_layout *layout, const fd_mask_op_f64 *op64,
                           const fd_mask_op_f32 *op32, int64_t first,
                           int64_t stop) noexcept nogil:
    if kind == F64:
        fd_apply_broadcast_range_f64(<const double *>source, <double *>target, words, layout,
                                     op64, first, stop)
    elif kind == F32:
        fd_apply_broadcast_range_f32(<const float *>source, <float *>target, words, layout,
                                     op32, first, stop)
    elif kind == F16:
        fd_apply_broadcast_range_f16(<const uint16_t *>source, <uint16_t *>target, words,
                                     layout, op32, first, stop)
    else:
        fd_apply_broadcast_range_bf16(<const fd_bfloat16 *>source, <fd_bfloat16 *>target, words,
                                      layout, op32, first, stop)


cdef void _gaussian_range(Kind kind, const void *source, void *target, double sigma,
                          uint64_t seed, uint64_t stream, uint64_t offset, int64_t first,
                          int64_t stop) noexcept nogil:
    if kind == F64:
        fd_gaussian_range_f64(<const double *>source, <double *>target, sigma, seed, stream,
                              offset, first, stop)
    elif kind == F32:
        fd_gaussian_range_f32(<const float *>source, <float *>target, sigma, seed, stream,
                              offset, first, stop)
    elif kind == F16:
        fd_gaussian_range_f16(<const uint16_t *>source, <uint16_t *>target, sigma, seed, stream,
                              offset, first, stop)
    else:
        fd_gaussian_range_bf16(<const fd_bfloat16 *>source, <fd_bfloat16 *>target, sigma, seed,
                               stream, offset, first, stop)


cdef void _scale_range(Kind kind, void *values, double scale, int64_t n, int64_t first,
                       int64_t stop) noexcept nogil:
    if kind == F64:
        fd_scale_range_f64(<double *>values, scale, n, first, stop)
    elif kind == F32:
        fd_scale_range_f32(<float *>values, <float>scale, n, first, stop)
    else:
        fd_scale_range_bf16(<fd_bfloat16 *>values, <float>scale, n, first, stop)


cdef inline int64_t _chunk_start(int64_t total, int chunks, int chunk) noexcept nogil:
    """Where chunk ``chunk`` of ``chunks`` near-equal ranges of ``total`` units starts."""
    return min(chunk * ((total + chunks - 1) // chunks), total)


cdef int _stream_into(source, target, uint64_t *word_data, double scale,
                      const fd_mask_params *params, int threads,
                      const fd_runs *runs=NULL) except -1:
    """Mask words and/or the scaled elements of source into target (None for mask only).

    Element i has global index params.offset + i, or (a block) the one ``runs`` gives.
    """
    if params.n == 0:
        return 0
    cdef int chunks = _chunk_count(params.n, threads)
    cdef Kind kind = F32 if source is None else _kind(source)
    cdef double element_scale = 0.0 if source is None else _element_scale(source, kind, scale)
    cdef const void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef int64_t total = fd_words_for(params.n)
    cdef int chunk
    with nogil:
        if chunks == 1 and runs == NULL:
            _stream_range(kind, source_data, target_data, word_data, element_scale, params, 0,
                          total)
        elif runs == NULL:
            for chunk in prange(chunks, num_threads=chunks, schedule="static"):
                _stream_range(kind, source_data, target_data, word_data, element_scale, params,
                              _chunk_start(total, chunks, chunk),
                              _chunk_start(total, chunks, chunk + 1))
        elif chunks == 1:
            _runs_range(kind, source_data, target_data, word_data, element_scale, params, runs,
                        0, total)
        else:
            for chunk in prange(chunks, num_threads=chunks, schedule="static"):
                _runs_range(kind, source_data, target_data, word_data, element_scale, params,
                            runs, _chunk_start(total, chunks, chunk),
                            _chunk_start(total, chunks, chunk + 1))
    return 0


cdef inline fd_mask_params _mask_params(MaskParams params):
    """The C struct a `MaskParams` record mirrors."""
    cdef fd_mask_params view
    view.seed, view.stream, view.threshold = params.seed, params.stream, params.threshold
    view.drop_all, view.offset, view.n = params.drop_all, params.offset, params.n
    return view


cdef inline fd_runs _runs_of(BlockRuns runs):
    """The C struct a `BlockRuns` record mirrors (its arrays live as long as the record)."""
    cdef fd_runs view
    view.base = runs.base
    view.ndim = runs.outer_shape.size
    view.shape = <const int64_t *>_data(runs.outer_shape)
    view.strides = <const int64_t *>_data(runs.outer_strides)
    view.run = runs.run
    return view


def scale_by_runs(source, target, words, double scale, MaskParams params not None,
                  BlockRuns runs not None, int threads):
    """`scale_by_stream` for a block of a larger array: global indices from ``runs``."""
    cdef fd_mask_params view = _mask_params(params)
    cdef fd_runs block = _runs_of(runs)
    _stream_into(source, target, <uint64_t *>_data(words), scale, &view, threads, &block)


def gaussian_runs(source, target, NoiseParams params not None, BlockRuns runs not None,
                  int threads):
    """`gaussian` for a block of a larger array: global indices from ``runs``."""
    cdef fd_runs block = _runs_of(runs)
    _gaussian_into(source, target, params.sigma, params.seed, params.stream, 0, &block, threads)


def scale_by_stream(source, target, words, double scale, MaskParams params not None,
                    int threads):
    """Mask words from the stream and/or target = source * keep * scale.

    ``source``/``target`` may be None (mask only); ``words`` may be None (recompute,
    no mask).
    """
    cdef fd_mask_params view = _mask_params(params)
    _stream_into(source, target, <uint64_t *>_data(words), scale, &view, threads)


def dropout_plain(x, bint inplace, double scale, MaskParams params not None, int threads):
    """Fused forward of a whole C-contiguous array, in place or into a new array: ``(y, words)``.

    The API's one-step path for the usual call, in one C step: x is an ndarray,
    C-contiguous, aligned, native float16/32/64 or uint16 bfloat16 bits (writeable in
    place) of ``params.n`` elements; every value is checked. y is x in place, else a
    new C-ordered array; the bits are those of `scale_by_stream`.
    """
    cdef cnp.ndarray array = <cnp.ndarray>x
    cdef fd_mask_params view = _mask_params(params)
    cdef cnp.npy_intp word_count = fd_words_for(view.n)
    words = cnp.PyArray_EMPTY(1, &word_count, cnp.NPY_UINT64, 0)
    target = x if inplace else cnp.PyArray_EMPTY(cnp.PyArray_NDIM(array),
                                                 cnp.PyArray_DIMS(array),
                                                 cnp.PyArray_TYPE(array), 0)
    _stream_into(x, target, <uint64_t *>_data(words), scale, &view, threads)
    return target, words


def scale_by_mask(source, target, words, double scale, int threads):
    """target = source * keep * scale with keep read from packed words."""
    cdef int64_t n = cnp.PyArray_SIZE(<cnp.ndarray>source)
    if n == 0:
        return
    cdef int chunks = _chunk_count(n, threads)
    cdef Kind kind = _kind(source)
    cdef double element_scale = _element_scale(source, kind, scale)
    cdef const uint64_t *word_data = <const uint64_t *>_data(words)
    cdef const void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef int64_t total = fd_words_for(n)
    cdef int chunk
    with nogil:
        if chunks == 1:
            _mask_range(kind, source_data, target_data, word_data, element_scale, n, 0, total)
        else:
            for chunk in prange(chunks, num_threads=chunks, schedule="static"):
                _mask_range(kind, source_data, target_data, word_data, element_scale, n,
                            _chunk_start(total, chunks, chunk),
                            _chunk_start(total, chunks, chunk + 1))


def apply_broadcast(source, target, words, BroadcastLayout layout not None, double scale,
                    affine, int threads):
    """target = source with stored keep bits stretched over it by a `BroadcastLayout`.

    ``affine`` None: kept x * scale, dropped +0.0; else alpha dropout's (a, b, c).
    """
    cdef int64_t n = cnp.PyArray_SIZE(<cnp.ndarray>source)
    if n == 0:
        return
    cdef int chunks = _chunk_count(n, threads)
    cdef Kind kind = _kind(source)
    cdef const uint64_t *word_data = <const uint64_t *>_data(words)
    cdef fd_broadcast_layout view
    cdef fd_mask_op_f64 op64
    cdef fd_mask_op_f32 op32
    view.ndim = layout.sizes.size
    view.sizes = <const int64_t *>_data(layout.sizes)
    view.mask_strides = <const int64_t *>_data(layout.mask_strides)
    is_affine, element_scale, shift, dropped_value = kernel_mask_op(source.dtype, scale, affine)
    op64.affine = op32.affine = is_affine
    op64.scale, op64.shift, op64.dropped_value = element_scale, shift, dropped_value
    op32.scale, op32.shift, op32.dropped_value = element_scale, shift, dropped_value
    cdef const void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef int chunk
    with nogil:
        for chunk in prange(chunks, num_threads=chunks, schedule="static"):
            _broadcast_range(kind, source_data, target_data, word_data, &view, &op64, &op32,
                             _chunk_start(n, chunks, chunk), _chunk_start(n, chunks, chunk + 1))


cdef int _gaussian_into(source, target, double sigma, uint64_t seed, uint64_t stream,
                        uint64_t offset, const fd_runs *runs, int threads) except -1:
    """target = source * (1 + sigma * z): element i takes global index offset + i, or
    (a block) the one ``runs`` gives it."""
    cdef int64_t n = cnp.PyArray_SIZE(<cnp.ndarray>source)
    if n == 0:
        return 0
    cdef int chunks = _chunk_count(n, threads)
    cdef Kind kind = _kind(source)
    cdef const void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef int chunk
    with nogil:
        for chunk in prange(chunks, num_threads=chunks, schedule="static"):
            if runs == NULL:
                _gaussian_range(kind, source_data, target_data, sigma, seed, stream, offset,
                                _chunk_start(n, chunks, chunk), _chunk_start(n, chunks, chunk + 1))
            else:
                _gaussian_runs_range(kind, source_data, target_data, sigma, seed, stream, runs,
                                     _chunk_start(n, chunks, chunk),
                                     _chunk_start(n, chunks, chunk + 1))
    return 0


def gaussian(source, target, NoiseParams params not None, int threads):
    """target = source * (1 + sigma * z) with z from the Gaussian noise stream (1-D arrays)."""
    _gaussian_into(source, target, params.sigma, params.seed, params.stream, params.offset, NULL,
                   threads)


def standard_normals_of_words(random_words):
    """z = Phi^-1(u) of each 64-bit random word, as the C kernels compute it.

    For tests: the far tails (u < 1e-11) are too rare to reach through the stream.
    """
    cdef const uint64_t[::1] words = np.ascontiguousarray(random_words, dtype=np.uint64)
    result = np.empty(words.shape[0], dtype=np.float64)
    cdef double[::1] z = result
    cdef Py_ssize_t i
    for i in range(words.shape[0]):
        z[i] = fd_standard_normal(words[i])
    return result


cdef inline Kind _floor_kind(values, name) except *:
    """The element type of a floor's array: float32, float64 or bfloat16 bits (uint16)."""
    if values.dtype not in (np.float64, np.float32, np.uint16):
        raise TypeError(f"{name} takes float32, float64 or bfloat16 bits (uint16), "
                        f"got {values.dtype}")
    return _kind(values)


def scale_in_place(values, double scale, int threads):
    """values *= scale on ``threads`` threads: the memory-bandwidth floor benchmarks compare with.

    Dropout in place must read and write every element once, as this does; it is the
    fastest any in-place dropout can be. Threads own ranges of whole 64-element words,
    as in the dropout kernels, and each runs the fused kernel's vector path and
    prefetch (``fd_scale_range`` in dropout.h), so the floor is not slowed by a weaker
    loop than the kernels it measures. 1-D C-contiguous float32, float64 or bfloat16
    (uint16 bits: s rounded to bfloat16, each product rounded as dropout's).
    """
    cdef int64_t n = values.size
    if n == 0:
        return
    cdef Kind kind = _floor_kind(values, "scale_in_place")
    cdef double element_scale = _element_scale(values, kind, scale)
    cdef void *data = _data(values)
    cdef int chunks = max(threads, 1)
    cdef int64_t total = fd_words_for(n)
    cdef int chunk
    with nogil:
        for chunk in prange(chunks, num_threads=chunks, schedule="static"):
            _scale_range(kind, data, element_scale, n, _chunk_start(total, chunks, chunk),
                         _chunk_start(total, chunks, chunk + 1))


# The fused add's floor: plain loops the compiler vectorises, segment by segment of the
# bias's period so that no modulo sits in the loop (a bias of 0 elements: one segment).
cdef extern from *:
    """
    #define FD_FLOOR_SCALE_ADD(SUFFIX, T, SCALE_T, LOAD, STORE)                              \\
        static void fd_floor_scale_add_##SUFFIX(                                           \\
            const T *FD_RESTRICT values, const T *FD_RESTRICT residual,                     \\
            const T *FD_RESTRICT bias, int64_t features, T *FD_RESTRICT target,             \\
            SCALE_T scale, int64_t first, int64_t stop)                                     \\
        {                                                                                   \\
            int64_t period = bias ? features : stop - first;                                \\
            int64_t column = bias ? first % features : 0;                                   \\
            for (int64_t at = first; at < stop; column = 0) {                               \\
                const int64_t count = stop - at < period - column ? stop - at               \\
                                                                  : period - column;        \\
                if (bias)                                                                   \\
                    for (int64_t j = 0; j < count; ++j)                                     \\
                        target[at + j] = STORE((LOAD(values[at + j]) + LOAD(bias[column + j])) \\
                                               * scale + LOAD(residual[at + j]));           \\
                else                                                                        \\
                    for (int64_t j = 0; j < count; ++j)                                     \\
                        target[at + j] = STORE(LOAD(values[at + j]) * scale                 \\
                                               + LOAD(residual[at + j]));                   \\
                at += count;                                                                \\
            }                                                                               \\
        }
    #define FD_FLOOR_SAME(v) (v)
    FD_FLOOR_SCALE_ADD(f64, double, double, FD_FLOOR_SAME, FD_FLOOR_SAME)
    FD_FLOOR_SCALE_ADD(f32, float, float, FD_FLOOR_SAME, FD_FLOOR_SAME)
    FD_FLOOR_SCALE_ADD(bf16, fd_bfloat16, float, fd_bfloat16_to_float, fd_float_to_bfloat16)
    """
    void fd_floor_scale_add_f64(const double *values, const double *residual, const double *bias,
                                int64_t features, double *target, double scale, int64_t first,
                                int64_t stop) noexcept nogil
    void fd_floor_scale_add_f32(const float *values, const float *residual, const float *bias,
                                int64_t features, float *target, float scale, int64_t first,
                                int64_t stop) noexcept nogil
    void fd_floor_scale_add_bf16(const fd_bfloat16 *values, const fd_bfloat16 *residual,
                                 const fd_bfloat16 *bias, int64_t features, fd_bfloat16 *target,
                                 float scale, int64_t first, int64_t stop) noexcept nogil


cdef void _scale_add_range(Kind kind, const void *values, const void *residual, const void *bias,
                           int64_t features, void *target, double scale, int64_t first,
                           int64_t stop) noexcept nogil:
    if kind == F64:
        fd_floor_scale_add_f64(<const double *>values, <const double *>residual,
                               <const double *>bias, features, <double *>target, scale, first,
                               stop)
    elif kind == F32:
        fd_floor_scale_add_f32(<const float *>values, <const float *>residual,
                               <const float *>bias, features, <float *>target, <float>scale,
                               first, stop)
    else:
        fd_floor_scale_add_bf16(<const fd_bfloat16 *>values, <const fd_bfloat16 *>residual,
                                <const fd_bfloat16 *>bias, features, <fd_bfloat16 *>target,
                                <float>scale, first, stop)


def scale_add(values, residual, target, double scale, int threads, bias=None):
    """target = values * scale + residual on ``threads`` threads: the fused add's memory floor.

    ``dropout_add`` must read x and the residual and write the result once, as this
    does (three streams, no mask); with ``bias`` (the last axis's values, element i
    reads ``bias[i % bias.size]``) it is ``(values + bias) * scale + residual``, the
    floor of ``bias_dropout_add``. Threads own ranges of whole 64-element words, as many
    as the fused kernels take for n elements; each runs a plain loop the compiler vectorises with the kernels'
    flags. 1-D C-contiguous arrays of one dtype: float32, float64 or bfloat16 (uint16
    bits: the sum in float32, rounded once); ``target`` overlaps none of the others.
    """
    cdef int64_t n = values.size
    if n == 0:
        return
    cdef Kind kind = _floor_kind(values, "scale_add")
    cdef double element_scale = _element_scale(values, kind, scale)
    cdef const void *values_data = _data(values)
    cdef const void *residual_data = _data(residual)
    cdef const void *bias_data = _data(bias)
    cdef int64_t features = 0 if bias is None else bias.size
    cdef void *target_data = _data(target)
    cdef int chunks = _chunk_count(n, threads)  # the fused kernels' threads for n elements
    cdef int64_t total = fd_words_for(n)
    cdef int chunk
    with nogil:
        if chunks == 1:
            _scale_add_range(kind, values_data, residual_data, bias_data, features, target_data,
                             element_scale, 0, n)
        else:
            for chunk in prange(chunks, num_threads=chunks, schedule="static"):
                _scale_add_range(kind, values_data, residual_data, bias_data, features,
                                 target_data, element_scale,
                                 min(_chunk_start(total, chunks, chunk) * 64, n),
                                 min(_chunk_start(total, chunks, chunk + 1) * 64, n))


# ---------------------------------------------------------------- fused kernels (fused.h)

cdef extern from "fastdrop/fused.h" nogil:
    void fd_dropout_add_range_f64(const double *source, const double *residual,
                                  const double *bias, int64_t features, double *target,
                                  uint64_t *words, double scale, const fd_mask_params *params,
                                  int64_t first, int64_t stop)
    void fd_dropout_add_range_f32(const float *source, const float *residual, const float *bias,
                                  int64_t features, float *target, uint64_t *words, float scale,
                                  const fd_mask_params *params, int64_t first, int64_t stop)
    void fd_dropout_add_range_f16(const uint16_t *source, const uint16_t *residual,
                                  const uint16_t *bias, int64_t features, uint16_t *target,
                                  uint64_t *words, float scale, const fd_mask_params *params,
                                  int64_t first, int64_t stop)
    void fd_dropout_add_range_bf16(const fd_bfloat16 *source, const fd_bfloat16 *residual,
                                   const fd_bfloat16 *bias, int64_t features,
                                   fd_bfloat16 *target, uint64_t *words, float scale,
                                   const fd_mask_params *params, int64_t first, int64_t stop)


cdef void _dropout_add_range(Kind kind, const void *source, const void *residual,
                             const void *bias, int64_t features, void *target, uint64_t *words,
                             double scale, const fd_mask_params *params, int64_t first,
                             int64_t stop) noexcept nogil:
    if kind == F64:
        fd_dropout_add_range_f64(<const double *>source, <const double *>residual,
                                 <const double *>bias, features, <double *>target, words, scale,
                                 params, first, stop)
    elif kind == F32:
        fd_dropout_add_range_f32(<const float *>source, <const float *>residual,
                                 <const float *>bias, features, <float *>target, words,
                                 <float>scale, params, first, stop)
    elif kind == F16:
        fd_dropout_add_range_f16(<const uint16_t *>source, <const uint16_t *>residual,
                                 <const uint16_t *>bias, features, <uint16_t *>target, words,
                                 <float>scale, params, first, stop)
    else:
        fd_dropout_add_range_bf16(<const fd_bfloat16 *>source, <const fd_bfloat16 *>residual,
                                  <const fd_bfloat16 *>bias, features, <fd_bfloat16 *>target,
                                  words, <float>scale, params, first, stop)


def dropout_add(source, residual, bias, target, words, double scale,
                MaskParams params not None, int threads):
    """target = residual + dropout(source (+ bias)) with keep bits from the stream.

    1-D C-contiguous arrays of one element type and ``params.n`` elements; ``bias``
    None or the last axis's values (element i reads ``bias[i % bias.size]``); ``words``
    None (no mask stored) or room for ceil(n / 64) words. ``target`` may be
    ``residual`` (in place).
    """
    cdef fd_mask_params view = _mask_params(params)
    cdef int64_t n = view.n
    if n == 0:
        return
    cdef int chunks = _chunk_count(n, threads)
    cdef Kind kind = _kind(source)
    cdef double element_scale = _element_scale(source, kind, scale)
    cdef const void *source_data = _data(source)
    cdef const void *residual_data = _data(residual)
    cdef const void *bias_data = _data(bias)
    cdef int64_t features = 0 if bias is None else bias.size
    cdef void *target_data = _data(target)
    cdef uint64_t *word_data = <uint64_t *>_data(words)
    cdef int64_t total = fd_words_for(n)
    cdef int chunk
    with nogil:
        if chunks == 1:
            _dropout_add_range(kind, source_data, residual_data, bias_data, features,
                               target_data, word_data, element_scale, &view, 0, total)
        else:
            for chunk in prange(chunks, num_threads=chunks, schedule="static"):
                _dropout_add_range(kind, source_data, residual_data, bias_data, features,
                                   target_data, word_data, element_scale, &view,
                                   _chunk_start(total, chunks, chunk),
                                   _chunk_start(total, chunks, chunk + 1))


# ---------------------------------------------------------------- softmax and dropout (softmax.h)

cdef extern from "fastdrop/softmax.h" nogil:
    ctypedef struct fd_softmax_layout:
        int64_t outer, length, inner
        int64_t outer_stride, length_stride, inner_stride
    void fd_softmax_dropout_units_f64(const double *source, const fd_softmax_layout *layout,
                                      double *target, double *softmax_out, uint64_t *words,
                                      double scale, const fd_mask_params *params, int64_t first,
                                      int64_t stop)
    void fd_softmax_dropout_units_f32(const float *source, const fd_softmax_layout *layout,
                                      float *target, float *softmax_out, uint64_t *words,
                                      float scale, const fd_mask_params *params, int64_t first,
                                      int64_t stop)
    void fd_softmax_dropout_units_f16(const uint16_t *source, const fd_softmax_layout *layout,
                                      uint16_t *target, uint16_t *softmax_out, uint64_t *words,
                                      float scale, const fd_mask_params *params, int64_t first,
                                      int64_t stop)
    void fd_softmax_dropout_units_bf16(const fd_bfloat16 *source, const fd_softmax_layout *layout,
                                       fd_bfloat16 *target, fd_bfloat16 *softmax_out,
                                       uint64_t *words, float scale, const fd_mask_params *params,
                                       int64_t first, int64_t stop)
    void fd_softmax_dropout_backward_units_f64(const double *grad, const double *softmax,
                                               double *target, const uint64_t *words,
                                               double scale, const fd_softmax_layout *layout,
                                               int64_t first, int64_t stop)
    void fd_softmax_dropout_backward_units_f32(const float *grad, const float *softmax,
                                               float *target, const uint64_t *words, float scale,
                                               const fd_softmax_layout *layout, int64_t first,
                                               int64_t stop)
    void fd_softmax_dropout_backward_units_f16(const uint16_t *grad, const uint16_t *softmax,
                                               uint16_t *target, const uint64_t *words,
                                               float scale, const fd_softmax_layout *layout,
                                               int64_t first, int64_t stop)
    void fd_softmax_dropout_backward_units_bf16(const fd_bfloat16 *grad,
                                                const fd_bfloat16 *softmax, fd_bfloat16 *target,
                                                const uint64_t *words, float scale,
                                                const fd_softmax_layout *layout, int64_t first,
                                                int64_t stop)


cdef void _softmax_units(Kind kind, const void *source, const fd_softmax_layout *layout,
                         void *target, void *softmax_out, uint64_t *words, double scale,
                         const fd_mask_params *params, int64_t first,
                         int64_t stop) noexcept nogil:
    if kind == F64:
        fd_softmax_dropout_units_f64(<const double *>source, layout, <double *>target,
                                     <double *>softmax_out, words, scale, params, first, stop)
    elif kind == F32:
        fd_softmax_dropout_units_f32(<const float *>source, layout, <float *>target,
                                     <float *>softmax_out, words, <float>scale, params, first,
                                     stop)
    elif kind == F16:
        fd_softmax_dropout_units_f16(<const uint16_t *>source, layout, <uint16_t *>target,
                                     <uint16_t *>softmax_out, words, <float>scale, params, first,
                                     stop)
    else:
        fd_softmax_dropout_units_bf16(<const fd_bfloat16 *>source, layout, <fd_bfloat16 *>target,
                                      <fd_bfloat16 *>softmax_out, words, <float>scale, params,
                                      first, stop)


cdef void _softmax_backward_units(Kind kind, const void *grad, const void *softmax, void *target,
                                  const uint64_t *words, double scale,
                                  const fd_softmax_layout *layout, int64_t first,
                                  int64_t stop) noexcept nogil:
    if kind == F64:
        fd_softmax_dropout_backward_units_f64(<const double *>grad, <const double *>softmax,
                                              <double *>target, words, scale, layout, first, stop)
    elif kind == F32:
        fd_softmax_dropout_backward_units_f32(<const float *>grad, <const float *>softmax,
                                              <float *>target, words, <float>scale, layout,
                                              first, stop)
    elif kind == F16:
        fd_softmax_dropout_backward_units_f16(<const uint16_t *>grad, <const uint16_t *>softmax,
                                              <uint16_t *>target, words, <float>scale, layout,
                                              first, stop)
    else:
        fd_softmax_dropout_backward_units_bf16(<const fd_bfloat16 *>grad,
                                               <const fd_bfloat16 *>softmax,
                                               <fd_bfloat16 *>target, words, <float>scale,
                                               layout, first, stop)


cdef fd_softmax_layout _softmax_layout(rows) except *:
    """The layout of a (outer, length, inner) array, its strides in elements."""
    cdef fd_softmax_layout layout
    cdef Py_ssize_t itemsize = rows.itemsize
    layout.outer, layout.length, layout.inner = rows.shape
    layout.outer_stride = rows.strides[0] // itemsize
    layout.length_stride = rows.strides[1] // itemsize
    layout.inner_stride = rows.strides[2] // itemsize
    return layout


cdef inline int64_t _units_per_group(int64_t unit) noexcept nogil:
    """Units (of ``unit`` elements) whose elements fill whole mask words: 64 / gcd(unit, 64)."""
    cdef int64_t divisor = 64
    while unit % divisor:
        divisor //= 2
    return 64 // divisor


cdef inline int _unit_chunks(int64_t n, int64_t unit, int64_t outer, int threads):
    """Ranges of whole groups of units, one per thread (1 = serial)."""
    cdef int64_t groups = (outer + _units_per_group(unit) - 1) // _units_per_group(unit)
    return <int>max(1, min(<int64_t>_chunk_count(n, threads), groups))


cdef inline int64_t _unit_start(int64_t outer, int64_t unit, int chunks,
                                int chunk) noexcept nogil:
    """Where chunk ``chunk``'s units start: a whole number of groups in."""
    cdef int64_t group = _units_per_group(unit)
    return min(_chunk_start((outer + group - 1) // group, chunks, chunk) * group, outer)


def softmax_dropout(source, target, softmax, words, double scale, MaskParams params not None,
                    int threads):
    """target = dropout(softmax(source)) along axis 1 of (outer, length, inner) arrays.

    ``source`` any strides (multiples of its itemsize); ``target`` and ``softmax`` (None:
    not written) C-contiguous; ``words`` None (no dropout: target = softmax) or room for
    the call's mask words, drawn here. Threads own groups of whole outer units.
    """
    cdef fd_mask_params view = _mask_params(params)
    cdef int64_t n = view.n
    if n == 0:
        return
    cdef fd_softmax_layout layout = _softmax_layout(source)
    cdef Kind kind = _kind(target)
    cdef double element_scale = _element_scale(target, kind, scale)
    cdef const void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef void *softmax_data = _data(softmax)
    cdef uint64_t *word_data = <uint64_t *>_data(words)
    cdef int64_t unit = layout.length * layout.inner
    cdef int chunks = _unit_chunks(n, unit, layout.outer, threads)
    cdef int chunk
    with nogil:
        if chunks == 1:
            _softmax_units(kind, source_data, &layout, target_data, softmax_data, word_data,
                           element_scale, &view, 0, layout.outer)
        else:
            for chunk in prange(chunks, num_threads=chunks, schedule="static"):
                _softmax_units(kind, source_data, &layout, target_data, softmax_data, word_data,
                               element_scale, &view, _unit_start(layout.outer, unit, chunks, chunk),
                               _unit_start(layout.outer, unit, chunks, chunk + 1))


def softmax_dropout_backward(grad, softmax, target, words, double scale, int threads):
    """target = softmax * (g' - sum(g' * softmax)) along axis 1, g' = dropout_backward(grad).

    C-contiguous (outer, length, inner) arrays of one type; ``words`` None: g' = grad.
    """
    cdef int64_t n = cnp.PyArray_SIZE(<cnp.ndarray>grad)
    if n == 0:
        return
    cdef fd_softmax_layout layout = _softmax_layout(grad)
    cdef Kind kind = _kind(grad)
    cdef double element_scale = _element_scale(grad, kind, scale)
    cdef const void *grad_data = _data(grad)
    cdef const void *softmax_data = _data(softmax)
    cdef void *target_data = _data(target)
    cdef const uint64_t *word_data = <const uint64_t *>_data(words)
    cdef int64_t unit = layout.length * layout.inner
    cdef int chunks = _unit_chunks(n, unit, layout.outer, threads)
    cdef int chunk
    with nogil:
        for chunk in prange(chunks, num_threads=chunks, schedule="static"):
            _softmax_backward_units(kind, grad_data, softmax_data, target_data, word_data,
                                    element_scale, &layout,
                                    _unit_start(layout.outer, unit, chunks, chunk),
                                    _unit_start(layout.outer, unit, chunks, chunk + 1))
