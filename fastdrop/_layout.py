"""How arrays of any layout reach kernels that take 1-D C-contiguous arrays, and come back.

Kernels see flat C-ordered memory. C-contiguous arrays go as they are (no copy, in
place when source and target are the same array); other layouts go through a
C-ordered copy, so every layout gives the values of its C-contiguous copy.
"""
import numpy as np

from .kernels.records import BlockRuns, BroadcastLayout


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


def block_runs(shape, origin, global_shape, offset):
    """The runs of global indices a block's elements take: a `BlockRuns` record.

    A block of ``shape`` at ``origin`` in a C-order array of ``global_shape`` gives its
    element at local index j the global index ``offset + ravel(origin + j,
    global_shape)``. In C order its elements form runs of ``run`` consecutive global
    indices: the last axis, merged with the axes before it for as long as the block
    spans them whole. Run r (C order over the other, outer axes) starts at ``base +
    sum(i_d * outer_strides[d])``, i the run's index in ``outer_shape`` (int64 arrays
    for the kernels; empty for one run).
    """
    strides = [1] * len(global_shape)
    for axis in range(len(global_shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * global_shape[axis + 1]
    axis = len(shape) - 1
    while axis > 0 and shape[axis] == global_shape[axis]:
        axis -= 1  # a full axis: the runs go on through the one before it
    run = int(np.prod(shape[max(axis, 0):], dtype=np.int64)) if shape else 1
    base = offset + sum(start * stride for start, stride in zip(origin, strides))
    outer = max(axis, 0)
    return BlockRuns(base, np.array(shape[:outer], dtype=np.int64),
                     np.array(strides[:outer], dtype=np.int64), run)


def block_indices(runs):
    """The global index of each element of a block, in C order (a flat uint64 array)."""
    starts = np.zeros(1, dtype=np.uint64) + np.uint64(runs.base)
    for extent, stride in zip(runs.outer_shape, runs.outer_strides):
        starts = (starts[:, None] + np.arange(extent, dtype=np.uint64) * np.uint64(stride)).ravel()
    return (starts[:, None] + np.arange(runs.run, dtype=np.uint64)).ravel()


def block_of_mask(shape, origin, global_shape, mask_global_shape):
    """The mask's own block for a data block: ``(mask block shape, mask origin)``.

    Where the global mask shares its element along an axis (its extent 1 and the
    data's more), the mask block has extent 1 there, at 0.
    """
    shared = [m == 1 and g != 1 for m, g in zip(mask_global_shape, global_shape)]
    return (tuple(1 if s else extent for s, extent in zip(shared, shape)),
            tuple(0 if s else start for s, start in zip(shared, origin)))


def broadcast_layout(shape, mask_shape):
    """The kernels' view of a mask stretched over an array: a `BroadcastLayout` record.

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
    return BroadcastLayout(sizes, mask_strides)
