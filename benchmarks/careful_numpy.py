"""NumPy written for speed: one more implementation for the benchmarks and the docs.

Uniforms drawn in x's dtype into a preallocated buffer, a bool mask, in-place ufuncs
with ``out=``, no float64 temporaries: the fastest NumPy a careful user writes, next to
the textbook formula that ``fastdrop bench`` compares with. `CAREFUL` joins the
registry's implementations in conftest.py and make_docs.py.
"""
import numpy as np

from fastdrop.bench.implementations import (
    SEED,
    Implementation,
    channel_input,
    dropout_scale,
    gaussian_input,
    input_values,
    uniform_dtype,
)
from fastdrop.maskstream.spec import gaussian_sigma


def _buffers(n, dtype):
    return np.empty(n, dtype=uniform_dtype(dtype)), np.empty(n, dtype=bool)


def _forward_into(n, p, dtype, inplace):
    x, (uniforms, keep) = input_values(n, dtype), _buffers(n, dtype)
    y = x if inplace else np.empty(n, dtype)
    rng, scale = np.random.default_rng(SEED), dtype.type(dropout_scale(p))

    def call():
        rng.random(dtype=uniforms.dtype, out=uniforms)
        np.greater_equal(uniforms, p, out=keep)
        np.multiply(x, keep, out=y)
        np.multiply(y, scale, out=y)
    return call


def _forward_inplace(n, p, dtype, threads):
    return _forward_into(n, p, dtype, inplace=True)


def _forward(n, p, dtype, threads):
    return _forward_into(n, p, dtype, inplace=False)


def _mask(n, p, dtype, threads):
    uniforms, keep = _buffers(n, np.float32)
    rng = np.random.default_rng(SEED)

    def call():
        rng.random(dtype=np.float32, out=uniforms)
        np.greater_equal(uniforms, p, out=keep)
    return call


def _backward_mask(n, p, dtype, threads):
    grad = input_values(n, dtype)
    keep = np.random.default_rng(SEED).random(n, dtype=np.float32) >= p
    scale = dtype.type(dropout_scale(p))

    def call():
        np.multiply(grad, keep, out=grad)
        np.multiply(grad, scale, out=grad)
    return call


def _backward_recompute(n, p, dtype, threads):
    grad, (uniforms, keep) = input_values(n, dtype), _buffers(n, dtype)
    scale = dtype.type(dropout_scale(p))

    def call():
        np.random.default_rng(SEED).random(dtype=uniforms.dtype, out=uniforms)
        np.greater_equal(uniforms, p, out=keep)
        np.multiply(grad, keep, out=grad)
        np.multiply(grad, scale, out=grad)
    return call


def _channel_inplace(n, p, dtype, threads):
    x = channel_input(n, dtype)
    mask_shape = x.shape[:2] + (1, 1)
    uniforms, keep = np.empty(mask_shape, uniform_dtype(dtype)), np.empty(mask_shape, bool)
    factors = np.empty(mask_shape, dtype)
    rng, scale = np.random.default_rng(SEED), dtype.type(dropout_scale(p))

    def call():  # the (N, C, 1, 1) factors in x's dtype, then one broadcast multiply
        rng.random(dtype=uniforms.dtype, out=uniforms)
        np.greater_equal(uniforms, p, out=keep)
        np.multiply(keep, scale, out=factors)
        np.multiply(x, factors, out=x)
    return call


def _gaussian_inplace(n, p, dtype, threads):
    x, noise = gaussian_input(n, dtype), np.empty(n, uniform_dtype(dtype))
    rng, sigma = np.random.default_rng(SEED), noise.dtype.type(gaussian_sigma(p))

    def call():  # normals drawn in x's dtype (ziggurat) into a preallocated buffer
        rng.standard_normal(dtype=noise.dtype, out=noise)
        np.multiply(noise, sigma, out=noise)
        np.add(noise, 1, out=noise)
        np.multiply(x, noise, out=x)
    return call


CAREFUL = Implementation(
    "numpy-careful",
    "NumPy written for speed: uniforms drawn in x's dtype into a preallocated buffer, "
    "bool mask, in-place ufuncs with out=, no float64 temporaries (Gaussian: "
    "standard_normal in x's dtype, then * sigma + 1); one thread",
    lambda: None,
    {"forward_inplace": _forward_inplace, "forward": _forward, "mask": _mask,
     "backward_mask": _backward_mask, "backward_recompute": _backward_recompute,
     "channel_inplace": _channel_inplace, "gaussian_inplace": _gaussian_inplace})
