"""Fused dropout for PyTorch: residual + dropout(x), residual + dropout(x + bias), softmax-dropout.

Operators ``fastdrop::dropout_add(x, residual, p, key) -> (y, words)`` and
``fastdrop::bias_dropout_add(x, bias, residual, p, key) -> (y, words)`` (CPU), each with
a fake implementation and a gradient: x's is ``fastdrop::dropout_backward`` from the
words, the residual's is grad, the bias's is x's summed over every axis but the last
(torch's sum, so double backward works). Their values are `fastdrop.dropout_add` and
`fastdrop.bias_dropout_add` of the tensors' memory with the key's (seed, stream): the
unfused composition, bit for bit (docs/mask-stream.md, section 11).

``fastdrop::softmax_dropout(x, p, key, dim, save_softmax) -> (y, softmax or empty, words)``
is `fastdrop.softmax_dropout` (section 12); its gradient is the operator
``fastdrop::softmax_dropout_backward(grad, softmax, words, p, dim)``, which has none of
its own (double backward raises).
"""
import math

import numpy as np
import torch

import fastdrop

from .._internal import softmax_dropout_of_rows
from . import _ops, _tensors
from .functional import _traced

__all__ = ["bias_dropout_add", "dropout_add", "softmax_dropout"]


def _fused_forward(function, x, arrays, p, key):
    """``function(*arrays, p, ...)`` into a tensor of x's layout: (y, int64 words, padded)."""
    seed, stream = _tensors.key_values(key)
    x_array, request = _tensors.as_array(x)
    options = {"seed": seed, "stream": stream, "dtype": request}
    target = None if x.is_contiguous() else torch.empty_like(x)
    if target is not None:
        options["out"] = _tensors.as_array(target)[0]
    with _tensors._thread_count(x):
        y, mask = function(x_array, *(_tensors.as_array(a)[0] for a in arrays), p, **options)
    if target is None:
        target = torch.from_numpy(y)
        if request is not None:  # bfloat16 bit patterns, as uint16
            target = target.view(torch.bfloat16)
    words = torch.from_numpy(mask.words.view(np.int64))
    if len(words) < _ops._MIN_WORDS:
        words = torch.cat([words, words.new_zeros(_ops._MIN_WORDS - len(words))])
    return target, words


def _fake(x):
    count = torch.sym_max(_ops._MIN_WORDS, _tensors.word_count(x.shape, ()))
    return torch.empty_like(x), x.new_empty(count, dtype=torch.int64)


@torch.library.custom_op("fastdrop::dropout_add", mutates_args=(), device_types="cpu")
def dropout_add_op(x: torch.Tensor, residual: torch.Tensor, p: float,
                   key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """residual + dropout(x) with the key's mask: (y, packed mask words, at least two)."""
    return _fused_forward(fastdrop.dropout_add, x, (residual,), p, key)


@dropout_add_op.register_fake
def _(x, residual, p, key):
    return _fake(x)


@torch.library.custom_op("fastdrop::bias_dropout_add", mutates_args=(), device_types="cpu")
def bias_dropout_add_op(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, p: float,
                        key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """residual + dropout(x + bias) with the key's mask: (y, packed mask words)."""
    return _fused_forward(fastdrop.bias_dropout_add, x, (bias, residual), p, key)


@bias_dropout_add_op.register_fake
def _(x, bias, residual, p, key):
    return _fake(x)


def _save_words(ctx, inputs, output):
    ctx.p = inputs[-2]
    ctx.save_for_backward(output[1])


def _grad_x(ctx, grad):
    (words,) = ctx.saved_tensors
    return _ops.dropout_backward(grad, words, ctx.p, [], False)


def _dropout_add_backward(ctx, grad, _grad_words):
    return _grad_x(ctx, grad), grad, None, None


def _bias_dropout_add_backward(ctx, grad, _grad_words):
    grad_x = _grad_x(ctx, grad)
    rows = math.prod(grad_x.shape[:-1])
    return grad_x, grad_x.reshape(rows, grad_x.shape[-1]).sum(0), grad, None, None


dropout_add_op.register_autograd(_dropout_add_backward, setup_context=_save_words)
bias_dropout_add_op.register_autograd(_bias_dropout_add_backward, setup_context=_save_words)


def _check(tensors, p, where):
    """torch's p check, then CPU float tensors of one dtype."""
    _tensors.check_p(p)
    _tensors.check_p_is_a_number(p)
    for tensor in tensors:
        _tensors.check_tensor(tensor, where)
        _tensors.check_input(tensor, where)
    if len({tensor.dtype for tensor in tensors}) > 1:
        raise TypeError(f"{where}: x, residual (and bias) must have one dtype, got "
                        f"{', '.join(str(tensor.dtype) for tensor in tensors)}")


def _key(x, generator, where):
    if generator is None:
        return _ops.draw_key(x)
    if _traced(x):
        raise RuntimeError(f"{where}: generator= is for eager calls; under torch.compile, "
                           "torch.export and tensor subclasses the keys come from the default "
                           "CPU generator (seed it with torch.manual_seed)")
    return _tensors.new_key(generator)


def _deliver(y, residual, inplace):
    return residual.copy_(y) if inplace else y


def dropout_add(x, residual, p=0.5, training=True, inplace=False, *, generator=None):
    """``residual + dropout(x)`` in one pass, with autograd: fastdrop's fused sub-layer output.

    Bit for bit ``residual + fastdrop.torch.dropout(x, p)`` with the same key (and
    `fastdrop.dropout_add` of the tensors' values): dropout's product rounded to the
    dtype, then the sum rounded to the dtype. The mask is kept for backward as packed
    bits (1 bit per element).

    Parameters
    ----------
    x, residual : torch.Tensor
        CPU tensors of one shape and dtype (float16, float32, float64 or bfloat16).
    p : float, default 0.5
        Probability of an element of x to be zeroed.
    training : bool, default True
        If False: ``residual + x``.
    inplace : bool, default False
        Write the result into ``residual`` and return it (torch's in-place rules apply:
        refused for a leaf that requires grad).
    generator : torch.Generator, optional
        Where the (seed, stream) come from (eager calls); torch's default CPU
        generator if None.

    Returns
    -------
    torch.Tensor
        ``residual + dropout(x)``.

    Raises
    ------
    ValueError
        ``p`` outside [0, 1]; shapes differ.
    TypeError
        A tensor is not a dense CPU float tensor, or the dtypes differ.

    Examples
    --------
    >>> import torch, fastdrop.torch
    >>> x, residual = torch.ones(8), torch.full((8,), 10.0)
    >>> y = fastdrop.torch.dropout_add(x, residual, 0.5)
    >>> sorted(set(y.tolist())) in ([10.0, 12.0], [10.0], [12.0])
    True
    """
    _check((x, residual), p, "dropout_add")
    if not training:
        return residual.add_(x) if inplace else residual + x
    y = dropout_add_op(x, residual, float(p), _key(x, generator, "dropout_add"))[0]
    return _deliver(y, residual, inplace)


def bias_dropout_add(x, bias, residual, p=0.5, training=True, inplace=False, *, generator=None):
    """``residual + dropout(x + bias)`` in one pass, with autograd; the bias along x's last axis.

    Bit for bit the unfused composition with the same key (`fastdrop.bias_dropout_add`).
    The bias's gradient is x's summed over every axis but the last, by torch's ``sum``.

    Parameters
    ----------
    x, residual : torch.Tensor
        CPU tensors of one shape and dtype, x with at least one axis.
    bias : torch.Tensor
        x's dtype, shape ``(x.shape[-1],)``.
    p, training, inplace, generator
        As in `dropout_add`.

    Returns
    -------
    torch.Tensor
        ``residual + dropout(x + bias)``.

    Raises
    ------
    ValueError, TypeError
        As in `dropout_add`; the bias's shape is not ``(x.shape[-1],)``.
    """
    _check((x, bias, residual), p, "bias_dropout_add")
    if not training:
        return residual.add_(x + bias) if inplace else residual + (x + bias)
    y = bias_dropout_add_op(x, bias, residual, float(p), _key(x, generator, "bias_dropout_add"))[0]
    return _deliver(y, residual, inplace)


# ---------------------------------------------------------------- softmax, then dropout


def _softmax_arrays(x, p, seed, stream, dim, save_softmax):
    """`fastdrop.softmax_dropout` of x's memory: (y, softmax or an empty tensor, int64 words).

    Results have x's layout: new NumPy arrays for a contiguous x (NumPy asks for huge
    pages, which saves the page faults of fresh memory), else ``torch.empty_like``.
    """
    x_array, request = _tensors.as_array(x)
    contiguous = x.is_contiguous()

    def new_result():
        if contiguous:
            result = torch.from_numpy(np.empty(x_array.shape, x_array.dtype))
            return result if request is None else result.view(torch.bfloat16)
        return torch.empty_like(x)

    y = new_result()
    softmax = new_result() if save_softmax else x.new_empty(0)
    if contiguous and request is None and p > 0 and dim in (-1, x.dim() - 1):
        # the usual call (attention's last axis): straight to the kernel, checked here
        threads = _tensors._threads(x) or fastdrop.get_num_threads()
        words = softmax_dropout_of_rows(x_array, y.numpy(), softmax.numpy() if save_softmax
                                        else None, p, seed, stream, threads)
        return y, softmax, _padded_words(words)
    options = {"seed": seed, "stream": stream, "dtype": request, "out": _tensors.as_array(y)[0]}
    if save_softmax:
        options["softmax_out"] = _tensors.as_array(softmax)[0]
    with _tensors._thread_count(x):
        _, mask = fastdrop.softmax_dropout(x_array, p, dim, **options)
    return y, softmax, _padded_words(mask.words)


def _padded_words(words):
    words = torch.from_numpy(words.view(np.int64))
    if len(words) < _ops._MIN_WORDS:
        words = torch.cat([words, words.new_zeros(_ops._MIN_WORDS - len(words))])
    return words


@torch.library.custom_op("fastdrop::softmax_dropout", mutates_args=(), device_types="cpu")
def softmax_dropout_op(x: torch.Tensor, p: float, key: torch.Tensor, dim: int,
                       save_softmax: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dropout(softmax(x, dim)) with the key's mask: (y, the softmax or an empty tensor, words)."""
    return _softmax_arrays(x, p, *_tensors.key_values(key), dim, save_softmax)


@softmax_dropout_op.register_fake
def _(x, p, key, dim, save_softmax):
    count = torch.sym_max(_ops._MIN_WORDS, _tensors.word_count(x.shape, ()))
    softmax = torch.empty_like(x) if save_softmax else x.new_empty(0)
    return torch.empty_like(x), softmax, x.new_empty(count, dtype=torch.int64)


@torch.library.custom_op("fastdrop::softmax_dropout_backward", mutates_args=(),
                         device_types="cpu")
def softmax_dropout_backward_op(grad: torch.Tensor, softmax: torch.Tensor, words: torch.Tensor,
                                p: float, dim: int) -> torch.Tensor:
    """x's gradient of `softmax_dropout_op` from its softmax and mask words."""
    return _softmax_backward_arrays(grad, softmax, words, p, dim)


def _softmax_backward_arrays(grad, softmax, words, p, dim, inplace=False):
    """`fastdrop.softmax_dropout_backward` of the tensors' memory, into a new tensor or grad.

    ``inplace``: into grad itself, for a caller that owns it (eager backward formulas).
    """
    count = _tensors.word_count(grad.shape, ())
    mask = fastdrop.DropoutMask(words.numpy().view(np.uint64)[:count], shape=tuple(grad.shape),
                                p=p, seed=0, stream=0, offset=0)
    grad_array, request = _tensors.as_array(grad)
    result = grad if inplace else torch.empty_like(grad)
    with _tensors._thread_count(grad):
        fastdrop.softmax_dropout_backward(grad_array, _tensors.as_array(softmax)[0], mask, dim,
                                          out=_tensors.as_array(result)[0], dtype=request)
    return result


@softmax_dropout_backward_op.register_fake
def _(grad, softmax, words, p, dim):
    return torch.empty_like(grad)


def _save_softmax(ctx, inputs, output):
    _, ctx.p, _, ctx.dim, _ = inputs
    ctx.save_for_backward(output[1], output[2])


def _softmax_dropout_backward(ctx, grad, grad_softmax, _grad_words):
    softmax, words = ctx.saved_tensors
    if softmax.numel() != grad.numel():
        raise RuntimeError("fastdrop::softmax_dropout: backward needs the softmax saved; call it "
                           "with save_softmax=True when x requires grad")
    grad_x = softmax_dropout_backward_op(grad, softmax, words, ctx.p, ctx.dim)
    if grad_softmax is not None:  # the softmax output used too: its own (dropout-free) gradient
        grad_x = grad_x + softmax * (grad_softmax
                                     - (grad_softmax * softmax).sum(ctx.dim, keepdim=True))
    return grad_x, None, None, None, None


def _no_double_backward(ctx, grad):
    raise RuntimeError("fastdrop::softmax_dropout_backward has no gradient of its own: double "
                       "backward through fastdrop.torch.softmax_dropout is not supported")


softmax_dropout_op.register_autograd(_softmax_dropout_backward, setup_context=_save_softmax)
softmax_dropout_backward_op.register_autograd(_no_double_backward,
                                              setup_context=lambda ctx, inputs, output: None)


class EagerSoftmaxDropout(torch.autograd.Function):
    """Eager `softmax_dropout_op`: its body and gradient without the operator's dispatch.

    ``apply(x, _ops.Opaque((p, seed, stream, dim, save_softmax))) -> (y, softmax or empty)``. A
    Python custom operator's dispatch costs tens of microseconds a call, a tenth of the
    softmax of an attention layer; traced calls take the operator. The softmax is an
    output, as the operator's, so a create_graph backward goes through the backward
    operator, which refuses double backward.
    """

    @staticmethod
    def forward(ctx, x, settings):
        ctx.p, seed, stream, ctx.dim, save = settings.values
        y, softmax, words = _softmax_arrays(x, ctx.p, seed, stream, ctx.dim, save)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(softmax, words)
        return y, softmax

    @staticmethod
    def backward(ctx, grad, _grad_softmax):
        if grad is None:
            return None, None
        softmax, words = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the operator, which refuses double backward
            return softmax_dropout_backward_op(grad, softmax, words, ctx.p, ctx.dim), None
        return _softmax_backward_arrays(grad, softmax, words, ctx.p, ctx.dim), None


def softmax_dropout(input, p=0.5, dim=-1, training=True, *, generator=None):
    """``dropout(softmax(input, dim), p)`` in one pass, with autograd: attention probabilities.

    Bit for bit ``fastdrop.torch.dropout`` of the softmax this call computes (returned by
    `fastdrop.softmax_dropout` as ``softmax_out``), with the same key: the mask is
    fastdrop's for the (seed, stream) drawn from torch's generator exactly as
    `fastdrop.torch.dropout` draws it (none when ``training`` is False or p is 0). The
    softmax itself is within the ulp bound of docs/fused.md of the reference's. Backward
    uses the saved softmax and the packed mask (1 bit per element); the softmax is saved
    only when input requires grad.

    Parameters
    ----------
    input : torch.Tensor
        A dense CPU tensor of float16, float32, float64 or bfloat16.
    p : float, default 0.5
        Probability of an element to be zeroed.
    dim : int, default -1
        The dimension the softmax normalises along.
    training : bool, default True
        If False: the softmax alone.
    generator : torch.Generator, optional
        Where the (seed, stream) come from (eager calls); torch's default CPU generator if
        None.

    Returns
    -------
    torch.Tensor
        ``dropout(softmax(input, dim))``, of input's shape and dtype.

    Raises
    ------
    ValueError
        ``p`` outside [0, 1].
    IndexError
        ``dim`` out of range, as torch's softmax.
    TypeError
        input is not a dense CPU float tensor.

    Examples
    --------
    >>> import torch, fastdrop.torch
    >>> scores = torch.randn(2, 4, 8, 8)
    >>> probabilities = fastdrop.torch.softmax_dropout(scores, 0.1)
    >>> probabilities.shape
    torch.Size([2, 4, 8, 8])
    """
    _tensors.check_tensor(input, "softmax_dropout")
    _tensors.check_p(p)
    _tensors.check_p_is_a_number(p)
    _tensors.check_input(input, "softmax_dropout")
    dims = max(input.dim(), 1)
    if not -dims <= dim < dims:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-dims}, "
                         f"{dims - 1}], but got {dim})")
    scalar = input.dim() == 0
    x = input.reshape(1) if scalar else input
    save = x.requires_grad and torch.is_grad_enabled()
    dropping = training and p != 0  # else, as fastdrop.torch.dropout, no key drawn
    if not _traced(x):
        seed, stream = _tensors.draw_key_values(generator) if dropping else (0, 0)
        settings = (float(p) if dropping else 0.0, seed, stream, dim % dims, save)
        if save:
            y = EagerSoftmaxDropout.apply(x, _ops.Opaque(settings))[0]
        else:  # nothing for autograd to record
            y = _softmax_arrays(x, *settings)[0]
    else:
        if dropping:
            key = _key(x, generator, "softmax_dropout")
        else:
            key, p = torch.zeros(2, dtype=torch.int64), 0.0
        y = softmax_dropout_op(x, float(p), key, dim % dims, save)[0]
    return y.reshape(()) if scalar else y
