"""The checks of a call's scalars: p, seed, stream, offset and the bool flags.

One source for both of the API's paths: the general one (`fastdrop._calls`,
`fastdrop.streams`) calls these functions from Python, and the usual call's one step
(`fastdrop._fastpath`) calls them from C, so the two raise the same errors by
construction. Where the Cython extension is built, setup.py compiles this file as it
is (``_checks.pxd`` makes the functions C-callable); elsewhere it runs as plain Python.
Rebuild after editing it: an in-place build shadows the .py.

Each check returns the value in the type the layers below take (a float p, an int)
or raises TypeError/ValueError naming the offending value.
"""
import math
import numbers
import operator

import numpy as np

from .maskstream.spec import MAX_ELEMENTS, MAX_SEED, MAX_STREAM


def check_p(p):
    """The drop probability as a float in [0, 1]."""
    if type(p) is float and 0.0 <= p <= 1.0:  # the common case, checked first for speed
        return p
    if (isinstance(p, (bool, np.bool_))
            or not isinstance(p, (numbers.Real, np.floating, np.integer))):
        raise TypeError(f"p must be a real number in [0, 1], got {p!r}")
    value = float(p)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got p={p!r}")
    return value


def check_bool(value, name):
    """A flag (``training``, ``inplace``): True or False, a Python bool or a numpy.bool_.

    Anything else -- 1, "no", None -- is a TypeError, as PyTorch refuses it: a truthy
    value taken as True would, say, write in place where the caller meant a string
    option.
    """
    if value is True or value is False:  # the common case, checked first
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def check_integer(value, name, low, high):
    """An integer in [low, high] (Python int, NumPy integer; not bool, not float)."""
    if type(value) is int and low <= value <= high:  # the common case, checked first
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if not low <= result <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {name}={result}")
    return result


def check_seed(seed):
    """A 64-bit seed: an integer in [0, 2**64)."""
    return check_integer(seed, "seed", 0, MAX_SEED)


def check_stream(stream):
    """A 64-bit stream: an integer in [0, 2**64)."""
    return check_integer(stream, "stream", 0, MAX_STREAM)


def check_offset(offset, n):
    """The global index of a call's first element, so that offset + n <= 2**63."""
    # the common case; offset < 2**63 too, which offset + n alone misses when n = 0
    if type(offset) is int and 0 <= offset < MAX_ELEMENTS and offset + n <= MAX_ELEMENTS:
        return offset
    offset = check_integer(offset, "offset", 0, MAX_ELEMENTS - 1)
    if offset + n > MAX_ELEMENTS:
        raise ValueError(f"offset + n must not exceed 2**63, got offset={offset}, n={n}")
    return offset
