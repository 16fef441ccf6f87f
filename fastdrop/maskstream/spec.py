"""Constants and scalar helpers of the mask-stream specification (docs/mask-stream.md)."""
import functools
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


@functools.lru_cache(maxsize=64)
def stream_parameters(p):
    """(T, drop_all) of the mask stream for drop probability p: (0, True) for p == 1.

    Cached: calls repeat p, and this is on every call's path.
    """
    return (0, True) if p == 1.0 else (keep_threshold(p), False)


def round_to_bfloat16(value):
    """A float64 rounded once to the nearest bfloat16 (8 significant bits), ties to even.

    Exact in Python floats: the value scaled by a power of two to units of its
    bfloat16 spacing (2**(e - 8) for value = m * 2**e, m in [1/2, 1); 2**-133 for
    subnormals), rounded half to even, scaled back. NaN and infinities pass through;
    magnitudes from bfloat16's largest plus half a unit on become inf.
    """
    value = float(value)
    if value == 0.0 or not math.isfinite(value):
        return value
    quantum = max(math.frexp(value)[1] - 8, -133)
    rounded = math.ldexp(round(math.ldexp(value, -quantum)), quantum)
    return rounded if abs(rounded) < 2.0**128 else math.copysign(math.inf, value)


def dropout_scale(p):
    """s = 1 / (1 - p) in float64 (0.0 for p == 1, where nothing is kept)."""
    p = float(p)
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


# Alpha dropout (Klambauer et al. 2017): a dropped SELU activation is set to the
# SELU's negative saturation value -lambda * alpha, then an affine map a * y + b
# restores zero mean and unit variance.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
ALPHA_DROPPED = -SELU_SCALE * SELU_ALPHA


def alpha_dropout_constants(p):
    """(a, b, c) of alpha dropout in float64: kept x -> a*x + b, dropped x -> c.

    a = ((1 - p) * (1 + p * alpha'**2)) ** -1/2, b = -a * alpha' * p and
    c = a * alpha' + b, with alpha' = -lambda * alpha. For p == 1 nothing is kept
    and every element becomes 0 (a = 0, b = 0, c = 0).
    """
    p = float(p)
    if p == 1.0:
        return 0.0, 0.0, 0.0
    a = 1.0 / math.sqrt((1.0 - p) * (1.0 + p * ALPHA_DROPPED * ALPHA_DROPPED))
    b = -a * ALPHA_DROPPED * p
    return a, b, a * ALPHA_DROPPED + b


# Gaussian noise uses counter word 1's top bit, which mask words never set (their
# block index j < 32 ends at bit 30), so noise and masks of one (seed, stream) are
# independent. Element i takes half i % 2 of Philox block i // 2.
NORMAL_DOMAIN_BIT = 31


def normal_counter(block, stream):
    """The Philox counter (c0, c1, c2, c3) of Gaussian block ``block``.

    The block holds elements 2*block and 2*block+1.
    """
    block_low, block_high = split64(block)
    stream_low, stream_high = split64(stream)
    return block_low, block_high | (1 << NORMAL_DOMAIN_BIT), stream_low, stream_high


def gaussian_sigma(p):
    """sigma = sqrt(p / (1 - p)) in float64, the noise's standard deviation (0 <= p < 1)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"gaussian_sigma needs 0 <= p < 1, got p={p!r}")
    return math.sqrt(p / (1.0 - p))


@functools.lru_cache(maxsize=64)
def dropout_constants(p):
    """(T, drop_all, s) of dropout with drop probability p, each computed once.

    `stream_parameters` and `dropout_scale` together, cached for the per-call path.
    """
    return stream_parameters(p) + (dropout_scale(p),)
