"""The ``fastdrop`` operators of torch.library, and their eager twins.

Operators (CPU only), each with a fake implementation for tracing and, where it has a
gradient, one registered with ``register_autograd``:

- ``fastdrop::draw_key(Tensor like) -> Tensor``: a call's (seed, stream) drawn from
  torch's default CPU generator, tagged ``nondeterministic_seeded`` so compiled graphs
  keep it, in program order, rather than fold or repeat it;
- ``fastdrop::dropout(x, p, key, shared_dims, alpha) -> (y, words)``: dropout (or alpha
  dropout) and its packed mask (int64 words, 1 bit per mask element, at least 2 words);
- ``fastdrop::dropout_backward(grad, words, p, shared_dims, alpha, input=None)``: the
  gradient from those words (``input``, the forward's, is kept, not read: see `_from_words`);
- ``fastdrop::dropout_recompute(x, p, key, shared_dims, alpha) -> y`` and
  ``fastdrop::dropout_backward_recompute(grad, p, key, shared_dims, alpha)``: the pair
  that keeps only the key for backward.

The backward operators are linear in ``grad``, so each is its own gradient: double
backward works. ``torch.compile`` and ``torch.export`` trace these operators. Eager
calls take the C++ path (`fastdrop.torch._build`, ``csrc/ops.cpp``) where it is built,
else the twins below, autograd Functions over the same computations
(`fastdrop.torch._tensors`): a Python custom operator's dispatch costs more than a
small dropout itself.
"""
from typing import Optional

import torch

from . import _build, _tensors

_NONDETERMINISTIC = (torch.Tag.nondeterministic_seeded,)
# the words output has at least 2 entries, so its length is never 1 whatever a dynamic
# dimension is: a length that could be 1 makes torch.export guard on the dimension
_MIN_WORDS = 2


def _cpp_kernels():
    """The C++ path's computing operators (``torch.ops.fastdrop_cpp``) where it is on, else None.

    The operators' bodies run there: no NumPy views, results from torch's allocator, and a
    few Python layers fewer per call, which a compiled step pays on every call
    (docs/development/compiled.md). The bits are the same either way.
    """
    return None if _build.ops() is None else torch.ops.fastdrop_cpp


@torch.library.custom_op("fastdrop::draw_key", mutates_args=(), device_types="cpu",
                         tags=_NONDETERMINISTIC)
def draw_key(like: torch.Tensor) -> torch.Tensor:
    """The next (seed, stream) from torch's default CPU generator; ``like`` orders the draw."""
    return _tensors.new_key()


@draw_key.register_fake
def _(like):
    return like.new_empty(2, dtype=torch.int64)


@torch.library.custom_op("fastdrop::dropout", mutates_args=(), device_types="cpu")
def dropout(x: torch.Tensor, p: float, key: torch.Tensor, shared_dims: list[int],
            alpha: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropout of x with the key's mask: (y, packed mask words, at least two of them)."""
    kernels = _cpp_kernels()
    if kernels is not None:
        y, words = kernels.dropout_keyed(x, p, *key.tolist(), True, _tensors.cpp_threads(x),
                                         shared_dims, alpha)
    else:
        y, words = _tensors.forward(x, p, *_tensors.key_values(key), tuple(shared_dims), alpha)
    if len(words) < _MIN_WORDS:
        words = torch.cat([words, words.new_zeros(_MIN_WORDS - len(words))])
    return y, words


@dropout.register_fake
def _(x, p, key, shared_dims, alpha):
    count = torch.sym_max(_MIN_WORDS, _tensors.word_count(x.shape, shared_dims))
    return torch.empty_like(x), x.new_empty(count, dtype=torch.int64)


@torch.library.custom_op("fastdrop::dropout_backward", mutates_args=(), device_types="cpu")
def dropout_backward(grad: torch.Tensor, words: torch.Tensor, p: float, shared_dims: list[int],
                     alpha: bool, input: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gradient of `dropout` from its mask words.

    ``input``, the forward's input, is not read: `dropout`'s gradient passes it so that
    a compiled graph keeps that tensor for backward (see `_from_words`).
    """
    kernels = _cpp_kernels()
    if kernels is not None:
        return kernels.dropout_backward(grad, words, p, _tensors.cpp_threads(grad), shared_dims,
                                        alpha)
    return _tensors.backward_from_words(grad, words, p, tuple(shared_dims), alpha)


@dropout_backward.register_fake
def _(grad, words, p, shared_dims, alpha, input=None):
    return torch.empty_like(grad)


@torch.library.custom_op("fastdrop::dropout_recompute", mutates_args=(), device_types="cpu")
def dropout_recompute(x: torch.Tensor, p: float, key: torch.Tensor, shared_dims: list[int],
                      alpha: bool) -> torch.Tensor:
    """Dropout of x whose backward regenerates the mask from the key."""
    kernels = _cpp_kernels()
    if kernels is not None:
        return kernels.dropout_keyed(x, p, *key.tolist(), False, _tensors.cpp_threads(x),
                                     shared_dims, alpha)[0]
    return _tensors.forward(x, p, *_tensors.key_values(key), tuple(shared_dims), alpha)[0]


@dropout_recompute.register_fake
def _(x, p, key, shared_dims, alpha):
    return torch.empty_like(x)


@torch.library.custom_op("fastdrop::dropout_backward_recompute", mutates_args=(),
                         device_types="cpu")
def dropout_backward_recompute(grad: torch.Tensor, p: float, key: torch.Tensor,
                               shared_dims: list[int], alpha: bool) -> torch.Tensor:
    """Gradient of `dropout_recompute`, its mask regenerated from the key."""
    kernels = _cpp_kernels()
    if kernels is not None:
        return kernels.dropout_backward_recompute(grad, p, *key.tolist(),
                                                  _tensors.cpp_threads(grad), shared_dims, alpha)
    return _tensors.backward_recompute(grad, p, *_tensors.key_values(key), tuple(shared_dims),
                                       alpha)


@dropout_backward_recompute.register_fake
def _(grad, p, key, shared_dims, alpha):
    return torch.empty_like(grad)


def _save_words(ctx, inputs, output):
    x, ctx.p, _, ctx.shared_dims, ctx.alpha = inputs
    # the input only in graphs being compiled (see _from_words); eager keeps the words alone
    ctx.save_for_backward(output[1], x if torch.compiler.is_compiling() else None)


def _save_words_of_backward(ctx, inputs, output):
    _, words, ctx.p, ctx.shared_dims, ctx.alpha, _ = inputs
    ctx.save_for_backward(words, None)


def _from_words(ctx, grad, *_unused):
    """The gradient from the mask words, handed the forward's input too.

    The operator is opaque to the compiler: for ReLU then dropout, the partitioner would
    otherwise keep ReLU's backward as a bool mask (1 byte per element), which Inductor's
    CPU code writes and reads many times slower than the float ReLU output it then keeps
    (docs/development/compiled.md). Outside compilation (tensor subclasses) ``x`` is None.
    """
    words, x = ctx.saved_tensors
    return (dropout_backward(grad, words, ctx.p, ctx.shared_dims, ctx.alpha, x),
            None, None, None, None, None)[:len(ctx.needs_input_grad)]


def _save_key(ctx, inputs, output):  # the same arguments in both operators of the pair
    _, ctx.p, key, ctx.shared_dims, ctx.alpha = inputs
    ctx.save_for_backward(key)


def _recompute(ctx, grad):
    (key,) = ctx.saved_tensors
    return (dropout_backward_recompute(grad, ctx.p, key, ctx.shared_dims, ctx.alpha),
            None, None, None, None)


dropout.register_autograd(_from_words, setup_context=_save_words)
dropout_backward.register_autograd(_from_words, setup_context=_save_words_of_backward)
dropout_recompute.register_autograd(_recompute, setup_context=_save_key)
dropout_backward_recompute.register_autograd(_recompute, setup_context=_save_key)


class EagerDropout(torch.autograd.Function):
    """Eager dropout: the ``fastdrop::dropout`` or ``dropout_recompute`` op without dispatch.

    ``apply(x, settings)`` with ``settings = (p, seed, stream, shared_dims, alpha,
    recompute, inplace)`` (one argument: Function.apply inspects each); in place, x is
    overwritten and marked dirty, as torch's in-place ops are.
    """

    @staticmethod
    def forward(ctx, x, settings):
        p, seed, stream, shared_dims, alpha, recompute, inplace = settings
        y, words = _tensors.forward(x, p, seed, stream, shared_dims, alpha, inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.recompute = recompute
        if recompute:  # two integers, nothing of size n
            ctx.mask = (p, seed, stream, shared_dims, alpha)
        else:
            ctx.mask = (p, shared_dims, alpha)
            ctx.save_for_backward(words)
        return y

    @staticmethod
    def backward(ctx, grad):
        if ctx.recompute:
            if torch.is_grad_enabled():  # create_graph: a backward differentiable in turn
                return EagerBackwardRecompute.apply(grad, ctx.mask), None
            return _tensors.backward_recompute(grad, *ctx.mask), None
        mask = (*ctx.saved_tensors, *ctx.mask)
        if torch.is_grad_enabled():
            return EagerBackwardFromWords.apply(grad, mask), None
        return _tensors.backward_from_words(grad, *mask), None


class EagerBackwardFromWords(torch.autograd.Function):
    """Eager ``fastdrop::dropout_backward``: linear in grad, so its own gradient.

    ``apply(grad, (words, p, shared_dims, alpha))``.
    """

    @staticmethod
    def forward(ctx, grad, mask):
        words, *ctx.mask = mask
        ctx.save_for_backward(words)
        return _tensors.backward_from_words(grad, *mask)

    @staticmethod
    def backward(ctx, grad):
        return EagerBackwardFromWords.apply(grad, (*ctx.saved_tensors, *ctx.mask)), None


class EagerBackwardRecompute(torch.autograd.Function):
    """Eager ``fastdrop::dropout_backward_recompute``: linear in grad, so its own gradient.

    ``apply(grad, (p, seed, stream, shared_dims, alpha))``.
    """

    @staticmethod
    def forward(ctx, grad, mask):
        ctx.mask = mask
        return _tensors.backward_recompute(grad, *mask)

    @staticmethod
    def backward(ctx, grad):
        return EagerBackwardRecompute.apply(grad, ctx.mask), None


# Function.apply's Python wrapper binds default arguments and unwraps functorch's tensors;
# the eager path has neither (functional._traced sends functorch's tensors to the
# operators), so it calls the autograd C++ apply directly, a few microseconds less.
eager_dropout = super(torch.autograd.Function, EagerDropout).apply
