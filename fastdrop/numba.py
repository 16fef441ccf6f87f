"""fastdrop's kernels for your own Numba code: ``import fastdrop.numba as fdn``.

Every function here is a serial ``@njit`` function, meant to be called from your
own ``@njit`` (or ``@njit(parallel=True)``) code. They produce exactly the masks
and values of the public API (docs/mask-stream.md). To parallelise, give each
``prange`` iteration its own range ``[first, stop)`` of mask words: no two
iterations then write the same word. Element i of an array is bit i % 64 of local
mask word i // 64; ``offset`` is the global index of element 0.

Arrays are 1-D, C-contiguous float32 or float64 (float16 goes through
`fastdrop.dropout`). ``source`` and ``target`` may be the same array (in place).

Functions
---------
stream_parameters(p) -> (threshold, drop_all)
mask_word(seed, stream, word, threshold) -> uint64 keep bits of global word ``word`` (p < 1)
words_for(n) -> number of mask words for n elements
mask_words_range(words, n, p, seed, stream, offset, first, stop)
dropout_range(source, target, words, p, seed, stream, offset, first, stop)
    fused forward; pass an empty uint64 array as ``words`` to store no mask
apply_mask_range(source, target, words, p, first, stop)
    backward from stored mask words
dropout_backward_recompute_range(grad, target, p, seed, stream, offset, first, stop)
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from ._config import NUMBA_CACHE
from .kernels.numba.dropout import mask_range, read_only, stream_range, words_range
from .kernels.numba.words import mask_word

__all__ = [
    "apply_mask_range",
    "dropout_backward_recompute_range",
    "dropout_range",
    "mask_word",
    "mask_words_range",
    "stream_parameters",
    "words_for",
]

_TWO_TO_64 = 18446744073709551616.0


@njit(cache=NUMBA_CACHE)
def stream_parameters(p):
    """(threshold, drop_all) for drop probability p in [0, 1]: threshold = floor(p * 2**64)."""
    if p >= 1.0:
        return np.uint64(0), True
    return np.uint64(p * _TWO_TO_64), False  # exact: scaling by a power of two


@njit(cache=NUMBA_CACHE)
def words_for(n):
    """Number of uint64 mask words for n elements."""
    return (n + 63) // 64


def _element_scale(array, p):
    raise NotImplementedError("only callable from Numba code")


@overload(_element_scale)
def _element_scale_overload(array, p):
    if not isinstance(array, types.Array) or array.dtype not in (types.float32, types.float64):
        raise TypeError("fastdrop.numba kernels take float32 or float64 arrays")
    dtype = array.dtype

    def element_scale(array, p):
        scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)  # float64, then rounded once
        return dtype(scale)
    return element_scale


@njit(cache=NUMBA_CACHE)
def mask_words_range(words, n, p, seed, stream, offset, first, stop):
    """Fill words[first:stop] with the keep bits of elements offset .. offset + n - 1."""
    threshold, drop_all = stream_parameters(p)
    words_range(words, np.uint64(seed), np.uint64(stream), threshold, drop_all,
                np.int64(offset), np.int64(n), np.int64(first), np.int64(stop))


@njit(cache=NUMBA_CACHE)
def dropout_range(source, target, words, p, seed, stream, offset, first, stop):
    """Fused forward over mask words [first, stop): target = source * keep / (1 - p).

    Writes words[first:stop] too unless ``words`` is empty. ``target`` must have
    ``source``'s size (use `mask_words_range` for the words alone).
    """
    if target.size != source.size:
        raise ValueError("dropout_range: target must have the size of source")
    threshold, drop_all = stream_parameters(p)
    scale = _element_scale(source, p)
    # typed as the backend passes them (read-only source, int64): its compiled loops serve
    stream_range(read_only(source), target, words, scale, np.uint64(seed), np.uint64(stream),
                 threshold, drop_all, np.int64(offset), np.int64(source.size), np.int64(first),
                 np.int64(stop))


@njit(cache=NUMBA_CACHE)
def dropout_backward_recompute_range(grad, target, p, seed, stream, offset, first, stop):
    """Backward over mask words [first, stop) with the mask regenerated, none stored."""
    dropout_range(grad, target, np.empty(0, dtype=np.uint64), p, seed, stream, offset, first, stop)


@njit(cache=NUMBA_CACHE)
def apply_mask_range(source, target, words, p, first, stop):
    """Backward over mask words [first, stop) from stored words.

    target = source * keep / (1 - p).
    """
    scale = _element_scale(source, p)
    mask_range(read_only(source), target, words, scale, np.int64(source.size), np.int64(first),
               np.int64(stop))
