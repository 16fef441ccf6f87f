"""The Numba loops of softmax then dropout, and its backward: the twin of softmax.h.

Rows run along axis 1 of (outer, length, inner) arrays, as docs/mask-stream.md section 12
says: the maximum, e = exp(x - m) by NumPy's exp in the compute type (float32, float64 for
float64), their sum in 16 interleaved lanes added pairwise, s = e * (1 / S) rounded to the
element type, then dropout's ``kept`` with the keep bits of `words_range` (dropout's mask
words). The backward's sums keep the same lane order, so it gives the C kernels' bits.
A range of outer units [first, stop) is the unit of work; a thread's first unit starts a
mask word.
"""
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..._config import NUMBA_CACHE
from .dropout import words_range
from .half import kept, load, store

_ONE = np.uint64(1)
_ZERO = np.uint64(0)
LANES = 16
DRAW_ELEMENTS = 16384  # elements whose mask words are drawn ahead of their rows


def reciprocal(value):
    """1 / value in value's own type (float32 stays float32)."""
    raise NotImplementedError("only callable from Numba code")


@overload(reciprocal)
def _reciprocal_overload(value):
    if value == types.float32:
        return lambda value: np.float32(1) / value
    return lambda value: 1.0 / value


@njit(inline="always", cache=NUMBA_CACHE)
def lane_total(sums):
    """The 16 lane sums added pairwise: lane k and k + 8, then k + 4, k + 2, k + 1."""
    tree = sums.copy()
    width = LANES // 2
    while width:
        for k in range(width):
            tree[k] = tree[k] + tree[k + width]
        width //= 2
    return tree[0]


@njit(inline="always", cache=NUMBA_CACHE)
def keep_lane(words, q):
    """All ones where call element q is kept, else 0."""
    return _ZERO - ((words[q >> 6] >> np.uint64(q & 63)) & _ONE)


@njit(cache=NUMBA_CACHE, nogil=True)
def softmax_range(source, target, softmax, words, scale, seed, stream, threshold, drop_all,
                  offset, n, dropout, work, first, stop):
    """Rows of outer units first..stop-1.

    ``softmax`` empty: not written; ``dropout`` False: target is the softmax. ``work``:
    an empty array of the compute type.
    """
    outer, length, inner = source.shape
    unit = length * inner
    if unit == 0:
        return
    values = np.empty(length, dtype=work.dtype)
    sums = np.zeros(LANES, dtype=work.dtype)
    write_softmax = softmax.size > 0
    per_draw = max(1, DRAW_ELEMENTS // unit)
    for at in range(first, stop, per_draw):
        until = min(stop, at + per_draw)
        if dropout:  # a word shared with the previous draw is drawn again, the same
            words_range(words, seed, stream, threshold, drop_all, offset, n, (at * unit) >> 6,
                        (until * unit + 63) // 64)
        for i in range(at, until):
            for k in range(inner):
                largest = load(source[i, 0, k])
                for j in range(length):
                    values[j] = load(source[i, j, k])
                    if values[j] > largest:
                        largest = values[j]
                sums[:] = 0
                for j in range(length):
                    values[j] = np.exp(values[j] - largest)
                    sums[j & (LANES - 1)] += values[j]
                factor = reciprocal(lane_total(sums))
                for j in range(length):
                    s = store(values[j] * factor, source[i, j, k])
                    if write_softmax:
                        softmax[i, j, k] = s
                    if dropout:
                        s = kept(s, scale, keep_lane(words, (i * length + j) * inner + k))
                    target[i, j, k] = s


@njit(cache=NUMBA_CACHE, nogil=True)
def softmax_backward_range(grad, softmax, target, words, scale, dropout, work, first, stop):
    """dx = s * (g - D) over outer units first..stop-1, D the lane sum of g * s."""
    outer, length, inner = grad.shape
    sums = np.zeros(LANES, dtype=work.dtype)
    for i in range(first, stop):
        for k in range(inner):
            sums[:] = 0
            for j in range(length):
                g = grad[i, j, k]
                if dropout:
                    g = kept(g, scale, keep_lane(words, (i * length + j) * inner + k))
                sums[j & (LANES - 1)] += load(g) * load(softmax[i, j, k])
            dot = lane_total(sums)
            for j in range(length):
                g = grad[i, j, k]
                if dropout:
                    g = kept(g, scale, keep_lane(words, (i * length + j) * inner + k))
                target[i, j, k] = store(load(softmax[i, j, k]) * (load(g) - dot), g)


@njit(inline="always", cache=NUMBA_CACHE)
def unit_range(outer, group, chunks, chunk):
    """Chunk ``chunk`` of ``chunks`` near-equal ranges of whole groups of units."""
    groups = (outer + group - 1) // group
    per_chunk = (groups + chunks - 1) // chunks
    return min(chunk * per_chunk * group, outer), min((chunk + 1) * per_chunk * group, outer)


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE)
def softmax_parallel(source, target, softmax, words, scale, seed, stream, threshold, drop_all,
                     offset, n, dropout, work, group, chunks):
    """`softmax_range` over all units, in ``chunks`` ranges of whole groups."""
    for chunk in prange(chunks):
        first, stop = unit_range(source.shape[0], group, chunks, chunk)
        if first < stop:
            softmax_range(source, target, softmax, words, scale, seed, stream, threshold,
                          drop_all, offset, n, dropout, work, first, stop)


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE)
def softmax_backward_parallel(grad, softmax, target, words, scale, dropout, work, group, chunks):
    """`softmax_backward_range` over all units, in ``chunks`` ranges of whole groups."""
    for chunk in prange(chunks):
        first, stop = unit_range(grad.shape[0], group, chunks, chunk)
        if first < stop:
            softmax_backward_range(grad, softmax, target, words, scale, dropout, work, first,
                                   stop)
