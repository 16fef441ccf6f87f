"""Philox4x32-10 in NumPy, vectorised over any number of blocks.

Philox4x32 is the counter-based generator of Salmon, Moraes, Dror and Shaw,
"Parallel random numbers: as easy as 1, 2, 3" (SC'11), as published in the
Random123 library. A block maps a 128-bit counter (four uint32 words) and a
64-bit key (two uint32 words) to 128 random bits; ten rounds is the published
default, and the one every fastdrop backend uses.
"""
import numpy as np

# Multipliers and Weyl key increments from Random123 (philox.h).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def _as_uint32_words(value, name, last_dim):
    array = np.asarray(value)
    if array.dtype.kind not in "ui":
        raise TypeError(f"{name} must be an unsigned 32-bit integer array, got dtype {array.dtype}")
    if array.ndim == 0 or array.shape[-1] != last_dim:
        raise ValueError(f"{name} must have shape (..., {last_dim}), got {array.shape}")
    if array.dtype != np.uint32:
        if array.size and (array.min() < 0 or array.max() > 0xFFFFFFFF):
            raise ValueError(f"{name} values must lie in [0, 2**32), got range "
                             f"[{array.min()}, {array.max()}]")
    return array.astype(np.uint64)


def philox_rounds(counter, key, rounds):
    """Philox4x32 with a given number of rounds on uint64 arrays holding 32-bit values.

    ``counter`` is a tuple of four arrays, ``key`` a tuple of two; they broadcast.
    Returns a tuple of four uint64 arrays holding 32-bit values.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    for round_index in range(rounds):
        if round_index:  # the key is bumped before every round but the first
            k0 = (k0 + w0) & _MASK32
            k1 = (k1 + w1) & _MASK32
        product0 = m0 * c0  # 32x32 -> 64-bit products are exact in uint64
        product1 = m1 * c2
        c0, c1, c2, c3 = (
            (product1 >> _SHIFT32) ^ c1 ^ k0,
            product1 & _MASK32,
            (product0 >> _SHIFT32) ^ c3 ^ k1,
            product0 & _MASK32,
        )
    return c0, c1, c2, c3


def philox4x32_10(counter, key):
    """Philox4x32-10 block function, vectorised over leading dimensions.

    Parameters
    ----------
    counter : array_like of uint32, shape (..., 4)
        128-bit counters, word 0 first.
    key : array_like of uint32, shape (..., 2)
        64-bit keys, word 0 first. Broadcasts against ``counter[..., 0]``.

    Returns
    -------
    numpy.ndarray of uint32, shape (..., 4)
        The Philox4x32-10 output blocks, identical to Random123's
        ``philox4x32_R(10, ctr, key)``.

    Raises
    ------
    TypeError
        If an input is not an integer array.
    ValueError
        If the last dimension is wrong or a value does not fit in 32 bits.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> fastdrop.philox4x32_10(np.zeros(4, np.uint32), np.zeros(2, np.uint32))
    array([1713891541, 3781805453, 3159862348, 2600524760], dtype=uint32)
    """
    counter = _as_uint32_words(counter, "counter", 4)
    key = _as_uint32_words(key, "key", 2)
    words = philox_rounds(
        tuple(counter[..., i] for i in range(4)), (key[..., 0], key[..., 1]), 10
    )
    return np.stack(np.broadcast_arrays(*words), axis=-1).astype(np.uint32)
