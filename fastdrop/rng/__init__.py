"""Counter-based random number generation: the Philox4x32-10 block function.

This layer knows nothing about masks or dropout; it turns (counter, key) into
random bits.
"""
from .philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, philox4x32_10

__all__ = ["philox4x32_10", "PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1"]
