"""The Numba dropout loops: mask words, fused forward, and scaling by stored words.

All loops work on 1-D C-contiguous arrays (float16 as uint16 bit patterns) over a
range [first, stop) of local mask words, so no two threads ever write the same word
and the result never depends on the split. Local mask word k holds elements
64k .. 64k+63 of the array; with a global ``offset`` that is not a multiple of 64
those elements straddle two global mask words, and each range walks its global words
once, carrying the upper one forward.
"""
import numba
import numpy as np
from llvmlite import binding
from numba import njit, prange, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload

from ..._config import NUMBA_CACHE
from .half import kept
from .llvm import PREFETCH_WORDS, draw_scaling, prefetch_for_write, scale_whole_words
from .words import BATCH_WORDS, mask_words_into

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_SIX = np.uint64(6)
_LANE_MASK = np.uint64(63)
_WORD = np.uint64(64)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
# Typed values where a loop calls another compiled loop: a literal 0 or False would make
# Numba compile the callee once more, for the type Literal[int](0) or Literal[bool](False).
START = np.int64(0)
_NOT_CARRIED = np.bool_(False)


@njit(inline="always", cache=NUMBA_CACHE)
def apply_word(source, target, start, count, keep, scale, in_place):
    """target[start + j] = source[start + j] * scale where bit j of keep is set, else +0.

    Branch-free per element, on views of the word's elements (indices provably
    non-negative), so the loops vectorise; the in-place loop touches one array only,
    so the compiler need not guard against overlap.
    """
    values = target[start:start + count]
    if in_place:
        for j in range(count):
            lane = _ZERO - ((keep >> np.uint64(j)) & _ONE)  # all ones where kept
            values[j] = kept(values[j], scale, lane)
    else:
        inputs = source[start:start + count]
        for j in range(count):
            lane = _ZERO - ((keep >> np.uint64(j)) & _ONE)
            values[j] = kept(inputs[j], scale, lane)


def _prefetch_per_word(array):
    """Whether the fused loop prefetches word by word (float64), else a batch at a time."""
    raise NotImplementedError("only callable from Numba code")


@overload(_prefetch_per_word)
def _prefetch_per_word_overload(array):
    # a constant of the array's type, so each compiled loop has one prefetch pattern:
    # float64 words span 8 cache lines, and a batch's 64 prefetches at once overflow the
    # line-fill buffers
    per_word = array.dtype.bitwidth >= 64
    return lambda array: per_word


@njit(inline="always", cache=NUMBA_CACHE)
def _prefetch_words(source, first_word, count, n, line):
    """Ask for the elements of mask words first_word .. first_word + count - 1 (within n)."""
    ahead = first_word * 64
    for element in range(ahead, min(n, ahead + count * 64), line):
        prefetch_for_write(source, element)


@njit(inline="always", cache=NUMBA_CACHE)
def same_memory(source, target):
    """Whether ``source`` is not empty and ``target`` starts at its address (in place)."""
    return source.size > 0 and source.ctypes.data == target.ctypes.data


@njit(cache=NUMBA_CACHE, nogil=True)  # its own function: inlined, it slows the aligned loop
def _shifted_batch(keep, buffer, carried, seed, stream, threshold, drop_all, base, shift, n,
                   group, count):
    """keep[:count] = local words group .. group+count-1 for an offset with shift bits.

    Returns ``carried``.

    Local word k takes the top of global word k and the bottom of word k + 1. The
    global words go through ``buffer``; when the group's last word needs the next
    batch, that batch is drawn into the upper half and carried to the next group
    (``carried``) instead of being drawn twice. Bits past the array's end may be set.
    """
    if carried:
        buffer[:BATCH_WORDS] = buffer[BATCH_WORDS:]
    else:
        mask_words_into(buffer, 0, seed, stream, base + np.uint64(group), threshold, drop_all)
    carried = (count == BATCH_WORDS
               and n - (group + count - 1) * 64 > 64 - np.int64(shift))
    if carried:
        mask_words_into(buffer, BATCH_WORDS, seed, stream, base + np.uint64(group + BATCH_WORDS),
                        threshold, drop_all)
    for index in range(count):
        keep[index] = _local_word(buffer[index], buffer[index + 1], shift)
    return carried


@njit(inline="always", cache=NUMBA_CACHE)
def _local_word(low, high, shift):
    """Local word from global words low, high for an offset with shift (> 0) bits."""
    return (low >> shift) | (high << (_WORD - shift))


@njit(inline="always", cache=NUMBA_CACHE)
def _clear_past_end(words, n, stop):
    """Clear the bits past element n - 1 in the last word of a range that ends the array."""
    last = n - (stop - 1) * 64
    if stop > 0 and last < 64 and (n + 63) // 64 == stop:
        words[stop - 1] &= (_ONE << np.uint64(last)) - _ONE


@njit(cache=NUMBA_CACHE, nogil=True)
def words_range(words, seed, stream, threshold, drop_all, offset, n, first, stop):
    """Local mask words first..stop-1 from the stream, stored (the mask-only kernel)."""
    shift = np.uint64(offset) & _LANE_MASK
    base = np.uint64(offset) >> _SIX
    buffer = np.zeros(2 * BATCH_WORDS, dtype=np.uint64)
    keep = np.zeros(BATCH_WORDS, dtype=np.uint64)
    carried = _NOT_CARRIED
    for group in range(first, stop, BATCH_WORDS):
        count = min(BATCH_WORDS, stop - group)
        if shift == _ZERO and count == BATCH_WORDS:  # straight into place
            mask_words_into(words, group, seed, stream, base + np.uint64(group), threshold,
                            drop_all)
            continue
        if shift == _ZERO:
            mask_words_into(keep, 0, seed, stream, base + np.uint64(group), threshold, drop_all)
        else:
            carried = _shifted_batch(keep, buffer, carried, seed, stream, threshold, drop_all,
                                     base, shift, n, group, count)
        for index in range(count):
            words[group + index] = keep[index]
    _clear_past_end(words, n, stop)


@njit(cache=NUMBA_CACHE, nogil=True)
def stream_range(source, target, words, scale, seed, stream, threshold, drop_all,
                  offset, n, first, stop):
    """Elements of local mask words first..stop-1 scaled by keep bits from the stream.

    ``source`` and ``target`` must hold the elements (mask words alone come from
    `words_range`, so this loop needs no guard for empty arrays). Also stores the
    words unless ``words`` is empty. Floats with 0 < p < 1 go to `_pipelined_loop`
    (see `_pipelined`); the loop here (p = 0, drop_all, float16 without F16C) is the
    C kernels' plain one (dropout.h): a batch of BATCH_WORDS words at a time, the
    elements PREFETCH_WORDS words ahead requested from memory first so the loads
    overlap the mask arithmetic, then each word's elements scaled (only the first
    n - 64k of word k's, so bits past the end do no harm). The in-place and
    out-of-place loops are written out separately: each compiles to straight vector
    code, which one inlined helper with a literal flag does not here.
    """
    if _pipelined(source, target, words, scale, seed, stream, threshold, drop_all, offset, n,
                  first, stop):
        return
    in_place = same_memory(source, target)
    store_words = words.size > 0
    shift = np.uint64(offset) & _LANE_MASK
    base = np.uint64(offset) >> _SIX
    line = 64 // source.itemsize
    per_word = _prefetch_per_word(source)
    buffer = np.zeros(2 * BATCH_WORDS, dtype=np.uint64)
    keep = np.zeros(BATCH_WORDS, dtype=np.uint64)
    carried = _NOT_CARRIED
    for group in range(first, stop, BATCH_WORDS):
        count = min(BATCH_WORDS, stop - group)
        if not per_word:
            _prefetch_words(source, group + PREFETCH_WORDS, BATCH_WORDS, n, line)
        if shift == _ZERO:
            mask_words_into(keep, 0, seed, stream, base + np.uint64(group), threshold, drop_all)
        else:
            carried = _shifted_batch(keep, buffer, carried, seed, stream, threshold, drop_all,
                                     base, shift, n, group, count)
        if in_place:  # words stored here, word by word: a loop of their own is slower
            for index in range(count):
                if store_words:
                    words[group + index] = keep[index]
                if per_word:
                    _prefetch_words(source, group + index + PREFETCH_WORDS, 1, n, line)
                start = (group + index) * 64
                apply_word(target, target, start, min(64, n - start), keep[index], scale, True)
        else:
            for index in range(count):
                if store_words:
                    words[group + index] = keep[index]
                if per_word:
                    _prefetch_words(source, group + index + PREFETCH_WORDS, 1, n, line)
                start = (group + index) * 64
                apply_word(source, target, start, min(64, n - start), keep[index], scale,
                            False)
    if store_words:
        _clear_past_end(words, n, stop)


@njit(cache=NUMBA_CACHE, nogil=True)
def mask_range(source, target, words, scale, n, first, stop):
    """target = source * scale where the stored mask words keep, +0 elsewhere.

    The elements PREFETCH_WORDS words ahead are requested word by word, as in
    dropout.h's fd_apply_mask_range.
    """
    line = 64 // source.itemsize
    if _half_words(source):  # 16-bit elements: whole words as vector code, then the rest
        whole = first + _whole_words_of(n, first, stop - first)
        scale_whole_words(source, target, words, scale, 0, first, whole, stop)
        first = whole
    if same_memory(source, target):  # a literal flag in each call: two straight loops
        _scale_by_words(target, target, words, 0, scale, n, first, stop, line, True)
    else:
        _scale_by_words(source, target, words, 0, scale, n, first, stop, line, False)


def _half_words(array):
    """Whether scaling by stored words takes `scale_whole_words` for whole words.

    For bfloat16, and float16 where the CPU has F16C: Numba's loop converts those
    element by element, and 2-byte elements leave the loop compute-bound.
    """
    raise NotImplementedError("only callable from Numba code")


@overload(_half_words)
def _half_words_overload(array):
    vectors = array.dtype == types.int16 or (array.dtype == types.uint16 and _HALF_VECTORS)
    return lambda array: vectors


@njit(inline="always", cache=NUMBA_CACHE)
def _scale_by_words(source, target, keep, keep_first, scale, n, first, stop, line, in_place):
    """Words first..stop-1 scaled by keep[k - keep_first], elements fetched ahead word by word.

    The scaling loop of `mask_range` and the pipelined fused loop; callers pass
    in_place as a literal, so each call compiles to one straight loop (a loop
    testing a run-time flag does not vectorise as well).
    """
    for k in range(first, stop):
        _prefetch_words(source, k + PREFETCH_WORDS, 1, n, line)
        start = k * 64
        apply_word(source, target, start, min(64, n - start), keep[k - keep_first], scale,
                    in_place)


@njit(inline="always", cache=NUMBA_CACHE)
def _whole_words_of(n, group, count):
    """How many of words group .. group + count - 1 hold 64 elements.

    Only the array's last word may not.
    """
    return min(count, (n - group * 64) // 64)


@njit(inline="always", cache=NUMBA_CACHE)
def _pipelined_loop(source, target, words, scale, seed, stream, threshold, offset, n, first,
                    stop, in_place):
    """`stream_range` for float elements (float16 with F16C) and a threshold T > 0.

    As dropout.h's fd_dropout_pipelined: group g's elements are scaled while group
    g + 1's words are drawn, whole words by vector code of their own
    (`_emit_scale_words`), a short last word by `_scale_by_words`. Unlike the C kernel
    it is taken at p = 0.5 too, where a batch takes one block: Numba's plain loop is
    slower there. Where the offset is not a multiple of 64, a group's last local word
    needs the next group's first global word, so it is scaled after the batch.
    ``in_place`` is a literal from the caller.
    """
    shift = np.uint64(offset) & _LANE_MASK
    base = np.uint64(offset) >> _SIX
    line = 64 // source.itemsize
    now = np.empty(BATCH_WORDS, dtype=np.uint64)
    upcoming = np.empty(BATCH_WORDS, dtype=np.uint64)
    keep = np.empty(BATCH_WORDS, dtype=np.uint64)
    mask_words_into(now, 0, seed, stream, base + np.uint64(first), threshold, False)
    for group in range(first, stop, BATCH_WORDS):
        count = min(BATCH_WORDS, stop - group)
        last = n - (group + count - 1) * 64  # elements of the group's last word, if < 64
        last_bits = (_ONE << np.uint64(last)) - _ONE if last < 64 else _ALL
        last_waits = shift != _ZERO and count == BATCH_WORDS
        ready = count - 1 if last_waits else count
        for index in range(ready):
            keep[index] = (now[index] if shift == _ZERO
                           else _local_word(now[index], now[index + 1], shift))
        if ready == count:
            keep[count - 1] &= last_bits
        # the next group's words: for the next group, or for this group's last word
        # where its elements reach into the next global word
        draw = group + BATCH_WORDS < stop or (last_waits and last > 64 - np.int64(shift))
        done = 0
        if draw:  # the batch scales whole words only (the array's last may be short)
            done = draw_scaling(upcoming, base + np.uint64(group + BATCH_WORDS), stream, seed,
                                 threshold, source, target, keep, scale, group,
                                 _whole_words_of(n, group, ready), stop)
        if last_waits:
            keep[count - 1] = _local_word(now[count - 1], upcoming[0] if draw else _ZERO,
                                          shift) & last_bits
        whole = _whole_words_of(n, group, count)  # >= done
        scale_whole_words(source, target, keep, scale, group, done, whole, stop)
        _scale_by_words(source, target, keep, group, scale, n, group + whole, group + count,
                        line, in_place)
        if words.size > 0:
            for index in range(count):
                words[group + index] = keep[index]
        now, upcoming = upcoming, now


def _half_vectors():
    """Whether Numba compiles for a CPU with F16C, which converts float16 vectors in hardware.

    Then LLVM's half-precision vector conversions are single instructions (and need no
    library calls); else float16 keeps the plain loop and `half`'s conversions.
    """
    if numba.config.CPU_NAME is None:  # Numba compiles for the host
        return bool(binding.get_host_cpu_features().get("f16c", False))
    return "+f16c" in (numba.config.CPU_FEATURES or "")


_HALF_VECTORS = _half_vectors()


def _pipelined(source, target, words, scale, seed, stream, threshold, drop_all, offset, n,
               first, stop):
    """`stream_range` by `_pipelined_loop` where that applies; returns whether it did.

    It applies to float32, float64 and bfloat16 elements, float16 where the CPU has
    F16C, and thresholds 0 < T, without drop_all.
    """
    raise NotImplementedError("only callable from Numba code")


@overload(_pipelined)
def _pipelined_overload(source, target, words, scale, seed, stream, threshold, drop_all, offset,
                        n, first, stop):
    if source.dtype == types.uint16 and not _HALF_VECTORS:  # chosen per compiled loop
        return lambda source, target, words, scale, seed, stream, threshold, drop_all, offset, \
            n, first, stop: False

    def pipelined(source, target, words, scale, seed, stream, threshold, drop_all, offset, n,
                  first, stop):
        if drop_all or np.uint64(threshold) == _ZERO:
            return False
        if same_memory(source, target):  # a literal flag in each call: two straight loops
            _pipelined_loop(target, target, words, scale, seed, stream, threshold, offset, n,
                            first, stop, True)
        else:
            _pipelined_loop(source, target, words, scale, seed, stream, threshold, offset, n,
                            first, stop, False)
        return True

    return pipelined


@njit(inline="always", cache=NUMBA_CACHE)
def word_chunk(n, chunks, chunk):
    """Chunk ``chunk`` of ``chunks`` near-equal ranges of the ceil(n / 64) mask words."""
    total = (n + 63) // 64
    per_chunk = (total + chunks - 1) // chunks
    first = chunk * per_chunk
    return first, min(first + per_chunk, total)


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE)
def stream_parallel(source, target, words, scale, seed, stream, threshold, drop_all,
                     offset, n, chunks):
    """`stream_range` over all local mask words, in ``chunks`` parallel ranges."""
    for chunk in prange(chunks):
        first, stop = word_chunk(n, chunks, chunk)
        if first < stop:
            stream_range(source, target, words, scale, seed, stream, threshold,
                          drop_all, offset, n, first, stop)


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE)
def words_parallel(words, seed, stream, threshold, drop_all, offset, n, chunks):
    """`words_range` over all local mask words, in ``chunks`` parallel ranges."""
    for chunk in prange(chunks):
        first, stop = word_chunk(n, chunks, chunk)
        if first < stop:
            words_range(words, seed, stream, threshold, drop_all, offset, n, first, stop)


@njit(parallel=True, nogil=True, cache=NUMBA_CACHE)
def mask_parallel(source, target, words, scale, n, chunks):
    """`mask_range` over all mask words, in ``chunks`` parallel ranges."""
    for chunk in prange(chunks):
        first, stop = word_chunk(n, chunks, chunk)
        if first < stop:
            mask_range(source, target, words, scale, n, first, stop)


@intrinsic
def read_only(typingctx, array):
    """``array`` typed read-only (the same value), as the backend hands the loops their inputs.

    Called from compiled code, so the loop it is passed to runs the version compiled for
    the backend rather than compiling another for writeable arrays.
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])

    return array.copy(readonly=True)(array), codegen


@njit(cache=NUMBA_CACHE, nogil=True)
def plain_range(source, target, words, scale, seed, stream, threshold, drop_all, offset):
    """`stream_range` over the whole of a plain call's float32/float64 array (n > 0).

    seed, stream and T come as the int64 of their bits; s in float64 is rounded once
    to the element type here. The source is typed read-only here (`read_only`), not by
    a view in Python (0.3 µs a call).
    """
    n = source.size
    stream_range(read_only(source), target, words, source.dtype.type(scale), np.uint64(seed),
                 np.uint64(stream), np.uint64(threshold), drop_all, offset, n, START,
                 (n + 63) // 64)

