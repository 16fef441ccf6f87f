"""The NumPy reference: the mask-stream specification executed plainly.

Same functions and signatures as the public API (without ``backend``), slow and
obviously correct. It is the oracle every backend is tested against, and what
``backend="numpy"`` runs. Nothing here is clever: each lane's 64-bit uniform U is
assembled from all 64 of its bits and compared with the threshold, with none of
the early stopping the kernels use.

Specification: docs/mask-stream.md.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _calls, _fused_calls
from ._calls import check_mask_object
from ._layout import block_indices
from ._mask import (
    DropoutMask,
    GaussianNoise,
    MaskedResult,
    NoiseResult,
    pack_mask,
    unpack_mask,
)
from ._typing import (
    ArrayLike,
    Axes,
    Bool,
    DtypeRequest,
    Int,
    NDArray,
    Probability,
    Seed,
    Shape,
)
from ._validate import channel_noise_shape, check_weight, is_bfloat16
from .maskstream import normal
from .maskstream.spec import (
    WORD_BITS,
    alpha_dropout_constants,
    block_counter,
    dropout_scale,
    gaussian_sigma,
    keep_threshold,
    normal_counter,
    round_to_bfloat16,
    split64,
)
from .rng.philox import philox_rounds

__all__ = [
    "alpha_dropout",
    "alpha_dropout_backward",
    "apply_mask",
    "bernoulli_mask",
    "bias_dropout_add",
    "bias_dropout_add_backward",
    "channel_dropout",
    "dropconnect",
    "dropout",
    "dropout_add",
    "dropout_backward",
    "dropout_backward_recompute",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "gaussian_dropout_backward",
    "gaussian_noise",
    "keep_bits",
    "keep_bits_at",
    "lane_uniforms",
    "pack_mask",
    "random_words",
    "softmax_dropout",
    "softmax_dropout_backward",
    "standard_normals",
    "standard_normals_at",
    "unpack_mask",
]

_BLOCKS_PER_WORD = WORD_BITS // 2  # each Philox block gives two 64-bit random words
_WORDS_PER_BATCH = 4096  # bounds the (words, 64) temporaries


def random_words(seed, stream, words):
    """r_b(w) for b = 0..63: the 64 random 64-bit words of each global mask word w.

    Returns a uint64 array of shape (len(words), 64). Block j of word w is Philox4x32-10
    with counter ``block_counter(w, stream, j)`` and key (seed mod 2**32, seed // 2**32);
    its output (x0, x1, x2, x3) gives r_{2j} = x0 + 2**32 x1 and r_{2j+1} = x2 + 2**32 x3.
    """
    words = np.asarray(words, dtype=np.uint64)
    key = tuple(np.uint64(half) for half in split64(seed))
    result = np.empty((words.size, WORD_BITS), dtype=np.uint64)
    for block in range(_BLOCKS_PER_WORD):
        # numpy's stubs narrow a scalar c to types np.uint64 may not take: not ours
        counter = tuple(np.broadcast_to(np.uint64(c) if np.isscalar(c) else c,  # type: ignore[arg-type]
                                        words.shape)
                        for c in block_counter(words, stream, block))
        x0, x1, x2, x3 = philox_rounds(counter, key, 10)
        result[:, 2 * block] = x0 | (x1 << np.uint64(32))
        result[:, 2 * block + 1] = x2 | (x3 << np.uint64(32))
    return result


def lane_uniforms(seed, stream, words):
    """U[w, i]: the 64-bit uniform of lane i of mask word w (element 64*w + i).

    Bit 63 - b of U[w, i] (most significant first) is bit i of r_b(w).
    """
    r = random_words(seed, stream, words)
    lanes = np.arange(WORD_BITS, dtype=np.uint64)
    uniforms = np.zeros((r.shape[0], WORD_BITS), dtype=np.uint64)
    for b in range(WORD_BITS):
        bit_of_each_lane = (r[:, b, None] >> lanes) & np.uint64(1)
        uniforms = (uniforms << np.uint64(1)) | bit_of_each_lane
    return uniforms


def keep_bits(n, p, seed, stream, offset):
    """Booleans for elements with global indices offset, ..., offset + n - 1.

    An element is kept iff U >= floor(p 2**64).
    """
    keep = np.empty(n, dtype=np.bool_)
    if n == 0 or p == 0.0:
        keep[:] = True
        return keep
    if p == 1.0:  # every U < 2**64
        keep[:] = False
        return keep
    threshold = np.uint64(keep_threshold(p))
    first_word = offset // WORD_BITS
    last_word = (offset + n - 1) // WORD_BITS
    for batch_start in range(first_word, last_word + 1, _WORDS_PER_BATCH):
        batch = np.arange(batch_start, min(batch_start + _WORDS_PER_BATCH, last_word + 1),
                          dtype=np.uint64)
        kept = (lane_uniforms(seed, stream, batch) >= threshold).reshape(-1)
        # global element indices covered by this batch, clipped to [offset, offset + n)
        lo = max(offset, batch_start * WORD_BITS)
        hi = min(offset + n, (batch_start + batch.size) * WORD_BITS)
        keep[lo - offset:hi - offset] = kept[lo - batch_start * WORD_BITS:
                                             hi - batch_start * WORD_BITS]
    return keep


def keep_bits_at(indices, p, seed, stream):
    """Keep flags of elements with any global indices (uint64), each as `keep_bits` gives it.

    The elements of a block of a larger array (`fastdrop._layout.block_indices`).
    """
    indices = np.asarray(indices, dtype=np.uint64)
    if indices.size == 0 or p == 0.0 or p == 1.0:
        return np.full(indices.shape, p != 1.0, dtype=np.bool_)
    words, which = np.unique(indices >> np.uint64(6), return_inverse=True)
    threshold = np.uint64(keep_threshold(p))
    kept = np.concatenate([lane_uniforms(seed, stream, words[start:start + _WORDS_PER_BATCH])
                           >= threshold for start in range(0, words.size, _WORDS_PER_BATCH)])
    return kept[which.reshape(indices.shape), (indices & np.uint64(63)).astype(np.intp)]


def call_keep(call):
    """The keep flags of a call's mask elements: a range from ``offset``, or a block's runs."""
    if call.runs is None:
        return keep_bits(call.m, call.p, call.seed, call.stream, call.offset)
    return keep_bits_at(block_indices(call.runs), call.p, call.seed, call.stream)


def bfloat16_to_float32(bits):
    """bfloat16 bit patterns (uint16) widened exactly to float32: the bits shifted up by 16."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bfloat16(values):
    """float32 values rounded once to bfloat16 bit patterns (section 6).

    Round to nearest, ties to even, on the bits: add 0x7FFF plus the lowest kept bit,
    drop the low 16 bits (a carry into the exponent is right, up to inf). NaN becomes
    the quiet NaN 0x7FC0 with its sign, as ml_dtypes converts it.
    """
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    with np.errstate(over="ignore"):  # NaN bit patterns may wrap; they are replaced below
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
                   >> np.uint32(16)).astype(np.uint16)
    quiet_nan = (((bits >> np.uint32(16)) & np.uint32(0x8000))
                 | np.uint32(0x7FC0)).astype(np.uint16)
    return np.where(np.isnan(values), quiet_nan, rounded)


def bfloat16_bits(value):
    """A float64 rounded once to bfloat16, as its bit pattern (uint16)."""
    return float32_to_bfloat16(np.float32(round_to_bfloat16(value)))


def scale_kept(x, keep, p, scale=None):
    """The spec's output arithmetic: x * s where kept, +0.0 where dropped.

    s is 1/(1-p) rounded to x's dtype; ``scale`` replaces 1/(1-p) when given (alpha
    dropout's backward multiplies by a). float16 and bfloat16 (uint16 bit patterns, or
    ml_dtypes' bfloat16) multiply in float32 and round once.
    """
    if is_bfloat16(x.dtype):
        return scale_kept(x.view(np.uint16), keep, p, scale).view(x.dtype)
    scale = dropout_scale(p) if scale is None else scale
    with np.errstate(all="ignore"):  # s or x*s may overflow; that is the specified result
        if x.dtype == np.float16:
            kept = (x.astype(np.float32) * np.float32(np.float16(scale))).astype(np.float16)
        elif x.dtype == np.uint16:
            kept = float32_to_bfloat16(bfloat16_to_float32(x)
                                       * np.float32(round_to_bfloat16(scale)))
        else:
            kept = x * x.dtype.type(scale)
    return np.where(keep, kept, x.dtype.type(0))


def bernoulli_mask(n: Int | Shape, p: Probability, *, seed: Seed, stream: Int | None = None,
                   offset: Int = 0, origin: Shape | None = None,
                   global_shape: Shape | None = None) -> NDArray[np.uint64]:
    """Packed keep bits of ``n`` elements starting at global index ``offset``.

    See `fastdrop.bernoulli_mask`.
    """
    call = _calls.count(n, p, seed, stream, offset, origin=origin, global_shape=global_shape)
    return pack_mask(call_keep(call))


def broadcast_keep(keep, mask_shape, shape):
    """Keep flags of a mask of ``mask_shape`` stretched over an array of ``shape`` (C order)."""
    return np.broadcast_to(keep.reshape(mask_shape), shape).reshape(-1)


def dropout(x: ArrayLike, p: Probability = 0.5, *, seed: Seed = None, stream: Int | None = None,
            offset: Int = 0, training: Bool = True, inplace: Bool = False,
            out: NDArray[Any] | None = None, noise_shape: Shape | None = None,
            broadcast_dims: Axes | None = None, dtype: DtypeRequest = None,
            origin: Shape | None = None, global_shape: Shape | None = None) -> MaskedResult:
    """Inverted dropout; see `fastdrop.dropout`."""
    call = _calls.masked(x, p, seed, stream, offset, inplace, out, noise_shape, broadcast_dims,
                         training, dtype, origin, global_shape)
    if not training:
        return call.untouched(), None
    keep = call_keep(call)
    y = scale_kept(call.x.reshape(-1), broadcast_keep(keep, call.mask_shape, call.x.shape), call.p)
    return call.deliver(y), call.mask(pack_mask(keep))


def channel_dropout(x: ArrayLike, p: Probability = 0.5, *, channel_axis: Int = 1,
                    batch_axis: Int | None = 0, seed: Seed = None, stream: Int | None = None,
                    offset: Int = 0, training: Bool = True, inplace: Bool = False,
                    out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                    origin: Shape | None = None, global_shape: Shape | None = None) -> MaskedResult:
    """Whole channels dropped together; see `fastdrop.channel_dropout`."""
    noise_shape = channel_noise_shape(np.shape(x) if global_shape is None else global_shape,
                                      channel_axis, batch_axis)
    return dropout(x, p, seed=seed, stream=stream, offset=offset, training=training,
                   inplace=inplace, out=out, noise_shape=noise_shape, dtype=dtype, origin=origin,
                   global_shape=global_shape)


def apply_mask(x: ArrayLike, mask: DropoutMask | NDArray[np.uint64], *,
               p: Probability | None = None, scale: float | None = None, inplace: Bool = False,
               out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
               name: str = "x") -> NDArray[Any]:
    """x * keep * s with keep from a stored mask; see `fastdrop.apply_mask`.

    ``name`` is what error messages call x (dropout's backward says "grad").
    """
    call = _calls.stored_mask(x, name, mask, p, scale, inplace, out, dtype)
    keep = broadcast_keep(unpack_mask(call.words, call.m), call.mask_shape, call.x.shape)
    return call.deliver(scale_kept(call.x.reshape(-1), keep, call.p, call.scale))


def dropout_backward(grad: ArrayLike, mask: DropoutMask | NDArray[np.uint64], *,
                     p: Probability | None = None, inplace: Bool = False,
                     out: NDArray[Any] | None = None, dtype: DtypeRequest = None) -> NDArray[Any]:
    """grad * keep / (1 - p) from a packed mask; see `fastdrop.dropout_backward`."""
    return apply_mask(grad, mask, p=p, inplace=inplace, out=out, dtype=dtype, name="grad")


def dropout_backward_recompute(grad: ArrayLike, p: Probability, *, seed: Int, stream: Int,
                               offset: Int = 0, noise_shape: Shape | None = None,
                               inplace: Bool = False, out: NDArray[Any] | None = None,
                               dtype: DtypeRequest = None, origin: Shape | None = None,
                               global_shape: Shape | None = None) -> NDArray[Any]:
    """grad * keep / (1 - p) with keep regenerated from (seed, stream, offset).

    See `fastdrop.dropout_backward_recompute`.
    """
    call = _calls.recompute(grad, p, seed, stream, offset, noise_shape, inplace, out, dtype,
                            origin, global_shape)
    keep = call_keep(call)
    keep = broadcast_keep(keep, call.mask_shape, call.x.shape)
    return call.deliver(scale_kept(call.x.reshape(-1), keep, call.p))


# ---------------------------------------------------------------- alpha dropout


def alpha_affine(x, keep, p):
    """Alpha dropout's arithmetic (section 8): a*x + b where kept, c where dropped.

    float64 computes in float64; float32 in float32 with a, b rounded to float32;
    float16 widens x to float32, computes a*x + b in float32 and rounds once. The
    dropped value is c rounded once from float64 to x's dtype. bfloat16 follows float16.
    """
    if is_bfloat16(x.dtype):
        return alpha_affine(x.view(np.uint16), keep, p).view(x.dtype)
    a, b, c = alpha_dropout_constants(p)
    with np.errstate(all="ignore"):
        if x.dtype == np.float16:
            kept = (x.astype(np.float32) * np.float32(a) + np.float32(b)).astype(np.float16)
        elif x.dtype == np.uint16:  # bfloat16 bits, as float16
            kept = float32_to_bfloat16(bfloat16_to_float32(x) * np.float32(a) + np.float32(b))
            return np.where(keep, kept, bfloat16_bits(c))
        else:
            kept = x * x.dtype.type(a) + x.dtype.type(b)
    return np.where(keep, kept, x.dtype.type(c))


def alpha_dropout(x: ArrayLike, p: Probability = 0.5, *, seed: Seed = None,
                  stream: Int | None = None, offset: Int = 0, training: Bool = True,
                  inplace: Bool = False, out: NDArray[Any] | None = None,
                  noise_shape: Shape | None = None, broadcast_dims: Axes | None = None,
                  dtype: DtypeRequest = None, origin: Shape | None = None,
                  global_shape: Shape | None = None) -> MaskedResult:
    """Alpha dropout for SELU networks; see `fastdrop.alpha_dropout`."""
    call = _calls.masked(x, p, seed, stream, offset, inplace, out, noise_shape, broadcast_dims,
                         training, dtype, origin, global_shape)
    if not training:
        return call.untouched(), None
    keep = call_keep(call)
    mask = call.mask(pack_mask(keep))
    if call.p == 0.0:  # the identity, as in PyTorch
        return call.deliver(call.x.reshape(-1).copy()), mask
    y = alpha_affine(call.x.reshape(-1), broadcast_keep(keep, call.mask_shape, call.x.shape),
                     call.p)
    return call.deliver(y), mask


def feature_alpha_dropout(x: ArrayLike, p: Probability = 0.5, *, channel_axis: Int = 1,
                          batch_axis: Int | None = 0, seed: Seed = None, stream: Int | None = None,
                          offset: Int = 0, training: Bool = True, inplace: Bool = False,
                          out: NDArray[Any] | None = None, dtype: DtypeRequest = None,
                          origin: Shape | None = None,
                          global_shape: Shape | None = None) -> MaskedResult:
    """Alpha dropout of whole channels; see `fastdrop.feature_alpha_dropout`."""
    noise_shape = channel_noise_shape(np.shape(x) if global_shape is None else global_shape,
                                      channel_axis, batch_axis)
    return alpha_dropout(x, p, seed=seed, stream=stream, offset=offset, training=training,
                         inplace=inplace, out=out, noise_shape=noise_shape, dtype=dtype,
                         origin=origin, global_shape=global_shape)


def alpha_dropout_backward(grad: ArrayLike, mask: DropoutMask, *, inplace: Bool = False,
                           out: NDArray[Any] | None = None,
                           dtype: DtypeRequest = None) -> NDArray[Any]:
    """grad * a where kept, +0.0 where dropped; see `fastdrop.alpha_dropout_backward`."""
    check_mask_object(mask)
    return apply_mask(grad, mask, scale=alpha_dropout_constants(mask.p)[0] if mask.p != 0.0
                      else 1.0, inplace=inplace, out=out, dtype=dtype, name="grad")


# ---------------------------------------------------------------- Gaussian dropout


def _polynomial(coefficients, r):
    """sum_k coefficients[k] r**k by Horner's rule, highest power first (the spec's order)."""
    result = np.full_like(r, coefficients[-1])
    for coefficient in coefficients[-2::-1]:
        result = result * r + coefficient
    return result


def spec_log(v):
    """log(v) for v > 0 as the spec defines it: frexp, then the atanh series (section 9)."""
    m, e = np.frexp(v)
    low = m < normal.SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    f = (m - 1.0) / (m + 1.0)
    return e * normal.LN2 + 2.0 * f * _polynomial(normal.LOG_SERIES, f * f)


def inverse_normal_cdf(u):
    """z = Phi^-1(u) for u in (0, 1) by AS 241 with `spec_log` (section 9)."""
    u = np.asarray(u, dtype=np.float64)
    q = u - 0.5
    r = normal.CENTRAL_OFFSET - q * q
    central = (q * _polynomial(normal.CENTRAL_NUMERATOR, r)
               / _polynomial(normal.CENTRAL_DENOMINATOR, r))
    tail = np.sqrt(-spec_log(np.where(q < 0.0, u, 1.0 - u)))
    near = tail - normal.INTERMEDIATE_SHIFT
    far = tail - normal.TAIL_SPLIT
    magnitude = np.where(
        tail <= normal.TAIL_SPLIT,
        (_polynomial(normal.INTERMEDIATE_NUMERATOR, near)
         / _polynomial(normal.INTERMEDIATE_DENOMINATOR, near)),
        _polynomial(normal.FAR_NUMERATOR, far) / _polynomial(normal.FAR_DENOMINATOR, far))
    return np.where(np.abs(q) <= normal.CENTRAL_LIMIT, central,
                    np.where(q < 0.0, -magnitude, magnitude))


def standard_normals(n, seed, stream, offset):
    """z_i for global indices offset .. offset + n - 1 of the Gaussian noise stream (section 9)."""
    return standard_normals_at(np.arange(offset, offset + n, dtype=np.uint64), seed, stream)


def standard_normals_at(indices, seed, stream):
    """z of elements with any global indices (uint64) of the Gaussian noise stream (section 9).

    Element i takes 64-bit word r = x0 + 2**32 x1 (i even) or x2 + 2**32 x3 (i odd)
    of Philox block i // 2 with counter ``normal_counter(i // 2, stream)``, then
    u = (r >> 12) + 1/2) * 2**-52 and z = Phi^-1(u).
    """
    indices = np.asarray(indices, dtype=np.uint64)
    blocks = indices >> np.uint64(1)
    key = tuple(np.uint64(half) for half in split64(seed))
    counter = tuple(np.broadcast_to(np.uint64(c) if np.isscalar(c) else c,  # type: ignore[arg-type]
                                    blocks.shape)
                    for c in normal_counter(blocks, stream))
    x0, x1, x2, x3 = philox_rounds(counter, key, 10)
    odd = (indices & np.uint64(1)).astype(bool)
    words = np.where(odd, x2 | (x3 << np.uint64(32)), x0 | (x1 << np.uint64(32)))
    u = ((words >> np.uint64(normal.UNIFORM_SHIFT)).astype(np.float64) + 0.5) * normal.UNIFORM_SCALE
    return inverse_normal_cdf(u)


def gaussian_multipliers(n, p, seed, stream, offset):
    """The noise 1 + sigma * z_i in float64 (sigma = sqrt(p / (1 - p)))."""
    return 1.0 + gaussian_sigma(p) * standard_normals(n, seed, stream, offset)


def call_multipliers(call):
    """A call's noise: a range from ``offset``, or a block's runs."""
    if call.runs is None:
        return gaussian_multipliers(call.m, call.p, call.seed, call.stream, call.offset)
    indices = block_indices(call.runs)
    return 1.0 + gaussian_sigma(call.p) * standard_normals_at(indices, call.seed, call.stream)


def multiply_noise(x, noise):
    """Section 9's output arithmetic: the noise rounded to x's dtype, times x.

    The noise is rounded to float32 for float16.
    """
    if is_bfloat16(x.dtype):
        return multiply_noise(x.view(np.uint16), noise).view(x.dtype)
    with np.errstate(all="ignore"):
        if x.dtype == np.float16:
            return (x.astype(np.float32) * noise.astype(np.float32)).astype(np.float16)
        if x.dtype == np.uint16:  # bfloat16 bits, as float16
            return float32_to_bfloat16(bfloat16_to_float32(x) * noise.astype(np.float32))
        return x * noise.astype(x.dtype)


def gaussian_noise(n: Int | Shape, p: Probability, *, seed: Seed, stream: Int | None = None,
                   offset: Int = 0, origin: Shape | None = None,
                   global_shape: Shape | None = None) -> NDArray[np.float64]:
    """The multipliers of `gaussian_dropout` in float64; see `fastdrop.gaussian_noise`."""
    call = _calls.count(n, p, seed, stream, offset, gaussian=True, origin=origin,
                        global_shape=global_shape)
    return call_multipliers(call).reshape(-1)


def gaussian_dropout(x: ArrayLike, p: Probability = 0.5, *, seed: Seed = None,
                     stream: Int | None = None, offset: Int = 0, training: Bool = True,
                     inplace: Bool = False, out: NDArray[Any] | None = None,
                     dtype: DtypeRequest = None, origin: Shape | None = None,
                     global_shape: Shape | None = None) -> NoiseResult:
    """Multiplicative N(1, p/(1-p)) noise; see `fastdrop.gaussian_dropout`."""
    call = _calls.gaussian(x, p, seed, stream, offset, inplace, out, training, dtype, origin,
                           global_shape)
    if not training:
        return call.untouched(), None
    noise = call_multipliers(call)
    return call.deliver(multiply_noise(call.x.reshape(-1), noise)), call.noise()


def gaussian_dropout_backward(grad: ArrayLike, noise: GaussianNoise, *, inplace: Bool = False,
                              out: NDArray[Any] | None = None,
                              dtype: DtypeRequest = None) -> NDArray[Any]:
    """grad times the same noise; see `fastdrop.gaussian_dropout_backward`."""
    call = _calls.stored_noise(grad, noise, inplace, out, dtype)
    multipliers = call_multipliers(call)
    return call.deliver(multiply_noise(call.x.reshape(-1), multipliers))


# ---------------------------------------------------------------- DropConnect


def dropconnect(weight: ArrayLike, p: Probability = 0.5, *, seed: Seed = None,
                stream: Int | None = None, offset: Int = 0, training: Bool = True,
                out: NDArray[Any] | None = None, dtype: DtypeRequest = None) -> MaskedResult:
    """Dropout over a weight matrix, never in place; see `fastdrop.dropconnect`."""
    return dropout(check_weight(weight, dtype), p, seed=seed, stream=stream, offset=offset,
                   training=training, out=out, dtype=dtype)


# ---------------------------------------------------------------- fused: dropout and an add


def add_rounded(a, b):
    """a + b rounded to the dtype (section 11): float16 and bfloat16 add in float32, round once."""
    if is_bfloat16(a.dtype):
        return add_rounded(a.view(np.uint16), b.view(np.uint16)).view(a.dtype)
    with np.errstate(all="ignore"):  # inf - inf is NaN, a sum may overflow: specified results
        if a.dtype == np.float16:
            return (a.astype(np.float32) + b.astype(np.float32)).astype(np.float16)
        if a.dtype == np.uint16:  # bfloat16 bits
            return float32_to_bfloat16(bfloat16_to_float32(a) + bfloat16_to_float32(b))
        return a + b


def _dropout_then_add(call, x, bias, training):
    """The unfused composition: (x + bias), its dropout, then the residual added."""
    x = x.reshape(-1)
    if bias is not None:
        x = add_rounded(x, np.tile(bias, x.size // max(bias.size, 1)))
    if not training:
        return call.deliver(add_rounded(call.x.reshape(-1), x)), None
    keep = call_keep(call)
    dropped = scale_kept(x, keep, call.p)
    return call.deliver(add_rounded(call.x.reshape(-1), dropped)), call.mask(pack_mask(keep))


def dropout_add(x: ArrayLike, residual: ArrayLike, p: Probability = 0.5, *, seed: Seed = None,
                stream: Int | None = None, offset: Int = 0, training: Bool = True,
                inplace: Bool = False, out: NDArray[Any] | None = None,
                dtype: DtypeRequest = None) -> MaskedResult:
    """residual + dropout(x), unfused; see `fastdrop.dropout_add`."""
    call, x, _ = _fused_calls.fused(x, residual, None, p, seed, stream, offset, training,
                                    inplace, out, dtype)
    return _dropout_then_add(call, x, None, training)



def bias_dropout_add(x: ArrayLike, bias: ArrayLike, residual: ArrayLike, p: Probability = 0.5, *,
                     seed: Seed = None, stream: Int | None = None, offset: Int = 0,
                     training: Bool = True, inplace: Bool = False, out: NDArray[Any] | None = None,
                     dtype: DtypeRequest = None) -> MaskedResult:
    """residual + dropout(x + bias), unfused; see `fastdrop.bias_dropout_add`."""
    call, x, bias = _fused_calls.fused(x, residual, bias, p, seed, stream, offset, training,
                                       inplace, out, dtype, with_bias=True)
    return _dropout_then_add(call, x, bias, training)


def sum_rows(values):
    """The sum over every axis but the last (a bias's gradient), as section 11 defines it.

    float16 and bfloat16 widen to float32 (exactly); the (rows, features) view is summed
    along its rows by ``np.sum(..., axis=0)`` in float32 (float64 for float64), NumPy's
    order, and rounded once to the dtype.
    """
    if is_bfloat16(values.dtype):
        return sum_rows(values.view(np.uint16)).view(values.dtype)
    features = values.shape[-1]
    rows = values.reshape(values.size // features if features else 0, features)
    with np.errstate(all="ignore"):  # a sum may overflow the dtype: the specified inf
        if values.dtype == np.uint16:  # bfloat16 bits
            return float32_to_bfloat16(np.sum(bfloat16_to_float32(rows), axis=0))
        if values.dtype == np.float16:
            return np.sum(rows.astype(np.float32), axis=0).astype(np.float16)
        return np.sum(rows, axis=0)


def bias_dropout_add_backward(grad: ArrayLike, mask: DropoutMask, *,
                              dtype: DtypeRequest = None) -> tuple[NDArray[Any], NDArray[Any]]:
    """Gradients of x and of the bias; see `fastdrop.bias_dropout_add_backward`."""
    _fused_calls.check_bias_gradient(grad, mask, dtype)
    grad_x = dropout_backward(grad, mask, dtype=dtype)
    return grad_x, sum_rows(grad_x)


# ---------------------------------------------------------------- fused: softmax and dropout

SOFTMAX_LANES = 16


def compute_type(dtype):
    """The type softmax computes in (section 12): float64 for float64, else float32."""
    return np.float64 if dtype == np.float64 else np.float32


def widen(values):
    """Elements as kernels see them (bfloat16 as uint16 bits) in the compute type, exactly."""
    if values.dtype == np.uint16:
        return bfloat16_to_float32(values)
    return values.astype(compute_type(values.dtype))


def narrow(values, dtype):
    """Compute-type values rounded once to ``dtype`` (bfloat16: uint16 bits), to nearest even."""
    if dtype == np.uint16:
        return float32_to_bfloat16(values)
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def lane_sum(values):
    """The sum along the last axis in section 12's order, in values' own type.

    Element j goes into lane ``j mod 16``, each lane summed in order from +0.0; then the
    lanes are added pairwise, lane k with lane k + 8, then k + 4, k + 2 and k + 1.
    """
    length = values.shape[-1]
    lanes = np.zeros(values.shape[:-1] + (SOFTMAX_LANES,), values.dtype)
    with np.errstate(all="ignore"):  # inf - inf, overflow: the specified results
        for start in range(0, length, SOFTMAX_LANES):
            block = values[..., start:start + SOFTMAX_LANES]
            lanes[..., :block.shape[-1]] = lanes[..., :block.shape[-1]] + block
        width = SOFTMAX_LANES // 2
        while width:
            lanes = lanes[..., :width] + lanes[..., width:2 * width]
            width //= 2
    return lanes[..., 0]


def softmax(x, axis):
    """Section 12's softmax of kernel-view x along ``axis``, rounded to x's dtype.

    In the compute type: m the row's maximum, e = exp(x - m) (NumPy's exp), S their
    `lane_sum`, r = 1 / S, s = e * r; s rounded once to the dtype.
    """
    rows = np.moveaxis(widen(x), axis, -1)
    if rows.size == 0:
        return np.empty_like(x)
    with np.errstate(all="ignore"):  # an all -inf row is NaN (-inf - -inf), as torch's
        exponentials = np.exp(rows - rows.max(axis=-1, keepdims=True))
        reciprocal = np.ones((), rows.dtype) / lane_sum(exponentials)[..., None]
        return np.moveaxis(narrow(exponentials * reciprocal, x.dtype), -1, axis)


def softmax_dropout(x: ArrayLike, p: Probability = 0.5, axis: Int = -1, *, seed: Seed = None,
                    stream: Int | None = None, offset: Int = 0, training: Bool = True,
                    out: NDArray[Any] | None = None, softmax_out: NDArray[Any] | None = None,
                    dtype: DtypeRequest = None) -> MaskedResult:
    """dropout(softmax(x)), unfused; see `fastdrop.softmax_dropout`."""
    call, axis, softmax_target = _fused_calls.softmax(x, p, axis, seed, stream, offset, training,
                                                      out, softmax_out, dtype)
    s = softmax(call.x, axis)
    if softmax_target is not None:
        softmax_target[...] = s
    if not training:
        return call.deliver(s.reshape(-1)), None
    keep = call_keep(call)
    return call.deliver(scale_kept(s.reshape(-1), keep, call.p)), call.mask(pack_mask(keep))


def softmax_backward(grad, s, axis):
    """Section 12's gradient of kernel-view arrays: s * (g - lane_sum(g * s)), g = the gradient.

    Every step rounded to the compute type, then the result once to the dtype.
    """
    g, s_wide = (np.moveaxis(widen(a), axis, -1) for a in (grad, s))
    if g.size == 0:
        return np.empty_like(grad)
    with np.errstate(all="ignore"):
        dot = lane_sum(g * s_wide)[..., None]
        return np.moveaxis(narrow(s_wide * (g - dot), grad.dtype), -1, axis)


def softmax_dropout_backward(grad: ArrayLike, softmax: ArrayLike, mask: DropoutMask | None,
                             axis: Int = -1, *, out: NDArray[Any] | None = None,
                             dtype: DtypeRequest = None) -> NDArray[Any]:
    """Gradient of x; see `fastdrop.softmax_dropout_backward`."""
    call, axis, s = _fused_calls.softmax_gradient(grad, softmax, mask, axis, out, dtype)
    g = call.x
    if mask is not None:
        g = scale_kept(g.reshape(-1), unpack_mask(call.words, call.m), call.p).reshape(g.shape)
    return call.deliver(softmax_backward(g, s, axis).reshape(-1))
