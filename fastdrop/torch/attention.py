"""Scaled dot-product attention whose dropout is fastdrop's: `scaled_dot_product_attention`.

Torch's ``F.scaled_dot_product_attention`` on the CPU leaves its flash kernel for the
math path whenever ``dropout_p > 0``: softmax, a noise tensor of the attention
weights' size, a multiply, each kept for backward. Here the attention weights' dropout
is fastdrop's, and autograd keeps q, k, v, the softmax and the mask's packed bits (1
bit per weight): backward regenerates the dropped weights from the softmax and the
bits. ``dropout_p == 0`` calls torch's own function.

The work is the ``fastdrop::attention_dropout`` operator (a fake implementation for
tracing, its gradient registered with ``register_autograd``), so ``torch.compile`` and
``torch.export`` trace it.
"""
import math

import torch
import torch.nn.functional as F

from . import _ops, _tensors, fused
from .functional import _traced

__all__ = ["scaled_dot_product_attention"]


# ---- softmax + dropout: fastdrop's fused operator


def _softmax_dropout(scores, p, key):
    """(fastdrop's dropout of ``softmax(scores, -1)`` with ``key``, that softmax, mask words).

    `fastdrop.softmax_dropout` in one pass (docs/mask-stream.md, section 12): the
    dropout is exactly `fastdrop.torch.dropout` of the softmax rounded to the dtype, so
    the same key gives the same mask.
    """
    return fused._softmax_arrays(scores, p, *_tensors.key_values(key), -1, True)


def _softmax_dropout_backward(grad, softmax, words, p):
    """Gradient of `_softmax_dropout` with respect to its scores (one fused pass).

    ``grad`` is the backward's own (a product just made): eager calls write the result
    into it, no new tensor of the weights' size; traced calls take the operator.
    """
    if _traced(grad):
        return fused.softmax_dropout_backward_op(grad, softmax, words, p, -1)
    return fused._softmax_backward_arrays(grad, softmax, words, p, -1, inplace=True)


def _dropped_again(softmax, words, p):
    """The dropped softmax that `_softmax_dropout` returned, from its softmax and words.

    The backward of dropout scales what its words keep and zeroes the rest, as the
    forward did: the same values, bit for bit. Eager calls take the C++ operator where
    it is built (no custom operator's dispatch).
    """
    cpp = None if _traced(softmax) else _ops._cpp_ops()
    if cpp is not None:
        return cpp.dropout_backward(softmax, words, p)
    return _ops.dropout_backward(softmax, words, p, [], False)


# ---- the operator


def _batch_shape(query, key, mask):
    shape = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    if mask is not None:
        shape = torch.broadcast_shapes(shape, mask.shape[:-2])
    return shape


@torch.library.custom_op("fastdrop::attention_dropout", mutates_args=(), device_types="cpu")
def attention_dropout(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      mask: torch.Tensor | None, p: float, scale: float,
                      rng_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(attention output, softmax of the scores, dropout mask words) of a float ``mask``."""
    scores = torch.matmul(query, key.transpose(-2, -1)).mul_(scale)  # scaled in place
    dead_rows = None
    if mask is not None:
        scores = scores + mask
        # rows masked whole: zeros, as torch's math path gives them, not softmax's NaN
        dead_rows = torch.isneginf(mask).all(-1, keepdim=True)
        if dead_rows.any():
            scores.masked_fill_(dead_rows, 0.0)
        else:
            dead_rows = None
    dropped, softmax, words = _softmax_dropout(scores, p, rng_key)
    if dead_rows is not None:
        dropped.masked_fill_(dead_rows, 0.0)
        softmax.masked_fill_(dead_rows, 0.0)
    return torch.matmul(dropped, value), softmax, words


@attention_dropout.register_fake
def _(query, key, value, mask, p, scale, rng_key):
    batch = _batch_shape(query, key, mask)
    length, source = query.shape[-2], key.shape[-2]
    softmax = query.new_empty((*batch, length, source))
    count = torch.sym_max(2, _tensors.word_count(softmax.shape, ()))
    return (query.new_empty((*batch, length, value.shape[-1])), softmax,
            query.new_empty(count, dtype=torch.int64))


def _save(ctx, inputs, output):
    query, key, value, mask, ctx.p, ctx.scale, _ = inputs
    ctx.set_materialize_grads(False)  # the softmax and words outputs get no gradient: no zeros
    ctx.mask_shape = None if mask is None else mask.shape
    ctx.save_for_backward(query, key, value, output[1], output[2])


def _gradients(ctx, grad, _grad_softmax, _grad_words):
    query, key, value, softmax, words = ctx.saved_tensors
    needs_query, needs_key, needs_value, needs_mask = ctx.needs_input_grad[:4]
    grad_query = grad_key = grad_value = grad_mask = None
    if grad is None:  # only the softmax or the words were used (gradients not materialised)
        return grad_query, grad_key, grad_value, grad_mask, None, None, None
    if needs_value:
        dropped = _dropped_again(softmax, words, ctx.p)
        grad_value = torch.matmul(dropped.transpose(-2, -1), grad).sum_to_size(value.shape)
    if needs_query or needs_key or needs_mask:
        grad_dropped = torch.matmul(grad, value.transpose(-2, -1))
        grad_scores = _softmax_dropout_backward(grad_dropped, softmax, words, ctx.p)
        if needs_query:
            grad_query = torch.matmul(grad_scores, key).mul_(ctx.scale).sum_to_size(query.shape)
        if needs_key:
            grad_key = torch.matmul(grad_scores.transpose(-2, -1), query).mul_(ctx.scale)
            grad_key = grad_key.sum_to_size(key.shape)
        if needs_mask:
            grad_mask = grad_scores.sum_to_size(ctx.mask_shape)
    gradients = (grad_query, grad_key, grad_value, grad_mask)
    if torch.is_grad_enabled():  # create_graph: these gradients are not differentiable in turn
        gradients = tuple(_not_differentiable(gradient) if gradient is not None else None
                          for gradient in gradients)
    return *gradients, None, None, None


def _not_differentiable(gradient):
    """``gradient``, whose own backward raises (as ``once_differentiable`` makes it)."""
    return torch._C._functions.DelayedError(
        "fastdrop.torch.scaled_dot_product_attention has first derivatives only: double "
        "backward through it is not supported", 1)(gradient)


attention_dropout.register_autograd(_gradients, setup_context=_save)


# ---- the public function


def _additive_mask(attn_mask, is_causal, query, key):
    """The float mask added to the scores: torch's rules for ``attn_mask`` and ``is_causal``."""
    if is_causal:
        if attn_mask is not None:
            raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be "
                               "set when is_causal=True")
        length, source = query.shape[-2], key.shape[-2]
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
    if attn_mask is None:
        return None
    if attn_mask.dtype is torch.bool:
        return torch.zeros(attn_mask.shape, dtype=query.dtype,
                           device=query.device).masked_fill_(~attn_mask, -math.inf)
    if attn_mask.dtype != query.dtype:
        raise RuntimeError(f"Expected attn_mask dtype to be bool or float or to match query "
                           f"dtype, but got attn_mask.dtype: {attn_mask.dtype} and "
                           f"query.dtype: {query.dtype} instead.")
    return attn_mask


def _grouped(query, key, value):
    """key and value with their heads repeated to query's (``enable_gqa``), as torch does."""
    heads, key_heads = query.shape[-3], key.shape[-3]
    if heads == key_heads:
        return key, value
    if key_heads == 0 or heads % key_heads or value.shape[-3] != key_heads:
        raise RuntimeError(f"scaled_dot_product_attention: with enable_gqa, query's heads "
                           f"({heads}) must be a multiple of key's and value's ({key_heads}, "
                           f"{value.shape[-3]})")
    repeats = heads // key_heads
    return key.repeat_interleave(repeats, -3), value.repeat_interleave(repeats, -3)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, *,
                                 generator=None):
    """``torch.nn.functional.scaled_dot_product_attention`` with fastdrop's dropout.

    ``softmax(query @ key.T * scale + mask) @ value``, with the attention weights
    (the softmax) dropped with probability ``dropout_p`` and the others scaled by
    ``1 / (1 - dropout_p)``. The mask is fastdrop's (docs/mask-stream.md) for a (seed,
    stream) drawn from torch's generator: `fastdrop.torch.dropout` of the softmax with
    that key gives the same bits. Autograd keeps query, key, value, the softmax and
    the mask's packed bits, no noise tensor. ``dropout_p == 0`` calls torch's own.

    Parameters
    ----------
    query : torch.Tensor
        (..., L, E) CPU tensor of float16, float32, float64 or bfloat16.
    key : torch.Tensor
        (..., S, E), query's dtype.
    value : torch.Tensor
        (..., S, Ev), query's dtype.
    attn_mask : torch.Tensor, optional
        Broadcastable to (..., L, S): bool (True takes part in attention) or a float
        tensor of query's dtype added to the scores.
    dropout_p : float, default 0.0
        Probability of an attention weight to be zeroed, in [0, 1].
    is_causal : bool, default False
        Attend only to positions at or before each query's (the lower triangle of
        (L, S)); not together with ``attn_mask``.
    scale : float, optional
        The scores' factor; ``1 / sqrt(E)`` if None.
    enable_gqa : bool, default False
        Grouped-query attention: key and value may have fewer heads (axis -3), each
        shared by ``query heads / key heads`` query heads.
    generator : torch.Generator, optional
        Where the (seed, stream) is drawn from (eager calls); torch's default CPU
        generator if None.

    Returns
    -------
    torch.Tensor
        (..., L, Ev).

    Raises
    ------
    ValueError
        ``dropout_p`` outside [0, 1].
    TypeError
        A tensor that fastdrop does not take (with ``dropout_p > 0``).
    RuntimeError
        A tensor not on the CPU (with ``dropout_p > 0``); ``attn_mask`` with
        ``is_causal``; ``generator=`` under torch.compile; and torch's own errors.

    Examples
    --------
    >>> import torch, fastdrop.torch
    >>> q = k = v = torch.randn(2, 4, 16, 8)
    >>> out = fastdrop.torch.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    >>> out.shape
    torch.Size([2, 4, 16, 8])
    """
    _tensors.check_p(dropout_p)
    if dropout_p == 0:
        return F.scaled_dot_product_attention(query, key, value, attn_mask, 0.0, is_causal,
                                              scale=scale, enable_gqa=enable_gqa)
    for tensor in (query, key, value):
        _tensors.check_tensor(tensor, "scaled_dot_product_attention")
        _tensors.check_input(tensor, "scaled_dot_product_attention")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise RuntimeError(f"Expected query, key, and value to have the same dtype, but got "
                           f"query.dtype: {query.dtype} key.dtype: {key.dtype} and "
                           f"value.dtype: {value.dtype} instead.")
    if enable_gqa:
        key, value = _grouped(query, key, value)
    mask = _additive_mask(attn_mask, is_causal, query, key)
    factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    if _traced(query):
        if generator is not None:
            raise RuntimeError("scaled_dot_product_attention: generator= is for eager calls; "
                               "under torch.compile, torch.export and tensor subclasses the "
                               "keys come from the default CPU generator")
        rng_key = _ops.draw_key(query)
    else:
        rng_key = _tensors.new_key(generator)
    return attention_dropout(query, key, value, mask, float(dropout_p), factor, rng_key)[0]
