"""float16 and bfloat16 arithmetic for Numba kernels, which see both as 16-bit integers.

Numba has no CPU float16 or bfloat16 type: float16 arrays reach the loops as uint16
bit patterns and bfloat16 arrays as int16 bit patterns, so the element's Numba type
tells the two apart. The spec's rule for both: widen x to float32 (exact), multiply by
the float32 value of s rounded to the element type (exact), round the product once,
to nearest even. The conversions below match NumPy's (float16) and ml_dtypes'
(bfloat16) ``astype``.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from ..._config import NUMBA_CACHE
from .bits import float32_bits, float32_from_bits, float64_bits, float64_from_bits


@njit(inline="always", cache=NUMBA_CACHE)
def half_bits_to_float32(half):
    """Exact float16 (bit pattern) -> float32."""
    h = np.uint32(half)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exponent = h & np.uint32(0x7C00)
    mantissa = h & np.uint32(0x03FF)
    if exponent == np.uint32(0x7C00):  # inf or NaN
        bits = sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13))
    elif exponent != np.uint32(0):  # normal: rebias the exponent from 15 to 127
        bits = sign | (((h & np.uint32(0x7FFF)) + np.uint32(0x1C000)) << np.uint32(13))
    elif mantissa == np.uint32(0):
        bits = sign
    else:  # subnormal: normalise the significand
        biased = np.uint32(113)
        while (mantissa & np.uint32(0x0400)) == np.uint32(0):
            mantissa <<= np.uint32(1)
            biased -= np.uint32(1)
        bits = sign | (biased << np.uint32(23)) | ((mantissa & np.uint32(0x03FF)) << np.uint32(13))
    return float32_from_bits(bits)


@njit(inline="always", cache=NUMBA_CACHE)
def float32_to_half_bits(value):
    """float32 -> float16 bit pattern, rounding to nearest even; NaN stays a quiet NaN."""
    f = float32_bits(value)
    sign = (f >> np.uint32(16)) & np.uint32(0x8000)
    f &= np.uint32(0x7FFFFFFF)
    if f >= np.uint32(0x7F800000):
        if f == np.uint32(0x7F800000):
            return np.uint16(sign | np.uint32(0x7C00))
        return np.uint16(sign | np.uint32(0x7E00) | ((f >> np.uint32(13)) & np.uint32(0x03FF)))
    if f >= np.uint32(0x47800000):  # |v| >= 2**16 overflows
        return np.uint16(sign | np.uint32(0x7C00))
    if f >= np.uint32(0x38800000):  # normal float16 range: drop 13 bits, round half to even
        half = (f >> np.uint32(13)) - np.uint32(0x1C000)
        rest = f & np.uint32(0x1FFF)
        if rest > np.uint32(0x1000) or (rest == np.uint32(0x1000) and (half & np.uint32(1))):
            half += np.uint32(1)  # a carry into the exponent is the right answer (up to inf)
        return np.uint16(sign | half)
    if f <= np.uint32(0x33000000):  # |v| <= 2**-25 rounds to zero (2**-25 is a tie, to even)
        return np.uint16(sign)
    # float16 subnormal: units of 2**-24
    shift = np.uint32(126) - (f >> np.uint32(23))
    significand = (f & np.uint32(0x007FFFFF)) | np.uint32(0x00800000)
    half = significand >> shift
    rest = significand & ((np.uint32(1) << shift) - np.uint32(1))
    halfway = np.uint32(1) << (shift - np.uint32(1))
    if rest > halfway or (rest == halfway and (half & np.uint32(1))):
        half += np.uint32(1)
    return np.uint16(sign | half)


@njit(inline="always", cache=NUMBA_CACHE)
def bfloat16_bits_to_float32(bits):
    """Exact bfloat16 (int16 bit pattern) -> float32: the bits shifted up by 16."""
    return float32_from_bits(np.uint32(np.uint16(bits)) << np.uint32(16))


@njit(inline="always", cache=NUMBA_CACHE)
def float32_to_bfloat16_bits(value):
    """float32 -> bfloat16 int16 bit pattern, to nearest even; NaN -> 0x7FC0 with its sign."""
    f = float32_bits(value)
    rounded = (f + np.uint32(0x7FFF) + ((f >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    quiet_nan = ((f >> np.uint32(16)) & np.uint32(0x8000)) | np.uint32(0x7FC0)
    return np.int16(np.uint16(quiet_nan if value != value else rounded))


def kept(value, scale, lane):
    """value * scale rounded to value's type, with its bits ANDed with ``lane`` (all ones or 0).

    Dropped lanes so become +0 whatever value holds (inf, NaN), without a branch, so
    the loops that call this vectorise. float16 values come as uint16 bit patterns.
    """
    raise NotImplementedError("only callable from Numba code")


@overload(kept)
def _kept_overload(value, scale, lane):
    if value == types.uint16:  # float16 bits; scale is float32
        def kept_half(value, scale, lane):
            product = float32_to_half_bits(half_bits_to_float32(value) * scale)
            return np.uint16(product & np.uint16(lane & np.uint64(0xFFFF)))
        return kept_half
    if value == types.int16:  # bfloat16 bits; scale is float32
        def kept_bfloat16(value, scale, lane):
            product = float32_to_bfloat16_bits(bfloat16_bits_to_float32(value) * scale)
            return np.int16(product & np.int16(np.uint16(lane & np.uint64(0xFFFF))))
        return kept_bfloat16
    if value == types.float32:
        def kept_float32(value, scale, lane):
            bits = float32_bits(value * scale) & np.uint32(lane & np.uint64(0xFFFFFFFF))
            return float32_from_bits(bits)
        return kept_float32

    def kept_float64(value, scale, lane):
        return float64_from_bits(float64_bits(value * scale) & lane)
    return kept_float64


def load(value):
    """An element in the type arithmetic runs in.

    float16 bits widen to float32, others stay as they are.
    """
    raise NotImplementedError("only callable from Numba code")


@overload(load)
def _load_overload(value):
    if value == types.uint16:
        return lambda value: half_bits_to_float32(value)
    if value == types.int16:
        return lambda value: bfloat16_bits_to_float32(value)
    return lambda value: value


def store(result, like):
    """A computed value as an element of ``like``'s type: float32 rounds once to float16 bits."""
    raise NotImplementedError("only callable from Numba code")


@overload(store)
def _store_overload(result, like):
    if like == types.uint16:
        return lambda result, like: float32_to_half_bits(result)
    if like == types.int16:
        return lambda result, like: float32_to_bfloat16_bits(result)
    return lambda result, like: result


def scale_by_noise(value, noise):
    """value times the float64 multiplier ``noise`` rounded to value's type.

    The multiplier is rounded to float32 for float16.
    """
    raise NotImplementedError("only callable from Numba code")


@overload(scale_by_noise)
def _scale_by_noise_overload(value, noise):
    if value == types.uint16:
        return lambda value, noise: float32_to_half_bits(half_bits_to_float32(value)
                                                         * np.float32(noise))
    if value == types.int16:
        return lambda value, noise: float32_to_bfloat16_bits(bfloat16_bits_to_float32(value)
                                                             * np.float32(noise))
    if value == types.float32:
        return lambda value, noise: value * np.float32(noise)
    return lambda value, noise: value * noise
