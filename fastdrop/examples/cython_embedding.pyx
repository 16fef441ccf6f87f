# cython: language_level=3, boundscheck=False, wraparound=False
"""Embedding fastdrop in your own Cython code: dropout on a matrix, in place, OpenMP threads.

Build it with ``include_dirs=[fastdrop.get_include(), numpy.get_include()]`` (see
docs/embedding.md); tests/test_embedding.py compiles and runs it.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint64_t

from fastdrop.libfastdrop cimport (
    fd_dropout_range_f32, fd_mask_params, fd_mask_params_make, fd_words_for,
)


def dropout_matrix(float[:, ::1] x, double p, uint64_t seed, uint64_t stream,
                   uint64_t[::1] words, int chunks=4):
    """x = x * keep / (1 - p) in place; the packed mask goes to ``words``."""
    cdef int64_t n = x.shape[0] * x.shape[1]
    cdef fd_mask_params params = fd_mask_params_make(seed, stream, p, 0, n)
    cdef float scale = <float>(1.0 / (1.0 - p)) if p < 1.0 else 0.0  # s rounded once
    cdef int64_t total = fd_words_for(n)
    cdef int64_t per_chunk = (total + chunks - 1) // chunks
    cdef int chunk
    if n == 0:
        return
    for chunk in prange(chunks, nogil=True):  # each chunk owns whole mask words
        fd_dropout_range_f32(&x[0, 0], &x[0, 0], &words[0], scale, &params,
                             chunk * per_chunk, min((chunk + 1) * per_chunk, total))
