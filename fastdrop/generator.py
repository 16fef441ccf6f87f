"""Generator: hands out (seed, stream) pairs so every call gets a fresh, reproducible mask."""
import secrets
import threading

from ._validate import check_seed, check_stream
from .maskstream.spec import MAX_STREAM


class Generator:
    """A source of dropout masks: one fixed seed, a fresh stream per call.

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
    split into chunks. Streams are never reused: ``2**64`` calls exhaust a
    generator, after which it raises.

    **Threads.** Reserving a stream takes a lock, so one Generator can be shared
    by several Python threads; each call gets a distinct stream. Which thread
    gets which stream depends on scheduling.

    **State.** ``state`` is a dict ``{"seed": int, "stream": int}`` (the next
    stream to hand out); assigning it back resumes the sequence exactly.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> gen = fastdrop.Generator(42)
    >>> y1, m1 = gen.dropout(np.ones(8, np.float32), 0.5)
    >>> y2, m2 = gen.dropout(np.ones(8, np.float32), 0.5)
    >>> (m1.stream, m2.stream)
    (0, 1)
    """

    def __init__(self, seed=None):
        self._seed = secrets.randbits(64) if seed is None else check_seed(seed)
        self._next_stream = 0
        self._lock = threading.Lock()

    @property
    def seed(self):
        """The generator's 64-bit key."""
        return self._seed

    def reserve_stream(self):
        """Take the next stream: returns ``(seed, stream)`` for one call."""
        with self._lock:
            stream = self._next_stream
            if stream > MAX_STREAM:
                raise RuntimeError(f"Generator(seed={self._seed}) has used all 2**64 streams")
            self._next_stream = stream + 1
        return self._seed, stream

    @property
    def state(self):
        """``{"seed": int, "stream": int}``; assign it to restore the generator."""
        with self._lock:
            return {"seed": self._seed, "stream": self._next_stream}

    @state.setter
    def state(self, value):
        try:
            seed, stream = value["seed"], value["stream"]
        except (TypeError, KeyError):
            raise ValueError(f"state must be a dict with 'seed' and 'stream', got {value!r}") from None
        seed = check_seed(seed)
        stream = check_stream(stream)
        with self._lock:
            self._seed, self._next_stream = seed, stream

    def __getstate__(self):
        return self.state

    def __setstate__(self, state):
        self._lock = threading.Lock()
        self._seed, self._next_stream = 0, 0
        self.state = state

    def dropout(self, x, p=0.5, **kwargs):
        """``fastdrop.dropout`` with this generator's seed and its next stream.

        Keyword arguments are those of `fastdrop.dropout` other than seed and stream.
        The stream is taken only if every argument is valid.
        """
        from ._api import dropout

        return dropout(x, p, seed=self, **kwargs)

    def bernoulli_mask(self, n, p, **kwargs):
        """``fastdrop.bernoulli_mask`` with this generator's seed and its next stream."""
        from ._api import bernoulli_mask

        return bernoulli_mask(n, p, seed=self, **kwargs)

    def __repr__(self):
        return f"Generator(seed={self._seed}, next stream={self._next_stream})"


_default = None
_default_lock = threading.Lock()


def default_generator():
    """The module's Generator used when ``seed=None``, seeded from OS entropy on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Generator()
        return _default
