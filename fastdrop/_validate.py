"""Argument checks shared by the public API and the reference.

Every check runs before anything is written, so bad input raises and leaves the
caller's arrays unchanged. Messages name the offending value.
"""
import math
import numbers
import operator

import numpy as np

from ._mask import DropoutMask, words_for
from .maskstream.spec import MAX_ELEMENTS, MAX_SEED, MAX_STREAM

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def check_p(p):
    """The drop probability as a float in [0, 1]."""
    if type(p) is float and 0.0 <= p <= 1.0:  # the common case, checked first for speed
        return p
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"p must be a real number in [0, 1], got {p!r}")
    value = float(p)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got p={p!r}")
    return value


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
    return check_integer(seed, "seed", 0, MAX_SEED)


def check_stream(stream):
    return check_integer(stream, "stream", 0, MAX_STREAM)


def check_offset(offset, n):
    offset = check_integer(offset, "offset", 0, MAX_ELEMENTS - 1)
    if offset + n > MAX_ELEMENTS:
        raise ValueError(f"offset + n must not exceed 2**63, got offset={offset}, n={n}")
    return offset


def check_count(n):
    return check_integer(n, "n", 0, MAX_ELEMENTS)


def _is_generator(seed):
    if type(seed) is int:
        return False
    from .generator import Generator

    return isinstance(seed, Generator)


def check_seed_stream(seed, stream):
    """Check seed (int, Generator or None) and stream without drawing a stream."""
    if seed is None or _is_generator(seed):
        if stream is not None:
            raise ValueError(f"stream={stream!r} was given without an integer seed; "
                             "pass seed too (a Generator chooses its own streams)")
        return
    check_seed(seed)
    if stream is not None:
        check_stream(stream)


def resolve_seed_stream(seed, stream):
    """(seed, stream) as ints. Call it after every other check, so a failed call takes no stream.

    seed=None draws from the default Generator, a Generator draws its next stream.
    """
    check_seed_stream(seed, stream)
    if seed is None:
        from .generator import default_generator

        seed = default_generator()
    if _is_generator(seed):
        return seed.reserve_stream()
    return check_seed(seed), 0 if stream is None else check_stream(stream)


def as_float_array(x, name):
    """x as an ndarray of float16, float32 or float64 (a TypeError for anything else)."""
    array = np.asarray(x)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float16, float32 or float64 array, got dtype {array.dtype}")
    return array


def prepare_target(x, name, inplace, out):
    """Check x and where the result goes: (x as ndarray, x if inplace, out, or None for new)."""
    if inplace and out is not None:
        raise ValueError("pass either inplace=True or out=, not both")
    if inplace and not isinstance(x, np.ndarray):
        raise TypeError(f"inplace=True needs a NumPy array for {name}, got {type(x).__name__}")
    array = as_float_array(x, name)
    if inplace:
        if not array.flags.writeable:
            raise ValueError(f"inplace=True but {name} is read-only")
        return array, array
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
        if out.dtype != array.dtype:
            raise TypeError(f"out has dtype {out.dtype}, expected {array.dtype} like {name}")
        if out.shape != array.shape:
            raise ValueError(f"out has shape {out.shape}, expected {array.shape} like {name}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        return array, out
    return array, None


def check_mask(mask, n, p):
    """(words, p) of a mask for n elements: a DropoutMask, or uint64 words with p given."""
    if isinstance(mask, DropoutMask):
        words, mask_p = mask.words, mask.p
        if mask.n != n:
            raise ValueError(f"mask is for {mask.n} elements but the gradient has {n}")
        if p is not None and check_p(p) != mask_p:
            raise ValueError(f"p={p!r} does not match the mask's p={mask_p!r}")
        p = mask_p
    else:
        words = np.asarray(mask)
        if p is None:
            raise ValueError("p is required when mask is an array of words, not a DropoutMask")
    p = check_p(p)
    if not isinstance(words, np.ndarray) or words.dtype != np.uint64 or words.ndim != 1:
        raise TypeError(f"mask words must be a 1-D uint64 array, got "
                        f"{getattr(words, 'dtype', type(words).__name__)} "
                        f"with shape {getattr(words, 'shape', None)}")
    if words.size != words_for(n):
        raise ValueError(f"mask has {words.size} words but {n} elements need {words_for(n)}")
    return words, p


def deliver(result, x, target):
    """Put a C-ordered result where the caller asked (target array or a new array)."""
    if target is None:
        return result.reshape(x.shape)
    target[...] = result.reshape(x.shape)
    return target
