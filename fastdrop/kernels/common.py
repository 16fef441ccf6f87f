"""Helpers shared by the compiled backends' Python entry points."""
import functools

import numpy as np

from .._config import MIN_ELEMENTS_PER_THREAD
from ..maskstream.spec import round_to_bfloat16

# Kernels see float16 as float16 arrays (or their uint16 bits) and bfloat16 as uint16 bits.
_BFLOAT16_BITS = "H"


@functools.lru_cache(maxsize=256)
def _rounded_scale(dtype_char, scale):
    with np.errstate(over="ignore"):  # s overflows float16 for p > 1 - 2**-16: specified
        if dtype_char == "e":
            return np.float32(np.float16(scale))
        if dtype_char == _BFLOAT16_BITS:
            return np.float32(round_to_bfloat16(scale))
        return np.dtype(dtype_char).type(scale)


def kernel_scale(dtype, scale):
    """s rounded once to the array's dtype, held in the type the kernel multiplies in.

    float16 and bfloat16 kernels multiply in float32 by the float16 (bfloat16) value of
    s, exactly, then round once.
    """
    return _rounded_scale(dtype.char, scale)


def kernel_mask_op(dtype, scale, affine):
    """(affine, scale, shift, dropped_value) as a kernel of ``dtype`` uses them.

    ``affine`` is None (dropout: kept x * s, dropped +0.0; s rounded like
    `kernel_scale`) or alpha dropout's float64 (a, b, c): a and b rounded to the
    type the kernel computes in (float32 for float16), c rounded once to the
    dtype (docs/mask-stream.md, section 8).
    """
    if affine is None:
        return False, kernel_scale(dtype, scale), 0.0, 0.0
    a, b, c = affine
    compute = np.float64 if dtype == np.float64 else np.float32
    if dtype == np.float16:
        dropped = np.float16(c)
    elif dtype.char == _BFLOAT16_BITS:
        dropped = round_to_bfloat16(c)
    else:
        dropped = dtype.type(c)
    return True, compute(a), compute(b), compute(dropped)


def chunk_count(n, threads):
    """How many ranges of whole mask words (one per thread) to split n elements into; 1 = serial."""
    return max(1, min(threads, n // MIN_ELEMENTS_PER_THREAD))
