"""Dropout of CPU tensors through fastdrop's NumPy API: the work behind every op.

A tensor reaches fastdrop as a NumPy view of its memory, no copy: float16/32/64 as
they are, bfloat16 as its uint16 bit patterns with ``dtype="bfloat16"`` (no ml_dtypes
needed). A result is a new tensor over the array fastdrop allocated (C order, as
``torch.empty_like`` gives for a C-contiguous input; NumPy asks for huge pages for large
arrays, which saves the page faults of fresh memory), or is written into
``torch.empty_like(input)`` when the input is not C-contiguous, so a result always has
the layout torch would give it.

Keys: a call's ``(seed, stream)`` are two int64 draws from a torch generator, read as
the unsigned 64-bit integers fastdrop takes (`key_values`).
"""
import contextlib
import math
import threading

import numpy as np
import torch

import fastdrop

from .. import num_threads
from .._internal import SERIAL_ELEMENTS, threads_were_set
from ..maskstream.spec import MAX_SEED, WORD_BITS

FLOAT_DTYPES = (torch.float16, torch.float32, torch.float64, torch.bfloat16)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def check_p(p):
    """Torch's Python check of a dropout probability: a ValueError outside [0, 1]."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def check_p_is_a_number(p):
    """ATen's check, which a NaN p reaches (after the rank checks): a RuntimeError."""
    if p != p:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {p}")


def check_tensor(input, where):
    """A TypeError unless input is a tensor (``where`` names the function in messages)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{where}: input must be a torch.Tensor, got {type(input).__name__}")


def check_input(input, where, meta=False):
    """What fastdrop takes: a dense CPU tensor of float16, float32, float64 or bfloat16.

    ``meta``: a meta tensor (shapes alone, as torch's ``device="meta"``) is taken too.
    """
    if not input.is_cpu and not (meta and input.is_meta):
        raise RuntimeError(f"{where}: fastdrop runs on the CPU, but input is on {input.device}; "
                           "use torch.nn.functional's dropout for tensors on other devices")
    if input.dtype not in FLOAT_DTYPES or input.layout is not torch.strided:
        raise TypeError(f"{where}: input must be a dense float16, float32, float64 or bfloat16 "
                        f"tensor, got {input.dtype} ({input.layout})")


def _draw_key_into(key, generator):
    """A call's ``(seed, stream)``: two 64-bit draws from torch's generator, into ``key``."""
    return key.random_(_INT64_MIN, _INT64_MAX, generator=generator)


def new_key(generator=None):
    """A new int64 tensor holding a call's key (`_draw_key_into`)."""
    return _draw_key_into(torch.empty(2, dtype=torch.int64), generator)


_buffers = threading.local()  # per thread: the eager calls' key, drawn into one tensor


def draw_key_values(generator=None):
    """`new_key`'s draws as ``(seed, stream)`` integers, into a tensor each thread reuses."""
    buffer = getattr(_buffers, "key", None)
    if buffer is None:
        with torch.inference_mode(False):  # a normal tensor, usable in and out of that mode
            buffer = _buffers.key = torch.empty(2, dtype=torch.int64)
    return key_values(_draw_key_into(buffer, generator))


def key_values(key):
    """``(seed, stream)`` of a key tensor as fastdrop's unsigned 64-bit integers."""
    seed, stream = key.tolist()
    return seed & MAX_SEED, stream & MAX_SEED


def mask_shape(shape, shared):
    """The mask's shape: ``shape`` with extent 1 along the ``shared`` axes."""
    return tuple(1 if axis in shared else extent for axis, extent in enumerate(shape))


def word_count(shape, shared):
    """Number of int64 words holding the mask of an input of ``shape`` (SymInts welcome)."""
    elements = math.prod(mask_shape(shape, shared) if shared else shape)
    return (elements + WORD_BITS - 1) // WORD_BITS


def as_array(tensor):
    """(NumPy view of tensor's memory, fastdrop's dtype request)."""
    if tensor.dtype is torch.bfloat16:
        return tensor.detach().view(torch.int16).numpy().view(np.uint16), "bfloat16"
    return tensor.numpy(force=True), None  # force: detached; a CPU tensor is not copied


def _threads(tensor):
    """fastdrop's own thread setting if the user chose one, else torch's intra-op threads."""
    if tensor.numel() < SERIAL_ELEMENTS:  # runs on one thread whatever the setting
        return None
    return fastdrop.get_num_threads() if threads_were_set() else torch.get_num_threads()


def _run(function, tensor, *arguments, inplace=False, **options):
    """``function(array of tensor, *arguments, **options)`` with the result in a tensor.

    Returns ``(result tensor, the rest of function's result or None)``.
    """
    array, request = as_array(tensor)
    if request is not None:
        options["dtype"] = request
    if inplace:
        result, target = function(array, *arguments, inplace=True, **options), tensor
    elif tensor.is_contiguous():  # fastdrop allocates: one step for usual calls, huge pages
        result = function(array, *arguments, **options)
        target = None
    else:
        target = torch.empty_like(tensor)
        result = function(array, *arguments, out=as_array(target)[0], **options)
    rest = None
    if isinstance(result, tuple):
        result, rest = result
    if target is None:
        target = torch.from_numpy(result)
        if request is not None:  # bfloat16 bit patterns, as uint16
            target = target.view(torch.bfloat16)
    return target, rest


def cpp_threads(tensor):
    """`_threads` as the C++ path takes it: fastdrop's chosen count for a large call, else 0.

    0 leaves the choice to the C++ path, which takes torch's intra-op threads.
    """
    if tensor.numel() < SERIAL_ELEMENTS or not threads_were_set():
        return 0
    return fastdrop.get_num_threads()


def _thread_count(tensor):
    """A with-block running fastdrop's kernels on the thread count `_threads` chooses."""
    threads = _threads(tensor)
    return contextlib.nullcontext() if threads is None else num_threads(threads)


def _threaded(tensor, function, *arguments, **options):
    """`_run` on the thread count `_threads` chooses."""
    with _thread_count(tensor):
        return _run(function, tensor, *arguments, **options)


def forward(x, p, seed, stream, shared, alpha, inplace=False):
    """Dropout (alpha dropout) of x: ``(y, mask words as an int64 tensor)``.

    ``shared`` are the axes along which one keep bit is shared (channel dropout).
    """
    options = {"broadcast_dims": shared} if shared else {}
    function = fastdrop.alpha_dropout if alpha else fastdrop.dropout
    y, mask = _threaded(x, function, p, seed=seed, stream=stream, inplace=inplace, **options)
    return y, torch.from_numpy(mask.words.view(np.int64))


def _stored_mask(shape, words, p, shared, seed=0, stream=0):
    """The DropoutMask of stored words: the backward reads its words, shape and p."""
    return fastdrop.DropoutMask(words, shape=mask_shape(shape, shared), p=p, seed=seed,
                                stream=stream, offset=0)


def backward_from_words(grad, words, p, shared, alpha):
    """Gradient of `forward` from its mask words: ``grad * scale`` where kept, +0.0 elsewhere.

    Words past the mask's (an operator's padding) are ignored.
    """
    words = words.numpy().view(np.uint64)
    count = word_count(grad.shape, shared)
    if len(words) != count:  # an operator's spare words
        words = words[:count]
    if not shared and not alpha:  # raw words apply by element count
        return _threaded(grad, fastdrop.dropout_backward, words, p=p)[0]
    mask = _stored_mask(grad.shape, words, p, shared)
    backward = fastdrop.alpha_dropout_backward if alpha else fastdrop.dropout_backward
    return _threaded(grad, backward, mask)[0]


def backward_recompute(grad, p, seed, stream, shared, alpha):
    """Gradient of `forward` with its mask regenerated from ``(seed, stream)``."""
    if not alpha:
        noise_shape = mask_shape(grad.shape, shared) if shared else None
        return _threaded(grad, fastdrop.dropout_backward_recompute, p, seed=seed, stream=stream,
                         noise_shape=noise_shape)[0]
    with _thread_count(grad):
        words = fastdrop.bernoulli_mask(math.prod(mask_shape(grad.shape, shared)), p, seed=seed,
                                        stream=stream)
        mask = _stored_mask(grad.shape, words, p, shared, seed, stream)
        return _run(fastdrop.alpha_dropout_backward, grad, mask)[0]
