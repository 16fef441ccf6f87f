"""Public API of the fused operations: validate, lay arrays out, dispatch to a backend.

``softmax_dropout`` is ``dropout(softmax(x, axis))`` in one pass: the mask is
`fastdrop.dropout`'s and the result dropout of the rounded softmax, bit for bit; the
softmax within a stated bound of the reference's (docs/mask-stream.md, section 12).

``dropout_add`` is ``residual + dropout(x)`` in one pass over memory: the mask is
`fastdrop.dropout`'s and the result the unfused composition's, bit for bit
(docs/mask-stream.md, section 11); `fastdrop.reference` runs the composition itself.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _fused_calls, reference
from ._api import dropout_backward
from ._backends import kernels as _kernels
from ._config import get_num_threads
from ._layout import deliver
from ._mask import DropoutMask, MaskedResult, words_for
from ._typing import ArrayLike, Backend, Bool, DtypeRequest, Int, NDArray, Probability, Seed
from .kernels.interface import MaskParams
from .maskstream.spec import dropout_constants, dropout_scale


def dropout_add(x: ArrayLike, residual: ArrayLike, p: Probability = 0.5, *, seed: Seed = None,
                stream: Int | None = None, offset: Int = 0, training: Bool = True,
                inplace: Bool = False, out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                backend: Backend = "auto") -> MaskedResult:
    """Dropout then a residual add, fused: ``residual + dropout(x)`` in one pass.

    The sub-layer output of a transformer block. Bit for bit the unfused composition
    ``residual + fastdrop.dropout(x, p, ...)[0]`` (the sum rounded to the dtype), with
    the same mask for the same ``(seed, stream, p, offset)``, on every backend and
    thread count, but reading x and the residual once and writing once: no
    intermediate array the size of x.

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        The input of dropout, any shape and memory layout.
    residual : array_like
        What the dropped-out x is added to: x's dtype and shape (it is not broadcast).
    p : float, default 0.5
        Drop probability in [0, 1].
    seed, stream, offset, dtype, backend
        As in `fastdrop.dropout`.
    training : bool, default True
        If False, dropout is off: the result is ``residual + x`` (no scaling) and the
        mask is None.
    inplace : bool, default False
        Write the result into the residual's buffer (which must be a writeable
        ndarray), as ``residual += dropout(x)`` would: the memory-saving form, since
        the residual stream is usually not needed after the add. x is never written.
    out : ndarray, optional
        Array of x's shape and dtype to receive the result. It may be x or the
        residual, or overlap them: inputs it overlaps are read before it is written.

    Returns
    -------
    y : ndarray
        ``residual + dropout(x)``: the residual itself when ``inplace``, ``out`` when
        given, else a new C-ordered array.
    mask : DropoutMask or None
        The keep bits: the words `fastdrop.dropout` returns for the same arguments.
        The backward pass is ``dropout_backward(grad, mask)`` for x and ``grad``
        itself for the residual.

    Raises
    ------
    ValueError
        The residual's shape is not x's; ``inplace`` on a read-only residual; ``out``
        of the wrong shape or read-only; ``inplace`` together with ``out``; the
        errors of `fastdrop.dropout` (p, seed, stream, offset).
    TypeError
        x or the residual is not float16/32/64 or bfloat16, or their dtypes differ;
        ``inplace`` with a residual that is not an ndarray; ``out`` of the wrong
        dtype.

    Notes
    -----
    Arithmetic (docs/mask-stream.md, section 11): ``d = x * s`` where kept, +0.0
    where dropped, rounded to the dtype exactly as `fastdrop.dropout` does; then
    ``residual + d`` rounded to the dtype (float16 and bfloat16 add in float32 and
    round once, which is the correctly rounded sum NumPy's float16 ``+`` gives). Never
    a fused multiply-add. On error nothing is written and no stream is taken.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> x = np.ones(6, np.float32)
    >>> residual = np.full(6, 10.0, np.float32)
    >>> y, mask = fastdrop.dropout_add(x, residual, 0.5, seed=1)
    >>> dropped, _ = fastdrop.dropout(x, 0.5, seed=1)
    >>> bool(np.array_equal(y, residual + dropped))
    True
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.dropout_add(x, residual, p, seed=seed, stream=stream, offset=offset,
                                     training=training, inplace=inplace, out=out, dtype=dtype)
    call, x, _ = _fused_calls.fused(x, residual, None, p, seed, stream, offset, training,
                                    inplace, out, dtype)
    return _dropout_then_add(kernels, call, x, None, training)



def bias_dropout_add(x: ArrayLike, bias: ArrayLike, residual: ArrayLike, p: Probability = 0.5, *,
                     seed: Seed = None, stream: Int | None = None, offset: Int = 0,
                     training: Bool = True, inplace: Bool = False, out: NDArray[Any] | None = None,
                     dtype: DtypeRequest = None, backend: Backend = "auto") -> MaskedResult:
    """A bias, dropout and a residual add, fused: ``residual + dropout(x + bias)`` in one pass.

    What follows a Linear layer whose bias was left out of its matrix product. Bit for
    bit the unfused composition ``residual + fastdrop.dropout(x + bias, p, ...)[0]``
    (each sum rounded to the dtype), with dropout's mask for the same ``(seed, stream,
    p, offset)``, on every backend and thread count; the bias is broadcast along x's
    last axis, as a Linear's.

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        The input, with at least one axis; any memory layout.
    bias : array_like
        x's dtype, shape ``(x.shape[-1],)``: element ``x[..., j]`` gets ``bias[j]``.
    residual : array_like
        x's dtype and shape (it is not broadcast).
    p : float, default 0.5
        Drop probability in [0, 1].
    seed, stream, offset, training, inplace, out, dtype, backend
        As in `dropout_add` (``training=False`` gives ``residual + (x + bias)``).

    Returns
    -------
    y : ndarray
        ``residual + dropout(x + bias)``: the residual itself when ``inplace``, ``out``
        when given, else a new C-ordered array.
    mask : DropoutMask or None
        The keep bits, `fastdrop.dropout`'s for the same arguments; pass it to
        `bias_dropout_add_backward`.

    Raises
    ------
    ValueError
        x is 0-d; the bias's shape is not ``(x.shape[-1],)``; the errors of
        `dropout_add`.
    TypeError
        The bias's dtype is not x's; the errors of `dropout_add`.

    Notes
    -----
    Arithmetic (docs/mask-stream.md, section 11): ``h = x + bias`` rounded to the
    dtype, then dropout's ``h * s`` (rounded) or +0.0, then ``residual + d`` rounded;
    float16 and bfloat16 add in float32 and round once. Never a fused multiply-add.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> x, bias = np.ones((2, 3), np.float32), np.arange(3, dtype=np.float32)
    >>> residual = np.zeros((2, 3), np.float32)
    >>> y, mask = fastdrop.bias_dropout_add(x, bias, residual, 0.5, seed=1)
    >>> dropped, _ = fastdrop.dropout(x + bias, 0.5, seed=1)
    >>> bool(np.array_equal(y, residual + dropped))
    True
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.bias_dropout_add(x, bias, residual, p, seed=seed, stream=stream,
                                          offset=offset, training=training, inplace=inplace,
                                          out=out, dtype=dtype)
    call, x, bias = _fused_calls.fused(x, residual, bias, p, seed, stream, offset, training,
                                       inplace, out, dtype, with_bias=True)
    return _dropout_then_add(kernels, call, x, bias, training)


def bias_dropout_add_backward(grad: ArrayLike, mask: DropoutMask, *, dtype: DtypeRequest = None,
                              backend: Backend = "auto") -> tuple[NDArray[Any], NDArray[Any]]:
    """Gradients of `bias_dropout_add` with respect to x and the bias.

    The residual's gradient is ``grad`` itself.

    Parameters
    ----------
    grad : array_like of float16, float32, float64 or bfloat16
        Gradient with respect to the output, of x's shape.
    mask : DropoutMask
        What `bias_dropout_add` returned.
    dtype, backend
        As in `dropout_backward`.

    Returns
    -------
    grad_x : ndarray
        ``dropout_backward(grad, mask)``: ``grad * s`` where kept, +0.0 where dropped.
    grad_bias : ndarray, shape ``(x.shape[-1],)``
        ``grad_x`` summed over every axis but the last: in float32 for float16,
        bfloat16 and float32 (float64 for float64), by ``np.sum(..., axis=0)`` over the
        ``(rows, features)`` view, rounded once to the dtype. The same bits on every
        backend (the same sum of the same bits).

    Raises
    ------
    TypeError
        mask is not a DropoutMask; grad is not float16/32/64 or bfloat16.
    ValueError
        grad's shape is not the mask's, or is 0-d.
    """
    _kernels(backend)  # an unknown backend is refused before anything is computed
    _fused_calls.check_bias_gradient(grad, mask, dtype)
    grad_x = dropout_backward(grad, mask, dtype=dtype, backend=backend)
    return grad_x, reference.sum_rows(grad_x)

def _flat(array):
    """A 1-D C-contiguous view of the array, or a C-ordered copy where there is none."""
    return np.ascontiguousarray(array).reshape(-1)


def _readable_beside(source, result):
    """``source``, or a private copy where writing ``result`` could change it before it is read.

    Both are 1-D contiguous of one size: starting at the same address they are the
    same elements, each read before it is written.
    """
    if np.may_share_memory(source, result) and source.ctypes.data != result.ctypes.data:
        return source.copy()
    return source


def _dropout_then_add(kernels, call, x, bias, training):
    """The fused kernel on the call's arrays, the result where the caller asked for it."""
    if training:
        threshold, drop_all, scale = dropout_constants(call.p)
        words = np.empty(words_for(call.m), dtype=np.uint64)
        seed, stream = call.seed, call.stream
    else:  # every element kept, times 1: residual + x
        threshold, drop_all, scale, words, seed, stream = 0, False, 1.0, None, 0, 0
    residual, target = call.x, call.target
    source, residual_flat = _flat(x), _flat(residual)
    bias = None if bias is None else bias.copy()  # a few values; never overlaps the result
    written = target if target is not None and target.flags.c_contiguous else None
    if written is not None:  # straight into place
        result = target.reshape(-1)
        source = _readable_beside(source, result)
        residual_flat = _readable_beside(residual_flat, result)
    else:
        result = np.empty(call.m, dtype=residual.dtype)
    params = MaskParams(seed, stream, threshold, drop_all, call.offset, call.m)
    kernels.dropout_add(source, residual_flat, bias, result, words, scale, params,
                        get_num_threads())
    y = call.finish(written if written is not None else deliver(result, residual, target))
    return y, (call.mask(words) if training else None)


def _row_shape(shape, axis):
    """(outer, length, inner): the axes before ``axis`` merged, its length, those after."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _rows(array, axis):
    """``array`` as (outer, length, inner) rows along ``axis``.

    A view where one exists (strides in whole elements), else a C-ordered copy.
    """
    rows = _row_shape(array.shape, axis)
    try:
        view = np.reshape(array, rows, copy=False)
    except ValueError:  # outer or inner axes that no single stride walks
        return np.ascontiguousarray(array).reshape(rows)
    if any(stride % view.itemsize for stride in view.strides):
        return np.ascontiguousarray(array).reshape(rows)
    return view


def _written_directly(array):
    """Whether kernels may write a C-ordered result straight into ``array`` (else a new one)."""
    return (array is not None and array.flags.c_contiguous and array.dtype.isnative
            and array.flags.aligned)


def _readable_rows(rows, outputs):
    """``rows``, or a private copy where an output could overwrite what a row has yet to read.

    An output that is the rows' own C-ordered memory is fine: each row is read before it
    is written.
    """
    for output in outputs:
        if np.may_share_memory(rows, output) and not (
                rows.flags.c_contiguous and rows.ctypes.data == output.ctypes.data):
            return rows.copy()
    return rows


def softmax_dropout(x: ArrayLike, p: Probability = 0.5, axis: Int = -1, *, seed: Seed = None,
                    stream: Int | None = None, offset: Int = 0, training: Bool = True,
                    out: NDArray[Any] | None = None, softmax_out: NDArray[Any] | None = None,
                    dtype: DtypeRequest = None, backend: Backend = "auto") -> MaskedResult:
    """Softmax along an axis, then dropout, fused: ``dropout(softmax(x, axis), p)`` in one pass.

    The attention probabilities of a transformer. The mask is `fastdrop.dropout`'s for
    the same ``(seed, stream, p, offset)`` and x's shape (element i in C order takes
    global index ``offset + i``), and the result is exactly ``fastdrop.dropout`` of the
    softmax rounded to the dtype; the softmax itself agrees with
    ``fastdrop.reference.softmax_dropout``'s within the bound docs/fused.md states
    (its exponential is not bit-specified). One read of x and one write of the result
    per element (plus the softmax, if asked for), on every backend and thread count.

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        Scores, any shape with at least one axis, any memory layout.
    p : float, default 0.5
        Drop probability in [0, 1].
    axis : int, default -1
        The axis the softmax normalises along. The last axis of a C-contiguous array is
        the fast path; other axes and strided input are walked in place (no copy of x)
        where a single stride reaches each row's elements and the outer and inner axes
        merge, else x is copied to C order first.
    seed, stream, offset, dtype, backend
        As in `fastdrop.dropout`.
    training : bool, default True
        If False: the softmax alone, and the mask is None.
    out : ndarray, optional
        Array of x's shape and dtype to receive the result; it may be x.
    softmax_out : ndarray, optional
        Array of x's shape and dtype (not overlapping ``out``) to receive the softmax
        before dropout, written in the same pass: what the backward pass needs.

    Returns
    -------
    y : ndarray
        ``dropout(softmax(x))``: ``out`` when given, else a new C-ordered array.
    mask : DropoutMask or None
        The keep bits, `fastdrop.dropout`'s for the same arguments; with the softmax,
        what `softmax_dropout_backward` takes.

    Raises
    ------
    ValueError
        axis out of range (x 0-d included); ``out`` or ``softmax_out`` of the wrong
        shape or read-only, or overlapping each other; the errors of
        `fastdrop.dropout` (p, seed, stream, offset).
    TypeError
        x is not float16/32/64 or bfloat16; ``out`` or ``softmax_out`` of the wrong
        dtype or not an ndarray.

    Notes
    -----
    Definition (docs/mask-stream.md, section 12): per row, in float32 (float64 for
    float64 input), ``m = max x``, ``e = exp(x - m)``, ``S`` their sum in a fixed
    order, ``s = e * (1 / S)`` rounded once to the dtype; then dropout's ``s * scale``
    (rounded) where kept, +0.0 where dropped. A row holding NaN or +inf, or only -inf,
    is NaN, as in torch. On error nothing is written and no stream is taken.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> scores = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    >>> s = np.empty_like(scores)
    >>> y, mask = fastdrop.softmax_dropout(scores, 0.5, seed=1, softmax_out=s)
    >>> dropped, _ = fastdrop.dropout(s, 0.5, seed=1)
    >>> bool(np.array_equal(y, dropped)), round(float(s.sum()), 5)
    (True, 1.0)
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.softmax_dropout(x, p, axis, seed=seed, stream=stream, offset=offset,
                                         training=training, out=out, softmax_out=softmax_out,
                                         dtype=dtype)
    call, axis, softmax_target = _fused_calls.softmax(x, p, axis, seed, stream, offset,
                                                      training, out, softmax_out, dtype)
    source = call.x
    rows = _rows(source, axis)
    shape = rows.shape
    target = call.target if _written_directly(call.target) else None
    result = (target if target is not None else np.empty(source.shape, source.dtype)).reshape(shape)
    softmax = None
    if softmax_target is not None:
        softmax = (softmax_target if _written_directly(softmax_target)
                   else np.empty(source.shape, source.dtype)).reshape(shape)
    rows = _readable_rows(rows, [a for a in (target, softmax) if a is not None])
    words = _softmax_rows(kernels, rows, result, softmax, call.p if training else None,
                          call.seed, call.stream, call.offset, get_num_threads())
    if softmax is not None and not _written_directly(softmax_target):
        softmax_target[...] = softmax.reshape(source.shape)
    y = call.finish(target if target is not None else deliver(result.reshape(-1), source,
                                                               call.target))
    return y, (call.mask(words) if training else None)


def softmax_dropout_of_rows(x, y, softmax, p, seed, stream, threads):
    """`softmax_dropout` along the last axis for an integration that checked its arrays.

    x, y (and softmax, or None) are C-contiguous native float16/32/64 arrays of one shape
    and dtype, y and softmax new (no overlap with x); 0 < p <= 1, seed and stream in
    [0, 2**64): what ``fastdrop.torch`` has made sure of before its call. Writes y (and
    the softmax) as `softmax_dropout` with ``axis=-1, offset=0`` would and returns the
    mask words, without the public function's checks (tens of microseconds a call next
    to a 0.4 ms attention softmax). The compiled backend's kernel, else the public path.
    """
    kernels = _kernels("auto")
    if kernels is None:
        _, mask = softmax_dropout(x, p, seed=seed, stream=stream, out=y, softmax_out=softmax)
        assert mask is not None  # training is on: there is a mask
        return mask.words
    rows = x.reshape(_row_shape(x.shape, x.ndim - 1))
    return _softmax_rows(kernels, rows, y.reshape(rows.shape),
                         None if softmax is None else softmax.reshape(rows.shape), p, seed,
                         stream, 0, threads)


def _softmax_rows(kernels, rows, result, softmax, p, seed, stream, offset, threads):
    """The kernel over (outer, length, inner) rows: its mask words, or None where p is None.

    p None: the softmax alone (no mask drawn, y is the softmax).
    """
    if p is None:
        kernels.softmax_dropout(rows, result, softmax, None, 1.0,
                                MaskParams(0, 0, 0, False, 0, rows.size), threads)
        return None
    threshold, drop_all, scale = dropout_constants(p)
    words = np.empty(words_for(rows.size), dtype=np.uint64)
    kernels.softmax_dropout(rows, result, softmax, words, scale,
                            MaskParams(seed, stream, threshold, drop_all, offset, rows.size),
                            threads)
    return words


def softmax_dropout_backward(grad: ArrayLike, softmax: ArrayLike, mask: DropoutMask | None,
                             axis: Int = -1, *, out: NDArray[Any] | None = None,
                             dtype: DtypeRequest = None, backend: Backend = "auto"
                             ) -> NDArray[Any]:
    """Gradient of `softmax_dropout` with respect to x, from the softmax and the mask.

    ``dx = s * (g - sum(g * s, axis))`` with ``g = dropout_backward(grad, mask)``: one
    pass per row. The same bits on every backend and thread count (section 12 fixes the
    order of the sum).

    Parameters
    ----------
    grad : array_like of float16, float32, float64 or bfloat16
        Gradient with respect to the output y.
    softmax : array_like
        The softmax of the forward pass (its ``softmax_out``): grad's dtype and shape.
    mask : DropoutMask or None
        What `softmax_dropout` returned (None: training was off, g is grad).
    axis : int, default -1
        The forward pass's axis.
    out : ndarray, optional
        Array of grad's shape and dtype to receive the result; it may be grad.
    dtype, backend
        As in `dropout_backward`.

    Returns
    -------
    ndarray
        The gradient with respect to x: ``out`` when given, else a new C-ordered array.

    Raises
    ------
    ValueError
        axis out of range; the softmax's or the mask's shape is not grad's; ``out`` of
        the wrong shape or read-only.
    TypeError
        grad is not float16/32/64 or bfloat16; the softmax's dtype is not grad's; mask
        is not a DropoutMask or None; ``out`` of the wrong dtype.

    Notes
    -----
    Rounding order (docs/mask-stream.md, section 12): ``g`` is dropout's backward,
    rounded to the dtype; then in float32 (float64 for float64) each ``g * s``, their
    sum ``D`` in 16 interleaved lanes added pairwise, ``g - D``, ``s * (g - D)``, each
    rounded to that type, and the result once to the dtype.
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.softmax_dropout_backward(grad, softmax, mask, axis, out=out,
                                                  dtype=dtype)
    call, axis, softmax = _fused_calls.softmax_gradient(grad, softmax, mask, axis, out, dtype)
    source = call.x
    rows = _row_shape(source.shape, axis)
    grad_rows = np.ascontiguousarray(source).reshape(rows)
    softmax_rows = np.ascontiguousarray(softmax).reshape(rows)
    target = call.target if _written_directly(call.target) else None
    result = (target if target is not None else np.empty(source.shape, source.dtype)).reshape(rows)
    if target is not None:
        grad_rows = _readable_rows(grad_rows, [result])
        softmax_rows = _readable_rows(softmax_rows, [result])
    kernels.softmax_dropout_backward(grad_rows, softmax_rows, result, call.words,
                                     dropout_scale(call.p) if call.words is not None else 1.0,
                                     get_num_threads())
    return call.finish(target if target is not None else deliver(result.reshape(-1), source,
                                                                 call.target))
