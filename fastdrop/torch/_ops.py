"""The ``fastdrop`` operators of torch.library, and their eager twins.

Operators (CPU only), each with a fake implementation for tracing and, where it has a
gradient, one registered with ``register_autograd``:

- ``fastdrop::draw_key(Tensor like) -> Tensor``: a call's (seed, stream) drawn from
  torch's default CPU generator, tagged ``nondeterministic_seeded`` so compiled graphs
  keep it, in program order, rather than fold or repeat it;
- ``fastdrop::dropout(x, p, key, shared_dims, alpha) -> (y, words)``: dropout (or alpha
  dropout) and its packed mask (int64 words, 1 bit per mask element, at least 2 words);
- ``fastdrop::dropout_backward(grad, words, p, shared_dims, alpha, input=None)``: the
  gradient from those words (``input``, the forward's, is kept, not read: see
  `_gradient_from_words`);
- ``fastdrop::dropout_recompute(x, p, key, shared_dims, alpha) -> y`` and
  ``fastdrop::dropout_backward_recompute(grad, p, key, shared_dims, alpha)``: the pair
  that keeps only the key for backward.

The backward operators are linear in ``grad``, so each is its own gradient: double
backward works. Under ``torch.func.vmap``, ``draw_key`` follows vmap's ``randomness``
(torch's error, one key, or one per element) and the others have batching rules; under
functorch's transforms (``grad``, ``vjp``, ...) the operators are called through
autograd.Functions (`traced_dropout`), the form those transforms take.
``torch.compile`` and ``torch.export`` trace these operators. Eager
calls take the C++ path (`fastdrop.torch._build`, ``csrc/ops.cpp``) where it is built,
else the twins below, autograd Functions over the same computations
(`fastdrop.torch._tensors`): a Python custom operator's dispatch costs more than a
small dropout itself.
"""
from typing import Optional

import torch
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

from . import _build, _tensors

_NONDETERMINISTIC = (torch.Tag.nondeterministic_seeded,)
# the words output has at least 2 entries, so its length is never 1 whatever a dynamic
# dimension is: a length that could be 1 makes torch.export guard on the dimension
_MIN_WORDS = 2


def _cpp_ops():
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
    cpp = _cpp_ops()
    if cpp is not None:
        y, words = cpp.dropout_keyed(x, p, *key.tolist(), True, _tensors.cpp_threads(x),
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
    a compiled graph keeps that tensor for backward (see `_gradient_from_words`).
    """
    cpp = _cpp_ops()
    if cpp is not None:
        return cpp.dropout_backward(grad, words, p, _tensors.cpp_threads(grad), shared_dims,
                                        alpha)
    return _tensors.backward_from_words(grad, words, p, tuple(shared_dims), alpha)


@dropout_backward.register_fake
def _(grad, words, p, shared_dims, alpha, input=None):
    return torch.empty_like(grad)


@torch.library.custom_op("fastdrop::dropout_recompute", mutates_args=(), device_types="cpu")
def dropout_recompute(x: torch.Tensor, p: float, key: torch.Tensor, shared_dims: list[int],
                      alpha: bool) -> torch.Tensor:
    """Dropout of x whose backward regenerates the mask from the key."""
    cpp = _cpp_ops()
    if cpp is not None:
        return cpp.dropout_keyed(x, p, *key.tolist(), False, _tensors.cpp_threads(x),
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
    cpp = _cpp_ops()
    if cpp is not None:
        return cpp.dropout_backward_recompute(grad, p, *key.tolist(),
                                              _tensors.cpp_threads(grad), shared_dims, alpha)
    return _tensors.backward_recompute(grad, p, *_tensors.key_values(key), tuple(shared_dims),
                                       alpha)


@dropout_backward_recompute.register_fake
def _(grad, p, key, shared_dims, alpha):
    return torch.empty_like(grad)


def _save_words(ctx, inputs, output):
    x, ctx.p, _, ctx.shared_dims, ctx.alpha = inputs
    # the input only in graphs being compiled (_gradient_from_words); eager keeps the words
    ctx.save_for_backward(output[1], x if torch.compiler.is_compiling() else None)


def _save_words_of_backward(ctx, inputs, output):
    _, words, ctx.p, ctx.shared_dims, ctx.alpha, _ = inputs
    ctx.save_for_backward(words, None)


def _save_key(ctx, inputs, output):  # the same arguments in both operators of the pair
    _, ctx.p, key, ctx.shared_dims, ctx.alpha = inputs
    ctx.save_for_backward(key)


def _gradient_from_words(backward):
    """The gradient of `dropout` (or `dropout_backward`) through ``backward``.

    ``backward`` is handed the forward's input too, kept only in graphs being compiled
    (`_save_words`): the operator is opaque to the compiler, and for ReLU then dropout
    the partitioner would otherwise keep ReLU's backward as a bool mask (1 byte per
    element), which Inductor's CPU code writes and reads many times slower than the
    float ReLU output it then keeps (docs/development/compiled.md).
    """
    def from_words(ctx, grad, *_unused):
        words, x = ctx.saved_tensors
        return (backward(grad, words, ctx.p, ctx.shared_dims, ctx.alpha, x),
                None, None, None, None, None)[:len(ctx.needs_input_grad)]
    return from_words


def _gradient_from_key(backward):
    """The gradient of `dropout_recompute` (or its backward) through ``backward``."""
    def from_key(ctx, grad):
        (key,) = ctx.saved_tensors
        return backward(grad, ctx.p, key, ctx.shared_dims, ctx.alpha), None, None, None, None
    return from_key


dropout.register_autograd(_gradient_from_words(dropout_backward), setup_context=_save_words)
dropout_backward.register_autograd(_gradient_from_words(dropout_backward),
                                   setup_context=_save_words_of_backward)
dropout_recompute.register_autograd(_gradient_from_key(dropout_backward_recompute),
                                    setup_context=_save_key)
dropout_backward_recompute.register_autograd(_gradient_from_key(dropout_backward_recompute),
                                             setup_context=_save_key)


# ---------------------------------------------------------------- vmap

_VMAP_RANDOMNESS_ERROR = (  # torch's own message, as its random operators raise it
    "vmap: called random operation while in randomness error mode. Please either use the "
    "'same' or 'different' randomness flags on vmap or perform the randomness operation out "
    "of vmap")


def _draw_key_under_vmap(like):
    """draw_key under vmap, batched input or not: torch's error, one key or one per element.

    Registered for FuncTorchVmapMode, where torch's own random operators consult vmap's
    ``randomness`` (a batching rule alone would not see an unbatched ``like``). The keys
    are drawn one level down (an enclosing vmap then applies its own randomness):
    "same" gives the batch one key, "different" one per element, in order, the keys of
    as many calls outside vmap.
    """
    interpreter = retrieve_current_functorch_interpreter()
    if interpreter.randomness() == "error":
        raise RuntimeError(_VMAP_RANDOMNESS_ERROR)
    with interpreter.lower():
        if interpreter.randomness() == "same":
            return _key_one_level_down()
        keys = torch.stack([_key_one_level_down() for _ in range(interpreter.batch_size())])
    return torch._C._functorch._add_batch_dim(keys, 0, interpreter.level())


def _key_one_level_down():
    """A key drawn by the next functorch level, or outside them when there is none."""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return draw_key(torch.empty(0))
    with torch._C._ExcludeDispatchKeyGuard(_VMAP_MODE):  # still set for this call
        return draw_key(torch.empty(0))


_VMAP_MODE = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchVmapMode)
_library = torch.library.Library("fastdrop", "IMPL")  # kept for the life of the process
_library.impl("draw_key", _draw_key_under_vmap, "FuncTorchVmapMode")


def _per_element(op, info, in_dims, args):
    """op called on each batch element's arguments, its outputs stacked (out_dims 0)."""
    results = [op(*(arg.select(dim, index) if isinstance(dim, int) else arg
                    for arg, dim in zip(args, in_dims)))
               for index in range(info.batch_size)]
    if isinstance(results[0], tuple):
        return tuple(torch.stack(outputs) for outputs in zip(*results)), (0,) * len(results[0])
    return torch.stack(results), 0


def _register_mask_vmap(op, mask_source):
    """vmap for ``op(data, ..., shared_dims, ...)`` whose mask is ``args[mask_source]``.

    One key (or one set of words) for the batch gives every element that key's mask: one
    call over the batch with the batch axis shared (the mask of shape (1, *S) is the mask
    of shape S, bit for bit). A key per element is a call per element. Outputs: the
    result batched, the words (of `dropout`) not.
    """
    def rule(info, in_dims, *args):
        data_dim = in_dims[0]
        if any(isinstance(dim, int) for dim in in_dims[1:]):  # a list argument's is a list
            return _per_element(op, info, in_dims, args)
        if data_dim is None:
            output = op(*args)
            return output, (None, None) if isinstance(output, tuple) else None
        data, *rest = args
        rest[2] = [0] + [axis + 1 for axis in rest[2]]  # shared_dims, args[3]
        output = op(data.movedim(data_dim, 0), *rest)
        return output, (0, None) if isinstance(output, tuple) else 0
    op.register_vmap(rule)


_register_mask_vmap(dropout, 2)
_register_mask_vmap(dropout_backward, 1)
_register_mask_vmap(dropout_recompute, 2)
_register_mask_vmap(dropout_backward_recompute, 2)


# ---------------------------------------------------------------- functorch's transforms

def _functorch_function(name, op, setup_context, gradient):
    """``op`` and its gradient as an autograd.Function that functorch's transforms take.

    torch.func.grad (vjp, jacrev, ...) refuses an operator's ``register_autograd``; an
    autograd.Function with ``setup_context`` is its form, and its vmap rule runs ``op``
    under vmap (the operators' rules above).
    """
    return type(name, (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda *args: op(*args)),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(gradient),
        "__doc__": f"``fastdrop::{op._name}`` for functorch's transforms.",
    })


FunctorchBackward = _functorch_function(
    "FunctorchBackward", dropout_backward, _save_words_of_backward,
    _gradient_from_words(lambda *args: FunctorchBackward.apply(*args)))
FunctorchDropout = _functorch_function("FunctorchDropout", dropout, _save_words,
                                       _gradient_from_words(FunctorchBackward.apply))
FunctorchBackwardRecompute = _functorch_function(
    "FunctorchBackwardRecompute", dropout_backward_recompute, _save_key,
    _gradient_from_key(lambda *args: FunctorchBackwardRecompute.apply(*args)))
FunctorchDropoutRecompute = _functorch_function(
    "FunctorchDropoutRecompute", dropout_recompute, _save_key,
    _gradient_from_key(FunctorchBackwardRecompute.apply))


# ---------------------------------------------------------------- compiled graphs

@torch.compiler.assume_constant_result  # run, not traced: it may load the C++ path
def _compiled_ops_on() -> bool:
    """Whether compiled graphs call the C++ operators for dropout (the C++ path is on).

    ``fastdrop_cpp::draw_key``, ``dropout_of_key`` and ``dropout_backward_of_words``
    (`fastdrop.torch._build` registers their shape rules and gradients) are the
    operators above (the same key draw, mask and gradient) defined in C++: the compiled
    step calls each from Inductor's wrapper at a C++ operator's cost, where a Python
    custom operator's dispatch costs tens of microseconds a call, more than a small
    dropout (docs/development/compiled.md). The first call loads the C++ path (building
    it if need be).
    """
    return _build.load() is not None


def traced_dropout(x, p, shared_dims, alpha, recompute):
    """The traced path's dropout of x, its key drawn: the operators, or their Functions.

    Graphs being compiled (not exported: an exported program names only the ``fastdrop``
    operators) take the C++ operators where that path is on (`_compiled_ops_on`). Under
    functorch's transforms the key is drawn for a detached ``x`` (an operator's autograd
    would be refused there) and dropout is the autograd.Function.
    """
    functorch = not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()
    if (not recompute and torch.compiler.is_compiling()
            and not torch.compiler.is_exporting() and _compiled_ops_on()):
        cpp = torch.ops.fastdrop_cpp
        # threads 0: torch's intra-op threads, as the graph's other kernels (no guard on
        # fastdrop's setting, which would cost every call of the graph)
        return cpp.dropout_of_key(x, p, cpp.draw_key(x), 0, shared_dims, alpha)[0]
    key = draw_key(x.detach() if functorch else x)
    if recompute:
        op = FunctorchDropoutRecompute.apply if functorch else dropout_recompute
        return op(x, p, key, shared_dims, alpha)
    return (FunctorchDropout.apply if functorch else dropout)(x, p, key, shared_dims, alpha)[0]


class Opaque:
    """Settings handed to an autograd Function as one object its callers do not look into.

    The profiler (``record_shapes=True``) reads a tuple argument's integers as int64, and
    a (seed, stream) goes up to 2**64 - 1: in a tuple the call would fail.
    """

    __slots__ = ("values",)

    def __init__(self, values):
        self.values = values


class EagerDropout(torch.autograd.Function):
    """Eager dropout: the ``fastdrop::dropout`` or ``dropout_recompute`` op without dispatch.

    ``apply(x, Opaque(settings))`` with ``settings = (p, seed, stream, shared_dims, alpha,
    recompute, inplace)`` (one argument: Function.apply inspects each); in place, x is
    overwritten and marked dirty, as torch's in-place ops are.
    """

    @staticmethod
    def forward(ctx, x, settings):
        p, seed, stream, shared_dims, alpha, recompute, inplace = settings.values
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
                return EagerBackwardRecompute.apply(grad, Opaque(ctx.mask)), None
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

    ``apply(grad, Opaque((p, seed, stream, shared_dims, alpha)))``.
    """

    @staticmethod
    def forward(ctx, grad, mask):
        ctx.mask = mask.values
        return _tensors.backward_recompute(grad, *ctx.mask)

    @staticmethod
    def backward(ctx, grad):
        return EagerBackwardRecompute.apply(grad, Opaque(ctx.mask)), None


# Function.apply's Python wrapper binds default arguments and unwraps functorch's tensors;
# the eager path has neither (functional._traced sends functorch's tensors to the
# operators), so it calls the autograd C++ apply directly, a few microseconds less.
eager_dropout = super(torch.autograd.Function, EagerDropout).apply
