"""The Gaussian noise stream for Numba ``@njit`` code (docs/mask-stream.md, section 9).

Mirrors fastdrop/include/fastdrop/normal.h and `fastdrop.reference.standard_normals`:
the same float64 operations in the same order, so the bits agree. Compiled with
``error_model="numpy"``: a division is the IEEE one, without Python's zero check,
whose branch would stop LLVM vectorising the batch loops (no divisor here is ever 0).
"""
import math

import numpy as np
from numba import njit

from ..._config import NUMBA_CACHE
from ...maskstream import normal
from ...maskstream.spec import BLOCK_SHIFT, NORMAL_DOMAIN_BIT
from .bits import float64_bits, float64_from_bits
from .philox import philox4x32_10_block
from .words import PHILOX_LANES, _random_words_of_batch

# The vector Philox of the mask stream sets counter word 1 to (high | j << BLOCK_SHIFT);
# this "block index" j puts exactly the noise domain's bit there instead.
_DOMAIN_AS_BLOCK = np.uint64((1 << NORMAL_DOMAIN_BIT) >> BLOCK_SHIFT)
assert int(_DOMAIN_AS_BLOCK) << BLOCK_SHIFT == 1 << NORMAL_DOMAIN_BIT


_DOMAIN = np.uint64(1 << NORMAL_DOMAIN_BIT)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_UNIFORM_SHIFT = np.uint64(normal.UNIFORM_SHIFT)
_MANTISSA_BITS = np.uint64(52)
_MANTISSA = np.uint64((1 << 52) - 1)
_ONE_EXPONENT = np.uint64(0x3FF0000000000000)  # the bits of 1.0
_HALF_EXPONENT = np.uint64(0x3FE0000000000000)  # the bits of 0.5
_HALF_ULP = 2.0**-53
assert normal.UNIFORM_SHIFT == 12 and normal.UNIFORM_SCALE == 2.0**-52



@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def normal_block(seed, stream, block):
    """The two 64-bit words of Gaussian block ``block`` (all arguments uint64)."""
    x0, x1, x2, x3 = philox4x32_10_block(
        block & _MASK32, (block >> _SHIFT32) | _DOMAIN, stream & _MASK32, stream >> _SHIFT32,
        seed & _MASK32, seed >> _SHIFT32)
    return x0 | (x1 << _SHIFT32), x2 | (x3 << _SHIFT32)


@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def _horner8(c, r):
    """sum_k c[k] r**k for 8 coefficients by Horner's rule, highest power first.

    Written out with constant indices (no loop over the tuple), so LLVM sees
    straight-line arithmetic it can vectorise across a batch.
    """
    return ((((((c[7] * r + c[6]) * r + c[5]) * r + c[4]) * r + c[3]) * r + c[2]) * r
            + c[1]) * r + c[0]


@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def _log_series(s):
    """1 + s/3 + s**2/5 + ... + s**10/21 by Horner's rule (normal.LOG_SERIES)."""
    c = _LOG_SERIES
    return (((((((((c[10] * s + c[9]) * s + c[8]) * s + c[7]) * s + c[6]) * s + c[5]) * s
                + c[4]) * s + c[3]) * s + c[2]) * s + c[1]) * s + c[0]


_CENTRAL_NUMERATOR = normal.CENTRAL_NUMERATOR
_CENTRAL_DENOMINATOR = normal.CENTRAL_DENOMINATOR
_INTERMEDIATE_NUMERATOR = normal.INTERMEDIATE_NUMERATOR
_INTERMEDIATE_DENOMINATOR = normal.INTERMEDIATE_DENOMINATOR
_FAR_NUMERATOR = normal.FAR_NUMERATOR
_FAR_DENOMINATOR = normal.FAR_DENOMINATOR
_LOG_SERIES = normal.LOG_SERIES
assert len(_LOG_SERIES) == 11 and all(len(c) == 8 for c in (
    _CENTRAL_NUMERATOR, _CENTRAL_DENOMINATOR, _INTERMEDIATE_NUMERATOR, _INTERMEDIATE_DENOMINATOR,
    _FAR_NUMERATOR, _FAR_DENOMINATOR))


@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def spec_log(v):
    """The spec's log of a normal float64 v > 0 (frexp, then the atanh series).

    frexp from the exponent field (exact for normal numbers; Numba's math.frexp is a
    call, which keeps the tail loop from vectorising).
    """
    bits = float64_bits(v)
    exponent = float(np.int64(bits >> _MANTISSA_BITS) - 1022)  # v > 0: no sign bit
    m = float64_from_bits((bits & _MANTISSA) | _HALF_EXPONENT)  # in [1/2, 1)
    low = m < normal.SQRT_HALF
    doubled, lowered = m * 2.0, exponent - 1.0
    m = doubled if low else m
    exponent_value = lowered if low else exponent
    f = (m - 1.0) / (m + 1.0)
    return exponent_value * normal.LN2 + 2.0 * f * _log_series(f * f)


@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def central_normal(u):
    """AS 241's central region: exact for |u - 1/2| <= 0.425."""
    q = u - 0.5
    r = normal.CENTRAL_OFFSET - q * q
    return q * _horner8(_CENTRAL_NUMERATOR, r) / _horner8(_CENTRAL_DENOMINATOR, r)


@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def tail_normal(u):
    """AS 241's tails: for |u - 1/2| > 0.425 (both quotients computed, one selected)."""
    q = u - 0.5
    complement = 1.0 - u
    tail = math.sqrt(-spec_log(u if q < 0.0 else complement))
    near = tail - normal.INTERMEDIATE_SHIFT
    far = tail - normal.TAIL_SPLIT
    near_value = (_horner8(_INTERMEDIATE_NUMERATOR, near)
                  / _horner8(_INTERMEDIATE_DENOMINATOR, near))
    far_value = _horner8(_FAR_NUMERATOR, far) / _horner8(_FAR_DENOMINATOR, far)
    magnitude = near_value if tail <= normal.TAIL_SPLIT else far_value
    return -magnitude if q < 0.0 else magnitude


@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def uniform(random_word):
    """u = ((r >> 12) + 1/2) 2**-52, in (0, 1), from bits as normal.h's batches build it.

    1 + k 2**-52 minus 1 is k 2**-52 exactly, and adding 2**-53 gives (k + 1/2) 2**-52
    exactly: no integer-to-float conversion.
    """
    one_plus = float64_from_bits((random_word >> _UNIFORM_SHIFT) | _ONE_EXPONENT)
    return (one_plus - 1.0) + _HALF_ULP


@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def standard_normal(random_word):
    """z = Phi^-1(u) of one 64-bit random word."""
    u = uniform(random_word)
    if abs(u - 0.5) <= normal.CENTRAL_LIMIT:
        return central_normal(u)
    return tail_normal(u)


BATCH = 64  # normals per batch: 32 Philox blocks


@njit(inline="always", cache=NUMBA_CACHE, error_model="numpy")
def standard_normals_batch(seed, stream, block, z, u, tail_u, tail_index):
    """z[:BATCH] = normals of elements 2 block .. 2 block + BATCH - 1.

    Scratch arrays: u, tail_u, tail_index.

    Plain loops over the batch that LLVM vectorises: the central region for every
    lane, then the tails (the lanes outside the central region) gathered and done
    together. The same float64 operations per lane as `standard_normal`, so the same bits.
    """
    for first in range(0, BATCH // 2, PHILOX_LANES):  # Philox blocks, eight at a time
        even, odd = _random_words_of_batch(block + np.uint64(first), _DOMAIN_AS_BLOCK, stream,
                                           seed)
        for lane in range(PHILOX_LANES):
            u[2 * (first + lane)] = uniform(even[lane])
            u[2 * (first + lane) + 1] = uniform(odd[lane])
    for j in range(BATCH):
        z[j] = central_normal(u[j])
    tails = 0
    for j in range(BATCH):
        tail_index[tails] = j
        tail_u[tails] = u[j]
        tails += abs(u[j] - 0.5) > normal.CENTRAL_LIMIT
    for t in range(tails):
        tail_u[t] = tail_normal(tail_u[t])
    for t in range(tails):
        z[tail_index[t]] = tail_u[t]
