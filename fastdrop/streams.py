"""Stream sources: where a call's ``(seed, stream)`` comes from.

A mask is a pure function of ``(seed, stream, element index, p)``. This module decides
the first two for every call, once:

- an integer ``seed`` with an integer ``stream`` (or none: stream 0) is used as given;
- a `StreamSource` (`fastdrop.Generator` is one) hands out its seed and its next stream;
- ``seed=None`` draws from the default source, seeded from OS entropy on first use.

`parse` checks the pair without taking a stream and `take` takes it: callers check
every other argument in between, so a failed call takes no stream. Nothing here
knows arrays or kernels. Like `fastdrop._checks`, whose seed and stream checks it
uses, this file is compiled by Cython where the extension is built (``streams.pxd``
makes `parse`, `take` and `resolve` C-callable for the usual call's one step) and runs
as plain Python elsewhere.

**Processes.** After ``os.fork()`` the child's default source is a new one, seeded
from OS entropy on first use (as Python's `random` reseeds): forked workers that pass
``seed=None`` get different masks. An explicit source is a value: a fork or a pickle
copies its seed and next stream, so the copies hand out the same streams and masks.
Give each worker its own seed, or its own range of streams (``state``).
"""
import itertools
import os
import secrets
import sysconfig
import threading

from ._checks import check_seed, check_stream
from .maskstream.spec import MAX_STREAM

__all__ = ["StreamSource", "default_source", "parse", "resolve", "take"]

# Where the GIL is gone, next() on a shared counter needs a lock of its own.
_FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


class StreamSource:
    """A fixed 64-bit seed and a counter of streams: call k gets stream k.

    Parameters
    ----------
    seed : int, optional
        64-bit key, in [0, 2**64). ``None`` draws one from the OS entropy pool.

    Notes
    -----
    **Stream guarantees.** The k-th stream handed out (counting from 0 after
    construction or after ``state`` was set) is ``k``. Streams are never reused:
    after ``2**64`` of them the source raises instead of repeating one.

    **Threads.** Taking a stream is atomic (one ``next()`` of an
    `itertools.count` under the GIL, a lock where there is none), so one source
    can be shared by several Python threads; each call gets a distinct stream.
    Which thread gets which stream depends on scheduling.

    **State.** ``state`` is a dict ``{"seed": int, "stream": int}`` (the next stream
    to hand out); assigning it back resumes the sequence exactly. Pickling and
    copying keep the state.
    """

    __slots__ = ("_seed", "_streams", "_lock")

    def __init__(self, seed=None):
        self._seed = secrets.randbits(64) if seed is None else check_seed(seed)
        self._streams = itertools.count()
        self._lock = threading.Lock()  # for state changes (and for next() without a GIL)

    @property
    def seed(self):
        """The source's 64-bit key."""
        return self._seed

    def reserve_stream(self):
        """Take the next stream.

        Returns
        -------
        tuple of int
            ``(seed, stream)`` for one call.

        Raises
        ------
        RuntimeError
            If all 2**64 streams have been handed out.
        """
        if _FREE_THREADED:
            with self._lock:
                stream = next(self._streams)
        else:
            stream = next(self._streams)
        if stream > MAX_STREAM:
            raise RuntimeError(f"{type(self).__name__}(seed={self._seed}) has used all "
                               "2**64 streams")
        return self._seed, stream

    def _next_stream(self):
        """The next stream to hand out, without taking it."""
        return int(repr(self._streams)[len("count("):-1])

    @property
    def state(self):
        """``{"seed": int, "stream": int}``; assign it to restore the source."""
        with self._lock:
            return {"seed": self._seed, "stream": min(self._next_stream(), MAX_STREAM + 1)}

    @state.setter
    def state(self, value):
        try:
            seed, stream = value["seed"], value["stream"]
        except (TypeError, KeyError):
            raise ValueError(
                f"state must be a dict with 'seed' and 'stream', got {value!r}") from None
        seed = check_seed(seed)
        stream = check_stream(stream)
        with self._lock:
            self._seed, self._streams = seed, itertools.count(stream)

    def __getstate__(self):
        return self.state

    def __setstate__(self, state):
        self._lock = threading.Lock()
        self._seed, self._streams = 0, itertools.count()
        self.state = state

    def __repr__(self):
        return f"{type(self).__name__}(seed={self._seed}, next stream={self._next_stream()})"


_default = None
_default_lock = threading.Lock()


def default_source():
    """The source ``seed=None`` draws from, seeded from OS entropy on first use.

    Returns
    -------
    StreamSource
        The same object on every call in a process; a forked child gets a new one.
    """
    source = _default
    if source is not None:
        return source
    return _make_default()


def _make_default():
    global _default
    with _default_lock:
        if _default is None:
            _default = StreamSource()
        return _default


def _forget_default_after_fork():
    global _default, _default_lock
    _default, _default_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_default_after_fork)


def parse(seed, stream):
    """Check ``(seed, stream)`` without taking a stream.

    Parameters
    ----------
    seed : int, StreamSource or None
        A 64-bit key, a source, or None for the default source.
    stream : int or None
        A 64-bit stream with an integer seed (None means 0); must be None with a
        source or ``seed=None``.

    Returns
    -------
    tuple of int or StreamSource
        ``(seed, stream)`` as ints, or the source to take a stream from with `take`.

    Raises
    ------
    TypeError
        seed or stream is not an integer (bool and float included).
    ValueError
        seed or stream outside [0, 2**64); a stream given with a source or None.
    """
    if seed is None or isinstance(seed, StreamSource):
        if stream is not None:
            raise ValueError(f"stream={stream!r} was given without an integer seed; "
                             "pass seed too (a Generator chooses its own streams)")
        return default_source() if seed is None else seed
    return check_seed(seed), 0 if stream is None else check_stream(stream)


def take(parsed):
    """``(seed, stream)`` of a `parse` result, taking a stream from a source.

    Call it after every other argument has been checked, so a failed call takes no
    stream.
    """
    if type(parsed) is tuple:
        return parsed
    return parsed.reserve_stream()


def resolve(seed, stream):
    """`parse` then `take`: ``(seed, stream)`` as ints, a stream taken from a source.

    For callers that have checked every other argument already.
    """
    return take(parse(seed, stream))
