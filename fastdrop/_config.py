"""Run-time configuration: thread count and the sizes that decide how kernels split work.

Defaults:

- threads: ``FASTDROP_NUM_THREADS`` if set, else the CPUs this process may run on.
- ``MIN_ELEMENTS_PER_THREAD``: a kernel uses at most n // 2**17 threads, so each
  gets at least 2**17 elements (docs/development/kernels.md). Below that, waking a thread
  costs more than it saves, and on busy cores -- a BLAS pool spinning between matrix
  products in a training step -- a woken thread can wait milliseconds for a core.
- ``SERIAL_ELEMENTS``: arrays with fewer elements run on one thread, no parallel region.
- ``NUMBA_CACHE``: whether the Numba backend caches its compiled kernels on disk
  (Numba's ``cache=True``), so later processes skip the JIT warm-up. On by default;
  ``FASTDROP_NUMBA_CACHE=0`` turns it off (read once, when the Numba backend is
  first imported), e.g. for a read-only install or to rule out a stale cache.
- ``FASTDROP_QUIET``: set to 1, the Numba backend says nothing before it compiles its
  kernels for a new type (by default one line on stderr, once per type and process,
  since a compilation takes seconds to a minute; loads from the cache say nothing).
"""
import contextlib
import operator
import os
import threading
import warnings
from typing import Iterator, SupportsIndex

MIN_ELEMENTS_PER_THREAD = 1 << 17
SERIAL_ELEMENTS = 2 * MIN_ELEMENTS_PER_THREAD
ENV_THREADS = "FASTDROP_NUM_THREADS"
ENV_NUMBA_CACHE = "FASTDROP_NUMBA_CACHE"
ENV_QUIET = "FASTDROP_QUIET"
NUMBA_CACHE = os.environ.get(ENV_NUMBA_CACHE, "1").strip().lower() not in ("0", "false", "no",
                                                                           "off")


def available_cpus():
    """Number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _threads_from_environment():
    text = os.environ.get(ENV_THREADS)
    if text is None or not text.strip():
        return available_cpus()
    try:
        threads = int(text)
        if threads < 1:
            raise ValueError
    except ValueError:
        warnings.warn(
            f"{ENV_THREADS}={text!r} is not a positive integer; using {available_cpus()} threads",
            RuntimeWarning, stacklevel=2,
        )
        return available_cpus()
    return threads


class _ThreadSettings(threading.local):
    # a class attribute, so a thread that never set its own reads it without an exception
    threads = _threads_from_environment()


_state = _ThreadSettings()


def set_num_threads(n: SupportsIndex) -> None:
    """Set how many threads fastdrop's kernels use (in the calling Python thread).

    Parameters
    ----------
    n : int
        Number of threads, at least 1. Backends cap it at the threads they were
        started with (Numba: ``NUMBA_NUM_THREADS``).

    Raises
    ------
    TypeError
        If ``n`` is not an integer.
    ValueError
        If ``n`` < 1.

    Notes
    -----
    The setting is per Python thread, like Numba's; threads that never call it use
    ``FASTDROP_NUM_THREADS`` or, without it, all available CPUs. Masks and outputs
    do not depend on the thread count.
    """
    _state.threads = _check_threads(n)


def _check_threads(n):
    """n as a thread count (an int >= 1), or a TypeError/ValueError naming it."""
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"number of threads must be an integer, got {n!r}") from None
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n!r}")
    return n


def get_num_threads() -> int:
    """Number of threads fastdrop's kernels use in the calling Python thread.

    Returns
    -------
    int
        The value of the last ``set_num_threads`` in this thread, else the default
        from ``FASTDROP_NUM_THREADS`` or the number of available CPUs.
    """
    return _state.threads


@contextlib.contextmanager
def num_threads(n: SupportsIndex) -> Iterator[int]:
    """Run fastdrop's kernels on ``n`` threads inside a ``with`` block, in this Python thread.

    The setting before the block is restored when it ends, also on an exception.
    The integrations use it to follow the host's pool: one thread per task under
    Dask's schedulers, ``torch.get_num_threads()`` under PyTorch.

    Parameters
    ----------
    n : int
        Number of threads, at least 1.

    Raises
    ------
    TypeError
        If ``n`` is not an integer.
    ValueError
        If ``n`` < 1.

    Examples
    --------
    >>> import fastdrop
    >>> with fastdrop.num_threads(1):
    ...     fastdrop.get_num_threads()
    1
    """
    threads = _check_threads(n)
    had_own = "threads" in _state.__dict__
    before = _state.threads
    _state.threads = threads
    try:
        yield threads
    finally:
        if had_own:
            _state.threads = before
        else:
            del _state.threads


def threads_were_set():
    """Whether this Python thread's count was chosen: `set_num_threads` or ``FASTDROP_NUM_THREADS``.

    An integration follows its host's thread pool unless the user chose fastdrop's own.
    """
    return "threads" in _state.__dict__ or bool(os.environ.get(ENV_THREADS, "").strip())
