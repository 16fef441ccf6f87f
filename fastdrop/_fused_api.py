"""Public API of the fused operations: validate, lay arrays out, dispatch to a backend.

``dropout_add`` is ``residual + dropout(x)`` in one pass over memory: the mask is
`fastdrop.dropout`'s and the result the unfused composition's, bit for bit
(docs/mask-stream.md, section 11); `fastdrop.reference` runs the composition itself.
"""
from __future__ import annotations

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
from .maskstream.spec import dropout_constants


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
