"""The Numba loops of the dropout variants: stored masks stretched over arrays, Gaussian noise.

Both work on ranges [first, stop) of an array's elements in C order (float16 as
uint16 bit patterns) and write no mask words, so any split among threads gives the
same result (fastdrop/include/fastdrop/variants.h is the C twin).
"""
import numpy as np
from numba import njit, prange

from ..._config import NUMBA_CACHE
from .dropout import START, apply_word, same_memory
from .half import kept, load, scale_by_noise, store
from .normal import BATCH as NORMAL_BATCH
from .normal import normal_block, standard_normal, standard_normals_batch
from .runs import run_start

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_WORD = np.uint64(64)


@njit(inline="always", cache=NUMBA_CACHE)
def _affine_run(source, target, start, count, scale, shift, dropped, keep, in_place):
    """Alpha dropout over target[start:start+count]: a*x + b where bit j of keep is set, else c.

    The affine value is computed for every element and then selected, on views
    (indices provably non-negative), so the loop vectorises.
    """
    values = target[start:start + count]
    inputs = values if in_place else source[start:start + count]
    for j in range(count):
        kept_value = store(load(inputs[j]) * scale + shift, inputs[j])
        values[j] = kept_value if (keep >> np.uint64(j)) & _ONE else dropped


@njit(inline="always", cache=NUMBA_CACHE)
def _one_bit_run(source, target, start, count, scale, shift, dropped, affine, bit, in_place):
    """target[start:start+count] from elements that share one keep bit."""
    values = target[start:start + count]
    lane = _ZERO - bit
    if affine and bit == _ZERO:
        values[:] = dropped
    elif in_place:  # one loop per case: choosing the input array inside the loop is slow
        for j in range(count):
            values[j] = (store(load(values[j]) * scale + shift, values[j]) if affine
                         else kept(values[j], scale, lane))
    else:
        inputs = source[start:start + count]
        for j in range(count):
            values[j] = (store(load(inputs[j]) * scale + shift, inputs[j]) if affine
                         else kept(inputs[j], scale, lane))


@njit(cache=NUMBA_CACHE, nogil=True)
def broadcast_range(source, target, words, sizes, mask_strides, affine, scale, shift,
                     dropped, first, stop):
    """Elements first..stop-1 with keep bits of a mask stretched over the array (see cython)."""
    inner_axis = sizes.size - 1
    inner = sizes[inner_axis]
    inner_stride = mask_strides[inner_axis]
    in_place = same_memory(source, target)
    i = first
    while i < stop:
        row, column = i // inner, i % inner
        count = min(inner - column, stop - i)
        mask_index, rest = 0, row
        for axis in range(inner_axis - 1, -1, -1):
            mask_index += (rest % sizes[axis]) * mask_strides[axis]
            rest //= sizes[axis]
        if inner_stride == 0:
            bit = (words[mask_index >> 6] >> np.uint64(mask_index & 63)) & _ONE
            _one_bit_run(source, target, i, count, scale, shift, dropped, affine, bit, in_place)
        else:
            for start in range(0, count, 64):
                length = min(64, count - start)
                keep = _read_bits(words, mask_index + column + start, length)
                if affine:
                    _affine_run(source, target, i + start, length, scale, shift, dropped, keep,
                                in_place)
                else:
                    apply_word(source, target, i + start, length, keep, scale, in_place)
        i += count


@njit(inline="always", cache=NUMBA_CACHE)
def _read_bits(words, bit, count):
    """``count`` (<= 64) mask bits from bit ``bit`` of the packed words."""
    word = bit >> 6
    shift = np.uint64(bit & 63)
    bits = words[word] >> shift
    if shift != _ZERO and 64 - np.int64(shift) < count:
        bits |= words[word + 1] << (_WORD - shift)
    if count < 64:
        bits &= (_ONE << np.uint64(count)) - _ONE
    return bits


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE)
def broadcast_parallel(source, target, words, sizes, mask_strides, affine, scale, shift,
                        dropped, chunks):
    """`broadcast_range` over all elements, in ``chunks`` parallel ranges."""
    n = source.size
    per_chunk = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        broadcast_range(source, target, words, sizes, mask_strides, affine, scale, shift,
                         dropped, chunk * per_chunk, min((chunk + 1) * per_chunk, n))


@njit(cache=NUMBA_CACHE, nogil=True, error_model="numpy")  # IEEE division: loops vectorise
def gaussian_range(source, target, sigma, seed, stream, offset, first, stop):
    """Elements first..stop-1: one by one up to a Philox block's start, then whole batches."""
    i = first
    if i < stop and (offset + np.uint64(i)) & _ONE:
        words = normal_block(seed, stream, (offset + np.uint64(i)) >> _ONE)
        target[i] = scale_by_noise(source[i], 1.0 + sigma * standard_normal(words[1]))
        i += 1
    z = np.empty(NORMAL_BATCH)
    u = np.empty(NORMAL_BATCH)
    tail_u = np.empty(NORMAL_BATCH)
    tail_index = np.empty(NORMAL_BATCH, dtype=np.int64)
    while stop - i >= NORMAL_BATCH:
        standard_normals_batch(seed, stream, (offset + np.uint64(i)) >> _ONE, z, u, tail_u,
                               tail_index)
        inputs = source[i:i + NORMAL_BATCH]
        values = target[i:i + NORMAL_BATCH]
        for j in range(NORMAL_BATCH):
            values[j] = scale_by_noise(inputs[j], 1.0 + sigma * z[j])
        i += NORMAL_BATCH
    while i < stop:
        index = offset + np.uint64(i)
        words = normal_block(seed, stream, index >> _ONE)
        z_value = standard_normal(words[1] if index & _ONE else words[0])
        target[i] = scale_by_noise(source[i], 1.0 + sigma * z_value)
        i += 1


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE, error_model="numpy")
def gaussian_parallel(source, target, sigma, seed, stream, offset, chunks):
    """`gaussian_range` over all elements, in ``chunks`` parallel ranges."""
    n = source.size
    per_chunk = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        gaussian_range(source, target, sigma, seed, stream, offset, chunk * per_chunk,
                        min((chunk + 1) * per_chunk, n))


@njit(cache=NUMBA_CACHE, nogil=True, error_model="numpy")
def gaussian_runs_range(source, target, sigma, seed, stream, base, shape, strides, run, first,
                        stop):
    """`gaussian_range` over elements first..stop-1 of a block of a larger array."""
    if run <= 0:
        return
    r = first // run
    while r * run < stop:
        low = max(r * run, first)
        high = min((r + 1) * run, stop)
        start = run_start(base, shape, strides, r) + np.uint64(low - r * run)
        gaussian_range(source[low:high], target[low:high], sigma, seed, stream, start, START,
                       high - low)
        r += 1


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE, error_model="numpy")
def gaussian_runs_parallel(source, target, sigma, seed, stream, base, shape, strides, run,
                           chunks):
    """`gaussian_runs_range` over all elements of a block, in ``chunks`` parallel ranges."""
    n = source.size
    per_chunk = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        gaussian_runs_range(source, target, sigma, seed, stream, base, shape, strides, run,
                            chunk * per_chunk, min((chunk + 1) * per_chunk, n))
