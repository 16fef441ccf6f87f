"""Helpers shared by the compiled backends' Python entry points."""
import numpy as np

from .._config import SERIAL_ELEMENTS


def kernel_scale(dtype, scale):
    """s rounded once to the array's dtype, held in the type the kernel multiplies in.

    float16 kernels multiply in float32 by the float16 value of s (exact), then round.
    """
    with np.errstate(over="ignore"):  # s overflows float16 for p > 1 - 2**-16: specified
        return np.float32(np.float16(scale)) if dtype == np.float16 else dtype.type(scale)


def kernel_view(array):
    """The array as kernels see it: float16 as uint16 bit patterns."""
    return array.view(np.uint16) if array.dtype == np.float16 else array


def chunk_count(n, threads):
    """How many ranges of whole mask words to split n elements into (1 = serial)."""
    return 1 if n < SERIAL_ELEMENTS or threads <= 1 else threads
