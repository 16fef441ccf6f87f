"""The mask stream: which random bits each element gets, and how p turns them into keep bits.

The normative text is docs/mask-stream.md; ``fastdrop.reference`` executes it in
NumPy, and every backend reproduces it bit for bit. This layer knows about
Philox counters and thresholds, not about arrays being dropped out.
"""
from .spec import (
    BLOCK_SHIFT,
    MAX_ELEMENTS,
    MAX_SEED,
    MAX_STREAM,
    WORD_BITS,
    block_counter,
    keep_threshold,
    split64,
)

__all__ = [
    "BLOCK_SHIFT",
    "MAX_ELEMENTS",
    "MAX_SEED",
    "MAX_STREAM",
    "WORD_BITS",
    "block_counter",
    "keep_threshold",
    "split64",
]
