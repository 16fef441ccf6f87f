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
from numba.extending import intrinsic, overload

from ..maskstream.numba_normal import BATCH as NORMAL_BATCH
from ..maskstream.numba_normal import normal_block, standard_normal, standard_normals_batch
from ..maskstream.numba_words import (BATCH_WORDS, build_keep_words, mask_words_into, splat,
                                      store_keep_words)
from .._config import SERIAL_ELEMENTS
from ..maskstream import spec
from .common import chunk_count, kernel_mask_op, kernel_scale, kernel_view
from .numba_half import kept, load, scale_by_noise, store

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_SIX = np.uint64(6)
_LANE_MASK = np.uint64(63)
_WORD = np.uint64(64)
# How far ahead the fused loop asks for elements, in mask words: as dropout.h's
# FD_PREFETCH_WORDS, 5 KiB of float32 or 10 KiB of float64, not a multiple of 4 KiB
# (prefetches 4 KiB from the current stores alias them).
_PREFETCH_WORDS = 20
_NO_WORDS = np.empty(0, dtype=np.uint64)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@intrinsic
def _prefetch_for_write(typingctx, array, index):
    """Ask the CPU to fetch array[index]'s cache line (LLVM's prefetch, write intent)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        values = context.make_array(array_type)(context, builder, args[0])
        _emit_prefetch(builder, cgutils.get_item_pointer(context, builder, array_type, values,
                                                         [args[1]], wraparound=False))
        return context.get_dummy_value()

    return types.none(array, index), codegen


def _emit_prefetch(builder, pointer):
    """LLVM: ask the CPU to fetch the cache line at ``pointer`` (prefetch, write intent)."""
    byte_pointer, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    name = "llvm.prefetch.p0" if binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), name)
    builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 1),
                            ir.Constant(i32, 3), ir.Constant(i32, 1)])


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


def _prefetch_per_word(array):
    """Whether the fused loop prefetches word by word (float64), else a batch at a time."""
    raise NotImplementedError("only callable from Numba code")


@overload(_prefetch_per_word)
def _prefetch_per_word_overload(array):
    # a constant of the array's type, so each compiled loop has one prefetch pattern:
    # float64 words span 8 cache lines and a batch's 64 prefetches at once overflow the
    # line-fill buffers (per word was 20% faster); float32/16 batches were faster
    per_word = array.dtype.bitwidth >= 64
    return lambda array: per_word


@njit(inline="always", cache=True)
def _prefetch_words(source, first_word, count, n, line):
    """Ask for the elements of mask words first_word .. first_word + count - 1 (within n)."""
    ahead = first_word * 64
    for element in range(ahead, min(n, ahead + count * 64), line):
        _prefetch_for_write(source, element)


@njit(inline="always", cache=True)
def _same_memory(source, target):
    return source.size > 0 and source.ctypes.data == target.ctypes.data


@njit(cache=True)  # its own function: inlined, it slowed the aligned loop by 20% here
def _shifted_batch(keep, buffer, carried, seed, stream, threshold, drop_all, base, shift, n,
                   group, count):
    """keep[:count] = local words group .. group+count-1 for an offset with shift bits; returns ``carried``.

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


@njit(inline="always", cache=True)
def _local_word(low, high, shift):
    """Local word from global words low, high for an offset with shift (> 0) bits."""
    return (low >> shift) | (high << (_WORD - shift))


@njit(inline="always", cache=True)
def _clear_past_end(words, n, stop):
    """Clear the bits past element n - 1 in the last word of a range that ends the array."""
    last = n - (stop - 1) * 64
    if stop > 0 and last < 64 and (n + 63) // 64 == stop:
        words[stop - 1] &= (_ONE << np.uint64(last)) - _ONE


@njit(cache=True)
def _words_range(words, seed, stream, threshold, drop_all, offset, n, first, stop):
    """Local mask words first..stop-1 from the stream, stored (the mask-only kernel)."""
    shift = np.uint64(offset) & _LANE_MASK
    base = np.uint64(offset) >> _SIX
    buffer = np.zeros(2 * BATCH_WORDS, dtype=np.uint64)
    keep = np.zeros(BATCH_WORDS, dtype=np.uint64)
    carried = False
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


@njit(cache=True)
def _stream_range(source, target, words, scale, seed, stream, threshold, drop_all,
                  offset, n, first, stop):
    """Elements of local mask words first..stop-1 scaled by keep bits from the stream.

    ``source`` and ``target`` must hold the elements (mask words alone come from
    `_words_range`; a guard for empty arrays here cost 15%). Also stores the words
    unless ``words`` is empty. Floats with 0 < p < 1 go to `_pipelined_loop` (see
    `_pipelined`); the loop here (p = 0, drop_all, float16 without F16C) is the C
    kernels' plain one (dropout.h): a batch
    of BATCH_WORDS words at a time, the elements _PREFETCH_WORDS words ahead requested
    from memory first so the loads overlap the mask arithmetic, then each word's elements scaled
    (only the first n - 64k of word k's, so bits past the end do no harm). The
    in-place and out-of-place loops are written out separately so each compiles to
    straight vector code (one inlined helper called with a literal flag, as
    `_mask_range` does, was 5-23% slower here at 2^24, 1 thread).
    """
    if _pipelined(source, target, words, scale, seed, stream, threshold, drop_all, offset, n,
                  first, stop):
        return
    in_place = _same_memory(source, target)
    store_words = words.size > 0
    shift = np.uint64(offset) & _LANE_MASK
    base = np.uint64(offset) >> _SIX
    line = 64 // source.itemsize
    per_word = _prefetch_per_word(source)
    buffer = np.zeros(2 * BATCH_WORDS, dtype=np.uint64)
    keep = np.zeros(BATCH_WORDS, dtype=np.uint64)
    carried = False
    for group in range(first, stop, BATCH_WORDS):
        count = min(BATCH_WORDS, stop - group)
        if not per_word:
            _prefetch_words(source, group + _PREFETCH_WORDS, BATCH_WORDS, n, line)
        if shift == _ZERO:
            mask_words_into(keep, 0, seed, stream, base + np.uint64(group), threshold, drop_all)
        else:
            carried = _shifted_batch(keep, buffer, carried, seed, stream, threshold, drop_all,
                                     base, shift, n, group, count)
        if in_place:  # words are stored here, word by word: a loop of their own cost 6%
            for index in range(count):
                if store_words:
                    words[group + index] = keep[index]
                if per_word:
                    _prefetch_words(source, group + index + _PREFETCH_WORDS, 1, n, line)
                start = (group + index) * 64
                _apply_word(target, target, start, min(64, n - start), keep[index], scale, True)
        else:
            for index in range(count):
                if store_words:
                    words[group + index] = keep[index]
                if per_word:
                    _prefetch_words(source, group + index + _PREFETCH_WORDS, 1, n, line)
                start = (group + index) * 64
                _apply_word(source, target, start, min(64, n - start), keep[index], scale,
                            False)
    if store_words:
        _clear_past_end(words, n, stop)


@njit(cache=True)
def _mask_range(source, target, words, scale, n, first, stop):
    """target = source * scale where the stored mask words keep, +0 elsewhere.

    The elements _PREFETCH_WORDS words ahead are requested word by word, as in
    dropout.h's fd_apply_mask_range.
    """
    line = 64 // source.itemsize
    if _same_memory(source, target):  # a literal flag in each call: two straight loops
        _scale_by_words(target, target, words, 0, scale, n, first, stop, line, True)
    else:
        _scale_by_words(source, target, words, 0, scale, n, first, stop, line, False)


@njit(inline="always", cache=True)
def _scale_by_words(source, target, keep, keep_first, scale, n, first, stop, line, in_place):
    """Words first..stop-1 scaled by keep[k - keep_first], elements fetched ahead word by word.

    The scaling loop of `_mask_range` and the pipelined fused loop; callers pass
    in_place as a literal, so each call compiles to one straight loop (one loop
    testing a run-time flag took twice the time).
    """
    for k in range(first, stop):
        _prefetch_words(source, k + _PREFETCH_WORDS, 1, n, line)
        start = k * 64
        _apply_word(source, target, start, min(64, n - start), keep[k - keep_first], scale,
                    in_place)


# Mask words scaled after each Philox block of the pipelined loop's batch: a batch of
# BATCH_WORDS = 16 words takes about 6 blocks at p = 0.1 (dropout.h's FD_INTERLEAVE_512).
_INTERLEAVE = 3


def _emit_scale_words(context, builder, array_type, arrays, keep, scale, group, first, until,
                      prefetch_stop):
    """Emit target word k = source word k * scale where keep[k - group] keeps, +0 elsewhere.

    For k = group + first .. group + until - 1, whole words (64 elements each) only:
    one vector load, multiply, select on the keep bits (the i64 as 64 lanes of i1)
    and store per word, the elements _PREFETCH_WORDS words ahead asked for first
    while those lie before word ``prefetch_stop`` (dropout.h's fd_apply_words): the
    source's, and the target's where it is another array. ``arrays`` is (source, target).
    """
    i64 = ir.IntType(64)
    element = context.get_value_type(array_type.dtype)
    words_of = ir.VectorType(element, 64)
    half = isinstance(array_type.dtype, types.Integer)  # float16 bit patterns
    source, target = (context.make_array(array_type)(context, builder, array).data
                      for array in arrays)
    keep = context.make_array(types.Array(types.uint64, 1, "C"))(context, builder, keep).data
    alignment = array_type.dtype.bitwidth // 8
    line = 64 // alignment
    entry = builder.basic_block
    condition = builder.append_basic_block("scale_words.condition")
    body = builder.append_basic_block("scale_words.body")
    fetch = builder.append_basic_block("scale_words.fetch")
    scale_word = builder.append_basic_block("scale_words.scale")
    end = builder.append_basic_block("scale_words.end")
    builder.branch(condition)
    builder.position_at_end(condition)
    index = builder.phi(i64)
    index.add_incoming(first, entry)
    builder.cbranch(builder.icmp_signed("<", index, until), body, end)
    builder.position_at_end(body)
    word = builder.add(group, index)
    start = builder.mul(word, ir.Constant(i64, 64))
    ahead = builder.add(word, ir.Constant(i64, _PREFETCH_WORDS))
    builder.cbranch(builder.icmp_signed("<", ahead, prefetch_stop), fetch, scale_word)
    builder.position_at_end(fetch)
    ahead_start = builder.mul(ahead, ir.Constant(i64, 64))

    def fetch_ahead(data):
        for at in range(0, 64, line):
            _emit_prefetch(builder, builder.gep(data, [builder.add(ahead_start,
                                                                  ir.Constant(i64, at))]))

    fetch_ahead(source)
    with builder.if_then(builder.icmp_unsigned("!=", source, target)):  # out of place
        fetch_ahead(target)
    builder.branch(scale_word)
    builder.position_at_end(scale_word)
    values = builder.load(builder.bitcast(builder.gep(source, [start]), words_of.as_pointer()),
                          align=alignment)
    if half:  # widen to float32 (exact), multiply (exact), round once to float16
        widened = builder.fpext(builder.bitcast(values, ir.VectorType(ir.HalfType(), 64)),
                                ir.VectorType(ir.FloatType(), 64))
        product = builder.fmul(widened, splat(builder, scale, 64))
        scaled = builder.bitcast(builder.fptrunc(product, ir.VectorType(ir.HalfType(), 64)),
                                 words_of)
    else:
        scaled = builder.fmul(values, splat(builder, scale, 64))
    lanes = builder.bitcast(builder.load(builder.gep(keep, [index])),
                            ir.VectorType(ir.IntType(1), 64))
    builder.store(builder.select(lanes, scaled, ir.Constant(words_of, None)),
                  builder.bitcast(builder.gep(target, [start]), words_of.as_pointer()),
                  align=alignment)
    following = builder.add(index, ir.Constant(i64, 1))
    index.add_incoming(following, builder.basic_block)
    builder.branch(condition)
    builder.position_at_end(end)


@intrinsic
def _draw_scaling(typingctx, out, word, stream, seed, threshold, source, target, keep, scale,
                  group, ready, prefetch_stop):
    """The next batch's keep words, with a group's whole words scaled on the way.

    ``_draw_scaling(out, word, stream, seed, threshold, source, target, keep, scale, group,
    ready, prefetch_stop)`` stores the keep words of global words word .. word+BATCH_WORDS-1
    in out[:BATCH_WORDS] and returns ``done``: after each Philox block of the batch, up
    to _INTERLEAVE more of words group .. group + ready - 1 (each of 64 elements) are
    scaled by keep[k - group], and ``done`` of them were. The software pipelining of
    dropout.h's FD_PIPELINE_DEFINE: the out-of-order core overlaps one group's loads
    and stores with the next group's arithmetic.
    """
    def codegen(context, builder, signature, args):
        out, word, stream, seed, threshold, source, target, keep, scale = args[:9]
        group, ready, prefetch_stop = args[9:]
        i64 = ir.IntType(64)

        def after_block(builder, values):
            done = values[0]
            more = builder.add(done, ir.Constant(i64, _INTERLEAVE))
            until = builder.select(builder.icmp_signed("<", more, ready), more, ready)
            _emit_scale_words(context, builder, signature.args[5], (source, target), keep,
                              scale, group, done, until, prefetch_stop)
            return (until,)

        words, (done,) = build_keep_words(builder, word, stream, seed, threshold,
                                          carried=(ir.Constant(i64, 0),),
                                          after_block=after_block)
        store_keep_words(context, builder, words, signature.args[0], out, ir.Constant(i64, 0))
        return done

    signature = types.int64(out, *(types.uint64,) * 4, source, target, keep, scale,
                            *(types.int64,) * 3)
    return signature, codegen


@intrinsic
def _scale_whole_words(typingctx, source, target, keep, scale, group, first, until,
                       prefetch_stop):
    """`_emit_scale_words` as a call: words group+first .. group+until-1, all of 64 elements."""
    def codegen(context, builder, signature, args):
        source, target, keep, scale = args[:4]
        _emit_scale_words(context, builder, signature.args[0], (source, target), keep, scale,
                          *args[4:])
        return context.get_dummy_value()

    return types.none(source, target, keep, scale, *(types.int64,) * 4), codegen


@njit(inline="always", cache=True)
def _whole_words_of(n, group, count):
    """How many of words group .. group + count - 1 hold 64 elements (only the array's last may not)."""
    return min(count, (n - group * 64) // 64)


@njit(inline="always", cache=True)
def _pipelined_loop(source, target, words, scale, seed, stream, threshold, offset, n, first,
                    stop, in_place):
    """`_stream_range` for float elements (float16 with F16C) and a threshold T > 0.

    As dropout.h's fd_dropout_pipelined: group g's elements are scaled while group
    g + 1's words are drawn, whole words by vector code of their own
    (`_emit_scale_words`), a short last word by `_scale_by_words`. Unlike the C kernel
    it is taken at p = 0.5 too, where a batch takes one block: the plain loop was
    25-30% slower there for float32, 2-7% for float64 (2^24, 1 thread). Where the offset is not a multiple of 64, a group's last
    local word needs the next group's first global word, so it is scaled after the
    batch. ``in_place`` is a literal from the caller.
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
            done = _draw_scaling(upcoming, base + np.uint64(group + BATCH_WORDS), stream, seed,
                                 threshold, source, target, keep, scale, group,
                                 _whole_words_of(n, group, ready), stop)
        if last_waits:
            keep[count - 1] = _local_word(now[count - 1], upcoming[0] if draw else _ZERO,
                                          shift) & last_bits
        whole = _whole_words_of(n, group, count)  # >= done
        _scale_whole_words(source, target, keep, scale, group, done, whole, stop)
        _scale_by_words(source, target, keep, group, scale, n, group + whole, group + count,
                        line, in_place)
        if words.size > 0:
            for index in range(count):
                words[group + index] = keep[index]
        now, upcoming = upcoming, now


def _half_vectors():
    """Whether Numba compiles for a CPU with F16C, which converts float16 vectors in hardware.

    Then LLVM's half-precision vector conversions are single instructions (and need no
    library calls); else float16 keeps the plain loop and numba_half's conversions.
    """
    if numba.config.CPU_NAME is None:  # Numba compiles for the host
        return bool(binding.get_host_cpu_features().get("f16c", False))
    return "+f16c" in (numba.config.CPU_FEATURES or "")


_HALF_VECTORS = _half_vectors()


def _pipelined(source, target, words, scale, seed, stream, threshold, drop_all, offset, n,
               first, stop):
    """`_stream_range` by `_pipelined_loop` where that applies; returns whether it did.

    It applies to float32/float64 elements, float16 where the CPU has F16C, and
    thresholds 0 < T, without drop_all.
    """
    raise NotImplementedError("only callable from Numba code")


@overload(_pipelined)
def _pipelined_overload(source, target, words, scale, seed, stream, threshold, drop_all, offset,
                        n, first, stop):
    if not (isinstance(source.dtype, types.Float) or _HALF_VECTORS):  # chosen per compiled loop
        return lambda source, target, words, scale, seed, stream, threshold, drop_all, offset, \
            n, first, stop: False

    def pipelined(source, target, words, scale, seed, stream, threshold, drop_all, offset, n,
                  first, stop):
        if drop_all or np.uint64(threshold) == _ZERO:
            return False
        if _same_memory(source, target):  # a literal flag in each call: two straight loops
            _pipelined_loop(target, target, words, scale, seed, stream, threshold, offset, n,
                            first, stop, True)
        else:
            _pipelined_loop(source, target, words, scale, seed, stream, threshold, offset, n,
                            first, stop, False)
        return True

    return pipelined


@njit(inline="always", cache=True)
def _word_chunk(n, chunks, chunk):
    """Chunk ``chunk`` of ``chunks`` near-equal ranges of the ceil(n / 64) mask words."""
    total = (n + 63) // 64
    per_chunk = (total + chunks - 1) // chunks
    first = chunk * per_chunk
    return first, min(first + per_chunk, total)


@njit(parallel=True, cache=True)
def _stream_parallel(source, target, words, scale, seed, stream, threshold, drop_all,
                     offset, n, chunks):
    for chunk in prange(chunks):
        first, stop = _word_chunk(n, chunks, chunk)
        if first < stop:
            _stream_range(source, target, words, scale, seed, stream, threshold,
                          drop_all, offset, n, first, stop)


@njit(parallel=True, cache=True)
def _words_parallel(words, seed, stream, threshold, drop_all, offset, n, chunks):
    for chunk in prange(chunks):
        first, stop = _word_chunk(n, chunks, chunk)
        if first < stop:
            _words_range(words, seed, stream, threshold, drop_all, offset, n, first, stop)


@njit(parallel=True, cache=True)
def _mask_parallel(source, target, words, scale, n, chunks):
    for chunk in prange(chunks):
        first, stop = _word_chunk(n, chunks, chunk)
        if first < stop:
            _mask_range(source, target, words, scale, n, first, stop)


def _run(serial, parallel, args, n, threads, units=None):
    """Run the serial range kernel, or the parallel one on ``threads`` threads.

    Kernels take ranges of ``units`` work items (default: the ceil(n / 64) mask
    words of n elements; element kernels pass n). Numba's own thread setting is
    restored afterwards, so fastdrop's does not leak into the caller's Numba code.
    """
    chunks = chunk_count(n, min(threads, numba.config.NUMBA_NUM_THREADS))
    if chunks == 1:
        serial(*args, 0, (n + 63) // 64 if units is None else units)
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(chunks)
    try:
        parallel(*args, chunks)
    finally:
        numba.set_num_threads(previous)


_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
_KEYS = 2**64
_MAX_KEY = _KEYS - 1  # seeds and streams
_MAX_INDEX = 2**63  # global element indices stay below it


def dropout_plain(x, p, seed, stream, offset, inplace, threads):
    """Fused forward dropout of a plain call, or None if the call is not plain.

    As cython_kernels.dropout_plain (see fastdrop._backends), for float32/float64:
    x an ndarray (exact type) of the dtype's own instance (so native byte order),
    C-contiguous, aligned and writeable (read-only input goes the general way, out of
    place too); p a float in [0, 1]; seed an int in [0, 2**64); stream None (0) or
    such an int; offset an int with offset + x.size <= 2**63. Anything else (float16
    included) returns None before touching anything. Arrays a single thread takes go
    straight to `_plain_range` with p, seed and stream as Python numbers, which
    Numba's dispatcher types fastest. Returns ``(y, words)``.
    """
    if (type(x) is not np.ndarray or type(p) is not float or type(seed) is not int
            or type(offset) is not int or not (stream is None or type(stream) is int)):
        return None
    dtype = x.dtype
    if (dtype is not _FLOAT32 and dtype is not _FLOAT64) or not x.flags.carray:
        return None
    stream = 0 if stream is None else stream
    n = x.size
    if not (0.0 <= p <= 1.0 and 0 <= seed <= _MAX_KEY and 0 <= stream <= _MAX_KEY
            and 0 <= offset <= _MAX_INDEX - n):
        return None
    words = np.empty((n + 63) >> 6, dtype=np.uint64)
    target = x if inplace else np.empty(x.shape, dtype=dtype)
    source = x if x.ndim == 1 else x.reshape(-1)
    result = source if inplace else target.reshape(-1)
    if n < SERIAL_ELEMENTS or threads == 1:  # chunk_count(n, threads) == 1
        if n:  # keys >= 2**63 as the int64 of their bits: one compiled signature
            _plain_range(source, result, words, p, seed if seed < _MAX_INDEX else seed - _KEYS,
                         stream if stream < _MAX_INDEX else stream - _KEYS, offset)
    else:
        scale_by_stream(source, result, words, n, spec.dropout_scale(p),
                        *spec.stream_parameters(p), seed, stream, offset, threads)
    return target, words


@njit(cache=True)
def _plain_range(source, target, words, p, seed, stream, offset):
    """`_stream_range` over the whole of a plain call's array (n > 0).

    seed and stream come as the int64 of their bits. T = floor(p * 2**64) (exact: a
    power-of-two scaling of p, then truncation) and s = 1 / (1 - p) in float64
    rounded once to the element type, as the API computes them.
    """
    n = source.size
    drop_all = p == 1.0
    threshold = _ZERO if drop_all else np.uint64(p * 18446744073709551616.0)
    scale = source.dtype.type(0.0 if drop_all else 1.0 / (1.0 - p))
    _stream_range(source, target, words, scale, np.uint64(seed), np.uint64(stream), threshold,
                  drop_all, offset, n, 0, (n + 63) // 64)


def scale_by_stream(source, target, words, n, scale, threshold, drop_all, seed, stream, offset,
                    threads):
    """Mask words from the stream, and/or target = source * keep * scale (1-D contiguous arrays).

    ``source``/``target`` may be None (mask only); ``words`` may be None (recompute, no mask).
    """
    stream_args = (np.uint64(seed), np.uint64(stream), np.uint64(threshold), bool(drop_all),
                   offset, n)  # Python ints < 2**63: typed int64, no conversion
    if source is None:
        _run(_words_range, _words_parallel, (words,) + stream_args, n, threads)
        return
    element_scale = kernel_scale(source.dtype, scale)
    args = (kernel_view(source), kernel_view(target), _NO_WORDS if words is None else words,
            element_scale) + stream_args
    _run(_stream_range, _stream_parallel, args, n, threads)


def scale_by_mask(source, target, words, scale, threads):
    """target = source * keep * scale with keep read from packed words (1-D contiguous arrays)."""
    n = source.size
    element_scale = kernel_scale(source.dtype, scale)
    source, target = kernel_view(source), kernel_view(target)
    args = (source, target, words, element_scale, np.int64(n))
    _run(_mask_range, _mask_parallel, args, n, threads)


# ---------------------------------------------------------------- variants


@njit(inline="always", cache=True)
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


@njit(inline="always", cache=True)
def _one_bit_run(source, target, start, count, scale, shift, dropped, affine, bit, in_place):
    """target[start:start+count] from elements that share one keep bit."""
    values = target[start:start + count]
    lane = _ZERO - bit
    if affine and bit == _ZERO:
        values[:] = dropped
    elif in_place:  # one loop per case: a choice of input array inside cost 40% here
        for j in range(count):
            values[j] = (store(load(values[j]) * scale + shift, values[j]) if affine
                         else kept(values[j], scale, lane))
    else:
        inputs = source[start:start + count]
        for j in range(count):
            values[j] = (store(load(inputs[j]) * scale + shift, inputs[j]) if affine
                         else kept(inputs[j], scale, lane))


@njit(cache=True)
def _broadcast_range(source, target, words, sizes, mask_strides, affine, scale, shift,
                     dropped, first, stop):
    """Elements first..stop-1 with keep bits of a mask stretched over the array (see cython)."""
    inner_axis = sizes.size - 1
    inner = sizes[inner_axis]
    inner_stride = mask_strides[inner_axis]
    in_place = _same_memory(source, target)
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
                    _apply_word(source, target, i + start, length, keep, scale, in_place)
        i += count


@njit(inline="always", cache=True)
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


@njit(parallel=True, cache=True)
def _broadcast_parallel(source, target, words, sizes, mask_strides, affine, scale, shift,
                        dropped, chunks):
    n = source.size
    per_chunk = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        _broadcast_range(source, target, words, sizes, mask_strides, affine, scale, shift,
                         dropped, chunk * per_chunk, min((chunk + 1) * per_chunk, n))


def apply_broadcast(source, target, words, sizes, mask_strides, scale, affine, threads):
    """target = source with stored keep bits stretched over it by (sizes, mask_strides).

    ``affine`` None: kept x * scale, dropped +0.0; else alpha dropout's (a, b, c).
    """
    n = source.size
    if n == 0:
        return
    is_affine, element_scale, shift, dropped = kernel_mask_op(source.dtype, scale, affine)
    if source.dtype == np.float16:
        dropped = np.uint16(np.float16(dropped).view(np.uint16))
    source, target = kernel_view(source), kernel_view(target)
    args = (source, target, words, sizes, mask_strides, is_affine, element_scale,
            type(element_scale)(shift), dropped)
    _run(_broadcast_range, _broadcast_parallel, args, n, threads, units=n)


@njit(cache=True, error_model="numpy")  # IEEE division (no zero check): the loops vectorise
def _gaussian_range(source, target, sigma, seed, stream, offset, first, stop):
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


@njit(parallel=True, cache=True, error_model="numpy")
def _gaussian_parallel(source, target, sigma, seed, stream, offset, chunks):
    n = source.size
    per_chunk = (n + chunks - 1) // chunks
    for chunk in prange(chunks):
        _gaussian_range(source, target, sigma, seed, stream, offset, chunk * per_chunk,
                        min((chunk + 1) * per_chunk, n))


def gaussian(source, target, sigma, seed, stream, offset, threads):
    """target = source * (1 + sigma * z) with z from the Gaussian noise stream (1-D arrays)."""
    n = source.size
    if n == 0:
        return
    source, target = kernel_view(source), kernel_view(target)
    args = (source, target, np.float64(sigma), np.uint64(seed), np.uint64(stream),
            np.uint64(offset))
    _run(_gaussian_range, _gaussian_parallel, args, n, threads, units=n)
