"""Generator: a stream source with the public functions as methods."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _api
from ._mask import MaskedResult, NoiseResult
from ._typing import ArrayLike, Int, NDArray, Probability, Shape
from .streams import StreamSource, default_source

__all__ = ["Generator", "default_generator"]


class Generator(StreamSource):
    """A source of dropout masks: one fixed seed, a fresh stream per call.

    Pass it as ``seed=`` to any function that draws a mask or noise, or call the
    same functions as its methods (``gen.dropout(x, p)`` is
    ``fastdrop.dropout(x, p, seed=gen)``).

    Parameters
    ----------
    seed : int, optional
        64-bit key, in [0, 2**64). ``None`` draws one from the OS entropy pool.

    Notes
    -----
    **Stream guarantees.** Call k (counting from 0 after construction or after the
    state was set) uses stream ``k``; its mask is a pure function of
    ``(seed, stream, element index, p)`` as specified in docs/mask-stream.md, so
    it does not depend on the backend, the thread count, or how the array is
    split into chunks. A stream is taken only once every argument of the call has
    been checked, so a failed call takes none. Streams are never reused: ``2**64``
    calls exhaust a generator, after which it raises.

    **Threads.** Reserving a stream takes a lock, so one Generator can be shared
    by several Python threads; each call gets a distinct stream. Which thread
    gets which stream depends on scheduling.

    **State, pickling and fork.** ``state`` is a dict ``{"seed": int, "stream": int}``
    (the next stream to hand out); assigning it back resumes the sequence
    exactly. A pickled or forked copy continues from the same state, so it hands
    out the same streams as the original: give each worker its own seed.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> gen = fastdrop.Generator(42)
    >>> y1, m1 = gen.dropout(np.ones(8, np.float32), 0.5)
    >>> y2, m2 = fastdrop.dropout(np.ones(8, np.float32), 0.5, seed=gen)
    >>> (m1.stream, m2.stream)
    (0, 1)
    """

    __slots__ = ()

    def dropout(self, x: ArrayLike, p: Probability = 0.5, **options: Any) -> MaskedResult:
        """`fastdrop.dropout` with this generator's seed and its next stream."""
        if not options:  # a call with **options to unpack adds ~15% to a small call
            return _api.dropout(x, p, seed=self)
        return _api.dropout(x, p, seed=self, **options)

    def channel_dropout(self, x: ArrayLike, p: Probability = 0.5, **options: Any) -> MaskedResult:
        """`fastdrop.channel_dropout` with this generator's seed and its next stream."""
        return _api.channel_dropout(x, p, seed=self, **options)

    def alpha_dropout(self, x: ArrayLike, p: Probability = 0.5, **options: Any) -> MaskedResult:
        """`fastdrop.alpha_dropout` with this generator's seed and its next stream."""
        return _api.alpha_dropout(x, p, seed=self, **options)

    def feature_alpha_dropout(self, x: ArrayLike, p: Probability = 0.5,
                              **options: Any) -> MaskedResult:
        """`fastdrop.feature_alpha_dropout` with this generator's seed and its next stream."""
        return _api.feature_alpha_dropout(x, p, seed=self, **options)

    def gaussian_dropout(self, x: ArrayLike, p: Probability = 0.5, **options: Any) -> NoiseResult:
        """`fastdrop.gaussian_dropout` with this generator's seed and its next stream."""
        return _api.gaussian_dropout(x, p, seed=self, **options)

    def dropconnect(self, weight: ArrayLike, p: Probability = 0.5, **options: Any) -> MaskedResult:
        """`fastdrop.dropconnect` with this generator's seed and its next stream."""
        return _api.dropconnect(weight, p, seed=self, **options)

    def bernoulli_mask(self, n: Int | Shape, p: Probability, **options: Any) -> NDArray[np.uint64]:
        """`fastdrop.bernoulli_mask` with this generator's seed and its next stream."""
        return _api.bernoulli_mask(n, p, seed=self, **options)

    def gaussian_noise(self, n: Int | Shape, p: Probability, **options: Any) -> NDArray[np.float64]:
        """`fastdrop.gaussian_noise` with this generator's seed and its next stream."""
        return _api.gaussian_noise(n, p, seed=self, **options)


def default_generator() -> StreamSource:
    """The stream source used when ``seed=None``, seeded from OS entropy on first use.

    Returns
    -------
    fastdrop.streams.StreamSource
        The default source: ``seed``, ``state`` and ``reserve_stream`` as on a
        `Generator` (which is a StreamSource with method shortcuts). It is the
        same object on every call; after ``os.fork()`` the child gets a new one.
    """
    return default_source()
