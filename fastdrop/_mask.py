"""Packed masks: the DropoutMask record and packing to and from uint64 words."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from ._typing import ArrayLike, Int, NDArray, Probability, Shape
from ._validate import check_count
from .maskstream.spec import WORD_BITS


def words_for(n):
    """Number of uint64 words that hold ``n`` mask bits."""
    return -(-n // WORD_BITS)


def pack_mask(keep: ArrayLike) -> NDArray[np.uint64]:
    """Pack a boolean keep-mask into uint64 words (bit i of word i // 64 is element i).

    Parameters
    ----------
    keep : array_like of bool
        Any shape; read in C order. Nonzero means kept.

    Returns
    -------
    numpy.ndarray of uint64, shape (ceil(n / 64),)
        Little-endian bit order; unused bits of the last word are 0.

    Raises
    ------
    TypeError
        If ``keep`` is not boolean.
    """
    keep = np.asarray(keep)
    if keep.dtype != np.bool_:
        raise TypeError(f"pack_mask needs a boolean array, got dtype {keep.dtype}")
    n = keep.size
    padded = np.zeros(words_for(n) * WORD_BITS, dtype=np.bool_)
    padded[:n] = keep.reshape(-1)
    packed = np.packbits(padded, bitorder="little")
    return packed.view("<u8").astype(np.uint64)


def unpack_mask(words: ArrayLike, n: Int) -> NDArray[np.bool_]:
    """Unpack uint64 mask words into ``n`` booleans (True = kept).

    Parameters
    ----------
    words : array_like of uint64
        Packed words, bit i of word i // 64 is element i.
    n : int
        Number of elements; ``len(words)`` must be ``ceil(n / 64)``.

    Returns
    -------
    numpy.ndarray of bool, shape (n,)

    Raises
    ------
    TypeError
        If ``words`` is not uint64, or ``n`` is not an integer (as for every count
        in fastdrop: bool, float and str are refused).
    ValueError
        If ``n`` is negative or does not match the number of words.
    """
    n = check_count(n)
    words = np.asarray(words)
    if words.dtype != np.uint64:
        raise TypeError(f"mask words must be uint64, got dtype {words.dtype}")
    if words.ndim != 1:
        raise ValueError(f"mask words must be one-dimensional, got shape {words.shape}")
    if words.size != words_for(n):
        raise ValueError(f"{words.size} mask words cannot hold n={n} elements "
                         f"(need {words_for(max(n, 0))})")
    as_bytes = np.ascontiguousarray(words).astype("<u8").view(np.uint8)
    return np.unpackbits(as_bytes, bitorder="little")[:n].astype(np.bool_)


class _CallRecord:
    """What one call drew from the stream: its input's shape, p, and (seed, stream, offset)."""

    # _block is set only for a block of a larger array: (origin, global_shape)
    __slots__ = ("shape", "p", "seed", "stream", "offset", "_block")

    shape: tuple[int, ...]
    p: float
    seed: int
    stream: int
    offset: int

    def __init__(self, *, shape: Shape, p: Probability, seed: Int, stream: Int, offset: Int,
                 block: tuple[Shape, Shape] | None = None) -> None:
        self._record(shape, p, seed, stream, offset)
        if block is not None:
            self._block = (tuple(block[0]), tuple(block[1]))

    def _record(self, shape, p, seed, stream, offset):
        # positional and without super(): a small dropout call pays for every step here
        self.shape = tuple(shape)
        self.p = float(p)
        self.seed = int(seed)
        self.stream = int(stream)
        self.offset = int(offset)

    @property
    def n(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def origin(self) -> tuple[int, ...] | None:
        """Where the block starts in the global array, or None for a whole array."""
        block = getattr(self, "_block", None)
        return None if block is None else block[0]

    @property
    def global_shape(self) -> tuple[int, ...] | None:
        """The shape of the global array the block lies in, or None for a whole array."""
        block = getattr(self, "_block", None)
        return None if block is None else block[1]

    def _fields(self):
        block = ("" if self.origin is None
                 else f", origin={self.origin}, global_shape={self.global_shape}")
        return (f"shape={self.shape}, p={self.p!r}, seed={self.seed}, stream={self.stream}, "
                f"offset={self.offset}{block}")


class DropoutMask(_CallRecord):
    """The mask of one dropout call: packed keep bits and what regenerates them.

    Attributes
    ----------
    words : numpy.ndarray of uint64
        ``ceil(n / 64)`` words; bit i of word i // 64 is element i of the input
        in C order (1 = kept). Exactly ``8 * ceil(n / 64)`` bytes.
    n : int
        Number of elements.
    shape : tuple of int
        Shape of the input.
    p : float
        Drop probability.
    seed, stream, offset : int
        The mask-stream coordinates: element i has global index ``offset + i``.
        Passing these to ``dropout_backward_recompute`` or ``bernoulli_mask``
        reproduces the mask without storing it.
    origin, global_shape : tuple of int or None
        For the mask of a block of a larger array (``dropout(..., origin=,
        global_shape=)``): the mask block's place in the global mask, whose element
        at index k has global index ``offset + ravel(k, global_shape)``; None for a
        whole array.
    """

    __slots__ = ("words",)

    words: NDArray[np.uint64]

    def __init__(self, words: NDArray[np.uint64], *, shape: Shape, p: Probability, seed: Int,
                 stream: Int, offset: Int, block: tuple[Shape, Shape] | None = None) -> None:
        _CallRecord.__init__(self, shape=shape, p=p, seed=seed, stream=stream, offset=offset,
                             block=block)
        self.words = words

    @classmethod
    def _of_checked_call(cls, words, shape, p, seed, stream, offset):
        """The record of a call whose arguments are checked and of their final types.

        For the API's one-step path, where converting them again would be most of
        what a small call costs in Python.
        """
        mask = cls.__new__(cls)
        mask.words, mask.shape, mask.p = words, shape, p
        mask.seed, mask.stream, mask.offset = seed, stream, offset
        return mask

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed words."""
        return self.words.nbytes

    def unpack(self) -> NDArray[np.bool_]:
        """The keep mask as booleans in the input's shape."""
        return unpack_mask(self.words, self.n).reshape(self.shape)

    def __repr__(self) -> str:
        return f"DropoutMask({self._fields()}, nbytes={self.nbytes})"


class GaussianNoise(_CallRecord):
    """What regenerates the noise of one `gaussian_dropout` call (the noise is not stored).

    Attributes
    ----------
    shape : tuple of int
        Shape of the input.
    n : int
        Number of elements.
    p : float
        The rate: the noise is N(1, p / (1 - p)).
    seed, stream, offset : int
        Coordinates in the Gaussian noise stream: element i uses global index
        ``offset + i``.
    origin, global_shape : tuple of int or None
        For a block of a larger array: the block's place in it (element j uses global
        index ``offset + ravel(origin + j, global_shape)``); None for a whole array.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"GaussianNoise({self._fields()})"


# What a forward call returns: the result, and the record that regenerates its mask or
# noise (None with training=False).
MaskedResult = Tuple[NDArray[Any], Optional[DropoutMask]]
NoiseResult = Tuple[NDArray[Any], Optional[GaussianNoise]]
