# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython/OpenMP backend: the kernels of fastdrop/include/fastdrop/dropout.h over threads.

The kernel interface of `fastdrop._backends` (1-D C-contiguous arrays, float16 as
uint16, checked machine values). Threads run ``prange`` over ranges of whole mask
words, so no two threads write one word; built without OpenMP the same loop runs
serially.
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t, uint64_t

from fastdrop.kernels.cython.openmp cimport FD_OPENMP_ENABLED, omp_get_max_threads
from fastdrop.libfastdrop cimport (
    fd_apply_broadcast_range_f16, fd_apply_broadcast_range_f32, fd_apply_broadcast_range_f64,
    fd_apply_mask_range_f16, fd_apply_mask_range_f32, fd_apply_mask_range_f64,
    fd_broadcast_layout, fd_dropout_range_f16, fd_dropout_range_f32, fd_dropout_range_f64,
    fd_gaussian_range_f16, fd_gaussian_range_f32, fd_gaussian_range_f64, fd_mask_op_f32,
    fd_standard_normal,
    fd_mask_op_f64, fd_mask_params, fd_scale_range_f32, fd_scale_range_f64,
    fd_set_simd, fd_simd_enabled, fd_words_for,
)

from fastdrop._config import MIN_ELEMENTS_PER_THREAD
from fastdrop.kernels.common import kernel_mask_op, kernel_scale

cnp.import_array()

cdef int64_t _MIN_ELEMENTS_PER_THREAD = MIN_ELEMENTS_PER_THREAD

ctypedef fused element_t:
    double
    float
    uint16_t


def openmp_enabled():
    """Whether this module was compiled with OpenMP."""
    return bool(FD_OPENMP_ENABLED)


def simd_enabled():
    """The vector path mask words use: 0 portable, 1 AVX2, 2 AVX-512F (as far as the CPU has it)."""
    return fd_simd_enabled()


def set_simd(level):
    """Cap the vector path: False or 0 portable, 1 AVX2, True or 2 the best the CPU has.

    Results are identical on every path; tests use this to check each of them.
    Returns the level now in use.
    """
    if level is True or level is False:
        level = 2 if level else 0
    return fd_set_simd(int(level))


def max_threads():
    """OpenMP's default team size (1 without OpenMP)."""
    return omp_get_max_threads()


cdef inline void _stream_range(const element_t *source, element_t *target, uint64_t *words,
                               double scale, const fd_mask_params *params,
                               int64_t first, int64_t stop) noexcept nogil:
    if element_t is double:
        fd_dropout_range_f64(source, target, words, scale, params, first, stop)
    elif element_t is float:
        fd_dropout_range_f32(source, target, words, <float>scale, params, first, stop)
    else:
        fd_dropout_range_f16(source, target, words, <float>scale, params, first, stop)


cdef inline void _mask_range(const element_t *source, element_t *target, const uint64_t *words,
                             double scale, int64_t n, int64_t first,
                             int64_t stop) noexcept nogil:
    if element_t is double:
        fd_apply_mask_range_f64(source, target, words, scale, n, first, stop)
    elif element_t is float:
        fd_apply_mask_range_f32(source, target, words, <float>scale, n, first, stop)
    else:
        fd_apply_mask_range_f16(source, target, words, <float>scale, n, first, stop)


cdef void _stream_chunks(const element_t *source, element_t *target, uint64_t *words,
                         double scale, const fd_mask_params *params, int chunks) noexcept nogil:
    cdef int64_t total = fd_words_for(params.n)
    cdef int64_t per_chunk = (total + chunks - 1) // chunks
    cdef int chunk
    if chunks == 1:
        _stream_range(source, target, words, scale, params, 0, total)
        return
    for chunk in prange(chunks, num_threads=chunks, schedule="static"):
        _stream_range(source, target, words, scale, params, chunk * per_chunk,
                      min((chunk + 1) * per_chunk, total))


cdef void _mask_chunks(const element_t *source, element_t *target, const uint64_t *words,
                       double scale, int64_t n, int chunks) noexcept nogil:
    cdef int64_t total = fd_words_for(n)
    cdef int64_t per_chunk = (total + chunks - 1) // chunks
    cdef int chunk
    if chunks == 1:
        _mask_range(source, target, words, scale, n, 0, total)
        return
    for chunk in prange(chunks, num_threads=chunks, schedule="static"):
        _mask_range(source, target, words, scale, n, chunk * per_chunk,
                    min((chunk + 1) * per_chunk, total))


cdef inline void *_data(array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray>array)


cdef inline int _type(array):
    """The array's NumPy type number (float16 data is passed to kernels as uint16 bits)."""
    return cnp.PyArray_TYPE(<cnp.ndarray>array)


cdef inline int _chunk_count(int64_t n, int threads):
    """common.chunk_count in C: ranges of whole mask words, one per thread; 1 = serial."""
    return <int>max(1, min(<int64_t>threads, n // _MIN_ELEMENTS_PER_THREAD))


cdef inline double _element_scale(array, double scale):
    """common.kernel_scale without the Python call for float32 and float64 (C rounds the same)."""
    cdef int kind = _type(array)
    if kind == cnp.NPY_DOUBLE:
        return scale
    if kind == cnp.NPY_FLOAT:
        return <float>scale
    return kernel_scale(array.dtype, scale)


cdef int _stream_into(source, target, uint64_t *word_data, double scale,
                      const fd_mask_params *params, int threads) except -1:
    """Mask words and/or the scaled elements of source into target (None for mask only)."""
    cdef int chunks = _chunk_count(params.n, threads)
    if params.n == 0:
        return 0
    if source is None:
        with nogil:
            _stream_chunks[float](NULL, NULL, word_data, 0.0, params, chunks)
        return 0
    cdef double element_scale = _element_scale(source, scale)
    cdef void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef int kind = _type(source)
    if kind == cnp.NPY_DOUBLE:
        with nogil:
            _stream_chunks[double](<double *>source_data, <double *>target_data, word_data,
                                   element_scale, params, chunks)
    elif kind == cnp.NPY_FLOAT:
        with nogil:
            _stream_chunks[float](<float *>source_data, <float *>target_data, word_data,
                                  element_scale, params, chunks)
    else:
        with nogil:
            _stream_chunks[uint16_t](<uint16_t *>source_data, <uint16_t *>target_data,
                                     word_data, element_scale, params, chunks)
    return 0


def scale_by_stream(source, target, words, int64_t n, double scale, uint64_t threshold,
                    bint drop_all, uint64_t seed, uint64_t stream, uint64_t offset, int threads):
    """Mask words from the stream and/or target = source * keep * scale.

    ``source``/``target`` may be None (mask only); ``words`` may be None (recompute,
    no mask).
    """
    cdef fd_mask_params params
    params.seed, params.stream, params.threshold = seed, stream, threshold
    params.drop_all, params.offset, params.n = drop_all, offset, n
    _stream_into(source, target, <uint64_t *>_data(words), scale, &params, threads)


def dropout_plain(x, bint inplace, uint64_t threshold, bint drop_all, double scale,
                  uint64_t seed, uint64_t stream, uint64_t offset, int threads):
    """Fused forward of a whole C-contiguous array, in place or into a new array: ``(y, words)``.

    The API's one-step path for the usual call, in one C step: x is an ndarray,
    C-contiguous, aligned, native float16/32/64 (writeable in place); T, drop_all,
    s, seed, stream and offset are checked. y is x in place, else a new C-ordered
    array; the bits are those of `scale_by_stream`.
    """
    cdef cnp.ndarray array = <cnp.ndarray>x
    cdef fd_mask_params params
    params.seed, params.stream, params.threshold = seed, stream, threshold
    params.drop_all, params.offset, params.n = drop_all, offset, cnp.PyArray_SIZE(array)
    cdef cnp.npy_intp word_count = fd_words_for(params.n)
    words = cnp.PyArray_EMPTY(1, &word_count, cnp.NPY_UINT64, 0)
    target = x if inplace else cnp.PyArray_EMPTY(cnp.PyArray_NDIM(array),
                                                 cnp.PyArray_DIMS(array),
                                                 cnp.PyArray_TYPE(array), 0)
    _stream_into(x, target, <uint64_t *>_data(words), scale, &params, threads)
    return target, words


def scale_by_mask(source, target, words, double scale, int threads):
    """target = source * keep * scale with keep read from packed words."""
    cdef int64_t n = cnp.PyArray_SIZE(<cnp.ndarray>source)
    cdef int chunks = _chunk_count(n, threads)
    cdef const uint64_t *word_data = <const uint64_t *>_data(words)
    if n == 0:
        return
    cdef double element_scale = _element_scale(source, scale)
    cdef void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef int kind = _type(source)
    if kind == cnp.NPY_DOUBLE:
        with nogil:
            _mask_chunks[double](<double *>source_data, <double *>target_data, word_data,
                                 element_scale, n, chunks)
    elif kind == cnp.NPY_FLOAT:
        with nogil:
            _mask_chunks[float](<float *>source_data, <float *>target_data, word_data,
                                element_scale, n, chunks)
    else:
        with nogil:
            _mask_chunks[uint16_t](<uint16_t *>source_data, <uint16_t *>target_data,
                                   word_data, element_scale, n, chunks)


cdef void _broadcast_chunks(const element_t *source, element_t *target, const uint64_t *words,
                            const fd_broadcast_layout *layout, const fd_mask_op_f64 *op64,
                            const fd_mask_op_f32 *op32, int64_t n, int chunks) noexcept nogil:
    cdef int64_t per_chunk = (n + chunks - 1) // chunks
    cdef int chunk
    for chunk in prange(chunks, num_threads=chunks, schedule="static"):
        if element_t is double:
            fd_apply_broadcast_range_f64(source, target, words, layout, op64, chunk * per_chunk,
                                         min((chunk + 1) * per_chunk, n))
        elif element_t is float:
            fd_apply_broadcast_range_f32(source, target, words, layout, op32, chunk * per_chunk,
                                         min((chunk + 1) * per_chunk, n))
        else:
            fd_apply_broadcast_range_f16(source, target, words, layout, op32, chunk * per_chunk,
                                         min((chunk + 1) * per_chunk, n))


def apply_broadcast(source, target, words, sizes, mask_strides, double scale, affine,
                    int threads):
    """target = source with stored keep bits stretched over it by (sizes, mask_strides).

    ``affine`` None: kept x * scale, dropped +0.0; else alpha dropout's (a, b, c).
    """
    cdef int64_t n = cnp.PyArray_SIZE(<cnp.ndarray>source)
    cdef int chunks = _chunk_count(n, threads)
    cdef const uint64_t *word_data = <const uint64_t *>_data(words)
    cdef fd_broadcast_layout layout
    cdef fd_mask_op_f64 op64
    cdef fd_mask_op_f32 op32
    if n == 0:
        return
    layout.ndim = sizes.size
    layout.sizes = <const int64_t *>_data(sizes)
    layout.mask_strides = <const int64_t *>_data(mask_strides)
    is_affine, element_scale, shift, dropped_value = kernel_mask_op(source.dtype, scale, affine)
    op64.affine = op32.affine = is_affine
    op64.scale, op64.shift, op64.dropped_value = element_scale, shift, dropped_value
    op32.scale, op32.shift, op32.dropped_value = element_scale, shift, dropped_value
    cdef void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef int kind = _type(source)
    if kind == cnp.NPY_DOUBLE:
        with nogil:
            _broadcast_chunks[double](<double *>source_data, <double *>target_data, word_data,
                                      &layout, &op64, &op32, n, chunks)
    elif kind == cnp.NPY_FLOAT:
        with nogil:
            _broadcast_chunks[float](<float *>source_data, <float *>target_data, word_data,
                                     &layout, &op64, &op32, n, chunks)
    else:
        with nogil:
            _broadcast_chunks[uint16_t](<uint16_t *>source_data, <uint16_t *>target_data,
                                        word_data, &layout, &op64, &op32, n, chunks)


cdef void _gaussian_chunks(const element_t *source, element_t *target, double sigma,
                           uint64_t seed, uint64_t stream, uint64_t offset, int64_t n,
                           int chunks) noexcept nogil:
    cdef int64_t per_chunk = (n + chunks - 1) // chunks
    cdef int chunk
    for chunk in prange(chunks, num_threads=chunks, schedule="static"):
        if element_t is double:
            fd_gaussian_range_f64(source, target, sigma, seed, stream, offset,
                                  chunk * per_chunk, min((chunk + 1) * per_chunk, n))
        elif element_t is float:
            fd_gaussian_range_f32(source, target, sigma, seed, stream, offset,
                                  chunk * per_chunk, min((chunk + 1) * per_chunk, n))
        else:
            fd_gaussian_range_f16(source, target, sigma, seed, stream, offset,
                                  chunk * per_chunk, min((chunk + 1) * per_chunk, n))


def gaussian(source, target, double sigma, uint64_t seed, uint64_t stream, uint64_t offset,
             int threads):
    """target = source * (1 + sigma * z) with z from the Gaussian noise stream (1-D arrays)."""
    cdef int64_t n = cnp.PyArray_SIZE(<cnp.ndarray>source)
    cdef int chunks = _chunk_count(n, threads)
    if n == 0:
        return
    cdef void *source_data = _data(source)
    cdef void *target_data = _data(target)
    cdef int kind = _type(source)
    if kind == cnp.NPY_DOUBLE:
        with nogil:
            _gaussian_chunks[double](<double *>source_data, <double *>target_data, sigma, seed,
                                     stream, offset, n, chunks)
    elif kind == cnp.NPY_FLOAT:
        with nogil:
            _gaussian_chunks[float](<float *>source_data, <float *>target_data, sigma, seed,
                                    stream, offset, n, chunks)
    else:
        with nogil:
            _gaussian_chunks[uint16_t](<uint16_t *>source_data, <uint16_t *>target_data, sigma,
                                       seed, stream, offset, n, chunks)


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


ctypedef fused real_t:
    double
    float


cdef inline void _scale_range(real_t *values, real_t scale, int64_t n, int64_t first,
                              int64_t stop) noexcept nogil:
    if real_t is double:
        fd_scale_range_f64(values, scale, n, first, stop)
    else:
        fd_scale_range_f32(values, scale, n, first, stop)


cdef void _scale_chunks(real_t *values, real_t scale, int64_t n, int chunks) noexcept nogil:
    cdef int64_t total = fd_words_for(n)
    cdef int64_t per_chunk = (total + chunks - 1) // chunks
    cdef int chunk
    for chunk in prange(chunks, num_threads=chunks, schedule="static"):
        _scale_range(values, scale, n, chunk * per_chunk, min((chunk + 1) * per_chunk, total))


def scale_in_place(values, double scale, int threads):
    """values *= scale on ``threads`` threads: the memory-bandwidth floor benchmarks compare with.

    Dropout in place must read and write every element once, as this does; it is the
    fastest any in-place dropout can be. Threads own ranges of whole 64-element words,
    as in the dropout kernels, and each runs the fused kernel's vector path and
    prefetch (``fd_scale_range`` in dropout.h), so the floor is not slowed by a weaker
    loop than the kernels it measures. 1-D C-contiguous float32 or float64 only.
    """
    cdef int64_t n = values.size
    cdef void *data = _data(values)
    if n == 0:
        return
    if values.dtype == np.float64:
        with nogil:
            _scale_chunks[double](<double *>data, scale, n, max(threads, 1))
    elif values.dtype == np.float32:
        with nogil:
            _scale_chunks[float](<float *>data, <float>scale, n, max(threads, 1))
    else:
        raise TypeError(f"scale_in_place takes float32 or float64, got {values.dtype}")
