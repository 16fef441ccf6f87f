"""Numba backend: mask generation, fused dropout, and backward kernels.

All kernels work on 1-D C-contiguous arrays (float16 as uint16 bit patterns); the
public API reshapes, copies strided input and validates before calling here.
Work is split into ranges of whole 64-bit mask words, so no two threads ever
write the same mask word, and the result never depends on the split.

Local mask word k holds elements 64k .. 64k+63 of the array. With a global
``offset`` that is not a multiple of 64 those elements straddle two global mask
words; each range walks its global words once, carrying the upper one forward.
"""
import numba
import numpy as np
from llvmlite import binding, ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..maskstream.numba_words import BATCH_WORDS, mask_words_batch
from .common import chunk_count, kernel_scale, kernel_view
from .numba_half import kept

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_SIX = np.uint64(6)
_LANE_MASK = np.uint64(63)
_WORD = np.uint64(64)
_GROUP_WORDS = 64  # mask words generated before their elements are scaled
_NO_VALUES = np.empty(0, dtype=np.float32)
_NO_WORDS = np.empty(0, dtype=np.uint64)


@intrinsic
def _prefetch_for_write(typingctx, array, index):
    """Ask the CPU to fetch array[index]'s cache line (LLVM's prefetch, write intent)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        values = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, values, [args[1]],
                                           wraparound=False)
        byte_pointer, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        name = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), name)
        builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 1),
                                ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@njit(inline="always", cache=True)
def _apply_word(source, target, start, count, keep, scale, in_place):
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


@njit(inline="always", cache=True)
def _same_memory(source, target):
    return source.size > 0 and source.ctypes.data == target.ctypes.data


@njit(inline="always", cache=True)
def _global_words(buffer, count, first_word, seed, stream, threshold, drop_all):
    """buffer[:count] = global mask words first_word .. first_word + count - 1 (batches of 8)."""
    for start in range(0, count, BATCH_WORDS):
        batch = mask_words_batch(seed, stream, first_word + np.uint64(start), threshold,
                                 drop_all)
        for index in range(min(BATCH_WORDS, count - start)):
            buffer[start + index] = batch[index]


@njit(cache=True)
def _stream_range(source, target, words, scale, seed, stream, threshold, drop_all,
                  offset, n, first, stop):
    """Local mask words first..stop-1 generated from the stream.

    Writes the words if ``words`` is non-empty, and the scaled values if ``target`` is.
    Works in groups of _GROUP_WORDS words: first the group's keep words (global words
    shifted into the array's own packing when the offset is not a multiple of 64),
    then one pass over its elements (by ``_mask_range`` on views of the group, which
    vectorises best as its own function), after asking for the next group's elements.
    """
    store_words = words.size > 0
    apply_values = target.size > 0
    shift = np.uint64(offset) & _LANE_MASK
    base = np.uint64(offset) >> _SIX
    keep_words = np.empty(_GROUP_WORDS, dtype=np.uint64)
    global_words = np.empty(_GROUP_WORDS + 1, dtype=np.uint64)
    for group in range(first, stop, _GROUP_WORDS):
        count = min(_GROUP_WORDS, stop - group)
        if shift == _ZERO:
            _global_words(keep_words, count, base + np.uint64(group), seed, stream, threshold,
                          drop_all)
        else:  # local word k takes the top of global word k and the bottom of word k + 1
            _global_words(global_words, count + 1, base + np.uint64(group), seed, stream,
                          threshold, drop_all)
            for index in range(count):
                keep_words[index] = ((global_words[index] >> shift)
                                     | (global_words[index + 1] << (_WORD - shift)))
        last = group + count - 1
        if n - last * 64 < 64:  # the array ends inside the group's last word
            keep_words[count - 1] &= (_ONE << np.uint64(n - last * 64)) - _ONE
        if store_words:
            words[group:group + count] = keep_words[:count]
        if apply_values:
            start, end = group * 64, min(n, (group + count) * 64)
            # ask for the next group's elements now, so memory stays busy while its
            # keep words are computed
            for element in range(end, min(n, end + _GROUP_WORDS * 64), 64 // source.itemsize):
                _prefetch_for_write(source, element)
            _mask_range(source[start:end], target[start:end], keep_words, scale, end - start, 0,
                        count)


@njit(cache=True)
def _mask_range(source, target, words, scale, n, first, stop):
    """target = source * scale where the stored mask words keep, +0 elsewhere."""
    in_place = _same_memory(source, target)
    for k in range(first, stop):
        start = k * 64
        _apply_word(source, target, start, min(64, n - start), words[k], scale, in_place)


@njit(parallel=True, cache=True)
def _stream_parallel(source, target, words, scale, seed, stream, threshold, drop_all,
                     offset, n, chunks):
    total = (n + 63) // 64
    per_chunk = (total + chunks - 1) // chunks
    for chunk in prange(chunks):
        first = chunk * per_chunk
        stop = min(first + per_chunk, total)
        if first < stop:
            _stream_range(source, target, words, scale, seed, stream, threshold,
                          drop_all, offset, n, first, stop)


@njit(parallel=True, cache=True)
def _mask_parallel(source, target, words, scale, n, chunks):
    total = (n + 63) // 64
    per_chunk = (total + chunks - 1) // chunks
    for chunk in prange(chunks):
        first = chunk * per_chunk
        stop = min(first + per_chunk, total)
        if first < stop:
            _mask_range(source, target, words, scale, n, first, stop)


def _run(serial, parallel, args, n, threads):
    """Run the serial range kernel, or the parallel one on ``threads`` threads.

    Numba's own thread setting is restored afterwards, so fastdrop's does not leak
    into the caller's Numba code.
    """
    chunks = chunk_count(n, min(threads, numba.config.NUMBA_NUM_THREADS))
    if chunks == 1:
        serial(*args, 0, (n + 63) // 64)
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(chunks)
    try:
        parallel(*args, chunks)
    finally:
        numba.set_num_threads(previous)


def scale_by_stream(source, target, words, n, scale, threshold, drop_all, seed, stream, offset,
                    threads):
    """Mask words from the stream, and/or target = source * keep * scale (1-D contiguous arrays).

    ``source``/``target`` may be None (mask only); ``words`` may be None (recompute, no mask).
    """
    if source is None:
        source = target = _NO_VALUES
        element_scale = np.float32(0)
    else:
        element_scale = kernel_scale(source.dtype, scale)
        source, target = kernel_view(source), kernel_view(target)
    words = _NO_WORDS if words is None else words
    args = (source, target, words, element_scale, np.uint64(seed), np.uint64(stream),
            np.uint64(threshold), bool(drop_all), np.int64(offset), np.int64(n))
    _run(_stream_range, _stream_parallel, args, n, threads)


def scale_by_mask(source, target, words, scale, threads):
    """target = source * keep * scale with keep read from packed words (1-D contiguous arrays)."""
    n = source.size
    element_scale = kernel_scale(source.dtype, scale)
    source, target = kernel_view(source), kernel_view(target)
    args = (source, target, words, element_scale, np.int64(n))
    _run(_mask_range, _mask_parallel, args, n, threads)
