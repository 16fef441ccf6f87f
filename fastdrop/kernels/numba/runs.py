"""The Numba loops for a block of a larger array: its elements take their runs' global indices.

A block's elements in C order come in runs of consecutive global indices
(`fastdrop._layout.block_runs`); the loops here draw the keep bits those indices have in
the whole array and scale by them with `dropout.mask_range`, over ranges [first, stop)
of the block's local mask words (fastdrop/include/fastdrop/runs.h is the C twin).
"""
import numpy as np
from numba import njit, prange

from ..._config import NUMBA_CACHE
from .dropout import START, mask_range, word_chunk, words_range

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_WORD = np.uint64(64)


# Mask words per chunk of a block, and of a dense chunk's span (runs.h's
# FD_RUN_CHUNK_WORDS and FD_RUN_SPAN_WORDS).
RUN_CHUNK_WORDS = 1024
RUN_SPAN_WORDS = 2 * RUN_CHUNK_WORDS


@njit(inline="always", cache=NUMBA_CACHE)
def run_start(base, shape, strides, r):
    """Global index of run r's first element (runs.h's fd_run_start)."""
    start = np.uint64(base)
    for axis in range(shape.size - 1, -1, -1):
        extent = shape[axis]
        start += np.uint64((r % extent) * strides[axis])
        r //= extent
    return start


@njit(inline="always", cache=NUMBA_CACHE)
def _or_bits(words, at, bits, source_at, count):
    """words |= bits[source_at:source_at + count] (as bits), placed from bit ``at`` on.

    runs.h's fd_or_bits: only bits below at + count are touched; where source_at is
    not word-aligned, the word after the last one holding a source bit is read too.
    """
    in_shift = np.uint64(source_at & 63)
    shift = np.uint64(at & 63)
    source = source_at >> 6
    first = at >> 6
    for i in range((count + 63) // 64):
        value = bits[source + i] >> in_shift
        if in_shift != _ZERO:
            value |= bits[source + i + 1] << (_WORD - in_shift)
        remain = count - i * 64
        if remain < 64:
            value &= (_ONE << np.uint64(remain)) - _ONE
        words[first + i] |= value << shift
        if shift != _ZERO and remain > 64 - np.int64(shift):
            words[first + i + 1] |= value >> (_WORD - shift)


@njit(cache=NUMBA_CACHE, nogil=True)
def runs_mask_words(out, seed, stream, threshold, drop_all, base, shape, strides, run, n, first,
                    stop, bits):
    """Local words first..stop-1 of a block, as keep bits, into out[:stop - first].

    As runs.h's fd_runs_mask_words: where the runs lie densely in the global array,
    the span's words drawn once and each run's bits taken out of them; else each run's
    part drawn as global words and placed into the block's words (``bits``: scratch of
    RUN_SPAN_WORDS + 1 words).
    """
    begin = first * 64
    end = min(stop * 64, n)
    out[:stop - first] = _ZERO
    if begin >= end or run <= 0:
        return
    index = np.empty(shape.size, dtype=np.int64)  # the run's index over the outer axes
    rest = begin // run
    for axis in range(shape.size - 1, -1, -1):
        index[axis] = rest % shape[axis]
        rest //= shape[axis]
    start = run_start(base, shape, strides, begin // run)
    span_start = start + np.uint64(begin % run)
    span = (run_start(base, shape, strides, (end - 1) // run) + np.uint64((end - 1) % run)
            + _ONE - span_start)
    dense = span <= np.uint64(64 * RUN_SPAN_WORDS) and span <= np.uint64(2 * (end - begin))
    if dense:
        count = (np.int64(span) + 63) // 64
        # offsets as int64 (the same bits), as the other loops pass them
        words_range(bits, seed, stream, threshold, drop_all, np.int64(span_start),
                    np.int64(span), START, count)
        bits[count] = _ZERO
    r = begin // run
    while r * run < end:
        low = max(r * run, begin)
        high = min((r + 1) * run, end)
        if dense:
            _or_bits(out, low - begin, bits,
                     np.int64(start + np.uint64(low - r * run) - span_start), high - low)
        else:
            at = low
            while at < high:
                count = min(high - at, 64 * RUN_CHUNK_WORDS)
                words_range(bits, seed, stream, threshold, drop_all,
                            np.int64(start + np.uint64(low - r * run) + np.uint64(at - low)),
                            count, START, (count + 63) // 64)
                _or_bits(out, at - begin, bits, 0, count)
                at += count
        r += 1
        for axis in range(shape.size - 1, -1, -1):  # the next run's start: an odometer
            start += np.uint64(strides[axis])
            index[axis] += 1
            if index[axis] < shape[axis]:
                break
            start -= np.uint64(shape[axis] * strides[axis])
            index[axis] = 0


@njit(cache=NUMBA_CACHE, nogil=True)
def runs_range(source, target, words, scale, seed, stream, threshold, drop_all, base, shape,
               strides, run, n, first, stop):
    """`stream_range` over local words first..stop-1 of a block of a larger array.

    As runs.h's fd_dropout_runs: a chunk of words at a time, its keep bits from the
    runs, then one `mask_range` pass over its elements (mask words alone: empty source).
    """
    bits = np.empty(RUN_SPAN_WORDS + 1, dtype=np.uint64)
    chunk = np.empty(RUN_CHUNK_WORDS, dtype=np.uint64)
    store = words.size > 0
    for at in range(first, stop, RUN_CHUNK_WORDS):
        count = min(stop - at, RUN_CHUNK_WORDS)
        keep = words[at:at + count] if store else chunk[:count]
        runs_mask_words(keep, seed, stream, threshold, drop_all, base, shape, strides, run, n,
                        at, at + count, bits)
        if source.size > 0:
            elements = min(n, (at + count) * 64) - at * 64
            mask_range(source[at * 64:at * 64 + elements], target[at * 64:at * 64 + elements],
                       keep, scale, elements, START, count)


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE)
def runs_parallel(source, target, words, scale, seed, stream, threshold, drop_all, base, shape,
                  strides, run, n, chunks):
    """`runs_range` over all local words of a block, in ``chunks`` parallel ranges."""
    for chunk in prange(chunks):
        first, stop = word_chunk(n, chunks, chunk)
        if first < stop:
            runs_range(source, target, words, scale, seed, stream, threshold, drop_all, base,
                       shape, strides, run, n, first, stop)
