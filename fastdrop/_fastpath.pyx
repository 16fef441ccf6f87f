# cython: language_level=3, boundscheck=False, wraparound=False
"""The public API's check of the usual dropout call, compiled: the first step of the one-step path.

`fastdrop.dropout` calls `usual_call` before anything else; where it says yes the call
needs only its seed resolved (`fastdrop.streams`) before one kernel call allocates and
runs. It accepts a subset of what the general path's checks (`fastdrop._calls`)
accept and says no to anything else, which then takes the general path and gets its
error messages, so it cannot change what a call does, only how fast a usual one
starts. Compiled because its half-dozen tests cost more in Python than a small
array's dropout itself.
"""
import numpy as np

cimport numpy as cnp

from fastdrop.maskstream.spec import MAX_ELEMENTS

cnp.import_array()

cdef object _MAX_ELEMENTS = MAX_ELEMENTS
cdef int _NPY_HALF = np.dtype(np.float16).num  # not in Cython's numpy declarations


def usual_call(x, p, offset, bint inplace):
    """Whether ``dropout(x, p, offset=offset, inplace=inplace)`` is the usual call.

    x an ndarray (exact type), C-contiguous, aligned, float16/32/64 in native byte
    order (and writeable in place); p a float in [0, 1]; offset an int with
    0 <= offset <= 2**63 - x.size.
    """
    if type(x) is not cnp.ndarray or type(p) is not float or type(offset) is not int:
        return False
    cdef cnp.ndarray array = <cnp.ndarray>x
    cdef int kind = cnp.PyArray_TYPE(array)
    if kind != cnp.NPY_FLOAT and kind != cnp.NPY_DOUBLE and kind != _NPY_HALF:
        return False
    if not cnp.PyArray_ISCARRAY_RO(array) or not cnp.PyArray_ISNOTSWAPPED(array):
        return False
    if inplace and not cnp.PyArray_ISWRITEABLE(array):
        return False
    cdef double drop = p
    if not 0.0 <= drop <= 1.0:
        return False
    return 0 <= offset <= _MAX_ELEMENTS - cnp.PyArray_SIZE(array)
