"""Graph ops built on the engine: the dropout family and the losses.

The dropout ops (`dropout`, `alpha_dropout`, `gaussian_dropout`,
`dropconnect_linear`) run fastdrop's function forward and its backward function
(on the packed mask, or regenerating the bits from (seed, stream, offset)) in
their ``_backward``. The losses (`log_softmax`, `cross_entropy`) are built from
the engine's primitives and need no backward of their own.

**When dropout overwrites its input.** `dropout` (and `alpha_dropout` and
`gaussian_dropout`, whose backward reads neither input nor output) writes its
result over its input's array only when nothing can tell the difference:

1. the input was made by an op (it is not user data or a parameter);
2. it owns its memory (it is not a view of another tensor's array);
3. no op has read it yet; and
4. the op that made it does not read its own output in backward
   (``tanh`` and ``exp`` do, so their outputs are never overwritten).

ReLU's backward reads the sign of its *input*, so a ReLU's output can be
overwritten. Afterwards the input tensor is marked, and an op that tries to
read it raises a RuntimeError rather than computing with dropped values.
"""
import math

import numpy as np

import fastdrop

from .engine import _result, as_tensor
from .mc import matmul


def _free_to_overwrite(tensor):
    """Whether an op may write over ``tensor.data``: the rule in this module's docstring."""
    return (tensor._op != "" and tensor.data.flags.owndata and tensor.data.flags.writeable
            and tensor._consumers == 0 and not tensor._output_read)


def dropout(x, p, *, seed, stream, offset=0, training=True, recompute=False, inplace=True,
            noise_shape=None, backend="auto"):
    """Dropout as a graph op: `fastdrop.dropout` forward, its packed mask backward.

    Parameters
    ----------
    x : Tensor
        Input.
    p : float
        Drop probability in [0, 1].
    seed, stream : int
        Mask-stream coordinates (see `fastdrop.dropout`); a `fastdrop.Generator`
        hands out a fresh pair per call with ``reserve_stream()``.
    offset : int, default 0
        Global index of x's first element.
    training : bool, default True
        If False, return ``(x, None)`` with x as a Tensor: dropout is the identity.
    recompute : bool, default False
        Keep no mask: backward regenerates the bits from (seed, stream, offset)
        with `fastdrop.dropout_backward_recompute`. Same gradients, bit for bit,
        and no 1-bit-per-element mask held between forward and backward.
    inplace : bool, default True
        Write the result over ``x.data`` when that is safe (rule in the module
        docstring); otherwise, or if False, write a new array.
    noise_shape : tuple of int, optional
        Shape of the mask, broadcast over x (see `fastdrop.dropout`): one keep
        bit is shared along every axis where it is 1, e.g. ``(N, C, 1, 1)``
        drops whole channels of an ``(N, C, H, W)`` input.
    backend : str, default "auto"
        Passed to fastdrop.

    Returns
    -------
    y : Tensor
        ``x * keep / (1 - p)``.
    mask : fastdrop.DropoutMask or None
        The packed mask the backward uses (``mask.shape`` is the noise shape);
        None with ``recompute=True`` or ``training=False``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import Tensor, dropout
    >>> x = Tensor(np.ones((2, 64), np.float32), requires_grad=True)
    >>> y, mask = dropout(x, 0.5, seed=1, stream=0)
    >>> y.sum().backward()
    >>> bool(np.array_equal(x.grad, y.data))
    True
    """
    x = as_tensor(x)
    if not training:  # the identity, on a Tensor like the other ops' results
        return x, None
    overwrite = inplace and _free_to_overwrite(x)
    data, mask = fastdrop.dropout(x.data, p, seed=seed, stream=stream, offset=offset,
                                  inplace=overwrite, noise_shape=noise_shape, backend=backend)
    out = _result(data, (x,), "dropout")
    x._overwritten = overwrite
    kept = None if recompute else mask
    mask_shape = mask.shape

    def _backward():
        if not x.requires_grad:
            return
        if kept is not None:
            grad = fastdrop.dropout_backward(out.grad, kept, inplace=True, backend=backend)
        else:
            grad = fastdrop.dropout_backward_recompute(out.grad, p, seed=seed, stream=stream,
                                                       offset=offset, noise_shape=mask_shape,
                                                       inplace=True, backend=backend)
        x._accumulate(grad, owned=True)
    return out._with_backward(_backward), kept


def alpha_dropout(x, p, *, seed, stream, offset=0, training=True, noise_shape=None,
                  recompute=False, inplace=True, backend="auto"):
    """Alpha dropout (SELU networks) as a graph op: `fastdrop.alpha_dropout` forward.

    Kept elements become ``a * x + b`` and dropped ones the constant
    ``a * alpha' + b`` (Klambauer et al. 2017), so the gradient is ``a`` where
    kept and 0 where dropped: `fastdrop.alpha_dropout_backward` with the mask.

    Parameters
    ----------
    x : Tensor
    p : float
        Drop probability in [0, 1]; p = 0 is the identity.
    seed, stream, offset, training, recompute, inplace, noise_shape, backend
        As in `dropout`. With ``recompute=True`` backward regenerates the keep
        bits with `fastdrop.bernoulli_mask` (the same bits, so the same gradients).

    Returns
    -------
    y : Tensor
    mask : fastdrop.DropoutMask or None
        None with ``recompute=True`` or ``training=False``.
    """
    if not training:
        return as_tensor(x), None
    x = as_tensor(x)
    overwrite = inplace and _free_to_overwrite(x)  # backward reads neither x nor y
    data, mask = fastdrop.alpha_dropout(x.data, p, seed=seed, stream=stream, offset=offset,
                                        inplace=overwrite, noise_shape=noise_shape,
                                        backend=backend)
    out = _result(data, (x,), "alpha_dropout")
    x._overwritten = overwrite
    kept = None if recompute else mask
    mask_shape, p = mask.shape, mask.p

    def _backward():
        if not x.requires_grad:
            return
        used = kept
        if used is None:  # the same bits, from (seed, stream, offset)
            words = fastdrop.bernoulli_mask(math.prod(mask_shape), p, seed=seed, stream=stream,
                                            offset=offset, backend=backend)
            used = fastdrop.DropoutMask(words, shape=mask_shape, p=p, seed=seed, stream=stream,
                                        offset=offset)
        grad = fastdrop.alpha_dropout_backward(out.grad, used, inplace=True, backend=backend)
        x._accumulate(grad, owned=True)
    return out._with_backward(_backward), kept


def gaussian_dropout(x, p, *, seed, stream, offset=0, training=True, inplace=True,
                     backend="auto"):
    """Gaussian dropout as a graph op: multiply by N(1, p / (1 - p)) noise.

    The forward is `fastdrop.gaussian_dropout`; the backward multiplies the
    gradient by the same noise, regenerated from (seed, stream, offset) with
    `fastdrop.gaussian_dropout_backward`: nothing of x's size is kept.

    Parameters
    ----------
    x : Tensor
    p : float
        Rate in [0, 1): the noise variance is p / (1 - p).
    seed, stream, offset, training, inplace, backend
        As in `dropout`.

    Returns
    -------
    y : Tensor
        ``x * (1 + sigma * z)``, sigma = sqrt(p / (1 - p)).
    noise : fastdrop.GaussianNoise or None
        The coordinates that regenerate the noise; None with ``training=False``.
    """
    if not training:
        return as_tensor(x), None
    x = as_tensor(x)
    overwrite = inplace and _free_to_overwrite(x)  # backward reads neither x nor y
    data, noise = fastdrop.gaussian_dropout(x.data, p, seed=seed, stream=stream, offset=offset,
                                            inplace=overwrite, backend=backend)
    out = _result(data, (x,), "gaussian_dropout")
    x._overwritten = overwrite

    def _backward():
        if x.requires_grad:
            x._accumulate(fastdrop.gaussian_dropout_backward(out.grad, noise, inplace=True,
                                                             backend=backend), owned=True)
    return out._with_backward(_backward), noise


def dropconnect_linear(x, weight, bias, p, *, seed, stream, offset=0, training=True,
                       recompute=False, backend="auto"):
    """DropConnect affine map ``x @ weight_dropped + bias`` as one graph op (Wan et al. 2013).

    ``weight_dropped = fastdrop.dropconnect(weight, p, ...)``: each weight is
    dropped with probability p and the rest scaled by 1/(1-p); one weight mask
    serves the whole batch. Backward, with g the output gradient:
    ``dx = g @ weight_dropped.T``, ``dweight = dropout_backward(x.T @ g, mask)``,
    ``dbias = g.sum(0)``.

    Parameters
    ----------
    x : Tensor, shape (batch, in_features)
    weight : Tensor, shape (in_features, out_features)
        The layout of `Linear`.
    bias : Tensor of shape (out_features,), or None
    p : float
        Probability of dropping each weight.
    seed, stream, offset : int
        Mask-stream coordinates of the weight mask (as in `dropout`).
    training : bool, default True
        If False, return ``(x @ weight + bias, None)``: the full weights, unscaled.
    recompute : bool, default False
        Keep neither the dropped weights nor the mask between forward and
        backward: backward regenerates them from (seed, stream, offset). Same
        gradients, bit for bit.
    backend : str, default "auto"

    Returns
    -------
    y : Tensor, shape (batch, out_features)
    mask : fastdrop.DropoutMask or None
        The weight mask (``mask.shape == weight.shape``); None with
        ``recompute=True`` or ``training=False``.

    Raises
    ------
    ValueError
        If x or weight is not 2-D, or their inner dimensions differ.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    if not training:
        out = x @ weight
        return (out if bias is None else out + bias), None
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"dropconnect_linear needs x (batch, in) and weight (in, out), "
                         f"got shapes {x.shape} and {weight.shape}")
    dropped, mask = fastdrop.dropconnect(weight.data, p, seed=seed, stream=stream, offset=offset,
                                         backend=backend)
    data = matmul(x.data, dropped)
    if bias is not None:
        data = data + bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = _result(data, parents, "dropconnect_linear")
    kept_weight, kept_mask = (None, None) if recompute else (dropped, mask)
    p = mask.p

    def _backward():
        grad = out.grad
        if bias is not None and bias.requires_grad:
            bias._accumulate(grad.sum(axis=0), owned=True)
        if x.requires_grad:
            used = kept_weight
            if used is None:  # the same arithmetic on the same bits: the forward's array
                used = fastdrop.dropconnect(weight.data, p, seed=seed, stream=stream,
                                            offset=offset, backend=backend)[0]
            x._accumulate(grad @ used.T, owned=True)
        if weight.requires_grad:
            grad_weight = x.data.T @ grad
            if kept_mask is not None:
                grad_weight = fastdrop.dropout_backward(grad_weight, kept_mask, inplace=True,
                                                        backend=backend)
            else:
                grad_weight = fastdrop.dropout_backward_recompute(
                    grad_weight, p, seed=seed, stream=stream, offset=offset, inplace=True,
                    backend=backend)
            weight._accumulate(grad_weight, owned=True)
    return out._with_backward(_backward), kept_mask


def log_softmax(x, axis=-1):
    """log(softmax(x)) along ``axis``, computed stably.

    Parameters
    ----------
    x : Tensor
    axis : int, default -1

    Returns
    -------
    Tensor
        Same shape as x.
    """
    x = as_tensor(x)
    # The shift by the (constant) row maximum cancels in value and gradient; it keeps exp finite.
    shifted = x - x.data.max(axis=axis, keepdims=True)
    return shifted - shifted.exp().sum(axis=axis, keepdims=True).log()


def cross_entropy(logits, labels):
    """Mean cross-entropy of integer class labels under softmax(logits).

    Parameters
    ----------
    logits : Tensor, shape (n, classes)
        Unnormalised scores.
    labels : array_like of int, shape (n,)
        Class indices in [0, classes).

    Returns
    -------
    Tensor
        A scalar: ``-mean(log_softmax(logits)[i, labels[i]])``.

    Raises
    ------
    ValueError
        If the shapes disagree or a label is out of range.
    TypeError
        If the labels are not integers.
    """
    logits = as_tensor(logits)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy needs logits (n, classes) and labels (n,), "
                         f"got {logits.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), "
                         f"got values from {labels.min()} to {labels.max()}")
    return -log_softmax(logits)[np.arange(labels.size), labels].mean()
