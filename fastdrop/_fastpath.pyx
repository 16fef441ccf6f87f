# cython: language_level=3, boundscheck=False, wraparound=False
"""The public API's check of the usual dropout call, compiled: the first step of the one-step path.

`fastdrop.dropout` calls `usual_call` before anything else. Where it says yes the
call needs at most its stream taken from a source (`fastdrop.streams.resolve`)
before one kernel call allocates and runs. It accepts a subset of what the general
path's checks (`fastdrop._calls`, `fastdrop.streams.parse`) accept -- its key test
mirrors parse's first branch -- and says no to anything else, which then takes the
general path and gets its error messages; so it cannot change what a call does, only
how fast a usual one starts. Compiled because its tests cost more in Python than a
small array's dropout itself.
"""
import numpy as np

cimport numpy as cnp

from fastdrop._mask import DropoutMask
from fastdrop.maskstream.spec import MAX_ELEMENTS, MAX_SEED, MAX_STREAM
from fastdrop.maskstream.spec import dropout_constants, dropout_scale
from fastdrop.streams import StreamSource

cnp.import_array()

cdef object _MAX_ELEMENTS = MAX_ELEMENTS
cdef object _MAX_SEED = MAX_SEED
cdef object _MAX_STREAM = MAX_STREAM
cdef int _NPY_HALF = np.dtype(np.float16).num  # not in Cython's numpy declarations
# the last p's (T, drop_all, s) from the spec: calls repeat p (held with the GIL)
cdef double _last_p = -1.0
cdef object _last_constants = None
cdef double _last_backward_p = -1.0
cdef double _last_scale = 0.0


cdef bint _usual_array(x, bint inplace, bint bits16):
    """x an exact ndarray, C-contiguous, aligned, native float16/32/64 -- or, where
    ``bits16`` (``dtype="bfloat16"``), uint16 bfloat16 bit patterns -- writeable in place."""
    if type(x) is not cnp.ndarray:
        return False
    cdef cnp.ndarray array = <cnp.ndarray>x
    cdef int kind = cnp.PyArray_TYPE(array)
    if bits16:
        if kind != cnp.NPY_UINT16:
            return False
    elif kind != cnp.NPY_FLOAT and kind != cnp.NPY_DOUBLE and kind != _NPY_HALF:
        return False
    if not cnp.PyArray_ISCARRAY_RO(array) or not cnp.PyArray_ISNOTSWAPPED(array):
        return False
    return not inplace or cnp.PyArray_ISWRITEABLE(array)


def usual_call(x, p, seed, stream, offset, bint inplace, bint bits16=False):
    """Whether ``dropout(x, p, seed=seed, stream=stream, offset=offset, inplace=inplace)`` is usual.

    Usual: x an ndarray (exact type), C-contiguous, aligned, float16/32/64 in native
    byte order -- or, with ``bits16`` (the call's ``dtype="bfloat16"``), uint16 bfloat16
    bit patterns -- (writeable in place); p a float in [0, 1]; offset an int with
    0 <= offset <= 2**63 - x.size; seed an int in [0, 2**64) with stream None (0) or
    such an int, or seed None or a StreamSource with stream None.

    Returns
    -------
    tuple or None
        ``(T, drop_all, s, stream)`` -- T, drop_all and s from
        `fastdrop.maskstream.spec.dropout_constants`, and the stream of an int seed
        (None where a stream must be taken from a source) -- or None if the call is
        not usual.
    """
    global _last_p, _last_constants
    if type(p) is not float or type(offset) is not int or not _usual_array(x, inplace, bits16):
        return None
    cdef double drop = p
    if not 0.0 <= drop <= 1.0 or not 0 <= offset <= _MAX_ELEMENTS - cnp.PyArray_SIZE(x):
        return None
    if type(seed) is int:
        if not 0 <= seed <= _MAX_SEED:
            return None
        if stream is None:
            stream = 0
        elif type(stream) is not int or not 0 <= stream <= _MAX_STREAM:
            return None
    elif stream is not None or not (seed is None or isinstance(seed, StreamSource)):
        return None
    if drop != _last_p:
        _last_constants, _last_p = dropout_constants(p), drop
    threshold, drop_all, scale = _last_constants
    return threshold, drop_all, scale, stream


def usual_backward(grad, mask, p, bint inplace, bint bits16=False):
    """Whether ``dropout_backward(grad, mask, p=p, inplace=inplace)`` is usual.

    Usual: grad as `usual_call` takes x (``bits16``: uint16 bfloat16 bit patterns); mask
    a DropoutMask of grad's exact shape with p None, or raw words (an exact uint64
    ndarray, 1-D, C-contiguous, ceil(n/64) of them) with p a float in [0, 1].

    Returns
    -------
    tuple or None
        ``(words, s)`` -- the mask's words and s from
        `fastdrop.maskstream.spec.dropout_scale` -- or None if the call is not usual.
    """
    global _last_backward_p, _last_scale
    if not _usual_array(grad, inplace, bits16):
        return None
    if type(mask) is DropoutMask:
        if p is not None or mask.shape != grad.shape:
            return None
        words, p = mask.words, mask.p
    elif type(p) is float:
        words = mask
    else:
        return None
    if type(words) is not cnp.ndarray:
        return None
    cdef cnp.ndarray word_array = <cnp.ndarray>words
    if (cnp.PyArray_TYPE(word_array) != cnp.NPY_UINT64 or cnp.PyArray_NDIM(word_array) != 1
            or not cnp.PyArray_ISCARRAY_RO(word_array)
            or not cnp.PyArray_ISNOTSWAPPED(word_array)):
        return None
    if cnp.PyArray_SIZE(word_array) != (cnp.PyArray_SIZE(grad) + 63) // 64:
        return None
    cdef double drop = p
    if not 0.0 <= drop <= 1.0:
        return None
    if drop != _last_backward_p:
        _last_scale, _last_backward_p = dropout_scale(p), drop
    return words, _last_scale
