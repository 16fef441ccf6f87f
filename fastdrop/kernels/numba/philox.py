"""Philox4x32-10 block for Numba ``@njit`` code (mirrors fastdrop.rng.philox).

Values travel as uint64 holding 32-bit words: Numba would turn mixed
uint64/int64 arithmetic into float64, so every constant here is a np.uint64.
"""
import numpy as np
from numba import njit

from ..._config import NUMBA_CACHE
from ...rng.philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


@njit(inline="always", cache=NUMBA_CACHE)
def philox4x32_10_block(c0, c1, c2, c3, k0, k1):
    """One Philox4x32-10 block: counter (c0..c3) and key (k0, k1) as uint64 holding 32-bit values.

    Returns the four 32-bit output words as uint64.
    """
    for round_index in range(10):
        if round_index > 0:  # the key is bumped before every round but the first
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        product0 = _M0 * c0
        product1 = _M1 * c2
        c0, c1, c2, c3 = (
            (product1 >> _SHIFT32) ^ c1 ^ k0,
            product1 & _MASK32,
            (product0 >> _SHIFT32) ^ c3 ^ k1,
            product0 & _MASK32,
        )
    return c0, c1, c2, c3
