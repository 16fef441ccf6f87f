# cython: language_level=3, boundscheck=False, wraparound=False
"""The usual call in one kernel step: the one body `dropout` and `dropout_backward` try first.

A call is usual when its arrays need no layout work: x (or grad) an exact ndarray,
C-contiguous, aligned, native float16/32/64 -- or, with ``dtype="bfloat16"``, uint16
bfloat16 bit patterns -- and writeable in place, with ``inplace`` True or False itself
(not a value a bool check must judge); the API sends only calls with no
``out=``, noise shape or block here. For such a call the body runs the general path's
own checks of its scalars (`fastdrop._checks` and `fastdrop.streams`, compiled with
this extension), in the general path's order, so a bad value raises the same
error; then it takes the stream and makes one kernel call. Any other call is declined
(None), untouched, and takes the general path (`fastdrop._calls`). Compiled because
these steps in Python cost more than a small array's dropout; without the extension
every call takes the general path.
"""
import numpy as np

cimport numpy as cnp

from fastdrop._checks cimport check_offset, check_p
from fastdrop.kernels.records cimport MaskParams
from fastdrop.streams cimport resolve

from fastdrop._mask import DropoutMask
from fastdrop.maskstream.spec import dropout_constants, dropout_scale

cnp.import_array()

cdef int _NPY_HALF = np.dtype(np.float16).num  # not in Cython's numpy declarations
cdef object _mask_of_checked_call = DropoutMask._of_checked_call
# (p, what the spec derives from it) of the last call: calls repeat p; one reference,
# so a reader never pairs one p with another's constants
cdef tuple _last_constants = (None, None)
cdef tuple _last_scale = (None, None)


cdef inline bint _usual_flag(flag):
    """``flag`` is True or False itself; any other value (a numpy.bool_, a wrong type) is
    left to the general path, whose `fastdrop._checks.check_bool` takes or refuses it."""
    return flag is True or flag is False


cdef bint _usual_array(x, bint inplace, dtype):
    """x needs no layout work: see the module docstring (``dtype`` the call's ``dtype=``)."""
    if type(x) is not cnp.ndarray:
        return False
    cdef cnp.ndarray array = <cnp.ndarray>x
    cdef int kind = cnp.PyArray_TYPE(array)
    if dtype is None:
        if kind != cnp.NPY_FLOAT and kind != cnp.NPY_DOUBLE and kind != _NPY_HALF:
            return False
    elif type(dtype) is not str or dtype != "bfloat16" or kind != cnp.NPY_UINT16:
        return False
    if not cnp.PyArray_ISCARRAY_RO(array) or not cnp.PyArray_ISNOTSWAPPED(array):
        return False
    return not inplace or cnp.PyArray_ISWRITEABLE(array)


cdef bint _usual_words(words, Py_ssize_t n):
    """Raw keep bits the kernel can read as they are: n elements' uint64 words, 1-D, C order."""
    if type(words) is not cnp.ndarray:
        return False
    cdef cnp.ndarray array = <cnp.ndarray>words
    return (cnp.PyArray_TYPE(array) == cnp.NPY_UINT64 and cnp.PyArray_NDIM(array) == 1
            and cnp.PyArray_ISCARRAY_RO(array) and cnp.PyArray_ISNOTSWAPPED(array)
            and cnp.PyArray_SIZE(array) == (n + 63) // 64)


def usual_dropout(kernels, x, p, seed, stream, offset, inplace, dtype, int threads):
    """``dropout(x, p, seed=seed, stream=stream, offset=offset, inplace=inplace, dtype=dtype)``.

    In one call of ``kernels.dropout_plain``, or None (nothing checked, nothing taken)
    where x is not usual.

    Returns
    -------
    tuple or None
        ``(y, mask)`` as `fastdrop.dropout` returns them, or None.
    """
    global _last_constants
    if not _usual_flag(inplace) or not _usual_array(x, inplace, dtype):
        return None
    p = check_p(p)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>x)
    offset = check_offset(offset, n)
    seed, stream = resolve(seed, stream)
    last = _last_constants
    if last[0] != p:
        last = _last_constants = (p, dropout_constants(p))
    threshold, drop_all, scale = last[1]
    y, words = kernels.dropout_plain(
        x, inplace, scale, MaskParams(seed, stream, threshold, drop_all, offset, n), threads)
    return y, _mask_of_checked_call(words, x.shape, p, seed, stream, offset)


def usual_backward(kernels, grad, mask, p, inplace, dtype, int threads):
    """``dropout_backward(grad, mask, p=p, inplace=inplace, dtype=dtype)``.

    In one call of ``kernels.scale_by_mask``, or None (nothing checked) where the call
    is not usual: grad as `usual_dropout` takes x, and a DropoutMask of grad's shape
    (p None) or raw words with p, whose words the kernel can read as they are.

    Returns
    -------
    ndarray or None
        The gradient as `fastdrop.dropout_backward` returns it, or None.
    """
    global _last_scale
    if not _usual_flag(inplace) or not _usual_array(grad, inplace, dtype):
        return None
    if type(mask) is DropoutMask:
        if p is not None or mask.shape != grad.shape:
            return None
        words, p = mask.words, mask.p
    elif p is None:
        return None
    else:
        words = mask
    if not _usual_words(words, cnp.PyArray_SIZE(<cnp.ndarray>grad)):
        return None
    p = check_p(p)
    last = _last_scale
    if last[0] != p:
        last = _last_scale = (p, dropout_scale(p))
    flat = grad.reshape(-1)
    result = flat if inplace else np.empty_like(flat)
    kernels.scale_by_mask(flat, result, words, last[1], threads)
    return grad if inplace else result.reshape(grad.shape)
