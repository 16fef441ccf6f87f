"""Mask words of the mask stream for Numba ``@njit`` code (mirrors fastdrop.reference).

``mask_word(seed, stream, word, threshold)`` returns the 64 keep bits of global
mask word ``word``: lane i is kept iff its 64-bit uniform U_i >= threshold. U's
bits are bit-sliced across lanes, most significant first, so the comparison
settles lane by lane and stops as soon as every lane is decided.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..._config import NUMBA_CACHE
from ...maskstream.spec import BLOCK_SHIFT
from ...rng.philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
from .philox import philox4x32_10_block

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_BLOCK_SHIFT = np.uint64(BLOCK_SHIFT)


@njit(inline="always", cache=NUMBA_CACHE)
def mask_word(seed, stream, word, threshold):
    """Keep bits of global mask word ``word`` for 0 <= p < 1 (threshold = floor(p * 2**64)).

    Arguments are taken as uint64. Bit i of the result is 1 iff element 64*word + i is kept.
    """
    # Numba turns mixed int64/uint64 arithmetic into float64: make every input uint64.
    seed, stream, word, threshold = (np.uint64(seed), np.uint64(stream), np.uint64(word),
                                     np.uint64(threshold))
    if threshold == _ZERO:
        return _ALL
    key0 = seed & _MASK32
    key1 = seed >> _SHIFT32
    stream0 = stream & _MASK32
    stream1 = stream >> _SHIFT32
    word0 = word & _MASK32
    word1 = word >> _SHIFT32
    undecided = _ALL
    dropped = _ZERO
    odd_word = _ZERO
    for bit_round in range(64):
        if bit_round & 1 == 0:
            x0, x1, x2, x3 = philox4x32_10_block(
                word0, word1 | (np.uint64(bit_round >> 1) << _BLOCK_SHIFT),
                stream0, stream1, key0, key1,
            )
            random_bits = x0 | (x1 << _SHIFT32)
            odd_word = x2 | (x3 << _SHIFT32)
        else:
            random_bits = odd_word
        position = np.uint64(63 - bit_round)
        threshold_bit = _ZERO - ((threshold >> position) & _ONE)  # all ones or all zeros
        # A lane is decided where its bit differs from the threshold's bit;
        # it is dropped (U < T) where the threshold bit is the 1.
        differs = (random_bits ^ threshold_bit) & undecided
        dropped |= differs & threshold_bit
        undecided &= ~differs
        # Undecided lanes equal T so far; if T's remaining bits are zero, U >= T.
        if undecided == _ZERO or (threshold & ((_ONE << position) - _ONE)) == _ZERO:
            break
    return ~dropped


PHILOX_LANES = 8  # Philox blocks per vector of `_random_words_of_batch`
# Mask words per `mask_words_into`: two 512-bit vectors of 64-bit lanes (LLVM splits the
# 16-lane vectors), two independent chains of multiplies, as mask_stream.h's AVX-512
# batch.
BATCH_WORDS = 16
_LANES_TUPLE = types.UniTuple(types.uint64, PHILOX_LANES)


def splat(builder, value, lanes):
    """LLVM: a vector of ``lanes`` copies of ``value``."""
    vector, i32 = ir.VectorType(value.type, lanes), ir.IntType(32)
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


class _VectorBuilder:
    """LLVM vector helpers for Philox over ``lanes`` 64-bit lanes (32-bit values in each)."""

    def __init__(self, builder, lanes):
        self.builder, self.lanes = builder, lanes
        self.i64, self.i32 = ir.IntType(64), ir.IntType(32)
        self.vector = ir.VectorType(self.i64, lanes)

    def splat(self, value):
        return splat(self.builder, value, self.lanes)

    def constant(self, value):
        return ir.Constant(self.vector, [value] * self.lanes)

    def scalar(self, value):
        return ir.Constant(self.i64, value)

    def philox(self, word, block, stream, seed):
        """(even, odd) random words r_2j, r_2j+1 of global words word .. word+lanes-1, block j.

        The spec's counter layout and Philox4x32-10 (mask_stream.h's FD_VEC_PHILOX10);
        32x32 -> 64-bit products of the lanes' low halves, which LLVM turns into the
        CPU's vector multiplies (AVX2 vpmuludq, AVX-512 on 8 lanes). As in the C header,
        upper halves hold garbage between rounds (the multiplies ignore them) and a
        product's high half comes down by a swap of halves, not a shift.
        """
        builder, constant, splat, scalar = self.builder, self.constant, self.splat, self.scalar
        low32, shift32 = constant(0xFFFFFFFF), constant(32)
        words = builder.add(splat(word), ir.Constant(self.vector, list(range(self.lanes))))
        x0 = builder.and_(words, low32)
        x1 = builder.or_(builder.lshr(words, shift32),
                         splat(builder.shl(block, scalar(BLOCK_SHIFT))))
        x2 = splat(builder.and_(stream, scalar(0xFFFFFFFF)))
        x3 = splat(builder.lshr(stream, scalar(32)))
        key0 = builder.and_(seed, scalar(0xFFFFFFFF))
        key1 = builder.lshr(seed, scalar(32))
        for round_index in range(10):
            if round_index:  # the key is bumped before every round but the first
                key0 = builder.and_(builder.add(key0, scalar(PHILOX_W0)), scalar(0xFFFFFFFF))
                key1 = builder.and_(builder.add(key1, scalar(PHILOX_W1)), scalar(0xFFFFFFFF))
            # the and is free: the multiply reads only the low halves anyway
            product0 = builder.mul(builder.and_(x0, low32), constant(PHILOX_M0))
            product1 = builder.mul(builder.and_(x2, low32), constant(PHILOX_M1))
            next0 = builder.xor(builder.xor(self.swap_halves(product1), x1), splat(key0))
            next2 = builder.xor(builder.xor(self.swap_halves(product0), x3), splat(key1))
            x1, x3 = product1, product0
            x0, x2 = next0, next2
        return (builder.or_(builder.and_(x0, low32), builder.shl(x1, shift32)),
                builder.or_(builder.and_(x2, low32), builder.shl(x3, shift32)))

    def swap_halves(self, vector):
        """Each lane with its 32-bit halves swapped: the high half of a product brought down."""
        halves = ir.VectorType(self.i32, 2 * self.lanes)
        split = self.builder.bitcast(vector, halves)
        order = [lane ^ 1 for lane in range(2 * self.lanes)]
        swapped = self.builder.shuffle_vector(split, ir.Constant(halves, ir.Undefined),
                                              ir.Constant(halves, order))
        return self.builder.bitcast(swapped, self.vector)

    def to_tuple(self, context, tuple_type, vector):
        packed = ir.Constant(context.get_value_type(tuple_type), ir.Undefined)
        for lane in range(self.lanes):
            packed = self.builder.insert_value(
                packed, self.builder.extract_element(vector, ir.Constant(self.i32, lane)), lane)
        return packed


@intrinsic
def _random_words_of_batch(typingctx, word, block, stream, seed):
    """r_{2j}, r_{2j+1} of words word .. word+7 for block j, as two tuples of 8 uint64.

    Philox4x32-10 generated as LLVM vector code, so the eight blocks run in SIMD lanes
    (Numba compiles for the host CPU).
    """
    def codegen(context, builder, signature, args):
        vectors = _VectorBuilder(builder, PHILOX_LANES)
        even, odd = vectors.philox(*args)
        return context.make_tuple(builder, signature.return_type,
                                  [vectors.to_tuple(context, _LANES_TUPLE, lanes)
                                   for lanes in (even, odd)])

    signature = types.UniTuple(_LANES_TUPLE, 2)(types.uint64, types.uint64, types.uint64,
                                                types.uint64)
    return signature, codegen


def build_keep_words(builder, word, stream, seed, threshold, carried=(), after_block=None):
    """Emit the keep bits of global words word .. word+BATCH_WORDS-1 (a threshold > 0).

    The whole comparison of section 4 in vector registers, as mask_stream.h's batches
    do it: each block's two random words decide lanes MSB first, and the loop stops
    once no lane of the batch is undecided or T's remaining bits are zero (which
    never changes a word's bits). ``after_block(builder, values)``, if given, is
    emitted after each block (mask_stream.h's AFTER_BLOCK) and returns the new
    ``values``, LLVM values carried from block to block from ``carried``.
    Returns (the keep words as a vector of BATCH_WORDS uint64 lanes, the final values).
    """
    vectors = _VectorBuilder(builder, BATCH_WORDS)
    i64, scalar, splat = vectors.i64, vectors.scalar, vectors.splat
    entry = builder.basic_block
    loop = builder.append_basic_block("keep_words.loop")
    done = builder.append_basic_block("keep_words.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    block = builder.phi(i64)
    undecided = builder.phi(vectors.vector)
    dropped = builder.phi(vectors.vector)
    values = [builder.phi(value.type) for value in carried]
    block.add_incoming(scalar(0), entry)
    undecided.add_incoming(vectors.constant(0xFFFFFFFFFFFFFFFF), entry)
    dropped.add_incoming(vectors.constant(0), entry)
    for phi, value in zip(values, carried):
        phi.add_incoming(value, entry)
    even, odd = vectors.philox(word, block, stream, seed)
    position_odd = builder.sub(scalar(62), builder.shl(block, scalar(1)))
    state_undecided, state_dropped = undecided, dropped
    for random_bits, position in ((even, builder.add(position_odd, scalar(1))),
                                  (odd, position_odd)):
        # all ones where T's bit at this position is 1
        bit = builder.and_(builder.lshr(threshold, position), scalar(1))
        threshold_bit = splat(builder.sub(scalar(0), bit))
        # a lane is decided where its bit differs from T's: dropped where T's is the 1
        differs = builder.and_(builder.xor(random_bits, threshold_bit), state_undecided)
        state_dropped = builder.or_(state_dropped, builder.and_(differs, threshold_bit))
        state_undecided = builder.and_(state_undecided, builder.not_(differs))
    next_values = list(after_block(builder, tuple(values)) if after_block else values)
    any_undecided = builder.icmp_unsigned(
        "!=", builder.bitcast(builder.icmp_unsigned("!=", state_undecided, vectors.constant(0)),
                              ir.IntType(BATCH_WORDS)),
        ir.Constant(ir.IntType(BATCH_WORDS), 0))
    # lanes still equal to T so far are >= T once T's remaining bits are zero
    rest = builder.and_(threshold, builder.sub(builder.shl(scalar(1), position_odd), scalar(1)))
    finished = builder.or_(builder.not_(any_undecided),
                           builder.icmp_unsigned("==", rest, scalar(0)))
    tail = builder.basic_block  # after_block may have added blocks
    block.add_incoming(builder.add(block, scalar(1)), tail)
    undecided.add_incoming(state_undecided, tail)
    dropped.add_incoming(state_dropped, tail)
    for phi, value in zip(values, next_values):
        phi.add_incoming(value, tail)
    builder.cbranch(finished, done, loop)
    builder.position_at_end(done)
    return builder.not_(state_dropped), tuple(next_values)


def store_keep_words(context, builder, keep, array_type, array, at):
    """LLVM: array[at:at + BATCH_WORDS] = the keep words of `build_keep_words`.

    One vector store.
    """
    data = context.make_array(array_type)(context, builder, array).data
    pointer = builder.bitcast(builder.gep(data, [at]), keep.type.as_pointer())
    builder.store(keep, pointer, align=8)


@intrinsic
def _keep_words_into(typingctx, out, at, word, stream, seed, threshold):
    """out[at:at + BATCH_WORDS] = keep bits of global words word .. word+BATCH_WORDS-1 (T > 0)."""
    def codegen(context, builder, signature, args):
        out, at, word, stream, seed, threshold = args
        keep, _ = build_keep_words(builder, word, stream, seed, threshold)
        store_keep_words(context, builder, keep, signature.args[0], out, at)
        return context.get_dummy_value()

    return types.none(out, types.int64, *(types.uint64,) * 4), codegen


@njit(inline="always", cache=NUMBA_CACHE)
def mask_words_into(out, at, seed, stream, word, threshold, drop_all):
    """out[at:at + BATCH_WORDS] = mask_word of global words word .. word+BATCH_WORDS-1.

    The words are 0 if drop_all. ``out`` is a uint64 array with room for the BATCH_WORDS
    words from ``at`` (not checked).
    """
    if drop_all:
        out[at:at + BATCH_WORDS] = _ZERO
    elif np.uint64(threshold) == _ZERO:
        out[at:at + BATCH_WORDS] = _ALL
    else:
        _keep_words_into(out, np.int64(at), np.uint64(word), np.uint64(stream), np.uint64(seed),
                         np.uint64(threshold))
