"""Public API: validate arguments, lay arrays out for the kernels, dispatch to a backend.

Nothing here computes a mask; the kernels do, and `fastdrop.reference` is what
they must agree with bit for bit.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _calls, _layout, reference
from ._backends import kernels as _kernels
from ._calls import check_mask_object
from ._config import _state as _threads
from ._config import get_num_threads
from ._mask import DropoutMask, GaussianNoise, MaskedResult, NoiseResult, words_for
from ._typing import (
    ArrayLike,
    Axes,
    Backend,
    Bool,
    DtypeRequest,
    Int,
    NDArray,
    Probability,
    Seed,
    Shape,
)
from ._validate import channel_noise_shape, check_weight
from .kernels.interface import MaskParams, NoiseParams
from .maskstream.spec import (
    alpha_dropout_constants,
    dropout_scale,
    gaussian_sigma,
    stream_parameters,
)

try:  # compiled at install time, with the Cython backend
    from ._fastpath import usual_backward, usual_dropout
except ImportError:  # not built: every call takes the general path
    usual_backward = usual_dropout = None


def dropout(x: ArrayLike, p: Probability = 0.5, *, seed: Seed = None, stream: Int | None = None,
            offset: Int = 0, training: Bool = True, inplace: Bool = False,
            out: NDArray[Any] | None = None, noise_shape: Shape | None = None,
            broadcast_dims: Axes | None = None, dtype: DtypeRequest = None,
            origin: Shape | None = None, global_shape: Shape | None = None,
            backend: Backend = "auto") -> MaskedResult:
    """Inverted dropout with an exact, reproducible, bit-packed mask.

    Each element is dropped (set to +0.0) with probability ``p`` and otherwise
    scaled by ``1 / (1 - p)``, so ``E[y] = x``. The mask is a pure function of
    ``(seed, stream, offset + i, p)`` (docs/mask-stream.md): it does not depend on
    the backend, the thread count or how the array is split.

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        Input, any shape (0-d and empty included), any memory layout.
    p : float, default 0.5
        Drop probability in [0, 1]; exact to 2**-64. ``p = 0`` keeps every
        element, ``p = 1`` drops every element.
    seed : int, Generator or None
        64-bit key in [0, 2**64); or a `Generator`, which supplies its seed and
        its next stream; ``None`` uses the default `Generator` (seeded from OS
        entropy). A stream is taken only once every argument has been checked.
    stream : int, optional
        64-bit call id in [0, 2**64); defaults to 0 when ``seed`` is given. Use a
        new stream for each call that needs a new mask.
    offset : int, default 0
        Global index of x's first element (in C order). Processing a slice
        ``x[a:b]`` of a flat array alone with ``offset=a`` gives exactly the mask
        it has inside the whole array.
    training : bool, default True
        If False, dropout is off: x is returned unchanged (no scaling) and the
        mask is None.
    inplace : bool, default False
        Overwrite x (which must be a writable ndarray; views are written through).
    out : ndarray, optional
        Array of x's shape and dtype to receive the result.
    noise_shape : tuple of int, optional
        Shape of the mask, broadcast over x as NumPy does (aligned on the right;
        each entry 1 or equal to x's): one keep bit is shared along every axis
        where it is 1. ``(N, C, 1, 1)`` on an ``(N, C, H, W)`` input drops whole
        channels; ``(N, 1, F)`` on ``(N, T, F)`` reuses one mask at every time
        step. The packed mask holds only the mask's elements, and x is scaled
        in one pass without a broadcast temporary.
    broadcast_dims : int or tuple of int, optional
        The axes that share one mask element (Flax's name for the same thing):
        ``broadcast_dims=(2, 3)`` is ``noise_shape=(N, C, 1, 1)`` for 4-d x.
    origin, global_shape : tuple of int, optional
        x is the block of a larger C-order array of ``global_shape`` that starts at
        ``origin``: its element at local index j takes the global index ``offset +
        ravel(origin + j, global_shape)``, so every block of an array, cut along any
        axes, gets the mask it has inside the whole (docs/mask-stream.md, section 10).
        A noise shape is then the global array's; the mask returned is the block's.
    dtype : {None, "bfloat16"}, optional
        ``"bfloat16"`` (or ``ml_dtypes.bfloat16``) reads a uint16 x as bfloat16 bit
        patterns; the result and ``out`` are uint16 bit patterns too. The form for
        callers without ml_dtypes, such as a PyTorch adapter; ``ml_dtypes.bfloat16``
        arrays need no ``dtype`` (docs/api.md, Dtypes).
    backend : {"auto", "cython", "numba", "numpy"}, default "auto"
        "numpy" runs `fastdrop.reference`; "auto" picks Cython when it was built
        (no JIT warm-up), else Numba.

    Returns
    -------
    y : ndarray
        The result: x itself when ``inplace``, ``out`` when given, else a new
        C-ordered array.
    mask : DropoutMask or None
        Packed keep bits (1 bit per mask element: ``mask.words`` holds
        ceil(m/64) uint64 words, bit i of word i // 64 is mask element i in C
        order; m = x.size without a noise shape) and the ``seed``, ``stream``,
        ``offset``, ``p`` that regenerate them; ``mask.shape`` is the noise
        shape.

    Raises
    ------
    ValueError
        p outside [0, 1] or NaN; seed, stream or offset out of range; ``stream``
        without ``seed``; ``inplace`` on a read-only array; ``out`` of the wrong
        shape or read-only; ``inplace`` together with ``out``; a noise shape that
        does not broadcast to x; both ``noise_shape`` and ``broadcast_dims``;
        unknown backend.
    TypeError
        x is not float16/32/64 or bfloat16 (integer -- uint16 without
        ``dtype="bfloat16"`` --, bool, complex, object) or is a masked array; p,
        seed, stream or offset of the wrong type; ``training`` or ``inplace`` not a
        bool (``numpy.bool_`` is one; 1 or "no" is not); ``out`` of the wrong dtype; a
        ``dtype`` other than "bfloat16".

    Notes
    -----
    Output arithmetic (identical on every backend): a kept element is ``x * s``
    with ``s = 1/(1-p)`` computed in float64 and rounded once to x's dtype, the
    product rounded to x's dtype; a dropped element is +0.0, whatever x holds
    (inf and NaN included). float16 and bfloat16 multiply in float32 (exactly) and
    round once, to nearest even. For float16, s rounds to float16 and may overflow
    to inf when p > 1 - 2**-16. On error nothing is written. With a noise shape,
    mask element j has global index ``offset + j`` (``offset`` counts mask
    elements, not elements of x).

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> y, mask = fastdrop.dropout(np.ones(6, np.float32), 0.5, seed=1)
    >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    >>> mask.nbytes
    8
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.dropout(x, p, seed=seed, stream=stream, offset=offset,
                                 training=training, inplace=inplace, out=out,
                                 noise_shape=noise_shape, broadcast_dims=broadcast_dims,
                                 dtype=dtype, origin=origin, global_shape=global_shape)
    if (training is True and out is None and noise_shape is None and broadcast_dims is None
            and origin is None and global_shape is None and usual_dropout is not None):
        usual = usual_dropout(kernels, x, p, seed, stream, offset, inplace, dtype,
                              _threads.threads)
        if usual is not None:  # the call was usual: done in one kernel step
            return usual
    call = _calls.masked(x, p, seed, stream, offset, inplace, out, noise_shape, broadcast_dims,
                         training, dtype, origin, global_shape)
    if not training:
        return call.untouched(), None
    if call.stretched:  # the small mask first, then one pass over x reading it
        words = _draw_words(kernels, call)
        y = _apply_words(kernels, call, words, dropout_scale(call.p), None)
    else:  # one bit per element: mask and scaling fused in one pass
        words = np.empty(words_for(call.m), dtype=np.uint64)
        y = _scale_by_stream(kernels, call, words)
    return y, call.mask(words)


def _placed(call, contiguous, by_runs):
    """(kernel, offset, runs): ``contiguous`` and the first global index, or ``by_runs``.

    The contiguous kernel serves every call whose elements are one range of global
    indices (`fastdrop._calls.Call.start`), a block of whole rows included; ``runs`` is
    what follows the record among the kernel's arguments: nothing, or the block's runs.
    """
    start = call.start
    return (contiguous, start, ()) if start is not None else (by_runs, 0, (call.runs,))


def _mask_params(call, offset):
    """The `MaskParams` record of the call's keep bits, element 0 at global index ``offset``."""
    threshold, drop_all = stream_parameters(call.p)
    return MaskParams(call.seed, call.stream, threshold, drop_all, offset, call.m)


def _scale_by_stream(kernels, call, words):
    """x's elements scaled by keep bits drawn from the stream.

    The bits are stored unless words is None.
    """
    kernel, offset, runs = _placed(call, kernels.scale_by_stream, kernels.scale_by_runs)
    return call.finish(_layout.elementwise(
        call.x, call.target, kernel, words, dropout_scale(call.p), _mask_params(call, offset),
        *runs, get_num_threads()))


def _draw_words(kernels, call):
    """The packed keep bits of the call's m mask elements."""
    words = np.empty(words_for(call.m), dtype=np.uint64)
    kernel, offset, runs = _placed(call, kernels.scale_by_stream, kernels.scale_by_runs)
    kernel(None, None, words, 0.0, _mask_params(call, offset), *runs, get_num_threads())
    return words


def _apply_words(kernels, call, words, scale, affine):
    """x's elements times stored keep bits, the mask of ``call.mask_shape`` stretched over x.

    ``affine`` is None for dropout's scaling (kept: x * scale, dropped: +0.0) or
    alpha dropout's (a, b, c) (kept: a*x + b, dropped: c).
    """
    x, threads = call.x, get_num_threads()
    if affine is None and call.m == x.size:
        y = _layout.elementwise(x, call.target, kernels.scale_by_mask, words, scale, threads)
    else:
        y = _layout.elementwise(x, call.target, kernels.apply_broadcast, words,
                                _layout.broadcast_layout(x.shape, call.mask_shape), scale,
                                affine, threads)
    return call.finish(y)


def channel_dropout(x: ArrayLike, p: Probability = 0.5, *, channel_axis: Int = 1,
                    batch_axis: Int | None = 0, seed: Seed = None, stream: Int | None = None,
                    offset: Int = 0, training: Bool = True, inplace: Bool = False,
                    out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                    origin: Shape | None = None, global_shape: Shape | None = None,
                    backend: Backend = "auto") -> MaskedResult:
    """Channel (spatial) dropout: each channel of each sample is kept or dropped whole.

    The equivalent of PyTorch's ``Dropout1d``/``Dropout2d``/``Dropout3d`` and
    Keras' ``SpatialDropout``: ``dropout`` with a noise shape that is 1 on every
    axis except the batch and channel axes.

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        Input such as ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``
        (channels first), or ``(N, H, W, C)`` with ``channel_axis=-1``.
    p : float, default 0.5
        Probability of dropping a channel.
    channel_axis : int, default 1
        The channel axis.
    batch_axis : int or None, default 0
        The batch axis (a separate mask per sample); None for unbatched input
        such as ``(C, H, W)``, where one mask covers the channels.
    seed, stream, offset, training, inplace, out, dtype, backend, origin, global_shape
        As in `dropout`; ``offset`` counts (sample, channel) mask elements.

    Returns
    -------
    y : ndarray
        x with dropped channels set to +0.0 and kept ones scaled by 1/(1-p).
    mask : DropoutMask or None
        One bit per (sample, channel); ``mask.shape`` is e.g. ``(N, C, 1, 1)``.

    Raises
    ------
    ValueError
        x has no axis besides the batch and channel axes (nothing to share a
        channel's bit over), an axis is out of range, or the batch and channel
        axes coincide; the errors of `dropout`.
    TypeError
        As in `dropout`.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> y, mask = fastdrop.channel_dropout(np.ones((2, 3, 4, 4), np.float32), 0.5, seed=0)
    >>> mask.shape
    (2, 3, 1, 1)
    >>> bool(all(len(set(y[n, c].ravel().tolist())) == 1 for n in range(2) for c in range(3)))
    True
    """
    noise_shape = channel_noise_shape(np.shape(x) if global_shape is None else global_shape,
                                      channel_axis, batch_axis)
    return dropout(x, p, seed=seed, stream=stream, offset=offset, training=training,
                   inplace=inplace, out=out, noise_shape=noise_shape, dtype=dtype,
                   origin=origin, global_shape=global_shape, backend=backend)


def apply_mask(x: ArrayLike, mask: DropoutMask | NDArray[np.uint64], *,
               p: Probability | None = None, scale: float | None = None, inplace: Bool = False,
               out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
               backend: Backend = "auto") -> NDArray[Any]:
    """Apply a stored mask to an array: ``x * keep * s`` (s = 1/(1-p) unless given).

    The building block of variational (recurrent) dropout: draw one mask with
    `bernoulli_mask` or `dropout` and apply it to every time step, so each
    sequence loses the same units at every step. It is also the backward of
    dropout (`dropout_backward` calls it).

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        Array to mask.
    mask : DropoutMask or ndarray of uint64
        A DropoutMask (from `dropout`, `channel_dropout`, ...) of x's shape, or
        whose shape broadcasts to x's (a noise shape, stretched over x); or packed
        words with one bit per element of x in C order (then ``p`` is required):
        raw words carry no shape, so they apply by element count.
    p : float, optional
        Drop probability; required with raw words, checked against ``mask.p``
        otherwise.
    scale : float, optional
        Multiplier of kept elements instead of 1/(1-p) (rounded once to x's
        dtype, like s).
    inplace, out, dtype, backend
        As in `dropout`.

    Returns
    -------
    ndarray
        ``x * s`` where kept, +0.0 where dropped.

    Raises
    ------
    ValueError
        The mask's shape neither is x's nor broadcasts to it; raw words'
        count does not match x.size; its
        word count is wrong; ``p`` does not match; scale not finite; bad
        ``inplace``/``out``.
    TypeError
        x is not float16/32/64; the words are not a 1-D uint64 array; scale is
        not a real number.

    Examples
    --------
    Variational dropout over time: one (batch, features) mask for every step.

    >>> import numpy as np, fastdrop
    >>> batch, features = 4, 8
    >>> words = fastdrop.bernoulli_mask(batch * features, 0.3, seed=5)
    >>> steps = [np.ones((batch, features), np.float32) for _ in range(3)]
    >>> outputs = [fastdrop.apply_mask(x_t, words, p=0.3) for x_t in steps]
    >>> all(np.array_equal(outputs[0], y_t) for y_t in outputs)
    True
    """
    return _apply_stored_mask(x, "x", mask, p, scale, inplace, out, dtype, backend)


def _apply_stored_mask(x, name, mask, p, scale, inplace, out, dtype, backend):
    """`apply_mask`, with ``name`` what error messages call x."""
    kernels = _kernels(backend)
    if kernels is None:
        return reference.apply_mask(x, mask, p=p, scale=scale, inplace=inplace, out=out,
                                    dtype=dtype, name=name)
    call = _calls.stored_mask(x, name, mask, p, scale, inplace, out, dtype)
    return _apply_words(kernels, call, np.ascontiguousarray(call.words), call.scale, None)


def dropout_backward(grad: ArrayLike, mask: DropoutMask | NDArray[np.uint64], *,
                     p: Probability | None = None, inplace: Bool = False,
                     out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                     backend: Backend = "auto") -> NDArray[Any]:
    """Gradient of dropout from its packed mask: ``grad * keep / (1 - p)``.

    Parameters
    ----------
    grad : array_like of float16, float32, float64 or bfloat16
        Gradient with respect to dropout's output, of the forward input's shape
        (``mask.shape``, or a shape a noise-shaped mask broadcasts to). Raw words
        apply by element count, in C order.
    mask : DropoutMask or ndarray of uint64
        The mask returned by `dropout`, or its packed words (then ``p`` is required).
    p : float, optional
        Drop probability. Required with raw words; with a DropoutMask it must
        equal ``mask.p`` if given.
    inplace, out, dtype, backend
        As in `dropout`.

    Returns
    -------
    ndarray
        ``grad * s`` where kept, +0.0 where dropped, with the same arithmetic as
        the forward pass.

    Raises
    ------
    ValueError
        The mask's shape is not grad's and does not broadcast to it, raw words
        have the wrong count, or the mask's p does not match ``p``; bad
        ``inplace``/``out`` as in `dropout`.
    TypeError
        grad is not float16/32/64, or the words are not a 1-D uint64 array.
    """
    kernels = _kernels(backend)
    if kernels is not None and out is None and usual_backward is not None:
        usual = usual_backward(kernels, grad, mask, p, inplace, dtype, _threads.threads)
        if usual is not None:  # the call was usual: done in one kernel step
            return usual
    return _apply_stored_mask(grad, "grad", mask, p, None, inplace, out, dtype, backend)


def dropout_backward_recompute(grad: ArrayLike, p: Probability, *, seed: Int, stream: Int,
                               offset: Int = 0, noise_shape: Shape | None = None,
                               inplace: Bool = False, out: NDArray[Any] | None = None,
                               dtype: DtypeRequest = None, origin: Shape | None = None,
                               global_shape: Shape | None = None,
                               backend: Backend = "auto") -> NDArray[Any]:
    """Gradient of dropout with the mask regenerated from (seed, stream, offset): no mask stored.

    Bit for bit equal to `dropout_backward` with the mask of
    ``dropout(x, p, seed=seed, stream=stream, offset=offset)``.

    Parameters
    ----------
    grad : array_like of float16, float32, float64 or bfloat16
        Gradient with respect to dropout's output.
    p : float
        Drop probability of the forward pass.
    seed, stream : int
        The forward pass's seed and stream (``mask.seed``, ``mask.stream``).
    offset : int, default 0
        The forward pass's offset.
    noise_shape : tuple of int, optional
        The forward pass's noise shape (``mask.shape``, or the global one for a
        block), if it had one.
    origin, global_shape : tuple of int, optional
        The forward pass's block, if grad is the gradient of a block of a larger
        array (as in `dropout`).
    inplace, out, dtype, backend
        As in `dropout`.

    Returns
    -------
    ndarray
        ``grad * s`` where kept, +0.0 where dropped.

    Raises
    ------
    ValueError, TypeError
        As in `dropout`.
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.dropout_backward_recompute(grad, p, seed=seed, stream=stream,
                                                    offset=offset, noise_shape=noise_shape,
                                                    inplace=inplace, out=out, dtype=dtype,
                                                    origin=origin, global_shape=global_shape)
    call = _calls.recompute(grad, p, seed, stream, offset, noise_shape, inplace, out, dtype,
                            origin, global_shape)
    if call.stretched:  # regenerate the (small) mask, then stretch it
        return _apply_words(kernels, call, _draw_words(kernels, call), dropout_scale(call.p),
                            None)
    return _scale_by_stream(kernels, call, None)


def bernoulli_mask(n: Int | Shape, p: Probability, *, seed: Seed, stream: Int | None = None,
                   offset: Int = 0, origin: Shape | None = None, global_shape: Shape | None = None,
                   backend: Backend = "auto") -> NDArray[np.uint64]:
    """Packed keep bits of ``n`` elements with global indices ``offset .. offset + n - 1``.

    Parameters
    ----------
    n : int
        Number of elements.
    p : float
        Drop probability in [0, 1].
    seed : int or Generator
        64-bit key, or a `Generator` that supplies the seed and its next stream.
    stream : int, optional
        64-bit call id; 0 when omitted with an integer seed.
    offset : int, default 0
        Global index of the first element (of the global array, with a block).
    origin, global_shape : tuple of int, optional
        The mask of a block of a larger array (as in `dropout`): then ``n`` is the
        block's shape, and the words hold its elements in C order.
    backend : {"auto", "cython", "numba", "numpy"}, default "auto"

    Returns
    -------
    numpy.ndarray of uint64, shape (ceil(n / 64),)
        Bit i of word i // 64 is 1 iff element i is kept; unused bits are 0. The
        same words `dropout` stores for the same arguments.

    Raises
    ------
    ValueError
        n negative, p outside [0, 1], seed/stream/offset out of range.
    TypeError
        An argument of the wrong type.

    Examples
    --------
    >>> import fastdrop
    >>> words = fastdrop.bernoulli_mask(100, 0.25, seed=7)
    >>> words.shape, fastdrop.unpack_mask(words, 100).shape
    ((2,), (100,))
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.bernoulli_mask(n, p, seed=seed, stream=stream, offset=offset,
                                        origin=origin, global_shape=global_shape)
    return _draw_words(kernels, _calls.count(n, p, seed, stream, offset, origin=origin,
                                             global_shape=global_shape))


def alpha_dropout(x: ArrayLike, p: Probability = 0.5, *, seed: Seed = None,
                  stream: Int | None = None, offset: Int = 0, training: Bool = True,
                  inplace: Bool = False, out: NDArray[Any] | None = None,
                  noise_shape: Shape | None = None, broadcast_dims: Axes | None = None,
                  dtype: DtypeRequest = None, origin: Shape | None = None,
                  global_shape: Shape | None = None, backend: Backend = "auto") -> MaskedResult:
    """Alpha dropout for self-normalising (SELU) networks: keeps zero mean and unit variance.

    A dropped element is set to SELU's negative saturation value
    ``alpha' = -lambda * alpha`` instead of 0, then every element goes through
    the affine map ``a * y + b`` chosen so that inputs with mean 0 and variance
    1 keep them (Klambauer et al. 2017, "Self-Normalizing Neural Networks"):
    ``a = ((1 - p) (1 + p alpha'^2))^(-1/2)``, ``b = -a alpha' p``. The mask is
    the same keep bits `dropout` draws for the same arguments.

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        Input, typically SELU activations.
    p : float, default 0.5
        Drop probability in [0, 1]. ``p = 0`` returns x unchanged (as PyTorch
        does); ``p = 1`` gives all zeros.
    seed, stream, offset, training, inplace, out, noise_shape, broadcast_dims, dtype, backend
        As in `dropout`, ``origin`` and ``global_shape`` too.

    Returns
    -------
    y : ndarray
        ``a * x + b`` where kept, ``a * alpha' + b`` where dropped.
    mask : DropoutMask or None
        The keep bits; pass it to `alpha_dropout_backward`.

    Raises
    ------
    ValueError, TypeError
        As in `dropout`.

    Notes
    -----
    Arithmetic (identical on every backend): float64 computes ``a*x + b`` in
    float64, float32 in float32 with a and b rounded to float32 (two roundings,
    never a fused multiply-add), float16 widens x to float32, computes in
    float32 and rounds once to float16. The dropped value is ``a*alpha' + b``
    computed in float64 and rounded once to x's dtype.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> x = np.random.default_rng(0).standard_normal(100_000)
    >>> y, mask = fastdrop.alpha_dropout(x, 0.2, seed=1)
    >>> bool(abs(y.mean()) < 0.02 and abs(y.std() - 1) < 0.02)
    True
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.alpha_dropout(x, p, seed=seed, stream=stream, offset=offset,
                                       training=training, inplace=inplace, out=out,
                                       noise_shape=noise_shape, broadcast_dims=broadcast_dims,
                                       dtype=dtype, origin=origin, global_shape=global_shape)
    call = _calls.masked(x, p, seed, stream, offset, inplace, out, noise_shape, broadcast_dims,
                         training, dtype, origin, global_shape)
    if not training:
        return call.untouched(), None
    words = _draw_words(kernels, call)
    if call.p == 0.0:  # the identity, as in PyTorch
        return call.deliver(call.x.reshape(-1).copy()), call.mask(words)
    y = _apply_words(kernels, call, words, 0.0, alpha_dropout_constants(call.p))
    return y, call.mask(words)


def feature_alpha_dropout(x: ArrayLike, p: Probability = 0.5, *, channel_axis: Int = 1,
                          batch_axis: Int | None = 0, seed: Seed = None, stream: Int | None = None,
                          offset: Int = 0, training: Bool = True, inplace: Bool = False,
                          out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                          origin: Shape | None = None, global_shape: Shape | None = None,
                          backend: Backend = "auto") -> MaskedResult:
    """Alpha dropout of whole channels (PyTorch's ``FeatureAlphaDropout``).

    `alpha_dropout` with the noise shape of `channel_dropout`: each channel of
    each sample is kept (``a*x + b``) or dropped (``a*alpha' + b``) whole.

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        Input with a channel axis, e.g. ``(N, C, H, W)``.
    p : float, default 0.5
        Probability of dropping a channel.
    channel_axis, batch_axis
        As in `channel_dropout`.
    seed, stream, offset, training, inplace, out, dtype, backend
        As in `dropout`.

    Returns
    -------
    y : ndarray
    mask : DropoutMask or None
        One bit per (sample, channel).

    Raises
    ------
    ValueError, TypeError
        As in `channel_dropout`.
    """
    noise_shape = channel_noise_shape(np.shape(x) if global_shape is None else global_shape,
                                      channel_axis, batch_axis)
    return alpha_dropout(x, p, seed=seed, stream=stream, offset=offset, training=training,
                         inplace=inplace, out=out, noise_shape=noise_shape, dtype=dtype,
                         origin=origin, global_shape=global_shape, backend=backend)


def alpha_dropout_backward(grad: ArrayLike, mask: DropoutMask, *, inplace: Bool = False,
                           out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                           backend: Backend = "auto") -> NDArray[Any]:
    """Gradient of `alpha_dropout`: ``grad * a`` where kept, +0.0 where dropped.

    Parameters
    ----------
    grad : array_like of float16, float32, float64 or bfloat16
        Gradient with respect to alpha dropout's output.
    mask : DropoutMask
        The mask `alpha_dropout` or `feature_alpha_dropout` returned.
    inplace, out, dtype, backend
        As in `dropout`.

    Returns
    -------
    ndarray
        ``grad * a`` (a rounded once to grad's dtype) where kept, +0.0 where
        dropped; ``grad`` unchanged in value for a mask with p = 0.

    Raises
    ------
    TypeError
        mask is not a DropoutMask; grad is not float16/32/64.
    ValueError
        The mask neither matches grad's size nor broadcasts to its shape.
    """
    check_mask_object(mask)
    scale = 1.0 if mask.p == 0.0 else alpha_dropout_constants(mask.p)[0]
    return _apply_stored_mask(grad, "grad", mask, None, scale, inplace, out, dtype, backend)


def gaussian_dropout(x: ArrayLike, p: Probability = 0.5, *, seed: Seed = None,
                     stream: Int | None = None, offset: Int = 0, training: Bool = True,
                     inplace: Bool = False, out: NDArray[Any] | None = None,
                     dtype: DtypeRequest = None, origin: Shape | None = None,
                     global_shape: Shape | None = None, backend: Backend = "auto") -> NoiseResult:
    """Gaussian dropout: multiply every element by noise drawn from N(1, p / (1 - p)).

    The multiplicative Gaussian noise of Srivastava et al. (2014, section 10)
    and Keras' ``GaussianDropout``: the same mean and variance as inverted
    Bernoulli dropout with drop rate p, with no element set to zero. The noise
    comes from fastdrop's counter-based Philox stream (its own domain, so it is
    independent of the dropout mask of the same seed and stream) and is
    bit-identical on every backend, thread count and split.

    Parameters
    ----------
    x : array_like of float16, float32, float64 or bfloat16
        Input.
    p : float, default 0.5
        Rate in [0, 1): the noise variance is p / (1 - p).
    seed, stream, offset, training, inplace, out, dtype, backend
        As in `dropout`.

    Returns
    -------
    y : ndarray
        ``x * (1 + sigma * z)`` with ``sigma = sqrt(p / (1 - p))`` and z
        standard normal.
    noise : GaussianNoise or None
        The (seed, stream, offset, p) that regenerate the noise for
        `gaussian_dropout_backward`; nothing of size n is stored.

    Raises
    ------
    ValueError
        p outside [0, 1) (p = 1 has infinite variance); the errors of `dropout`.
    TypeError
        As in `dropout`.

    Notes
    -----
    Element i (global index ``offset + i``) takes a 64-bit word r of Philox block
    ``(offset + i) // 2`` in the noise domain (docs/mask-stream.md, section 9),
    ``u = (r // 2**12 + 1/2) 2**-52``, and ``z = Phi^-1(u)`` by Wichura's AS 241
    with a log the spec defines from +, *, / and frexp, so libm differences
    cannot change a bit. The multiplier ``1 + sigma*z`` is computed in float64
    and rounded once to x's dtype (float32 for float16 input), then multiplied.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> y, noise = fastdrop.gaussian_dropout(np.ones(100_000), 0.5, seed=2)
    >>> bool(abs(y.mean() - 1) < 0.02 and abs(y.var() - 1) < 0.03)
    True
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.gaussian_dropout(x, p, seed=seed, stream=stream, offset=offset,
                                          training=training, inplace=inplace, out=out,
                                          dtype=dtype, origin=origin, global_shape=global_shape)
    call = _calls.gaussian(x, p, seed, stream, offset, inplace, out, training, dtype, origin,
                           global_shape)
    if not training:
        return call.untouched(), None
    return _multiply_noise(kernels, call), call.noise()


def _noise_params(call, offset):
    """The `NoiseParams` record of the call's multipliers, element 0 at global index ``offset``."""
    return NoiseParams(call.seed, call.stream, gaussian_sigma(call.p), offset)


def _multiply_noise(kernels, call):
    """x's elements times the call's Gaussian multipliers, regenerated from its stream."""
    kernel, offset, runs = _placed(call, kernels.gaussian, kernels.gaussian_runs)
    return call.finish(_layout.elementwise(call.x, call.target, kernel,
                                           _noise_params(call, offset), *runs,
                                           get_num_threads()))


def gaussian_dropout_backward(grad: ArrayLike, noise: GaussianNoise, *, inplace: Bool = False,
                              out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                              backend: Backend = "auto") -> NDArray[Any]:
    """Gradient of `gaussian_dropout`: grad times the same noise, regenerated.

    Parameters
    ----------
    grad : array_like of float16, float32, float64 or bfloat16
        Gradient with respect to the output; ``grad.size`` must equal the
        forward input's.
    noise : GaussianNoise
        What `gaussian_dropout` returned.
    inplace, out, dtype, backend
        As in `dropout`.

    Returns
    -------
    ndarray
        ``grad * (1 + sigma * z)`` with the forward pass's z, bit for bit the
        forward arithmetic.

    Raises
    ------
    TypeError
        noise is not a GaussianNoise; grad is not float16/32/64.
    ValueError
        noise is for a different number of elements; bad ``inplace``/``out``.
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.gaussian_dropout_backward(grad, noise, inplace=inplace, out=out,
                                                   dtype=dtype)
    return _multiply_noise(kernels, _calls.stored_noise(grad, noise, inplace, out, dtype))


def gaussian_noise(n: Int | Shape, p: Probability, *, seed: Seed, stream: Int | None = None,
                   offset: Int = 0, origin: Shape | None = None, global_shape: Shape | None = None,
                   backend: Backend = "auto") -> NDArray[np.float64]:
    """The float64 multipliers ``1 + sigma * z_i`` `gaussian_dropout` uses for n elements.

    Parameters
    ----------
    n : int
        Number of elements.
    p : float
        Rate in [0, 1).
    seed : int or Generator
        64-bit key, or a `Generator` that supplies the seed and its next stream.
    stream : int, optional
        64-bit call id; 0 when omitted with an integer seed.
    offset : int, default 0
        Global index of the first element (of the global array, with a block).
    origin, global_shape : tuple of int, optional
        The noise of a block of a larger array (as in `dropout`): then ``n`` is the
        block's shape, and the result holds its elements in C order.
    backend : {"auto", "cython", "numba", "numpy"}, default "auto"

    Returns
    -------
    numpy.ndarray of float64, shape (n,) or (prod(n),) for a block

    Raises
    ------
    ValueError, TypeError
        As in `gaussian_dropout`.
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.gaussian_noise(n, p, seed=seed, stream=stream, offset=offset,
                                        origin=origin, global_shape=global_shape)
    call = _calls.count(n, p, seed, stream, offset, gaussian=True, origin=origin,
                        global_shape=global_shape)
    noise = np.ones(call.m, dtype=np.float64)
    kernel, offset, runs = _placed(call, kernels.gaussian, kernels.gaussian_runs)
    kernel(noise, noise, _noise_params(call, offset), *runs, get_num_threads())
    return noise


def dropconnect(weight: ArrayLike, p: Probability = 0.5, *, seed: Seed = None,
                stream: Int | None = None, offset: Int = 0, training: Bool = True,
                out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                backend: Backend = "auto") -> MaskedResult:
    """DropConnect (Wan et al. 2013): drop individual weights, not activations.

    Returns ``weight * keep / (1 - p)`` as a new array (or in ``out``); the
    weights themselves are never overwritten, since the optimiser updates them.
    One mask is shared by every sample of the batch that uses the dropped
    weights (the usual approximation: per-sample weight masks would cost a
    weight matrix per sample). The mask is recomputable from (seed, stream,
    offset): backward is ``dropout_backward(grad_weight_dropped, mask)`` or
    `dropout_backward_recompute`.

    Parameters
    ----------
    weight : array_like of float16, float32, float64 or bfloat16
        Weight array, e.g. ``(out_features, in_features)``; at least 1-d.
    p : float, default 0.5
        Probability of dropping each weight.
    seed, stream, offset, training, out, dtype, backend
        As in `dropout`.

    Returns
    -------
    weight_dropped : ndarray
        New array (or ``out``); ``weight`` itself when ``training=False``.
    mask : DropoutMask or None
        One bit per weight.

    Raises
    ------
    ValueError
        weight is 0-d; the errors of `dropout`.
    TypeError
        As in `dropout`.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> W = np.ones((3, 4), np.float32)
    >>> W_dropped, mask = fastdrop.dropconnect(W, 0.5, seed=3)
    >>> bool((W == 1).all()), mask.shape
    (True, (3, 4))
    """
    return dropout(check_weight(weight, dtype), p, seed=seed, stream=stream, offset=offset,
                   training=training, out=out, dtype=dtype, backend=backend)
