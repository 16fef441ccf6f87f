"""Mask words of the mask stream for Numba ``@njit`` code (mirrors fastdrop.reference).

``mask_word(seed, stream, word, threshold)`` returns the 64 keep bits of global
mask word ``word``: lane i is kept iff its 64-bit uniform U_i >= threshold. U's
bits are bit-sliced across lanes, most significant first, so the comparison
settles lane by lane and stops as soon as every lane is decided.
"""
import numpy as np
from numba import njit

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


@njit(inline="always", cache=True)
def global_mask_word(seed, stream, word, threshold, drop_all):
    """Like ``mask_word`` but also covers p == 1 (``drop_all``), where every bit is 0."""
    if drop_all:
        return _ZERO
    return mask_word(seed, stream, word, threshold)
