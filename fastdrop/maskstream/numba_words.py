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

from ..rng.philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
from ..rng.philox_numba import philox4x32_10_block
from .spec import BLOCK_SHIFT

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_BLOCK_SHIFT = np.uint64(BLOCK_SHIFT)


@njit(inline="always", cache=True)
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


BATCH_WORDS = 8
_WORDS_TUPLE = types.UniTuple(types.uint64, BATCH_WORDS)


@intrinsic
def _random_words_of_batch(typingctx, word, block, stream, seed):
    """r_{2j}, r_{2j+1} of words word .. word+7 for block j, as two tuples of 8 uint64.

    Philox4x32-10 with the spec's counter layout, generated as LLVM vector code so the
    eight words run in SIMD lanes (Numba compiles for the host CPU: AVX2 or AVX-512
    multiply eight or four 32x32 -> 64-bit products per instruction). Mirrors
    fd_mask_words_batch in mask_stream.h.
    """
    def codegen(context, builder, signature, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        vector = ir.VectorType(i64, BATCH_WORDS)

        def splat(value):
            single = builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                            ir.Constant(i32, 0))
            return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined),
                                          ir.Constant(ir.VectorType(i32, BATCH_WORDS),
                                                      [0] * BATCH_WORDS))

        def constant(value):
            return ir.Constant(vector, [value] * BATCH_WORDS)

        def scalar(value):
            return ir.Constant(i64, value)

        word, block, stream, seed = args
        low32, shift32 = constant(0xFFFFFFFF), constant(32)
        words = builder.add(splat(word), ir.Constant(vector, list(range(BATCH_WORDS))))
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
            product0 = builder.mul(x0, constant(PHILOX_M0))
            product1 = builder.mul(x2, constant(PHILOX_M1))
            next0 = builder.xor(builder.xor(builder.lshr(product1, shift32), x1), splat(key0))
            next2 = builder.xor(builder.xor(builder.lshr(product0, shift32), x3), splat(key1))
            x1, x3 = builder.and_(product1, low32), builder.and_(product0, low32)
            x0, x2 = next0, next2
        even = builder.or_(x0, builder.shl(x1, shift32))
        odd = builder.or_(x2, builder.shl(x3, shift32))
        results = []
        for lanes in (even, odd):
            packed = ir.Constant(context.get_value_type(_WORDS_TUPLE), ir.Undefined)
            for lane in range(BATCH_WORDS):
                packed = builder.insert_value(
                    packed, builder.extract_element(lanes, ir.Constant(i32, lane)), lane)
            results.append(packed)
        return context.make_tuple(builder, signature.return_type, results)

    signature = types.UniTuple(_WORDS_TUPLE, 2)(types.uint64, types.uint64, types.uint64,
                                                types.uint64)
    return signature, codegen


@njit(inline="always", cache=True)
def _decide(even, odd, bit_even, bit_odd, undecided, dropped):
    differs = (even ^ bit_even) & undecided
    dropped |= differs & bit_even
    undecided &= ~differs
    differs = (odd ^ bit_odd) & undecided
    dropped |= differs & bit_odd
    undecided &= ~differs
    return undecided, dropped


@njit(inline="always", cache=True)
def mask_words_batch(seed, stream, word, threshold, drop_all):
    """Keep bits of global words word .. word+7 (a tuple): mask_word of each, or 0 if drop_all.

    The batch draws rounds until every lane of all eight words is decided, which
    never changes a word's bits.
    """
    seed, stream, word, threshold = (np.uint64(seed), np.uint64(stream), np.uint64(word),
                                     np.uint64(threshold))
    if drop_all:
        return (_ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO)
    u0 = u1 = u2 = u3 = u4 = u5 = u6 = u7 = _ALL
    d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = _ZERO
    if threshold != _ZERO:
        for block in range(32):
            even, odd = _random_words_of_batch(word, np.uint64(block), stream, seed)
            position_odd = np.uint64(62 - 2 * block)
            bit_even = _ZERO - ((threshold >> (position_odd + _ONE)) & _ONE)
            bit_odd = _ZERO - ((threshold >> position_odd) & _ONE)
            u0, d0 = _decide(even[0], odd[0], bit_even, bit_odd, u0, d0)
            u1, d1 = _decide(even[1], odd[1], bit_even, bit_odd, u1, d1)
            u2, d2 = _decide(even[2], odd[2], bit_even, bit_odd, u2, d2)
            u3, d3 = _decide(even[3], odd[3], bit_even, bit_odd, u3, d3)
            u4, d4 = _decide(even[4], odd[4], bit_even, bit_odd, u4, d4)
            u5, d5 = _decide(even[5], odd[5], bit_even, bit_odd, u5, d5)
            u6, d6 = _decide(even[6], odd[6], bit_even, bit_odd, u6, d6)
            u7, d7 = _decide(even[7], odd[7], bit_even, bit_odd, u7, d7)
            # lanes still equal to T so far are >= T once T's remaining bits are zero
            if ((u0 | u1 | u2 | u3 | u4 | u5 | u6 | u7) == _ZERO
                    or (threshold & ((_ONE << position_odd) - _ONE)) == _ZERO):
                break
    return (~d0, ~d1, ~d2, ~d3, ~d4, ~d5, ~d6, ~d7)
