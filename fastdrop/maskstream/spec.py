"""Constants and scalar helpers of the mask-stream specification (docs/mask-stream.md)."""
import math

WORD_BITS = 64
# Counter word 1 holds the high bits of the word index below bit 26 and the block
# index j (0..31) from bit 26 up, so word indices run to 2**58 - 1.
BLOCK_SHIFT = 26
MAX_SEED = 2**64 - 1
MAX_STREAM = 2**64 - 1
# Global element indices must stay below 2**63 (signed 64-bit indexing everywhere).
MAX_ELEMENTS = 2**63


def split64(value):
    """Split a 64-bit unsigned integer into its (low, high) 32-bit halves."""
    return value & 0xFFFFFFFF, value >> 32


def block_counter(word, stream, block):
    """The Philox counter (c0, c1, c2, c3) of block ``block`` of mask word ``word``.

    c0, c1 = low and high halves of the word index, with the block index added to
    c1 at bit 26; c2, c3 = low and high halves of the stream.
    """
    word_low, word_high = split64(word)
    stream_low, stream_high = split64(stream)
    return word_low, word_high | (block << BLOCK_SHIFT), stream_low, stream_high


def keep_threshold(p):
    """T = floor(p * 2**64) for 0 <= p < 1: a lane is dropped iff its 64-bit uniform U < T.

    ``p`` is taken as a float64; scaling by a power of two is exact, so T is exact.
    p == 1 has no 64-bit threshold (it would be 2**64) and is handled as "drop all".
    """
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"keep_threshold needs 0 <= p < 1, got p={p!r}")
    return int(math.ldexp(p, 64))


def dropout_scale(p):
    """s = 1 / (1 - p) in float64 (0.0 for p == 1, where nothing is kept)."""
    p = float(p)
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)
