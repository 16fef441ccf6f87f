"""The Numba loops of the fused kernels: residual + dropout(x), residual + dropout(x + bias).

The twin of fastdrop/include/fastdrop/fused.h. A range [first, stop) of local mask words
takes its keep bits from `words_range` (dropout's mask words, chunk by chunk), then each
element becomes ``residual + dropout(x (+ bias))``, every step rounded to the element
type as docs/mask-stream.md section 11 says. float16 and bfloat16 come as 16-bit bit
patterns and compute in float32 (`load`/`store` round once). Without ``fastmath`` LLVM
contracts no multiply-add; the product also passes through an AND of its bits first.
"""
import numpy as np
from numba import njit, prange

from ..._config import NUMBA_CACHE
from .dropout import START, word_chunk, words_range
from .half import kept, load, store

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
CHUNK_WORDS = 1024  # mask words drawn ahead of their elements: 8 KiB


@njit(cache=NUMBA_CACHE, nogil=True)
def dropout_add_range(source, residual, bias, target, words, scale, seed, stream, threshold,
                      drop_all, offset, n, first, stop):
    """target = residual + dropout(source (+ bias)) over local mask words first..stop-1.

    ``bias`` is empty (none) or the last axis's values: element i reads
    ``bias[i % bias.size]``. Stores the words too unless ``words`` is empty. ``target``
    may be ``residual`` (each element is read before it is written).
    """
    chunk = np.empty(CHUNK_WORDS, dtype=np.uint64)
    store_words = words.size > 0
    features = bias.size
    for at in range(first, stop, CHUNK_WORDS):
        count = min(stop - at, CHUNK_WORDS)
        keep = words[at:at + count] if store_words else chunk[:count]
        begin = at * 64
        elements = min(n, (at + count) * 64) - begin
        # the chunk's words are those of the sub-array from element `begin`, drawn alone
        words_range(keep, seed, stream, threshold, drop_all, offset + begin, elements, START,
                    count)
        for i in range(begin, begin + elements):
            lane = _ZERO - ((keep[(i - begin) >> 6] >> np.uint64(i & 63)) & _ONE)
            value = source[i]
            if features:
                value = store(load(value) + load(bias[i % features]), value)
            target[i] = store(load(residual[i]) + load(kept(value, scale, lane)), value)


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE)
def dropout_add_parallel(source, residual, bias, target, words, scale, seed, stream, threshold,
                         drop_all, offset, n, chunks):
    """`dropout_add_range` over all local mask words, in ``chunks`` parallel ranges."""
    for chunk in prange(chunks):
        first, stop = word_chunk(n, chunks, chunk)
        if first < stop:
            dropout_add_range(source, residual, bias, target, words, scale, seed, stream,
                              threshold, drop_all, offset, n, first, stop)
