"""Call preparation of the fused operations, shared by the public API and the reference.

``softmax(x)`` then dropout takes x and an axis, and writes the result (and, if asked,
the softmax before dropout) into new arrays or ``out``/``softmax_out``; its backward
takes the gradient, the softmax and the mask.

``residual + dropout(x)`` and ``residual + dropout(x + bias)`` take two or three arrays
of one dtype and shape (the bias: the last axis's), and write their result where the
caller asks: a new array, ``out``, or (``inplace=True``) the residual's buffer. Every
argument is checked here, in an order that leaves no trace on error, before a stream
is taken (`fastdrop._calls`' rules).
"""
import numpy as np

from . import _calls, streams
from ._checks import check_bool, check_offset
from ._validate import _axis as check_axis
from ._validate import check_dtype_request, check_p, element_array, is_bfloat16


def _same_kind(array, name, x):
    """``array`` (residual, bias) has x's dtype: no promotion, as the result is written once."""
    if array.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {array.dtype}, expected x's dtype {x.dtype}")


def _check_bias(bias, x, request):
    """The bias as kernels see it: x's dtype, shape ``(x.shape[-1],)`` (a Linear's bias)."""
    if x.ndim == 0:
        raise ValueError("bias_dropout_add adds the bias along x's last axis; x is 0-d")
    array, kernel = element_array(bias, "bias", request)
    _same_kind(array, "bias", x)
    if array.shape != x.shape[-1:]:
        raise ValueError(f"bias has shape {array.shape}, expected {x.shape[-1:]} "
                         f"(x's last axis; x has shape {x.shape})")
    return kernel


def fused(x, residual, bias, p, seed, stream, offset, training, inplace, out, dtype,
          with_bias=False):
    """A fused call: ``(call, x as kernels see it, bias as kernels see it or None)``.

    ``call`` is a `fastdrop._calls.Call` whose arrays are the residual's side: its x is
    the residual as kernels see it, its target the residual (``inplace``), ``out``, or
    None; its mask has x's shape. The residual must have x's dtype and shape (no
    broadcasting: the residual is the buffer a result the size of x may go into).
    """
    training = check_bool(training, "training")
    p = check_p(p)
    request = check_dtype_request(dtype)
    x_array, x_kernel = element_array(x, "x", request)
    sides = _calls.arrays(residual, "residual", inplace, out, dtype)
    residual_array = sides[2]
    _same_kind(residual_array, "residual", x_array)
    if residual_array.shape != x_array.shape:
        raise ValueError(f"residual has shape {residual_array.shape}, expected x's shape "
                         f"{x_array.shape} (the residual is not broadcast)")
    bias_kernel = _check_bias(bias, x_array, request) if with_bias else None
    offset = check_offset(offset, x_array.size)
    parsed = streams.parse(seed, stream)
    seed, stream = streams.take(parsed) if training else (None, None)
    call = _calls.Call(sides, p, x_array.shape, x_array.size, offset, seed, stream)
    return call, x_kernel, bias_kernel


def check_bias_gradient(grad, mask, dtype):
    """The arguments of a bias's backward: a DropoutMask of grad's shape, with a last axis.

    Only what `fastdrop.dropout_backward` would not refuse itself: it stretches a mask
    over a larger grad, where the bias's gradient needs grad to be the forward's shape.
    """
    _calls.check_mask_object(mask)
    shape = element_array(grad, "grad", check_dtype_request(dtype))[0].shape
    if shape != mask.shape:
        raise ValueError(f"grad has shape {shape}, expected the mask's shape {mask.shape} "
                         f"(x's shape in the forward pass)")
    if len(shape) == 0:
        raise ValueError("bias_dropout_add_backward needs a grad with a last axis; it is 0-d")


def _same_shape(array, name, x, x_name):
    if array.shape != x.shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {x_name}'s shape {x.shape}")


def _softmax_target(softmax_out, x, out):
    """Where the softmax goes: softmax_out, checked, bfloat16 as its uint16 bits.

    Checked like ``out`` (x's dtype and shape, writeable), and apart from out;
    kernel-view values assigned to it land as they should (byte-swapped arrays convert
    on assignment).
    """
    if not isinstance(softmax_out, np.ndarray) or isinstance(softmax_out, np.ma.MaskedArray):
        raise TypeError(f"softmax_out must be a NumPy array, got {type(softmax_out).__name__}")
    if softmax_out.dtype != x.dtype:
        raise TypeError(f"softmax_out has dtype {softmax_out.dtype}, expected x's dtype {x.dtype}")
    _same_shape(softmax_out, "softmax_out", x, "x")
    if not softmax_out.flags.writeable:
        raise ValueError("softmax_out is read-only")
    if out is not None and np.may_share_memory(out, softmax_out):
        raise ValueError("out and softmax_out overlap: each needs its own memory")
    return softmax_out.view(np.uint16) if is_bfloat16(softmax_out.dtype) else softmax_out


def softmax(x, p, axis, seed, stream, offset, training, out, softmax_out, dtype):
    """A softmax-dropout call: ``(call, axis in [0, ndim), softmax_out's kernel view or None)``.

    ``call`` is a `fastdrop._calls.Call` of x (its mask x's shape); a byte-swapped
    softmax_out is written through its kernel view, a native copy, by the caller.
    """
    training = check_bool(training, "training")
    p = check_p(p)
    sides = _calls.arrays(x, "x", False, out, dtype)
    array = sides[2]
    axis = check_axis(axis, array.ndim, "axis")
    softmax_target = (None if softmax_out is None
                      else _softmax_target(softmax_out, array, out))
    offset = check_offset(offset, array.size)
    parsed = streams.parse(seed, stream)
    seed, stream = streams.take(parsed) if training else (None, None)
    call = _calls.Call(sides, p, array.shape, array.size, offset, seed, stream)
    return call, axis, softmax_target


def softmax_gradient(grad, softmax, mask, axis, out, dtype):
    """A softmax-dropout backward: ``(call, axis, softmax as kernels see it)``.

    ``call`` is grad's, with the mask's words and p (None and 0 for a mask of None:
    training was off). The softmax and the mask have grad's shape; nothing is stretched.
    """
    request = check_dtype_request(dtype)
    sides = _calls.arrays(grad, "grad", False, out, dtype)
    array = sides[2]
    axis = check_axis(axis, array.ndim, "axis")
    softmax_array, softmax_kernel = element_array(softmax, "softmax", request)
    if softmax_array.dtype != array.dtype:
        raise TypeError(f"softmax has dtype {softmax_array.dtype}, expected grad's dtype "
                        f"{array.dtype}")
    _same_shape(softmax_array, "softmax", array, "grad")
    words, p = None, 0.0
    if mask is not None:
        _calls.check_mask_object(mask)
        _same_shape(mask, "mask", array, "grad")
        words, p, _ = _calls.check_mask(mask, array.shape, None)
    call = _calls.Call(sides, p, array.shape, array.size, 0, words=words)
    return call, axis, softmax_kernel
