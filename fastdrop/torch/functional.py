"""fastdrop's dropout for PyTorch tensors, with ``torch.nn.functional``'s names and arguments.

Each function takes torch's arguments with torch's defaults (``p=0.5``, ``training``,
``inplace``) and checks them as torch does, plus fastdrop's own keywords:

- ``generator``: the ``torch.Generator`` a call draws its (seed, stream) from (eager
  calls; the default CPU generator otherwise);
- ``recompute``: keep only the (seed, stream) for backward and regenerate the mask
  there, instead of keeping the mask's packed bits (1 bit per element).

A call draws two 64-bit integers from torch's generator and uses them as fastdrop's
(seed, stream), so ``torch.manual_seed`` makes runs reproducible and
``torch.utils.checkpoint`` recomputes the same masks; `next_key` tells which (seed,
stream) the next call will use. The result equals ``fastdrop.dropout`` (or
``fastdrop.alpha_dropout``) of the same values with that (seed, stream), bit for bit.
"""
import warnings

import torch
from torch.overrides import handle_torch_function, has_torch_function_unary
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _build, _ops, _tensors

__all__ = ["alpha_dropout", "dropout", "dropout1d", "dropout2d", "dropout3d",
           "feature_alpha_dropout", "next_key"]

_FEATURE_DIMS_ERROR = "Feature dropout requires at least 2 dimensions in the input"
_JIT_TRACE_WARNING = (
    "{where}: traced by torch.jit.trace in training mode. The trace records fastdrop's key "
    "draw, so each run of it draws a new mask, as torch's dropout does; the trace check "
    "therefore reports outputs that differ. Call .eval() before tracing a model for inference.")


def next_key(generator=None):
    """The fastdrop (seed, stream) the next call drawing from ``generator`` will use.

    The generator's state is left as it was, so the next fastdrop.torch call (or
    module) that draws from it uses exactly this key: reproduce its mask on NumPy
    with ``fastdrop.dropout(x.numpy(), p, seed=seed, stream=stream)``.

    Parameters
    ----------
    generator : torch.Generator, optional
        A CPU generator; torch's default CPU generator if None.

    Returns
    -------
    tuple of int
        ``(seed, stream)``, each in [0, 2**64).

    Examples
    --------
    >>> import numpy as np, torch, fastdrop, fastdrop.torch
    >>> x = torch.ones(100)
    >>> seed, stream = fastdrop.torch.next_key()
    >>> y = fastdrop.torch.dropout(x, 0.3)
    >>> same, _ = fastdrop.dropout(x.numpy(), 0.3, seed=seed, stream=stream)
    >>> bool(np.array_equal(y.numpy(), same))
    True
    """
    source = torch.default_generator if generator is None else generator
    state = source.get_state()
    try:
        return _tensors.key_values(_tensors.new_key(source))
    finally:
        source.set_state(state)


def _traced(input):
    """Whether the call must go through the registered operators.

    Under torch.compile/export, for tensor subclasses, meta tensors, under a dispatch
    mode (fake tensors, for one) and under functorch's transforms (vmap, grad), the eager
    twins' NumPy views would not see the real data; under torch.jit.trace the operators
    are what the trace records, so each run of it draws its own key.
    """
    return (torch.compiler.is_compiling() or type(input) is not torch.Tensor
            or not input.is_cpu or _get_current_dispatch_mode() is not None
            or torch._C._are_functorch_transforms_active() or torch._C._is_tracing())


def _overridden(input):
    """Whether ``input`` overrides ``__torch_function__``: a torch.fx Proxy, for one.

    Such a call goes to its ``__torch_function__`` (`_by_override`) as torch's functions'
    calls do, so torch.fx records it as one node; modes are not asked (so a plain tensor
    pays one type check).
    """
    return type(input) is not torch.Tensor and has_torch_function_unary(input)


def _by_override(function, input, p, training, inplace, generator, recompute):
    """``function``'s call handed to ``input``'s ``__torch_function__``."""
    return handle_torch_function(function, (input,), input, p, training, inplace,
                                 generator=generator, recompute=recompute)


def _check_inplace(input):
    """Torch's refusals of an in-place op, made before anything is written."""
    if input.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError("Inplace update to inference tensor outside InferenceMode is not "
                           "allowed.You can make a clone to get a normal tensor before doing "
                           "inplace update.See https://github.com/pytorch/rfcs/pull/17 for more "
                           "details.")
    if torch.is_grad_enabled() and input.requires_grad:
        if input.is_leaf:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                               "operation.")
        base = input._base
        if base is not None and base.is_leaf and base.requires_grad:
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in an "
                               "in-place operation.")


def _dropout(input, p, training, inplace, feature, alpha, generator, recompute, where):
    """Every function's body: dropout (alpha dropout), elementwise or of whole channels.

    ``feature`` is None (one bit per element) or the first axis a channel's bit is
    shared along: 2 for (N, C, ...) input, 1 for unbatched (C, ...) input.
    """
    if type(training) is not bool:  # as torch's argument parser: not even np.bool_ or 1
        raise TypeError(f"{where}(): argument 'train' (position 3) must be bool, not "
                        f"{type(training).__name__}")
    _tensors.check_p_is_a_number(p)
    if not training or p == 0:
        return input
    _tensors.check_tensor(input, where)
    _tensors.check_input(input, where, meta=True)
    if not torch.jit.is_tracing() and input.numel() == 0:  # (traced, numel() is a tensor)
        return input
    p = float(p)
    shared_dims = () if feature is None else _feature_dims(input, feature, p)
    if _traced(input):
        if torch.jit.is_tracing():
            warnings.warn(_JIT_TRACE_WARNING.format(where=where), torch.jit.TracerWarning,
                          stacklevel=3)
        if generator is not None and not input.is_meta:  # (a meta call draws nothing)
            raise RuntimeError(f"{where}: generator= is for eager calls; under torch.compile, "
                               "torch.export, torch.func, torch.jit.trace and tensor "
                               "subclasses the keys come from the default CPU generator "
                               "(seed it with torch.manual_seed)")
        y = _ops.traced_dropout(input, p, list(shared_dims), alpha, recompute)
        return input.copy_(y) if inplace else y
    if inplace:
        _check_inplace(input)
    cpp = _build.first_use()
    # the C++ path: key, autograd node and kernels in one call (anything but a Generator
    # as generator= gets the Python path's error, torch's own)
    if cpp is not None and (generator is None or isinstance(generator, torch.Generator)):
        return cpp(input, p, recompute, inplace, generator, _tensors.cpp_threads(input),
                   shared_dims, alpha)
    seed, stream = _tensors.draw_key_values(generator)
    if input.requires_grad and torch.is_grad_enabled():
        return _ops.eager_dropout(input, _ops.Opaque((p, seed, stream, shared_dims, alpha,
                                                      recompute, inplace)))
    y, _ = _tensors.forward(input, p, seed, stream, shared_dims, alpha, inplace)
    if inplace and not input.is_inference():
        torch.autograd.graph.increment_version(input)  # as a torch in-place op does
    return y


@torch.compiler.assume_constant_result
def _warn_of_rank(message):
    """Torch's warning of a deprecated rank, at the caller of the public function.

    Under torch.compile it is given once, when the call is traced, as torch's own
    functions' are (Dynamo runs a function of constants at trace time).
    """
    warnings.warn(message, stacklevel=3)


def _feature_dims(input, first, p):
    """The axes torch's feature dropout shares a bit along: from ``first`` on.

    As in ATen, too few dimensions are an error only where a mask is drawn: at p = 1
    everything is dropped, elementwise.
    """
    if input.dim() < first:
        if p == 1.0:
            return ()
        raise RuntimeError(_FEATURE_DIMS_ERROR)
    return tuple(range(first, input.dim()))


def dropout(input, p=0.5, training=True, inplace=False, *, generator=None, recompute=False):
    """Inverted dropout: fastdrop's ``torch.nn.functional.dropout``.

    Each element is zeroed with probability ``p`` and the others are scaled by
    ``1 / (1 - p)``. The mask is fastdrop's (docs/mask-stream.md) for a (seed, stream)
    drawn from torch's generator; autograd keeps it as packed bits (1 bit per
    element), or, with ``recompute=True``, keeps only the (seed, stream).

    Parameters
    ----------
    input : torch.Tensor
        A CPU tensor of float16, float32, float64 or bfloat16, any shape and layout.
    p : float, default 0.5
        Probability of an element to be zeroed, in [0, 1].
    training : bool, default True
        Apply dropout if True; else return ``input`` itself.
    inplace : bool, default False
        Overwrite ``input`` and return it (refused, as by torch, for a leaf tensor
        that requires grad and for a view of one).
    generator : torch.Generator, optional
        The generator the (seed, stream) are drawn from (eager calls only); torch's
        default CPU generator if None.
    recompute : bool, default False
        Keep only the (seed, stream) for backward and regenerate the mask there.

    Returns
    -------
    torch.Tensor
        The result, of input's shape, dtype and memory format (``input`` itself when
        ``inplace``, when not ``training``, when ``p == 0`` or when it is empty).

    Raises
    ------
    ValueError
        ``p`` outside [0, 1] (torch's message).
    TypeError
        ``input`` is not a tensor, or not a dense float16/32/64 or bfloat16 one.
    RuntimeError
        ``p`` is NaN (torch's message); ``input`` is not on the CPU; an in-place
        call on a leaf tensor that requires grad (or a view of one), or on an
        inference tensor outside inference mode; ``generator=`` under torch.compile.

    Examples
    --------
    >>> import torch, fastdrop.torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> y = fastdrop.torch.dropout(torch.ones(8), 0.5)
    >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    """
    if _overridden(input):
        return _by_override(dropout, input, p, training, inplace, generator, recompute)
    if torch.compiler.is_compiling():  # Dynamo reads nothing of the eager path: no build
        cpp = None
    else:
        cpp = _build.eager
        if cpp is _build.UNLOADED:
            cpp = _build.first_use()
    # the usual call straight to C++: what _dropout would check and decide, in fewer steps
    if (cpp is not None and training is True and not inplace and type(p) is float
            and 0.0 < p <= 1.0
            and (generator is None or type(generator) is torch.Generator)
            and not _traced(input)):
        _tensors.check_input(input, "dropout")
        return cpp(input, p, recompute, False, generator, _tensors.cpp_threads(input))
    _tensors.check_p(p)
    return _dropout(input, p, training, inplace, None, False, generator, recompute, "dropout")


def dropout1d(input, p=0.5, training=True, inplace=False, *, generator=None, recompute=False):
    """Channel dropout of (N, C, L) or (C, L) input: ``torch.nn.functional.dropout1d``.

    Each channel of each sample is zeroed whole with probability ``p`` (one bit per
    (sample, channel)).

    Parameters
    ----------
    input : torch.Tensor
        2-D (unbatched) or 3-D CPU tensor of a float dtype.
    p, training, inplace, generator, recompute
        As in `dropout`; ``p`` is the probability of zeroing a channel.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    RuntimeError
        input is not 2-D or 3-D (torch's message); and as in `dropout`.
    ValueError, TypeError
        As in `dropout`.
    """
    if _overridden(input):
        return _by_override(dropout1d, input, p, training, inplace, generator, recompute)
    _tensors.check_p(p)
    _tensors.check_tensor(input, "dropout1d")
    dims = input.dim()
    if dims not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {dims}D input. "
            "Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
            "spatial dimension, a channel dimension, and an optional batch dimension "
            "(i.e. 2D or 3D inputs).")
    return _dropout(input, p, training, inplace, 2 if dims == 3 else 1, False, generator,
                    recompute, "dropout1d")


def dropout2d(input, p=0.5, training=True, inplace=False, *, generator=None, recompute=False):
    """Channel dropout of (N, C, H, W) input: ``torch.nn.functional.dropout2d``.

    As torch 2.13 does, 3-D input is read as (N, C, L) with a warning, and other ranks
    are taken with a deprecation warning.

    Parameters
    ----------
    input : torch.Tensor
        4-D CPU tensor of a float dtype (3-D: see above).
    p, training, inplace, generator, recompute
        As in `dropout`; ``p`` is the probability of zeroing a channel.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    RuntimeError
        In training, input of fewer than 2 dimensions (torch's message); and as in
        `dropout`.
    ValueError, TypeError
        As in `dropout`.
    """
    if _overridden(input):
        return _by_override(dropout2d, input, p, training, inplace, generator, recompute)
    _tensors.check_p(p)
    _tensors.check_tensor(input, "dropout2d")
    dims = input.dim()
    if dims not in (3, 4):
        _warn_of_rank(
            f"dropout2d: Received a {dims}-D input to dropout2d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            "and silence this warning, please use dropout instead. Note that dropout2d "
            "exists to provide channel-wise dropout on inputs with 2 spatial dimensions, "
            "a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs).")
    if dims == 3:
        _warn_of_rank(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
            "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
            "is the channel dim. This behavior will change in a future release to interpret the "
            "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
            "channel-wise dropout behavior, please switch to using dropout1d instead.")
    return _dropout(input, p, training, inplace, 2, False, generator, recompute, "dropout2d")


def dropout3d(input, p=0.5, training=True, inplace=False, *, generator=None, recompute=False):
    """Channel dropout of (N, C, D, H, W) or (C, D, H, W) input: ``torch.nn.functional.dropout3d``.

    Other ranks are taken with torch's deprecation warning (as unbatched input).

    Parameters
    ----------
    input : torch.Tensor
        5-D or 4-D (unbatched) CPU tensor of a float dtype.
    p, training, inplace, generator, recompute
        As in `dropout`; ``p`` is the probability of zeroing a channel.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    RuntimeError
        In training, 0-d input (torch's message); and as in `dropout`.
    ValueError, TypeError
        As in `dropout`.
    """
    if _overridden(input):
        return _by_override(dropout3d, input, p, training, inplace, generator, recompute)
    _tensors.check_p(p)
    _tensors.check_tensor(input, "dropout3d")
    dims = input.dim()
    if dims not in (4, 5):
        _warn_of_rank(
            f"dropout3d: Received a {dims}-D input to dropout3d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            "and silence this warning, please use dropout instead. Note that dropout3d "
            "exists to provide channel-wise dropout on inputs with 3 spatial dimensions, "
            "a channel dimension, and an optional batch dimension (i.e. 4D or 5D inputs).")
    return _dropout(input, p, training, inplace, 2 if dims == 5 else 1, False, generator,
                    recompute, "dropout3d")


def alpha_dropout(input, p=0.5, training=False, inplace=False, *, generator=None,
                  recompute=False):
    """Alpha dropout for SELU networks: ``torch.nn.functional.alpha_dropout``.

    A zeroed element becomes SELU's negative saturation value, and every element
    goes through the affine map that keeps zero mean and unit variance
    (`fastdrop.alpha_dropout`). Note torch's default ``training=False``.

    Parameters
    ----------
    input : torch.Tensor
        A CPU tensor of float16, float32, float64 or bfloat16.
    p : float, default 0.5
        Drop probability.
    training : bool, default False
        Apply alpha dropout if True (torch's default is False here).
    inplace, generator, recompute
        As in `dropout`.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    ValueError, TypeError, RuntimeError
        As in `dropout`.
    """
    if _overridden(input):
        return _by_override(alpha_dropout, input, p, training, inplace, generator, recompute)
    _tensors.check_p(p)
    return _dropout(input, p, training, inplace, None, True, generator, recompute,
                    "alpha_dropout")


def feature_alpha_dropout(input, p=0.5, training=False, inplace=False, *, generator=None,
                          recompute=False):
    """Alpha dropout of whole channels: ``torch.nn.functional.feature_alpha_dropout``.

    Parameters
    ----------
    input : torch.Tensor
        (N, C, ...) CPU tensor of a float dtype.
    p : float, default 0.5
        Probability of dropping a channel.
    training : bool, default False
        Apply it if True (torch's default is False here).
    inplace, generator, recompute
        As in `dropout`.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    RuntimeError
        In training, input of fewer than 2 dimensions (torch's message); and as in
        `dropout`.
    ValueError, TypeError
        As in `dropout`.
    """
    if _overridden(input):
        return _by_override(feature_alpha_dropout, input, p, training, inplace, generator,
                            recompute)
    _tensors.check_p(p)
    return _dropout(input, p, training, inplace, 2, True, generator, recompute,
                    "feature_alpha_dropout")
