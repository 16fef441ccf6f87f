"""The NumPy reference: the mask-stream specification executed plainly.

Same functions and signatures as the public API (without ``backend``), slow and
obviously correct. It is the oracle every backend is tested against, and what
``backend="numpy"`` runs. Nothing here is clever: each lane's 64-bit uniform U is
assembled from all 64 of its bits and compared with the threshold, with none of
the early stopping the kernels use.

Specification: docs/mask-stream.md.
"""
import numpy as np

from . import _validate
from ._mask import DropoutMask, pack_mask, unpack_mask
from .maskstream.spec import WORD_BITS, block_counter, dropout_scale, keep_threshold, split64
from .rng.philox import philox_rounds

__all__ = [
    "bernoulli_mask",
    "dropout",
    "dropout_backward",
    "dropout_backward_recompute",
    "keep_bits",
    "lane_uniforms",
    "pack_mask",
    "random_words",
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
        counter = tuple(np.broadcast_to(np.uint64(c) if np.isscalar(c) else c, words.shape)
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
    """Booleans for elements with global indices offset, ..., offset + n - 1: kept iff U >= floor(p 2**64)."""
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
        keep[lo - offset:hi - offset] = kept[lo - batch_start * WORD_BITS:hi - batch_start * WORD_BITS]
    return keep


def scale_kept(x, keep, p):
    """The spec's output arithmetic: x * s where kept (s = 1/(1-p) rounded to x's dtype), +0.0 where dropped."""
    scale = dropout_scale(p)
    with np.errstate(all="ignore"):  # s or x*s may overflow; that is the specified result
        if x.dtype == np.float16:
            kept = (x.astype(np.float32) * np.float32(np.float16(scale))).astype(np.float16)
        else:
            kept = x * x.dtype.type(scale)
    return np.where(keep, kept, x.dtype.type(0))


def bernoulli_mask(n, p, *, seed, stream=None, offset=0):
    """Packed keep bits of ``n`` elements starting at global index ``offset``; see `fastdrop.bernoulli_mask`."""
    n = _validate.check_count(n)
    p = _validate.check_p(p)
    offset = _validate.check_offset(offset, n)
    seed, stream = _validate.resolve_seed_stream(seed, stream)
    return pack_mask(keep_bits(n, p, seed, stream, offset))


def dropout(x, p=0.5, *, seed=None, stream=None, offset=0, training=True, inplace=False, out=None):
    """Inverted dropout; see `fastdrop.dropout`."""
    p = _validate.check_p(p)
    x, target = _validate.prepare_target(x, "x", inplace, out)
    _validate.check_seed_stream(seed, stream)
    offset = _validate.check_offset(offset, x.size)
    if not training:
        return (x if target is None else _validate.deliver(x, x, target)), None
    seed, stream = _validate.resolve_seed_stream(seed, stream)
    keep = keep_bits(x.size, p, seed, stream, offset)
    y = scale_kept(x.reshape(-1), keep, p)
    mask = DropoutMask(pack_mask(keep), shape=x.shape, p=p, seed=seed, stream=stream, offset=offset)
    return _validate.deliver(y, x, target), mask


def dropout_backward(grad, mask, *, p=None, inplace=False, out=None):
    """grad * keep / (1 - p) from a packed mask; see `fastdrop.dropout_backward`."""
    grad, target = _validate.prepare_target(grad, "grad", inplace, out)
    words, p = _validate.check_mask(mask, grad.size, p)
    keep = unpack_mask(words, grad.size)
    return _validate.deliver(scale_kept(grad.reshape(-1), keep, p), grad, target)


def dropout_backward_recompute(grad, p, *, seed, stream, offset=0, inplace=False, out=None):
    """grad * keep / (1 - p) with keep regenerated from (seed, stream, offset); see `fastdrop.dropout_backward_recompute`."""
    p = _validate.check_p(p)
    grad, target = _validate.prepare_target(grad, "grad", inplace, out)
    seed, stream = _validate.check_seed(seed), _validate.check_stream(stream)
    offset = _validate.check_offset(offset, grad.size)
    keep = keep_bits(grad.size, p, seed, stream, offset)
    return _validate.deliver(scale_kept(grad.reshape(-1), keep, p), grad, target)

