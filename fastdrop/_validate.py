"""Checks of argument values, shared by the public API and the reference.

Each check returns the value in the type the layers below take (a float p, an int
offset, an ndarray) or raises TypeError/ValueError naming the offending value; the
scalar checks (p, seed, stream, offset) live in `fastdrop._checks`. The
callers (`fastdrop._calls`) run them before anything is written or a stream taken,
so bad input leaves the caller's arrays and generators unchanged.
"""
import math
import numbers
import sys

import numpy as np

from ._checks import check_integer, check_p
from .maskstream.spec import MAX_ELEMENTS, dropout_scale

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def check_count(n):
    """A number of elements: an integer in [0, 2**63]."""
    return check_integer(n, "n", 0, MAX_ELEMENTS)


def bfloat16_dtype():
    """NumPy's dtype for ``ml_dtypes.bfloat16``, importing ml_dtypes (an optional dependency).

    Raises
    ------
    ImportError
        Without ml_dtypes, saying which extra installs it.
    """
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("bfloat16 arrays need the ml_dtypes package: pip install "
                          "'fastdrop-cpu[bf16]' (or pass uint16 bit patterns with "
                          "dtype='bfloat16', which needs nothing more)") from None
    return np.dtype(ml_dtypes.bfloat16)


def is_bfloat16(dtype):
    """Whether ``dtype`` is ml_dtypes' bfloat16.

    Checked without importing ml_dtypes: no array can be one before.
    """
    ml_dtypes = sys.modules.get("ml_dtypes")
    return ml_dtypes is not None and dtype == np.dtype(ml_dtypes.bfloat16)


def check_dtype_request(dtype):
    """The ``dtype=`` argument: None, or "bfloat16" (the string, ml_dtypes.bfloat16 or its dtype).

    Only uint16 arrays take it: their bits are read as bfloat16. Every other dtype
    comes from the array itself.
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype == "bfloat16":
            return "bfloat16"
    else:
        try:
            if is_bfloat16(np.dtype(dtype)):
                return "bfloat16"
        except TypeError:
            pass
    raise TypeError(f"dtype= takes only 'bfloat16' (uint16 arrays read as bfloat16 bit "
                    f"patterns), got dtype={dtype!r}; other dtypes come from the array itself")


def _dtype_error(name, dtype, request):
    if request == "bfloat16":
        return TypeError(f"dtype='bfloat16' reads a uint16 array as bfloat16 bit patterns; "
                         f"{name} has dtype {dtype}")
    if dtype == np.uint16:
        return TypeError(f"{name} must be a float16, float32, float64 or bfloat16 array, got "
                         f"dtype uint16 (pass dtype='bfloat16' to read uint16 as bfloat16 bits)")
    return TypeError(f"{name} must be a float16, float32, float64 or bfloat16 array, got dtype "
                     f"{dtype}")


def element_array(x, name, request=None):
    """x as an array of a dtype fastdrop takes, and that array as kernels see it.

    Returns ``(array, kernel_array)``: ``array`` is x itself when it is an ndarray
    (subclasses kept, so in place returns the caller's object), else ``np.asarray(x)``;
    ``kernel_array`` is a native float16/32/64 array sharing its memory, a uint16 view
    for bfloat16 (``ml_dtypes.bfloat16``, or uint16 with ``request == "bfloat16"``),
    or a native-order copy of byte-swapped floats. ``request`` is `check_dtype_request`'s.
    """
    if type(x) is np.ndarray and x.dtype in FLOAT_DTYPES and request is None:
        return x, x  # the common case, checked first
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray; fastdrop would ignore its mask: "
                        f"pass {name}.data (masked entries are dropped out like the others) or "
                        f"{name}.filled(value)")
    array = x if isinstance(x, np.ndarray) else np.asarray(x)
    # kernels see no subclass
    plain = array if type(array) is np.ndarray else array.view(np.ndarray)
    dtype = array.dtype
    if request == "bfloat16":
        if dtype == np.uint16 and dtype.isnative:
            return array, plain
        if is_bfloat16(dtype):
            return array, plain.view(np.uint16)
    elif dtype in FLOAT_DTYPES:
        return array, plain
    elif is_bfloat16(dtype):
        return array, plain.view(np.uint16)
    elif dtype.kind == "f" and dtype.itemsize in (2, 4, 8) and not dtype.isnative:
        return array, plain.astype(dtype.newbyteorder("="))  # computed in native order
    raise _dtype_error(name, dtype, request)


def check_out(out, array, name):
    """The ``out=`` array: an ndarray of x's dtype and shape, writeable, not masked."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if isinstance(out, np.ma.MaskedArray):
        raise TypeError("out is a numpy.ma.MaskedArray; pass out.data")
    if out.dtype != array.dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {array.dtype} like {name}")
    if out.shape != array.shape:
        raise ValueError(f"out has shape {out.shape}, expected {array.shape} like {name}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def shape_size(shape):
    """Number of elements of an array of ``shape``."""
    return math.prod(shape)


def _axis(axis, ndim, name):
    """An axis index in [0, ndim) from an integer in [-ndim, ndim)."""
    axis = check_integer(axis, name, -(2**63), 2**63 - 1)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
    return axis % ndim


def check_noise_shape(shape, noise_shape, broadcast_dims):
    """The mask's shape for an array of ``shape``.

    It is ``shape`` itself, or the shape ``noise_shape``/``broadcast_dims`` gives.

    ``noise_shape`` follows NumPy broadcasting (aligned on the right, each entry 1 or
    equal to x's; missing leading entries are 1); ``broadcast_dims`` lists the axes
    that share one mask element. The result has x's number of dimensions.
    """
    if noise_shape is not None and broadcast_dims is not None:
        raise ValueError("pass either noise_shape or broadcast_dims, not both")
    ndim = len(shape)
    if broadcast_dims is not None:
        dims = ((broadcast_dims,) if isinstance(broadcast_dims, (int, np.integer))
                else broadcast_dims)
        try:
            axes = [_axis(axis, ndim, "broadcast_dims") for axis in dims]
        except TypeError:
            raise TypeError(f"broadcast_dims must be an integer or a sequence of integers, "
                            f"got {broadcast_dims!r}") from None
        if len(set(axes)) != len(axes):
            raise ValueError(f"broadcast_dims={broadcast_dims!r} repeats an axis")
        return tuple(1 if axis in axes else length for axis, length in enumerate(shape))
    if noise_shape is None:
        return tuple(shape)
    try:
        entries = tuple(check_integer(length, "noise_shape entry", 0, 2**63 - 1)
                        for length in noise_shape)
    except TypeError:
        raise TypeError(
            f"noise_shape must be a sequence of integers, got {noise_shape!r}") from None
    padded = (1,) * (ndim - len(entries)) + entries
    if len(entries) > ndim or any(m != 1 and m != length for m, length in zip(padded, shape)):
        raise ValueError(f"noise_shape={tuple(noise_shape)!r} does not broadcast to x's shape "
                         f"{tuple(shape)!r}: each entry must be 1 or equal x's, aligned on the "
                         "right")
    return padded


def check_block(shape, origin, global_shape):
    """A block of a larger C-order array: ``(origin, global_shape)`` as int tuples, or None.

    ``origin`` (where the block's first element sits) and ``global_shape`` come
    together or not at all; both have the block's number of dimensions, and the block
    lies inside the global array: ``0 <= origin[d]`` and ``origin[d] + shape[d] <=
    global_shape[d]``. The global array must fit the index limit from ``offset``.
    """
    if origin is None and global_shape is None:
        return None
    if origin is None or global_shape is None:
        raise ValueError("pass origin and global_shape together (the block's place in the "
                         f"global array), got origin={origin!r}, global_shape={global_shape!r}")
    try:
        origin = tuple(check_integer(value, "origin entry", 0, MAX_ELEMENTS) for value in origin)
        global_shape = tuple(check_integer(value, "global_shape entry", 0, MAX_ELEMENTS)
                             for value in global_shape)
    except TypeError:
        raise TypeError(f"origin and global_shape must be sequences of integers, got "
                        f"origin={origin!r}, global_shape={global_shape!r}") from None
    shape = tuple(shape)
    if not len(origin) == len(global_shape) == len(shape):
        raise ValueError(f"origin={origin!r} and global_shape={global_shape!r} need one entry "
                         f"per dimension of the block, of shape {shape!r}")
    if any(start + extent > total for start, extent, total in zip(origin, shape, global_shape)):
        raise ValueError(f"a block of shape {shape!r} at origin={origin!r} does not fit in "
                         f"global_shape={global_shape!r}")
    return origin, global_shape


def channel_noise_shape(shape, channel_axis, batch_axis):
    """Mask shape for channel dropout: one mask element per (batch item, channel)."""
    ndim = len(shape)
    needed = 2 if batch_axis is None else 3
    if ndim < needed:
        raise ValueError(
            f"channel dropout needs a channel axis{'' if batch_axis is None else ', a batch axis'} "
            f"and at least one axis to share each channel's mask over, so {needed} or more "
            f"dimensions; x has shape {tuple(shape)!r} (pass batch_axis=None for unbatched "
            f"input, or use dropout for per-element masks)")
    channel = _axis(channel_axis, ndim, "channel_axis")
    batch = None if batch_axis is None else _axis(batch_axis, ndim, "batch_axis")
    if batch == channel:
        raise ValueError(
            f"batch_axis={batch_axis} and channel_axis={channel_axis} are the same axis")
    kept_axes = {channel} if batch is None else {channel, batch}
    return tuple(length if axis in kept_axes else 1 for axis, length in enumerate(shape))


def check_scale(scale, p):
    """The multiplier of kept elements: 1/(1-p) by default, else a finite real number."""
    if scale is None:
        return dropout_scale(p)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (numbers.Real, np.floating,
                                                                     np.integer)):
        raise TypeError(f"scale must be a real number, got {scale!r}")
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"scale must be finite, got scale={scale!r}")
    return value


def check_gaussian_p(p):
    """p for Gaussian dropout: [0, 1) (the noise variance p/(1-p) is infinite at 1)."""
    p = check_p(p)
    if p == 1.0:
        raise ValueError("gaussian_dropout needs p < 1: the noise variance p/(1-p) is infinite "
                         "at p=1.0")
    return p


def check_weight(weight, dtype=None):
    """A weight array for DropConnect: float, at least 1-D."""
    array = element_array(weight, "weight", check_dtype_request(dtype))[0]
    if array.ndim == 0:
        raise ValueError("dropconnect needs a weight array with at least one dimension, "
                         "got a 0-d array")
    return array
