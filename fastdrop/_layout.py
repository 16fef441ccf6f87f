"""How arrays of any layout reach kernels that take 1-D C-contiguous arrays, and come back.

Kernels see flat C-ordered memory. C-contiguous arrays go as they are (no copy, in
place when source and target are the same array); other layouts go through a
C-ordered copy, so every layout gives the values of its C-contiguous copy.
"""
import numpy as np

def deliver(result, x, target):
    """Put a C-ordered result where the caller asked: ``target``, or a new array of x's shape."""
    if target is None:
        return result.reshape(x.shape)
    target[...] = result.reshape(x.shape)
    return target


def elementwise(x, target, kernel, *arguments):
    """Call ``kernel(source, result, *arguments)`` on 1-D C-contiguous arrays; deliver the result.

    ``target`` is x (in place), an ``out`` array, or None (a new array).
    """
    contiguous = x.flags.c_contiguous
    if target is x and contiguous:  # in place on a C-contiguous array: the common case
        flat = x.reshape(-1)
        kernel(flat, flat, *arguments)
        return x
    source = x.reshape(-1) if contiguous else np.ascontiguousarray(x).reshape(-1)
    if target is not None and target is not x and np.may_share_memory(x, target):
        source = source.copy()  # partial overlap: read from a private copy
    if target is not None and target.flags.c_contiguous:
        kernel(source, target.reshape(-1), *arguments)
        return target
    if target is not None and not contiguous and target is x:
        kernel(source, source, *arguments)  # source is already a private C-ordered copy of x
        return deliver(source, x, target)
    result = np.empty(x.size, dtype=x.dtype)
    kernel(source, result, *arguments)
    return deliver(result, x, target)


def broadcast_layout(shape, mask_shape):
    """The kernels' view of a mask stretched over an array: (sizes, mask_strides) as int64.

    Axes of length 1 are dropped and neighbouring axes of the same kind (mask varies
    along them, or is shared) are merged, so the last axis is the longest run of
    elements that read either consecutive mask bits (stride 1) or one bit (stride 0).
    """
    merged = []  # [length, mask varies along it]
    for length, mask_length in zip(shape, mask_shape):
        if length == 1:
            continue
        varies = mask_length != 1
        if merged and merged[-1][1] == varies:
            merged[-1][0] *= length
        else:
            merged.append([length, varies])
    if not merged:
        merged = [[1, True]]
    sizes = np.array([length for length, _ in merged], dtype=np.int64)
    mask_strides = np.zeros(len(merged), dtype=np.int64)
    stride = 1
    for axis in range(len(merged) - 1, -1, -1):
        if merged[axis][1]:
            mask_strides[axis] = stride
            stride *= merged[axis][0]
    return sizes, mask_strides
